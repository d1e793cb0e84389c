// Computes reference embeddings with TensorFlow.js itself (CPU backend) for
// the default-model test: loads nsfwjs@4.4.0's mobilenet_v2_mid graph model
// with tf.io.fromMemory, feeds the committed 224x224 input PNGs as
// pixel / 255 (NHWC, the graph's own input convention), and reads the
// `feature_vector/SpatialSqueeze` node (global average pool of Conv_1, 1792-d).
//
//   node make_reference.js MODEL_DIR INPUTS_DIR OUT_DIR
//
// Writes OUT_DIR/reference_features.npy (float32 [N, 1792], raw, not
// normalised) and OUT_DIR/reference.json (image order, hashes, versions).
// regenerate.sh runs the whole pipeline.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const tfconv = require('@tensorflow/tfjs-converter');
const {PNG} = require('pngjs');

const {loadArtifacts} = require('../tfjs_artifacts.js');

const kSize = 224;
const kFeatureNode = 'StatefulPartitionedCall/sequential/keras_layer/StatefulPartitionedCall/' +
    'StatefulPartitionedCall/StatefulPartitionedCall/predict/feature_vector/SpatialSqueeze';

function writeNpyFloat32(file, data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}), }`;
  const unpadded = 10 + header.length + 1;  // magic+version+len, header, '\n'
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([
    pre, Buffer.from(header, 'latin1'), Buffer.from(data.buffer, data.byteOffset, data.byteLength),
  ]));
}

async function main(argv) {
  if (argv.length !== 3) {
    console.error('usage: node make_reference.js MODEL_DIR INPUTS_DIR OUT_DIR');
    process.exit(2);
  }
  const [modelDir, inputsDir, outDir] = argv;
  if (require('os').endianness() !== 'LE') throw new Error('little-endian hosts only');

  await tf.setBackend('cpu');
  await tf.ready();

  const {modelJson, weightSpecs, weightData} = loadArtifacts(modelDir);
  const model = await tfconv.loadGraphModel(tf.io.fromMemory({
    modelTopology: modelJson.modelTopology,
    format: modelJson.format,
    generatedBy: modelJson.generatedBy,
    convertedBy: modelJson.convertedBy,
    weightSpecs,
    weightData,
  }));

  const names = fs.readdirSync(inputsDir).filter((f) => f.endsWith('.png')).sort();
  if (names.length === 0) throw new Error(`no .png in ${inputsDir}`);
  const pixels = new Float32Array(names.length * kSize * kSize * 3);
  const images = [];
  names.forEach((name, n) => {
    const bytes = fs.readFileSync(path.join(inputsDir, name));
    const png = PNG.sync.read(bytes);  // always RGBA, 8 bits per channel
    if (png.width !== kSize || png.height !== kSize) throw new Error(`${name}: not ${kSize}x${kSize}`);
    const base = n * kSize * kSize * 3;
    for (let i = 0; i < kSize * kSize; ++i) {
      for (let c = 0; c < 3; ++c) pixels[base + i * 3 + c] = png.data[i * 4 + c] / 255;
    }
    images.push({file: name, sha256: crypto.createHash('sha256').update(bytes).digest('hex')});
  });

  const x = tf.tensor4d(pixels, [names.length, kSize, kSize, 3]);
  // execute() returns a bare Tensor when asked for a single output.
  const out = model.execute(x, [kFeatureNode]);
  const features = Array.isArray(out) ? out[0] : out;
  if (features.shape.length !== 2 || features.shape[1] !== 1792) {
    throw new Error(`unexpected feature shape ${features.shape}`);
  }
  const values = features.dataSync();

  fs.mkdirSync(outDir, {recursive: true});
  writeNpyFloat32(path.join(outDir, 'reference_features.npy'), values, features.shape);
  const norms = [];
  for (let n = 0; n < names.length; ++n) {
    let s = 0;
    for (let d = 0; d < 1792; ++d) s += values[n * 1792 + d] ** 2;
    norms.push(Math.sqrt(s));
  }
  fs.writeFileSync(path.join(outDir, 'reference.json'), JSON.stringify({
    what: 'TensorFlow.js feature vectors (not normalised) for the input PNGs, rows in this order',
    model: 'npm nsfwjs@4.4.0, dist/models/mobilenet_v2_mid (' + modelJson.convertedBy + ')',
    node: kFeatureNode,
    input: 'NHWC float32, pixel / 255 (the graph computes x * 2 - 1 itself)',
    tfjs: {core: tf.version_core, converter: tfconv.version_converter, backend: tf.getBackend()},
    features_file: 'reference_features.npy',
    images: images.map((im, n) => ({...im, feature_norm: Number(norms[n].toFixed(6))})),
  }, null, 2) + '\n');
  console.log(`${names.length} images -> ${outDir}`);
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});

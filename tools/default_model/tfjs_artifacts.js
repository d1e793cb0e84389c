// Reads a TensorFlow.js graph model that is bundled as JS modules (the layout
// of npm `nsfwjs`: model.min.js exports the model.json object, each
// group1-shardXofY.min.js exports the shard's bytes as a base64 string).
//
// Used two ways:
//   * as a module by reference/make_reference.js (loadArtifacts), and
//   * as a CLI by make_default_model.sh:
//       node tfjs_artifacts.js MODEL_DIR OUT_DIR
//     which writes OUT_DIR/weights.json (name, shape, offset per tensor) and
//     OUT_DIR/weights.f32 (all tensors dequantized to little-endian float32,
//     back to back), for convert_to_torchscript.py.
//
// Dequantization is the one tfjs itself does (tfjs-core io/io_utils.ts):
// value = q * scale + min, computed in double, stored as float32.
'use strict';

const fs = require('fs');
const path = require('path');

function loadArtifacts(modelDir) {
  const dir = path.resolve(modelDir);
  const modelJson = require(path.join(dir, 'model.min.js'));
  if (!modelJson.modelTopology || !Array.isArray(modelJson.weightsManifest) ||
      modelJson.weightsManifest.length !== 1) {
    throw new Error(`${dir}: expected a graph model with one weightsManifest group`);
  }
  const group = modelJson.weightsManifest[0];
  const buffers = group.paths.map((p) => {
    const b64 = require(path.join(dir, `${p}.min.js`));
    if (typeof b64 !== 'string') throw new Error(`${p}.min.js does not export a string`);
    return Buffer.from(b64, 'base64');
  });
  const all = Buffer.concat(buffers);
  // A fresh ArrayBuffer holding exactly the concatenated shards.
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return {modelJson, weightSpecs: group.weights, weightData};
}

const kBytesPerElement = {float32: 4, int32: 4, uint8: 1, uint16: 2};

// Returns [{name, shape, values: Float32Array}] in manifest order.
function dequantize(weightSpecs, weightData) {
  const out = [];
  let offset = 0;
  for (const spec of weightSpecs) {
    const size = spec.shape.reduce((a, b) => a * b, 1);
    const q = spec.quantization;
    const storedDtype = q ? q.dtype : spec.dtype;
    const nbytes = size * kBytesPerElement[storedDtype];
    if (!nbytes && size) throw new Error(`${spec.name}: unsupported dtype ${storedDtype}`);
    if (spec.dtype !== 'float32') throw new Error(`${spec.name}: expected float32, got ${spec.dtype}`);
    const bytes = weightData.slice(offset, offset + nbytes);
    offset += nbytes;
    let values;
    if (!q) {
      values = new Float32Array(bytes);
    } else if (q.dtype === 'uint8' || q.dtype === 'uint16') {
      if (q.scale === undefined || q.min === undefined) {
        throw new Error(`${spec.name}: only affine (scale/min) quantization is supported`);
      }
      const raw = q.dtype === 'uint8' ? new Uint8Array(bytes) : new Uint16Array(bytes);
      values = new Float32Array(raw.length);
      for (let i = 0; i < raw.length; ++i) values[i] = raw[i] * q.scale + q.min;
    } else {
      throw new Error(`${spec.name}: unsupported quantization ${q.dtype}`);
    }
    out.push({name: spec.name, shape: spec.shape, values});
  }
  if (offset !== weightData.byteLength) {
    throw new Error(`weights use ${offset} bytes but the shards hold ${weightData.byteLength}`);
  }
  return out;
}

function main(argv) {
  if (argv.length !== 2) {
    console.error('usage: node tfjs_artifacts.js MODEL_DIR OUT_DIR');
    process.exit(2);
  }
  const [modelDir, outDir] = argv;
  if (require('os').endianness() !== 'LE') throw new Error('weights.f32 is little-endian only');
  const {modelJson, weightSpecs, weightData} = loadArtifacts(modelDir);
  const tensors = dequantize(weightSpecs, weightData);
  fs.mkdirSync(outDir, {recursive: true});
  const index = [];
  const chunks = [];
  let offset = 0;
  for (const t of tensors) {
    index.push({name: t.name, shape: t.shape, offset, count: t.values.length});
    chunks.push(Buffer.from(t.values.buffer, t.values.byteOffset, t.values.byteLength));
    offset += t.values.length;
  }
  fs.writeFileSync(path.join(outDir, 'weights.f32'), Buffer.concat(chunks));
  fs.writeFileSync(path.join(outDir, 'weights.json'), JSON.stringify({
    convertedBy: modelJson.convertedBy || null,
    count: offset,
    tensors: index,
  }));
  console.log(`${tensors.length} tensors, ${offset} values -> ${outDir}`);
}

module.exports = {loadArtifacts, dequantize};

if (require.main === module) main(process.argv.slice(2));

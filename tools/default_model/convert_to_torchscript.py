#!/usr/bin/python3
"""Builds the default model's TorchScript archive from dequantized TF weights.

Input: the weights.json / weights.f32 pair written by tfjs_artifacts.js from
nsfwjs@4.4.0's `mobilenet_v2_mid` graph model (TF-Hub MobileNetV2 1.4
feature_vector plus a small classifier head, which is dropped here).

Output: a TorchScript module that follows libs/encoder/MODEL_CONTRACT.md:
`encode_image(x[B,3,224,224]) -> [B,1792]` (and `forward`, the same thing),
with a `model.json` extra file.

Layout is torchvision's mobilenet_v2(width_mult=1.4) with three changes that
make it compute what the TF graph computes:
  * batch norm is already folded into the TF weights, so every BatchNorm2d is
    dropped and each conv gets the `bn_offset` as its bias;
  * TF "SAME" padding of a stride-2 3x3 conv on an even input pads only the
    bottom and right by one, so stride-2 convs get ZeroPad2d((0, 1, 0, 1))
    and padding 0 (stride-1 convs keep the symmetric padding 1);
  * the graph's own `x * 2 - 1` input scaling (hub_input/Mul, hub_input/Sub)
    is not in the module: model.json's mean = std = 0.5 makes the C++ side
    feed (pixel/255 - 0.5) / 0.5 = pixel/255 * 2 - 1, the same values.

Run with Debian's /usr/bin/python3 (python3-torch, python3-torchvision).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2

kEmbedDim = 1792
kImageSize = 224
kPrefix = ("StatefulPartitionedCall/sequential/keras_layer/StatefulPartitionedCall/"
           "StatefulPartitionedCall/StatefulPartitionedCall/predict/")

# What the C++ side reads (MODEL_CONTRACT.md). Why these values: see README.md.
kModelJson = {
    "format": 1,
    "name": "mobilenet_v2_140_feature_vector",
    "version": "nsfwjs-4.4.0",
    "embed_dim": kEmbedDim,
    "image_size": kImageSize,
    "resize": "squash",
    "crop": "none",
    "interpolation": "bilinear",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "metric": "cosine",
    "text": None,
}


class TfWeights:
    """Dequantized TF tensors by short name (the part after `predict/`)."""

    def __init__(self, weights_dir):
        with open(os.path.join(weights_dir, "weights.json"), encoding="utf-8") as f:
            index = json.load(f)
        flat = np.fromfile(os.path.join(weights_dir, "weights.f32"), dtype="<f4")
        if flat.size != index["count"]:
            raise ValueError(f"weights.f32 holds {flat.size} values, index says {index['count']}")
        self._tensors = {}
        for t in index["tensors"]:
            name = t["name"][len(kPrefix):] if t["name"].startswith(kPrefix) else t["name"]
            values = flat[t["offset"]:t["offset"] + t["count"]]
            self._tensors[name] = torch.from_numpy(values.reshape(t["shape"]).copy())
        self._used = set()

    def take(self, name):
        self._used.add(name)
        return self._tensors[name]

    def unused_backbone(self):
        return sorted(n for n in self._tensors
                      if n.startswith("MobilenetV2/") and n not in self._used)


def tf_conv(src: nn.Conv2d, kernel, bias, relu6: bool) -> nn.Module:
    """A biased copy of `src` holding a TF kernel, TF padding and activation."""
    depthwise = src.groups > 1
    if depthwise:  # [kh, kw, C, 1] -> [C, 1, kh, kw]
        weight = kernel.permute(2, 3, 0, 1)
    else:  # HWIO -> OIHW
        weight = kernel.permute(3, 2, 0, 1)
    if tuple(weight.shape) != tuple(src.weight.shape):
        raise ValueError(f"kernel shape {tuple(weight.shape)} != {tuple(src.weight.shape)}")
    if tuple(bias.shape) != (src.out_channels,):
        raise ValueError(f"bias shape {tuple(bias.shape)} != ({src.out_channels},)")
    stride = src.stride[0]
    k = src.kernel_size[0]
    conv = nn.Conv2d(src.in_channels, src.out_channels, k, stride=stride,
                     padding=0 if stride == 2 else (k - 1) // 2, groups=src.groups, bias=True)
    with torch.no_grad():
        conv.weight.copy_(weight.contiguous())
        conv.bias.copy_(bias)
    layers = []
    if stride == 2:
        if k != 3:
            raise ValueError("only 3x3 stride-2 convs are expected")
        layers.append(nn.ZeroPad2d((0, 1, 0, 1)))  # TF SAME: pad bottom/right only
    layers.append(conv)
    if relu6:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


def build_features(w: TfWeights) -> nn.Sequential:
    net = mobilenet_v2(weights=None, width_mult=1.4)
    feats = net.features

    def conv_of(block):  # Conv2dNormActivation: (conv, bn, relu6)
        return block[0]

    feats[0] = tf_conv(conv_of(feats[0]), w.take("MobilenetV2/Conv/Conv2D_weights"),
                       w.take("MobilenetV2/Conv/Conv2D_bn_offset"), relu6=True)
    for i in range(17):
        tf_block = "MobilenetV2/expanded_conv" + ("" if i == 0 else f"_{i}")
        block = feats[i + 1]
        old = list(block.conv)
        new = []
        if i > 0:  # t = 1 for the first block: no expand conv
            new.append(tf_conv(conv_of(old.pop(0)), w.take(f"{tf_block}/expand/Conv2D_weights"),
                               w.take(f"{tf_block}/expand/Conv2D_bn_offset"), relu6=True))
        new.append(tf_conv(conv_of(old.pop(0)), w.take(f"{tf_block}/depthwise/depthwise_weights"),
                           w.take(f"{tf_block}/depthwise/depthwise_bn_offset"), relu6=True))
        project, bn = old
        if not (isinstance(project, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            raise ValueError(f"unexpected torchvision layout in features[{i + 1}]")
        new.append(tf_conv(project, w.take(f"{tf_block}/project/Conv2D_weights"),
                           w.take(f"{tf_block}/project/Conv2D_bn_offset"), relu6=False))
        block.conv = nn.Sequential(*new)
    feats[18] = tf_conv(conv_of(feats[18]), w.take("MobilenetV2/Conv_1/Conv2D_weights"),
                        w.take("MobilenetV2/Conv_1/Conv2D_bn_offset"), relu6=True)
    left = w.unused_backbone()
    if left:
        raise ValueError(f"unused backbone weights: {left}")
    if float(w.take("hub_input/Mul/y")) != 2.0 or float(w.take("hub_input/Sub/y")) != 1.0:
        raise ValueError("graph input scaling is not x*2-1; mean/std in model.json would be wrong")
    return feats


class MobileNetV2Embedder(nn.Module):
    """MobileNetV2 1.4 trunk; embedding = L2-normalised global average pool of Conv_1."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    @torch.jit.export
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))  # == feature_vector/SpatialSqueeze
        return F.normalize(pooled, p=2.0, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("weights_dir", help="folder with weights.json and weights.f32")
    ap.add_argument("out", help="model.pt to write")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = MobileNetV2Embedder(build_features(TfWeights(args.weights_dir))).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    scripted = torch.jit.script(model)

    # Cheap self-check: the scripted module agrees with eager and is unit norm.
    x = torch.rand(2, 3, kImageSize, kImageSize) * 2 - 1
    with torch.no_grad():
        a, b = model.encode_image(x), scripted.encode_image(x)
    if a.shape != (2, kEmbedDim) or not torch.allclose(a, b, atol=1e-6):
        sys.exit("scripted module disagrees with eager module")
    if not torch.allclose(b.norm(dim=1), torch.ones(2), atol=1e-5):
        sys.exit("embeddings are not unit norm")

    torch.jit.save(scripted, args.out,
                   _extra_files={"model.json": json.dumps(kModelJson, indent=2) + "\n"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

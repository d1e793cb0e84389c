#!/usr/bin/env python3
"""Writes Fashion-MNIST IDX images as PNGs with a JSONL manifest.

Usage: fashion_mnist_to_png.py DATA_DIR OUT_DIR PER_CLASS SPLIT
Takes the first PER_CLASS images of each class in file order (deterministic).
"""
import gzip
import json
import os
import struct
import sys

from PIL import Image

CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def main():
    data_dir, out, per_class, split = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    prefix = "t10k" if split == "test" else "train"
    (n, h, w), pixels = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    (_,), labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    counts = [0] * 10
    with open(os.path.join(out, "manifest.jsonl"), "w") as manifest:
        for i in range(n):
            c = labels[i]
            if counts[c] >= per_class:
                continue
            counts[c] += 1
            rel = os.path.join("images", CLASSES[c], f"{split}{i:05d}.png")
            os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
            img = Image.frombytes("L", (w, h), pixels[i * h * w:(i + 1) * h * w])
            img.save(os.path.join(out, rel), optimize=False)
            manifest.write(json.dumps({"id": f"fmnist-{split}-{i:05d}", "path": rel,
                                       "attributes": {"class": CLASSES[c]}}) + "\n")
            if min(counts) >= per_class:
                break
    print(f"wrote {sum(counts)} images ({per_class} per class) to {out}")


if __name__ == "__main__":
    main()

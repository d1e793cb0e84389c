#!/usr/bin/python3
"""Writes the fixed 224x224 RGB model inputs for the default-model test.

Each source photo (tests/data/images, scikit-image's data, CC0 / public domain)
is converted to RGB and squashed to 224x224 with PIL's bilinear filter, the same
policy model.json declares (resize "squash", crop "none", "bilinear"). The
result is stored as a lossless PNG, so the TensorFlow.js reference
(make_reference.js, via pngjs) and the PyTorch test (check_default_model.py,
via PIL) decode exactly the same uint8 pixels; both then use pixel / 255.

usage: make_inputs.py IMAGES_DIR OUT_DIR
"""

import os
import sys

from PIL import Image

# Real photos; the motorcycle pair is a near-duplicate stereo pair.
kImages = [
    "astronaut.png",
    "camera.png",  # greyscale: replicated to three channels
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
]
kSize = 224


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for name in kImages:
        with Image.open(os.path.join(src, name)) as im:
            rgb = im.convert("RGB").resize((kSize, kSize), Image.BILINEAR)
        stem = os.path.splitext(name)[0]
        rgb.save(os.path.join(out, stem + ".png"), optimize=True)
        print(f"{name} -> {stem}.png")


if __name__ == "__main__":
    main()

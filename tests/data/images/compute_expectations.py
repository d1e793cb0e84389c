#!/usr/bin/python3
"""Independent expectations for libs/image/image_test.cc, computed with PIL and
numpy from the original files (no libvips involved).

For each case: the region of the source image that a correct resize + crop
keeps is split into a GxG grid, and the mean RGB of each cell is printed as a
C++ initializer. The test compares the same cells of the preprocessed output.
Run: /usr/bin/python3 tests/data/images/compute_expectations.py
"""
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
G = 4


def overlap_weights(n, a, b):
    """Weight of pixel k (covering [k, k+1)) inside [a, b)."""
    k = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(k + 1, b) - np.maximum(k, a), 0, 1)


def cell_means(path, mode):
    rgb = np.asarray(Image.open(os.path.join(HERE, path)).convert("RGB")).astype(np.float64)
    h, w, _ = rgb.shape
    if mode == "center":  # shortest_edge + center crop
        side = min(w, h)
        x0, y0, cw, ch = (w - side) / 2, (h - side) / 2, side / G, side / G
    else:  # squash, no crop: the whole image
        x0, y0, cw, ch = 0.0, 0.0, w / G, h / G
    out = []
    for i in range(G):
        wr = overlap_weights(h, y0 + i * ch, y0 + (i + 1) * ch)
        for j in range(G):
            wc = overlap_weights(w, x0 + j * cw, x0 + (j + 1) * cw)
            wgt = wr[:, None] * wc[None, :]
            out.append((rgb * wgt[..., None]).sum((0, 1)) / wgt.sum())
    return out


for name, path, mode in [
    ("kRocketCenterCells", "rocket.jpg", "center"),
    ("kChelseaCenterCells", "chelsea.png", "center"),
    ("kCoffeeSquashCells", "coffee.png", "squash"),
    ("kCameraCenterCells", "camera.png", "center"),
]:
    cells = cell_means(path, mode)
    print(f"// {path}, {mode}, {G}x{G} cells, row-major, mean R, G, B")
    print(f"constexpr double {name}[{G * G}][3] = {{")
    for c in cells:
        print("    {%.2f, %.2f, %.2f}," % tuple(c))
    print("};")

# Enlarging: PIL's resize of chelsea_small.png's centre square (100x100) to
# 128x128 with each filter, written as PNGs the test compares pixel by pixel.
# PIL's bicubic is Catmull-Rom (a = -0.5) with centred pixels, as libvips' is.
ENLARGED = 128
small = Image.open(os.path.join(HERE, "chelsea_small.png")).convert("RGB")
w, h = small.size
side = min(w, h)
square = small.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
for filt, pil in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR), ("nearest", Image.NEAREST)):
    out = f"chelsea_small_enlarged_{ENLARGED}_{filt}.png"
    square.resize((ENLARGED, ENLARGED), pil).save(os.path.join(HERE, out), optimize=True)
    print(f"// wrote {out}")

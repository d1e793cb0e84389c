#!/usr/bin/python3
"""Writes tests/fuzz/corpus/image: tiny real images shrunk from
tests/data/images (PIL), each behind the fuzz target's option byte (see
image_fuzzer.cc). The other corpora come from fuzz_make_seeds (make_seeds.cc).
Usage: tests/fuzz/make_seeds.py"""
import io
import os

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "..", "data", "images")
OUT = os.path.join(HERE, "corpus", "image")


def shrunk(name, size):
    im = Image.open(os.path.join(IMAGES, name))
    im.thumbnail((size, size))
    return im


def save(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    chelsea = shrunk("chelsea.png", 24).convert("RGB")
    logo = shrunk("logo_alpha_small.png", 16)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW.
    seeds = {
        # option byte: bits 0-1 size, 2 squash, 3 crop none, 4-5 interp, 6 thumb, 7 small thumb
        "png_rgb": (0x00, save(chelsea, "PNG")),
        "png_rgba_thumb": (0x41, save(logo, "PNG")),
        "png_palette": (0x12, save(chelsea.quantize(16), "PNG")),
        "png_grey16": (0x03, save(chelsea.convert("L").convert("I").point(lambda v: v * 257).convert("I;16"), "PNG")),
        "jpeg": (0x02, save(chelsea, "JPEG", quality=60)),
        "jpeg_exif6_thumb": (0xC6, save(chelsea, "JPEG", quality=50, exif=exif.tobytes())),
        "jpeg_cmyk": (0x21, save(chelsea.convert("CMYK"), "JPEG", quality=50)),
        "jpeg_progressive": (0x0D, save(chelsea, "JPEG", quality=40, progressive=True)),
        "webp_lossy": (0x01, save(chelsea, "WEBP", quality=40)),
        "webp_lossless_alpha": (0x4E, save(logo, "WEBP", lossless=True)),
        "gif_anim": (0x02, save(chelsea.quantize(8), "GIF", save_all=True,
                                append_images=[chelsea.rotate(90).quantize(8)])),
        "tiff": (0x03, save(chelsea, "TIFF")),
        "jpeg_truncated": (0x00, save(chelsea, "JPEG", quality=60)[:200]),
    }
    for name, (opt, data) in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(bytes([opt]) + data)
    print(f"wrote {len(seeds)} image seeds to {OUT}")


if __name__ == "__main__":
    main()

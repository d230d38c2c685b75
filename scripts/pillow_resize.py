#!/usr/bin/env python3
"""Resize an image with Pillow, for the Rust test that checks its resampler is bit-exact.

    pillow_resize.py IN WIDTH HEIGHT FILTER OUT.png    (FILTER: nearest|bilinear|catmull_rom|lanczos3)
"""
import sys

from PIL import Image, ImageOps

FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "catmull_rom": Image.Resampling.BICUBIC, "lanczos3": Image.Resampling.LANCZOS}

src, width, height, name, out = sys.argv[1:6]
img = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
img.resize((int(width), int(height)), FILTERS[name]).save(out)

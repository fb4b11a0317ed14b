#!/usr/bin/env python3
"""MD5 of Pillow's bilinear resize of deterministic test images: the expectations of
crates/bit-data/src/resample.rs's test (`bit` resizes exactly as Pillow, so as torchvision's
`Resize` on PIL images, BiT's reference pipeline).

Usage: python3 scripts/pillow_resize.py   (needs Pillow; prints `name: md5` lines)
"""
import hashlib

import PIL
from PIL import Image


def pattern(w, h):
    """The test image of resample.rs: every channel a different integer formula."""
    data = bytearray()
    for y in range(h):
        for x in range(w):
            for c in range(3):
                data.append((x * 37 + y * 91 + c * 53 + (x * y) % 29 + (x ^ y) * 7) % 256)
    return Image.frombytes("RGB", (w, h), bytes(data))


CASES = [
    ((28, 28), (32, 32), "PILLOW_28_32"),
    ((100, 75), (32, 32), "PILLOW_100x75_32"),
    ((500, 375), (224, 224), "PILLOW_500x375_224"),
    ((64, 64), (21, 21), "PILLOW_64_21"),
    ((7, 9), (64, 48), "PILLOW_7x9_64x48"),
    ((40, 30), (40, 17), "PILLOW_40x30_40x17"),
    ((33, 50), (12, 50), "PILLOW_33x50_12x50"),
    ((1, 1), (5, 3), "PILLOW_1_5x3"),
]

if __name__ == "__main__":
    print(f"# Pillow {PIL.__version__}")
    for (w, h), size, name in CASES:
        out = pattern(w, h).resize(size, Image.BILINEAR)
        print(f"{name}: {hashlib.md5(out.tobytes()).hexdigest()}")

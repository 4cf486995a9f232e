"""Pixels the same way for every loader: any image Pillow reads -> 8-bit RGB.

CIFAR-10 class folders and ImageNet folders both decode through `to_rgb`, so a 16-bit or
palette image means the same thing to both.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    16/32-bit integer images are scaled to 8 bits (Pillow's own ``convert`` clips
    them at 255, which would turn a 16-bit PNG almost white). Alpha is dropped, as
    in every ImageNet pipeline; palette images with transparency go through RGBA
    so Pillow maps the palette correctly.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or (mode in ("I", "F") and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "PA" or (mode == "P" and "transparency" in im.info):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")

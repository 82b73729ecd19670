"""Bringing an image to a given square size: the one definition the shard writer, the training
loader, evaluation and the Predictor share, so a model sees the same pixels in all four.

RGB (grey stays single-channel until it becomes an array), bicubic with PIL's reducing gap
(a cheap box pre-shrink for large downscales), aspect ratio not kept: medical images are
square or close to it, and padding would add a border the model never saw in training.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def fit_image(im: Image.Image, size: int) -> Image.Image:
    """PIL image -> mode "L" or "RGB" at size x size."""
    im = im.convert("L" if im.mode in GREY_MODES else "RGB") if im.mode not in ("L", "RGB") else im
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
    return im


def image_array(im: Image.Image, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """PIL image -> uint8 [3, size, size] (grey broadcast to 3 channels), into ``out`` when given."""
    arr = np.asarray(fit_image(im, size))
    if out is None:
        out = np.empty((3, size, size), np.uint8)
    out[:] = arr if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out

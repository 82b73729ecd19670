"""Bringing an image to a given square size: the one definition the shard writer, the training
loader, evaluation and the Predictor share, so a model sees the same pixels in all four.

RGB (grey stays single-channel until it becomes an array), bicubic with PIL's reducing gap
(a cheap box pre-shrink for large downscales), aspect ratio not kept: medical images are
square or close to it, and padding would add a border the model never saw in training.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}  # a shard's image member: extension -> PIL format


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


def encode_image(image, image_size: int, image_format: str = "jpg", quality: int = 90) -> bytes:
    """``image`` (PIL image, encoded bytes, a file path or a uint8 array) -> bytes at image_size².

    Grey images stay single-channel (a third of the bytes and decode time), everything else
    becomes RGB. Already-encoded images of the right size and format pass through untouched.
    """
    target = IMAGE_FORMATS[image_format]
    if isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        raw = bytes(image)
        im = Image.open(io.BytesIO(raw))
        if im.size == (image_size, image_size) and im.format == target and im.mode in ("L", "RGB"):
            return raw
        if im.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale in the DCT domain when large
            im.draft("L" if im.mode == "L" else "RGB", (image_size, image_size))
    elif isinstance(image, np.ndarray):
        im = Image.fromarray(image)
    elif isinstance(image, Image.Image):
        im = image
    else:
        raise ValueError(f"image of type {type(image).__name__}: expected a PIL image, encoded bytes, a path or an array")
    im = fit_image(im, image_size)
    buf = io.BytesIO()
    if target == "JPEG":
        im.save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, "PNG", compress_level=3)
    return buf.getvalue()


# The text-only baseline's image (docs/SPEC.md §5: "the same model fine-tuned on blank images"): one flat
# mid-grey, the same in its fine-tuning (``data.blank_images``) and in its evaluation, so the model
# can learn nothing from pixels and whatever it scores comes from the question's wording.
BLANK_LEVEL = 128


def blank_image(size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The blank image: uint8 [3, size, size] filled with ``BLANK_LEVEL``, into ``out`` when given."""
    if out is None:
        out = np.empty((3, size, size), np.uint8)
    out[:] = BLANK_LEVEL
    return out

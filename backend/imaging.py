"""Pixels in and out: decoded pictures to the arrays the engine uses, arrays to transport bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.images import ImageData

_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")


def to_array(picture: Image.Image, mode: str) -> np.ndarray:
    """The picture as a uint8 array in Pillow ``mode`` (RGBA, RGB or L).

    16-bit greyscale is scaled to 8 bits (Pillow's own conversion clips it). For a mask (mode L)
    with transparency, transparent means "keep", whatever its colour.
    """
    if picture.mode in _WIDE_GREY:
        wide = np.asarray(picture, dtype=np.float64)
        if picture.mode != "I" or wide.max() > 255:
            wide = wide / 257.0
        picture = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8), "L")
    if mode == "L" and ("A" in picture.getbands() or "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        alpha = np.asarray(rgba, dtype=np.uint16)[..., 3]
        luma = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.uint16)
        return (luma * alpha // 255).astype(np.uint8)
    return np.array(picture.convert(mode))


def to_png(picture: Image.Image) -> ImageData:
    """A picture as a PNG to send."""
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return ImageData("png", picture.width, picture.height, buffer.getvalue())


def encode(pixels: np.ndarray, fmt: str) -> ImageData:
    """RGBA pixels as transport bytes; WebP is lossless and keeps colour under zero alpha."""
    height, width = pixels.shape[:2]
    if fmt == "rgba8":
        return ImageData(fmt, width, height, np.ascontiguousarray(pixels).tobytes())
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGBA")
    if fmt == "webp":
        image.save(buffer, "WEBP", lossless=True, exact=True)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return ImageData(fmt, width, height, buffer.getvalue())

"""Mask shaping, and the result layer of one crop.

The mask is grown (so the fill covers the selection's edge), then feathered outward (so the
fill blends in). The feathered mask becomes the result's alpha; every pixel where it is zero is
copied from the input, so nothing outside the edit is ever touched by the VAE.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate a uint8 mask by ``pixels`` (soft values are kept: a grey-level maximum filter)."""
    if pixels <= 0:
        return mask
    return ndimage.maximum_filter(mask, size=2 * pixels + 1, mode="constant", cval=0)


def feather(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Soften the mask's edge outward over about ``pixels``; the original mask stays at full strength.

    Reaches ``shared.rules.reach`` beyond the mask, so hosts can plan crops that hold it.
    """
    if pixels <= 0:
        return mask
    blurred = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(pixels / 2)))
    return np.maximum(mask, blurred)


def ramp(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Soften the mask's edge outward with a smooth ramp; the mask itself is kept as it is.

    Beyond the mask each pixel takes the value of the nearest mask pixel (above 0) times a smoothstep
    of its distance d to it: v × s(1 − d / L), s(x) = x²(3 − 2x), L = ⌊1.5 × ``pixels``⌋ + 1 (as far as
    the blur of ``feather`` reaches, so ``shared.rules.reach`` holds). A hard mask fades from 255 with
    no jump where the ramp meets it and no one-pixel step larger than 1.5 / L of the ramp (1/8.7 at a
    feather of 8, 1/16.7 at the default 16); a 50% selection stays at 50% and fades from there.
    """
    support = mask > 0
    if pixels <= 0 or not support.any():
        return mask
    length = pixels * 3 // 2 + 1
    distance, (rows, cols) = ndimage.distance_transform_edt(~support, return_indices=True)
    x = np.clip(1.0 - distance / length, 0.0, 1.0)
    smooth = np.rint(mask[rows, cols] * (x * x * (3.0 - 2.0 * x))).astype(np.uint8)
    return np.maximum(mask, smooth)


def shape_mask(mask: np.ndarray, grow_by: int, feather_by: int, soft: bool = True) -> np.ndarray:
    """The alpha of an inpaint result: ``mask`` grown by ``grow_by`` then feathered by ``feather_by``
    (``soft``: a smooth ramp, ``ramp``; else the maximum of the grown mask and its blur, ``feather``)."""
    return (ramp if soft else feather)(grow(mask, grow_by), feather_by)


def make_layer(generated: np.ndarray, original: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """An RGBA layer: generated colour where alpha > 0, the original's bytes elsewhere, alpha = mask."""
    rgb = np.where(alpha[..., None] > 0, generated[..., :3], original[..., :3])
    return np.dstack([rgb, alpha]).astype(np.uint8)

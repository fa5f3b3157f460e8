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


RAMP_LEVELS = 8
"""Mask levels a ramp starts from (⌊255 x k / 8⌋): values below the first (31) are kept but do not spread."""


def ramp(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Soften the mask's edge outward with a smooth ramp; the mask itself is kept as it is.

    For each level t = ⌊255 × k / 8⌋ (k = 1 … 8), every pixel gets t × s(1 − d / L), d its distance
    to the nearest mask pixel at t or above, s(x) = x²(3 − 2x), L = ⌊1.5 × ``pixels``⌋ + 1 (as far
    as the blur of ``feather`` reaches, so ``shared.rules.reach`` holds); the result is the highest
    of these and the mask. A hard mask fades from 255 with no jump where the ramp meets it and no
    one-pixel step larger than 1.5 / L of the ramp (1/8.7 at a feather of 8, 1/16.7 at the default
    16); a 50% selection stays at 50% and fades from there; faint specks (below 31) do not spread.
    """
    if pixels <= 0 or not (mask >= 255 // RAMP_LEVELS).any():
        return mask
    length = pixels * 3 // 2 + 1
    out = mask.astype(np.float64)
    for k in range(1, RAMP_LEVELS + 1):
        level = 255 * k // RAMP_LEVELS
        inside = mask >= level
        if not inside.any():
            break
        x = np.clip(1.0 - ndimage.distance_transform_edt(~inside) / length, 0.0, 1.0)
        out = np.maximum(out, level * x * x * (3.0 - 2.0 * x))
    return np.rint(out).astype(np.uint8)


def shape_mask(mask: np.ndarray, grow_by: int, feather_by: int, soft: bool = True) -> np.ndarray:
    """The alpha of an inpaint result: ``mask`` grown by ``grow_by`` then feathered by ``feather_by``
    (``soft``: a smooth ramp, ``ramp``; else the maximum of the grown mask and its blur, ``feather``)."""
    return (ramp if soft else feather)(grow(mask, grow_by), feather_by)


def match_light(generated: np.ndarray, original: np.ndarray, alpha: np.ndarray, width: int,
                keep: int = 0) -> np.ndarray:
    """``generated`` with its light matched to ``original`` along the alpha's edge.

    A repaint often comes back a few levels lighter or darker than the picture (a VAE round trip, a
    model that got the light slightly wrong); the feather then spreads that step over its ramp, which
    still reads as a seam. The difference between the two is measured in a ring of ``width`` pixels
    just outside the alpha (where the original is kept, so the repaint should equal it), smoothed
    (normalised Gaussian, so only its low frequencies count), and added to the repaint: in full over the
    ramp and ``keep`` pixels into the opaque part (the grow, which covers the selection's edge), then
    fading out over ``2 x width`` pixels: the edge meets the picture, the middle of the edit is untouched.
    Pixels where the alpha is 0 are not changed (the layer keeps the original's bytes there anyway).
    """
    inside = alpha > 0
    outside = ~inside
    if width <= 0 or not inside.any() or not outside.any():
        return generated
    ring = outside & (ndimage.distance_transform_edt(outside) <= width)
    if original.shape[-1] == 4:  # transparent pixels have no light to match
        ring &= original[..., 3] > 0
    if not ring.any():
        return generated
    weight = ring.astype(np.float32)
    sigma = float(width)
    seen = ndimage.gaussian_filter(weight, sigma, mode="constant")
    depth = np.maximum(ndimage.distance_transform_edt(alpha == 255) - keep, 0.0)
    fade = np.clip(1.0 - depth / (2 * width), 0.0, 1.0)
    fade *= np.clip(seen / (seen.max() * 0.05), 0.0, 1.0)  # nothing to say far from any ring pixel
    out = generated[..., :3].astype(np.float32)
    for channel in range(3):
        difference = (original[..., channel].astype(np.float32) - out[..., channel]) * weight
        field = ndimage.gaussian_filter(difference, sigma, mode="constant") / np.maximum(seen, 1e-6)
        out[..., channel] += np.where(inside, field * fade, 0.0)
    matched = generated.copy()
    matched[..., :3] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return matched


def make_layer(generated: np.ndarray, original: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """An RGBA layer: generated colour where alpha > 0, the original's bytes elsewhere, alpha = mask."""
    rgb = np.where(alpha[..., None] > 0, generated[..., :3], original[..., :3])
    return np.dstack([rgb, alpha]).astype(np.uint8)


def match_band_light(generated: np.ndarray, known: np.ndarray, cell: np.ndarray, width: int,
                     length: int) -> np.ndarray:
    """``generated`` with its light matched, over ``cell``, to the pixels ``known`` beside it (an expand).

    An expand's band meets pixels that may not change (the picture, byte for byte, or cells painted
    before), so the seam cannot be feathered away on their side: the band has to meet them. The pass
    also repainted those known pixels as context, so ``known - generated`` there is what the repaint got
    wrong in light (a VAE round trip, a colour drift), measured where it should equal them. It is taken
    in a ring of ``width`` pixels of known pixels (alpha > 0: transparent ones have no light) beside
    the cell, smoothed along the edge (normalised Gaussian: low frequencies only), carried into the
    cell from the nearest ring pixel, smoothed again (so the corner where two edges meet has no
    crease), and added to the cell in full up to ``length`` pixels from the ring, fading out smoothly
    by ``2 x length``: the band starts at the known pixels' light and keeps its own far away. Pixels
    outside ``cell`` are not changed. ``known`` is RGBA (H x W x 4, the canvas so far), ``cell`` bool.
    """
    if width <= 0 or not cell.any():
        return generated
    ring = (known[..., 3] > 0) & ~cell & (ndimage.distance_transform_edt(~cell) <= width)
    if not ring.any():
        return generated
    # The field is low-frequency (sigma = width), so it is worked out on a grid `step` times coarser:
    # about a sixteenth of the cost at the default width, and the same field to within a level.
    step = max(1, width // 4)
    sigma = width / step
    weight = _shrink(ring.astype(np.float32), step)
    seen = np.maximum(ndimage.gaussian_filter(weight, sigma, mode="constant"), 1e-6)
    _, (rows, cols) = ndimage.distance_transform_edt(weight == 0, return_indices=True)
    distance = ndimage.distance_transform_edt(~ring)
    x = np.clip(2.0 - distance / max(length, 1), 0.0, 1.0)
    fade = np.where(cell, x * x * (3.0 - 2.0 * x), 0.0)
    out = generated[..., :3].astype(np.float32)
    for channel in range(3):
        difference = _shrink((known[..., channel].astype(np.float32) - out[..., channel]) * ring, step)
        along = ndimage.gaussian_filter(difference, sigma, mode="constant") / seen
        field = ndimage.gaussian_filter(along[rows, cols], sigma, mode="nearest")
        out[..., channel] += _grow_back(field, step, cell.shape) * fade
    matched = generated.copy()
    matched[..., :3] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return matched


def _shrink(values: np.ndarray, step: int) -> np.ndarray:
    """Block means of ``step`` x ``step`` (the last blocks padded by repeating the edge)."""
    if step == 1:
        return values
    height, width = values.shape
    padded = np.pad(values, ((0, -height % step), (0, -width % step)), mode="edge")
    return padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).mean(axis=(1, 3))


def _grow_back(values: np.ndarray, step: int, shape: tuple[int, int]) -> np.ndarray:
    """``_shrink``'s grid back at full size (linear, block centres aligned)."""
    if step == 1:
        return values
    return ndimage.zoom(values, step, order=1, mode="nearest", grid_mode=True)[:shape[0], :shape[1]]

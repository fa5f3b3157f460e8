"""The compositor: a job's passes, back at canvas resolution, as one RGBA result layer.

Inpaint results keep the input's own bytes wherever the feathered mask is 0 (never a VAE
round-trip of them), and all passes of one image land in one layer covering the passes' boxes.
Tiles of a whole-picture pass are blended where they overlap, each fading out linearly towards its
neighbours (``tile_weights``), so no seam shows.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

from backend.engine import masks
from backend.engine.passes import Pass, layer_box, overlapping
from shared.geometry import Box


def to_canvas(pixels: np.ndarray, p: Pass) -> np.ndarray:
    """A pass's output (diffusion size) at the size of its box on the canvas."""
    if not p.resampled:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((p.box.width, p.box.height), Image.Resampling.LANCZOS))


def layer(mode: str, image: np.ndarray | None, passes: list[Pass], outputs: list[np.ndarray],
          match_width: int = 0, match_keep: int = 0) -> tuple[tuple[int, int], np.ndarray]:
    """(offset, RGBA layer) for one image of a batch from its passes' outputs (diffusion size).

    generate and img2img are opaque; inpaint is the input's crop with each pass laid in through its
    alpha, and alpha 0 (the input's bytes) wherever no pass reaches. ``match_width`` > 0: each pass's
    light is matched to the picture along its alpha's edge first (``masks.match_light``, with ``match_keep``).
    """
    if mode != "inpaint" and (mode != "instruct" or passes[0].alpha is None):  # a masked instruct: as inpaint
        if len(passes) > 1:
            return (0, 0), opaque(blend_tiles(passes, [to_canvas(pixels, p) for p, pixels in zip(passes, outputs)]))
        return (0, 0), opaque(to_canvas(outputs[0], passes[0]))
    box = layer_box(passes)
    out = np.zeros((box.height, box.width, 4), np.uint8)
    out[..., :3] = image[box.y:box.y1, box.x:box.x1, :3]
    for group in overlapping([p.box for p in passes]):  # one pass per island, or the tiles of a large crop
        tiles = [passes[i] for i in group]
        where = layer_box(tiles)
        original = image[where.y:where.y1, where.x:where.x1]
        if len(tiles) == 1:
            generated, alpha = to_canvas(outputs[group[0]], tiles[0]), tiles[0].alpha
        else:  # blended as a refine's tiles are, and laid in through their parts of the one shaped mask
            generated = blend_tiles(tiles, [to_canvas(outputs[i], passes[i]) for i in group])
            alpha = np.zeros((where.height, where.width), np.uint8)
            for p in tiles:
                part = alpha[p.box.y - where.y:p.box.y1 - where.y, p.box.x - where.x:p.box.x1 - where.x]
                np.maximum(part, p.alpha, out=part)
        if match_width:
            generated = masks.match_light(generated, original, alpha, match_width, match_keep)
        x, y = where.x - box.x, where.y - box.y
        out[y:y + where.height, x:x + where.width] = masks.make_layer(generated, original, alpha)
    return (box.x, box.y), out


def opaque(rgb: np.ndarray) -> np.ndarray:
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])


def paint(canvas: np.ndarray, p: Pass, pixels: np.ndarray, match_width: int = 0, match_length: int = 0) -> None:
    """Lay a pass's output (diffusion size) into ``canvas`` (RGBA, in place) where its alpha is 255: an
    expand's cell, opaque, so the next pass sees it as context. ``match_width`` > 0: the cell's light is
    matched first to the pixels already on the canvas beside it (``masks.match_band_light``), which
    stay as they are."""
    cell = p.alpha == 255
    region = canvas[p.box.y:p.box.y1, p.box.x:p.box.x1]
    generated = to_canvas(pixels, p)
    if match_width:
        generated = masks.match_band_light(generated, region, cell, match_width, match_length)
    region[cell, :3] = generated[cell, :3]
    region[cell, 3] = 255


def blend_tiles(passes: list[Pass], tiles: list[np.ndarray]) -> np.ndarray:
    """Overlapping tiles (canvas size, H x W x C uint8) as one picture: a weighted mean where they
    overlap, each tile's weight fading towards the neighbours it overlaps (``tile_weights``)."""
    box = layer_box(passes)
    total = np.zeros((box.height, box.width, tiles[0].shape[2]), np.float32)
    weights = np.zeros((box.height, box.width, 1), np.float32)
    for p, pixels, weight in zip(passes, tiles, iter_tile_weights([p.box for p in passes])):
        region = (slice(p.box.y - box.y, p.box.y1 - box.y), slice(p.box.x - box.x, p.box.x1 - box.x))
        total[region] += pixels.astype(np.float32) * weight[..., None]
        weights[region] += weight[..., None]
    # in place: on a 7800 x 5200 refine each whole-picture temporary was another 490 MB (3.6 GB peak); no weight
    # where no tile reaches (a masked crop's tiles the mask left out: the layer keeps the picture's bytes there)
    total /= np.maximum(weights, 1e-6)
    np.rint(total, out=total)
    np.clip(total, 0, 255, out=total)
    return total.astype(np.uint8)


def tile_weights(boxes: list[Box]) -> list[np.ndarray]:
    """Blending weights of overlapping tiles (one H x W float array per box): 1 inside, 0 on the
    outermost EDGE pixels of a side that lies inside another tile (diffusion's padding shows there),
    ramping linearly across the rest of each overlap, so two tiles' weights sum to 1 over their overlap;
    sides on the picture's edge stay at 1."""
    return list(iter_tile_weights(boxes))


def iter_tile_weights(boxes: list[Box]) -> Iterator[np.ndarray]:
    """``tile_weights`` one tile at a time (all of them at once are as large as the picture, in float)."""
    xs = sorted({(b.x, b.x1) for b in boxes})
    ys = sorted({(b.y, b.y1) for b in boxes})
    return (np.outer(_ramp(b.y, b.y1, ys), _ramp(b.x, b.x1, xs)) for b in boxes)


EDGE = 8
"""Pixels at a tile's inner edge that are left to its neighbour (one latent cell)."""


def _ramp(start: int, end: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """One axis of a tile's weight: rises over the overlap with the span before, falls over the one after."""
    weight = np.ones(end - start, np.float32)
    before = max((s1 for s0, s1 in spans if s0 < start < s1), default=start) - start
    after = end - min((s0 for s0, s1 in spans if start < s0 < end), default=end)
    if before > 0:
        weight[:before] = np.minimum(weight[:before], _rise(before))
    if after > 0:
        weight[-after:] = np.minimum(weight[-after:], _rise(after)[::-1])
    return weight


def _rise(overlap: int) -> np.ndarray:
    edge = min(EDGE, overlap // 4)
    return np.concatenate([np.zeros(edge, np.float32),
                           (np.arange(overlap - edge, dtype=np.float32) + 0.5) / (overlap - edge)])

"""Context-crop geometry: which part of the canvas to send and to diffuse, and at what size.

One pure function decides the box for hosts (what to send) and for the backend (what to
diffuse), so both always agree and a small edit on a huge canvas stays a small job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LATENT_GRID = 8
"""Pixels per latent cell for SD1.5 and SDXL VAEs; diffusion sizes are multiples of this."""

DEFAULT_PADDING = 32
"""Context kept around the (grown and feathered) mask, in canvas pixels."""

MAX_ASPECT = 2.0
"""Longest side / shortest side allowed for a crop the model sees (SD degrades beyond ~2:1)."""

UPPER_AREA = 1.5
"""A box up to this many times the model's native area is diffused 1:1; larger ones are scaled down."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in canvas pixels; x1 and y1 are exclusive."""

    x: int
    y: int
    width: int
    height: int

    @property
    def x1(self) -> int:
        return self.x + self.width

    @property
    def y1(self) -> int:
        return self.y + self.height

    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.width, self.height]


@dataclass(frozen=True)
class CropPlan:
    """Where to cut the canvas (``box``) and the size the model diffuses that cut at."""

    box: Box
    diffusion_width: int
    diffusion_height: int

    @property
    def is_resampled(self) -> bool:
        return (self.diffusion_width, self.diffusion_height) != (self.box.width, self.box.height)


def mask_bounds(mask: bytes | bytearray | memoryview, width: int, height: int) -> Box | None:
    """Bounds of the non-zero pixels of a one-byte-per-pixel mask, or None if it is empty."""
    if len(mask) != width * height:
        raise ValueError(f"mask has {len(mask)} bytes, expected {width}x{height}={width * height}")
    data = bytes(mask)
    x0, x1, y0, y1 = width, 0, None, 0
    for y in range(height):
        row = data[y * width:(y + 1) * width]
        right = len(row.rstrip(b"\0"))
        if right == 0:
            continue
        left = width - len(row.lstrip(b"\0"))
        x0, x1 = min(x0, left), max(x1, right)
        y0 = y if y0 is None else y0
        y1 = y + 1
    if y0 is None:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)


def round_to_grid(value: float, grid: int = LATENT_GRID) -> int:
    """Nearest multiple of ``grid`` (halves round up), at least one grid cell."""
    return max(grid, int(math.floor(value / grid + 0.5)) * grid)


def diffusion_size(width: int, height: int, native: int, grid: int = LATENT_GRID) -> tuple[int, int]:
    """The size a ``width`` x ``height`` picture is diffused at by a model trained at ``native``².

    Areas between native² and UPPER_AREA x native² are kept (1:1 when already on the grid);
    smaller pictures are scaled up to native², larger ones down to UPPER_AREA x native².
    The aspect ratio is kept. A thin strip is scaled up only until its long side reaches
    MAX_ASPECT x native, and not at all when it is longer already: scaling a 2000 x 8 strip to the
    model's area would paint it at 8096 x 32, a width no model composes at, four times over.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"empty size {width}x{height}")
    area = width * height
    lower, upper = native * native, UPPER_AREA * native * native
    scale = 1.0
    if area < lower:
        scale = min(math.sqrt(lower / area), max(1.0, MAX_ASPECT * native / max(width, height)))
    elif area > upper:
        scale = math.sqrt(upper / area)
    return round_to_grid(width * scale, grid), round_to_grid(height * scale, grid)


def _grow_span(start: int, length: int, target: int, limit: int) -> tuple[int, int]:
    """Grow the span [start, start+length) to ``target`` around its centre, kept inside [0, limit)."""
    target = min(max(length, target), limit)
    centre = start + length / 2
    new_start = int(round(centre - target / 2))
    new_start = min(max(new_start, 0), limit - target)
    return new_start, target


def context_crop(
    bounds: Box,
    canvas_width: int,
    canvas_height: int,
    native: int,
    *,
    margin: int = 0,
    padding: int = DEFAULT_PADDING,
    grid: int = LATENT_GRID,
) -> CropPlan:
    """Plan the crop around a mask.

    ``bounds`` are the mask's bounds, ``margin`` how far the backend grows and feathers the mask
    (``shared.rules.reach``, so the soft edge stays inside the box), ``padding`` the context kept
    beyond that. The box is then grown so each side is at least the model's ``native`` size, its
    aspect kept within MAX_ASPECT, its sides rounded up to the latent grid, and finally clamped to
    the canvas.
    Applying the function again to the cropped canvas returns the whole crop.
    """
    if canvas_width <= 0 or canvas_height <= 0:
        raise ValueError(f"empty canvas {canvas_width}x{canvas_height}")
    if bounds.is_empty():
        raise ValueError("empty mask bounds")
    pad = max(0, margin) + max(0, padding)
    x0, y0 = max(0, bounds.x - pad), max(0, bounds.y - pad)
    x1, y1 = min(canvas_width, bounds.x1 + pad), min(canvas_height, bounds.y1 + pad)
    width, height = x1 - x0, y1 - y0
    if width <= 0 or height <= 0:
        raise ValueError("mask bounds lie outside the canvas")

    target_w, target_h = max(width, native), max(height, native)
    target_w = max(target_w, math.ceil(target_h / MAX_ASPECT))
    target_h = max(target_h, math.ceil(target_w / MAX_ASPECT))
    target_w, target_h = _ceil_to(target_w, grid), _ceil_to(target_h, grid)

    x, w = _grow_span(x0, width, target_w, canvas_width)
    y, h = _grow_span(y0, height, target_h, canvas_height)
    box = Box(x, y, w, h)
    dw, dh = diffusion_size(w, h, native, grid)
    return CropPlan(box, dw, dh)


def whole_canvas(canvas_width: int, canvas_height: int, native: int, grid: int = LATENT_GRID) -> CropPlan:
    """Plan for editing a whole picture (img2img without a mask)."""
    dw, dh = diffusion_size(canvas_width, canvas_height, native, grid)
    return CropPlan(Box(0, 0, canvas_width, canvas_height), dw, dh)


def _ceil_to(value: int, grid: int) -> int:
    return -(-value // grid) * grid


def ceil_to_grid(value: int, grid: int = LATENT_GRID) -> int:
    """The smallest multiple of ``grid`` not below ``value``."""
    return _ceil_to(value, grid)


TILE_OVERLAP = 8
"""Tiles of a full-resolution pass overlap by at least native / TILE_OVERLAP pixels (64 at 512)."""


def needs_tiles(width: int, height: int, native: int) -> bool:
    """Whether a whole picture is too large to diffuse in one pass without scaling it down (more than
    UPPER_AREA x native² pixels): such pictures are refined in tiles at native scale instead."""
    return width * height > UPPER_AREA * native * native


def tile_spans(length: int, tile: int, overlap: int, grid: int = LATENT_GRID) -> list[tuple[int, int]]:
    """(start, length) of tiles of ``tile`` pixels covering ``length``, each overlapping the next by at
    least ``overlap``; starts spread evenly on the ``grid`` (so all tiles share the latent grid), first
    at 0 and last at the end. One span if it fits."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    while True:  # rounding starts to the grid may open a gap: then one tile more
        starts = [min(length - tile, round(index * (length - tile) / (count - 1) / grid) * grid)
                  for index in range(count - 1)] + [length - tile]
        if all(b - a <= tile - overlap for a, b in zip(starts, starts[1:])):
            return [(start, tile) for start in starts]
        count += 1


def tile_grid(width: int, height: int, native: int, grid: int = LATENT_GRID) -> list[Box]:
    """The tiles a ``width`` x ``height`` picture is diffused in at native scale, row by row: squares of
    ``native`` (on the latent grid, so diffused 1:1) overlapping by at least native / TILE_OVERLAP."""
    tile = _ceil_to(native, grid)
    overlap = _ceil_to(max(grid, native // TILE_OVERLAP), grid)
    return [Box(x, y, w, h) for y, h in tile_spans(height, tile, overlap) for x, w in tile_spans(width, tile, overlap)]

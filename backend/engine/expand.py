"""Expand (outpaint): the passes that paint a canvas's new band, at the model's native scale.

The band (new canvas around the picture) is cut into cells no longer than the model's native side
along the band and no deeper than three quarters of it across; each cell is one pass whose box
reaches back toward the picture, so the old edge (or the cells painted before) is in view. Cells
run in order: left and right bands first (beside the picture), then top and bottom across the whole
width, each from the picture outward. A pass diffuses every still-unpainted band pixel in its box
(its diffusion mask) but keeps only its own cell (its alpha), and the next pass sees what it
painted. The picture's own pixels are never in a cell: they come back byte for byte.
"""

from __future__ import annotations

import math

import numpy as np

from shared.geometry import Box, diffusion_size

DEPTH_SHARE = 0.75  # deepest cell across the band, as a share of the native side: the rest is context


def band_cells(width: int, height: int, sides: tuple[int, int, int, int], native: int) -> list[tuple[Box, str]]:
    """The band's cells on the new ``width`` x ``height`` canvas, in painting order, each with its side."""
    left, top, right, bottom = sides
    inner_h = height - top - bottom
    cells: list[tuple[Box, str]] = []
    depth_most = max(8, int(native * DEPTH_SHARE))
    spans = (("left", left, (0, top, left, inner_h)), ("right", right, (width - right, top, right, inner_h)),
             ("top", top, (0, 0, width, top)), ("bottom", bottom, (0, height - bottom, width, bottom)))
    for side, depth, (x, y, w, h) in spans:
        if depth <= 0 or w <= 0 or h <= 0:
            continue
        across = side in ("left", "right")  # the band's depth runs along x
        length = h if across else w
        layers, pieces = math.ceil(depth / depth_most), math.ceil(length / native)
        for layer in range(layers):  # from the picture outward
            d0, d1 = depth * layer // layers, depth * (layer + 1) // layers
            for piece in range(pieces):
                a0, a1 = length * piece // pieces, length * (piece + 1) // pieces
                if side == "left":
                    box = Box(x + depth - d1, y + a0, d1 - d0, a1 - a0)
                elif side == "right":
                    box = Box(x + d0, y + a0, d1 - d0, a1 - a0)
                elif side == "top":
                    box = Box(x + a0, y + depth - d1, a1 - a0, d1 - d0)
                else:
                    box = Box(x + a0, y + d0, a1 - a0, d1 - d0)
                cells.append((box, side))
    return cells


def cell_box(cell: Box, side: str, width: int, height: int, native: int) -> Box:
    """The pass box of a cell: at least native on each side (as far as the canvas allows), flush with the
    cell's outer edge and reaching inward (toward the picture) across the band, centred along it."""
    def span(start: int, length: int, limit: int, flush_end: bool | None) -> tuple[int, int]:
        size = min(limit, max(length, native))
        if flush_end is None:
            begin = int(round(start + length / 2 - size / 2))
        elif flush_end:  # the cell's outer edge is its far end: reach back toward lower coordinates
            begin = start + length - size
        else:
            begin = start
        return min(max(begin, 0), limit - size), size

    horizontal = side in ("left", "right")
    x, w = span(cell.x, cell.width, width, (side == "right") if horizontal else None)
    y, h = span(cell.y, cell.height, height, None if horizontal else (side == "bottom"))
    return Box(x, y, w, h)


def expand_plan(picture_alpha_shape: tuple[int, int], sides: tuple[int, int, int, int],
                native: int) -> list[tuple[Box, tuple[int, int], np.ndarray, np.ndarray]]:
    """(box, diffusion size, diffusion mask, alpha) of each pass, in order, for a picture of
    ``picture_alpha_shape`` (height, width) grown by ``sides``."""
    left, top, right, bottom = sides
    height, width = picture_alpha_shape[0] + top + bottom, picture_alpha_shape[1] + left + right
    todo = np.ones((height, width), bool)  # band pixels not painted yet
    todo[top:top + picture_alpha_shape[0], left:left + picture_alpha_shape[1]] = False
    plans = []
    for cell, side in band_cells(width, height, sides, native):
        box = cell_box(cell, side, width, height, native)
        mask = (todo[box.y:box.y1, box.x:box.x1] * 255).astype(np.uint8)
        alpha = np.zeros((box.height, box.width), np.uint8)
        alpha[cell.y - box.y:cell.y1 - box.y, cell.x - box.x:cell.x1 - box.x] = 255
        todo[cell.y:cell.y1, cell.x:cell.x1] = False
        plans.append((box, diffusion_size(box.width, box.height, native), mask, alpha))
    return plans

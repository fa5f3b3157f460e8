"""The compositor: a job's passes, back at canvas resolution, as one RGBA result layer.

Inpaint results keep the input's own bytes wherever the feathered mask is 0 (never a VAE
round-trip of them), and all passes of one image land in one layer covering the passes' boxes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from backend.engine import masks
from backend.engine.passes import Pass, layer_box


def to_canvas(pixels: np.ndarray, p: Pass) -> np.ndarray:
    """A pass's output (diffusion size) at the size of its box on the canvas."""
    if not p.resampled:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((p.box.width, p.box.height), Image.Resampling.LANCZOS))


def layer(mode: str, image: np.ndarray | None, passes: list[Pass],
          outputs: list[np.ndarray]) -> tuple[tuple[int, int], np.ndarray]:
    """(offset, RGBA layer) for one image of a batch from its passes' outputs (diffusion size).

    generate and img2img are opaque; inpaint is the input's crop with each pass laid in through its
    alpha, and alpha 0 (the input's bytes) wherever no pass reaches.
    """
    if mode != "inpaint":
        return (0, 0), opaque(to_canvas(outputs[0], passes[0]))
    box = layer_box(passes)
    out = np.zeros((box.height, box.width, 4), np.uint8)
    out[..., :3] = image[box.y:box.y1, box.x:box.x1, :3]
    for p, pixels in zip(passes, outputs):
        x, y = p.box.x - box.x, p.box.y - box.y
        original = image[p.box.y:p.box.y1, p.box.x:p.box.x1]
        out[y:y + p.box.height, x:x + p.box.width] = masks.make_layer(to_canvas(pixels, p), original, p.alpha)
    return (box.x, box.y), out


def opaque(rgb: np.ndarray) -> np.ndarray:
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])


def paint(canvas: np.ndarray, p: Pass, pixels: np.ndarray) -> None:
    """Lay a pass's output (diffusion size) into ``canvas`` (RGBA, in place) where its alpha is 255: an
    expand's cell, opaque, so the next pass sees it as context."""
    cell = p.alpha == 255
    region = canvas[p.box.y:p.box.y1, p.box.x:p.box.x1]
    region[cell, :3] = to_canvas(pixels, p)[cell]
    region[cell, 3] = 255

"""The pass planner: which diffusion passes a job needs, where, and at what size.

``plan_passes`` is pure (arrays in, plans out) and decides everything about geometry before any
model runs. Inpaint diffuses one pass per mask island when separate crops cost less than one box
around all of them, so three far-apart blobs on a big canvas are each diffused at the model's
native scale instead of being crushed into one downscaled box. img2img of a picture larger than the
model's comfortable area (``shared.geometry.needs_tiles``) is diffused in overlapping tiles at native
scale, each with its own seed; smaller pictures, and generate, are one pass. A selection that large is
tiled the same way, each tile with its part of the mask (after a first pass near native size when the
inpaint remakes it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from backend.engine import masks
from backend.engine.expand import expand_plan
from backend.engine.job import EditJob
from shared import rules
from shared.geometry import (
    DEFAULT_PADDING,
    Box,
    CropPlan,
    ceil_to_grid,
    context_crop,
    needs_tiles,
    round_to_grid,
    tile_grid,
    whole_canvas,
)
from shared.vocabulary import MAX_SEED

MAX_ISLANDS = 32
"""A mask scattered into more islands than this is diffused as one box (planning stays cheap)."""

_PASS_SEED_STRIDE = 1_000_003  # a prime: passes of one image never share noise with other images' passes


@dataclass(frozen=True, eq=False)
class Pass:
    """One diffusion pass: the canvas ``box`` it covers, diffused at ``size``.

    ``alpha`` (inpaint) is the grown and feathered mask over the box: the pass's result is laid on
    the picture through it. ``seed`` is added to the seed of the batch image being made.
    """

    box: Box
    size: tuple[int, int]
    strength: float
    seed: int = 0
    alpha: np.ndarray | None = None
    fill: str | None = None  # how masked pixels are pre-filled before diffusion; None keeps them
    mask: np.ndarray | None = None  # the diffusion mask over the box, when it is not ``alpha`` (expand)
    first_stage: bool = False  # made (or remade) near native size, then refined by the tiles after it

    @property
    def resampled(self) -> bool:
        return self.size != (self.box.width, self.box.height)


def plan_passes(job: EditJob, native: int) -> list[Pass]:
    """The passes of ``job`` on a model trained at ``native``² pixels, in the order they run."""
    if job.mode == "generate":
        width, height = round_to_grid(job.width or native), round_to_grid(job.height or native)
        if not needs_tiles(width, height, native):
            return [Pass(Box(0, 0, width, height), (width, height), 1.0)]
        # Above the native range: generate near native, then upscale and refine in tiles ("hires fix").
        return [near_native(width, height, native, 1.0)] + refine_passes(width, height, native, job.strength)
    if job.mode == "upscale":  # the super-resolution picture, then (strength > 0) its refine in tiles
        if job.strength <= 0:
            return [Pass(Box(0, 0, job.width, job.height), (job.width, job.height), 0.0)]
        return refine_passes(job.width, job.height, native, job.strength)
    height, width = job.image.shape[:2]
    if job.mode == "instruct" and job.mask is None:  # the whole picture, in one pass near native size
        return [_pass(whole_canvas(width, height, native), 1.0)]
    if job.mode == "img2img":
        if job.recompose and job.strength > rules.RECOMPOSE_STRENGTH and needs_tiles(width, height, native):
            # remade whole near native first, then refined in tiles, as a large generate
            return [near_native(width, height, native, job.strength)] + \
                refine_passes(width, height, native, rules.HIRES_REFINE)
        return refine_passes(width, height, native, job.strength)
    if job.mode == "expand":
        return [Pass(box, size, job.strength, _pass_seed(index), alpha, job.fill, mask)
                for index, (box, size, mask, alpha) in enumerate(expand_plan(
                    (height - job.expand[1] - job.expand[3], width - job.expand[0] - job.expand[2]),
                    job.expand, native))]
    margin = rules.reach(job.mask_grow, job.mask_feather)
    strength = rules.pass_strength(job.mode, job.strength)
    crops = island_crops(job.mask, native, margin, padding=job.padding)
    selections = [selection_box(job.mask, plan.box, margin) for plan in crops]
    planned: list[Pass] = []
    for plan, selection in zip(crops, selections):
        if refines_in_tiles(selection, native, strength, job.fill):
            planned += masked_tiles(job, plan.box, native, strength, len(planned))
        else:
            planned.append(dataclasses.replace(_pass(plan, strength, len(planned), masks.shape_mask(
                job.mask[plan.box.y:plan.box.y1, plan.box.x:plan.box.x1], job.mask_grow, job.mask_feather,
                job.soft)), fill=job.fill))
    if job.mode == "inpaint" and job.recompose and len(crops) == 1 and \
            not refines_in_tiles(selections[0], native, strength, job.fill) and \
            refines_in_tiles(selections[0], native, rules.HIRES_REFINE, job.fill):
        # a large selection remade: near native first (the one pass above), then refined in tiles at full size
        return [dataclasses.replace(planned[0], first_stage=True)] + \
            masked_tiles(job, crops[0].box, native, rules.HIRES_REFINE, 1)
    return planned


def selection_box(mask: np.ndarray, box: Box, margin: int) -> Box:
    """The part of crop ``box`` the mask reaches, grown by ``margin`` (where its feathered edge ends): how
    large the selection is, whatever context the crop adds around it (``mask_padding``)."""
    rows, columns = np.nonzero(mask[box.y:box.y1, box.x:box.x1])
    if not len(rows):
        return Box(box.x, box.y, 0, 0)
    return Box(box.x, box.y, min(box.width, int(columns.max() - columns.min()) + 1 + 2 * margin),
               min(box.height, int(rows.max() - rows.min()) + 1 + 2 * margin))


def refines_in_tiles(selection: Box, native: int, strength: float, fill: str | None) -> bool:
    """Whether a masked crop is refined in tiles at native scale rather than as one pass scaled to the model:
    a selection too large for one pass (not merely a crop made large by its context), refined (not remade:
    above RECOMPOSE_STRENGTH each tile would paint a picture of its own) on the pixels as they are (a
    pre-fill spans the whole selection, not a tile)."""
    return needs_tiles(selection.width, selection.height, native) and strength <= rules.RECOMPOSE_STRENGTH and \
        (fill or "none") == "none"


def masked_tiles(job: EditJob, box: Box, native: int, strength: float, first: int) -> list[Pass]:
    """The tiles that refine a large masked crop at native scale: the crop's tile grid (on the 8-pixel grid,
    moved left or up by the few pixels that keep it on the picture where it can), each tile with its part of
    the shaped mask as alpha; tiles the alpha does not reach are left out. Where the picture itself is off
    the grid the last tiles reach past it, as ``refine_passes``' do (the engine extends the picture there)."""
    height, width = job.mask.shape
    w, h = ceil_to_grid(box.width), ceil_to_grid(box.height)
    x0, y0 = max(0, min(box.x, width - w)), max(0, min(box.y, height - h))
    area = np.zeros((h, w), np.uint8)  # the mask over the grid's area; nothing past the picture
    seen = job.mask[y0:y0 + h, x0:x0 + w]
    area[:seen.shape[0], :seen.shape[1]] = seen
    alpha = masks.shape_mask(area, job.mask_grow, job.mask_feather, job.soft)
    tiles = []
    for tile in tile_grid(w, h, native):
        part = alpha[tile.y:tile.y1, tile.x:tile.x1]
        if part.any():
            tiles.append(Pass(Box(x0 + tile.x, y0 + tile.y, tile.width, tile.height), (tile.width, tile.height),
                              strength, _pass_seed(first + len(tiles)), np.ascontiguousarray(part), job.fill))
    return tiles


def near_native(width: int, height: int, native: int, strength: float) -> Pass:
    """The first stage of a two-stage job: the whole picture at about native² pixels, the same aspect."""
    shrink = native / math.sqrt(width * height)
    return Pass(Box(0, 0, width, height), (round_to_grid(width * shrink), round_to_grid(height * shrink)), strength,
                first_stage=True)


def is_two_stage(passes: list[Pass]) -> bool:
    """Whether ``passes`` are a first stage near native size (the whole picture, or a large selection's crop)
    followed by the tiles that refine it at full size."""
    return len(passes) > 1 and passes[0].first_stage


def refine_passes(width: int, height: int, native: int, strength: float) -> list[Pass]:
    """The passes that refine a whole ``width`` x ``height`` picture: one, or tiles at native scale.

    A picture within the comfortable area is one pass (scaled to the model's area as before); a larger
    one is tiled (``shared.geometry.tile_grid``), each tile diffused 1:1 with the seed of its index, so
    detail is kept at any size and the cost grows with the tile count.
    """
    if not needs_tiles(width, height, native):
        return [_pass(whole_canvas(width, height, native), strength)]
    # Tiles are planned on the picture extended to the 8-pixel latent grid, so every tile (the last row and
    # column too) starts on one grid: tiles whose 8x8 latent blocks are out of phase blend into a visible seam
    # (1.8x the interior gradient on a 4097 x 3001 picture). The last tiles may reach up to 7 px past the
    # right and bottom edges; the engine extends the picture there by its edge pixels and crops the result.
    return [_pass(CropPlan(box, box.width, box.height), strength, index)
            for index, box in enumerate(tile_grid(ceil_to_grid(width), ceil_to_grid(height), native))]


def on_picture(passes: list[Pass], width: int, height: int) -> list[Pass]:
    """``passes`` as the world sees them: each box cut to the ``width`` x ``height`` picture (a tile reaching
    past its edge keeps the tile's diffusion size)."""
    return [p if p.box.x1 <= width and p.box.y1 <= height else dataclasses.replace(
                p, box=Box(p.box.x, p.box.y, min(p.box.x1, width) - p.box.x, min(p.box.y1, height) - p.box.y))
            for p in passes]


def island_crops(mask: np.ndarray, native: int, margin: int, *, padding: int = DEFAULT_PADDING) -> list[CropPlan]:
    """Context crops for a mask: one around everything, or one per island when that costs less.

    Islands are the mask's connected parts (8-connected, any value above 0). Islands whose crops
    overlap are merged (their feathered edges could meet, and one pixel must come from one pass),
    until every crop stands alone. Cost is counted at native scale: a crop's pixels, or native² for
    a crop the model would scale up.
    """
    height, width = mask.shape
    islands = island_bounds(mask)
    whole = context_crop(_union(islands), width, height, native, margin=margin, padding=padding)
    if len(islands) == 1 or len(islands) > MAX_ISLANDS:
        return [whole]
    groups = [[island] for island in islands]
    while True:
        crops = [context_crop(_union(group), width, height, native, margin=margin, padding=padding)
                 for group in groups]
        pair = next(((i, j) for i in range(len(crops)) for j in range(i + 1, len(crops))
                     if _overlap(crops[i].box, crops[j].box)), None)
        if pair is None:
            break
        i, j = pair
        groups[i] = groups[i] + groups.pop(j)
    if len(crops) == 1 or sum(map(_native_cost, crops)) >= _native_cost(whole):
        return [whole]
    return sorted(crops, key=lambda plan: (plan.box.y, plan.box.x))


def island_bounds(mask: np.ndarray) -> list[Box]:
    """Bounds of the mask's 8-connected parts (pixels above 0), top to bottom."""
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
    boxes = [Box(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
             for rows, cols in ndimage.find_objects(labels)[:count]]
    return sorted(boxes, key=lambda box: (box.y, box.x))


def overlapping(boxes: list[Box]) -> list[list[int]]:
    """The indices of ``boxes`` in groups that overlap (the tiles of one crop; a pass alone), in order."""
    groups: list[list[int]] = []
    for index, box in enumerate(boxes):
        touching = [g for g in groups if any(_overlap(box, boxes[i]) for i in g)]
        groups = [g for g in groups if g not in touching] + [sorted([index] + [i for g in touching for i in g])]
    return sorted(groups)


def layer_box(passes: list[Pass]) -> Box:
    """The part of the canvas a job's passes cover: where its result layer goes."""
    return _union([p.box for p in passes])


def _pass(plan: CropPlan, strength: float, index: int = 0, alpha: np.ndarray | None = None) -> Pass:
    return Pass(plan.box, (plan.diffusion_width, plan.diffusion_height), strength, _pass_seed(index), alpha)


def _pass_seed(index: int) -> int:
    return (index * _PASS_SEED_STRIDE) % (MAX_SEED + 1)


def _union(boxes: list[Box]) -> Box:
    x0, y0 = min(b.x for b in boxes), min(b.y for b in boxes)
    x1, y1 = max(b.x1 for b in boxes), max(b.y1 for b in boxes)
    return Box(x0, y0, x1 - x0, y1 - y0)


def _overlap(a: Box, b: Box) -> bool:
    return a.x < b.x1 and b.x < a.x1 and a.y < b.y1 and b.y < a.y1


def _native_cost(plan: CropPlan) -> int:
    return max(plan.box.width * plan.box.height, plan.diffusion_width * plan.diffusion_height)

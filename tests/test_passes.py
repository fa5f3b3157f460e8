"""The pass planner on its own, and jobs in several passes through a real server on the demo model."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.engine import masks
from backend.engine.passes import MAX_ISLANDS, island_bounds, island_crops
from conftest import decode, png
from shared.client import Progress, Started
from shared.geometry import Box, context_crop, mask_bounds
from shared.rules import reach

NATIVE = 512
REACH = reach(8, 16)


def blobs(size: tuple[int, int], *centres: tuple[int, int], radius: int = 60) -> np.ndarray:
    mask = Image.new("L", size, 0)
    for x, y in centres:
        ImageDraw.Draw(mask).ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.asarray(mask)


def overlap(a: Box, b: Box) -> bool:
    return a.x < b.x1 and b.x < a.x1 and a.y < b.y1 and b.y < a.y1


def test_one_island_is_the_context_crop_of_the_whole_mask():
    mask = blobs((4096, 3072), (2000, 1500))
    bounds = mask_bounds(mask.tobytes(), 4096, 3072)
    assert island_crops(mask, NATIVE, REACH) == [context_crop(bounds, 4096, 3072, NATIVE, margin=REACH)]


def test_far_apart_islands_are_each_diffused_at_native_scale():
    mask = blobs((4096, 3072), (300, 300), (3700, 400), (2000, 2700))
    crops = island_crops(mask, NATIVE, REACH)
    whole = context_crop(mask_bounds(mask.tobytes(), 4096, 3072), 4096, 3072, NATIVE, margin=REACH)
    assert whole.diffusion_width < whole.box.width / 4, "one box around them all would be crushed ~5x"
    assert len(crops) == 3
    for plan in crops:
        assert (plan.diffusion_width, plan.diffusion_height) == (plan.box.width, plan.box.height) == (NATIVE, NATIVE)
    assert sum(p.box.width * p.box.height for p in crops) < whole.box.width * whole.box.height
    for i, a in enumerate(crops):
        assert not any(overlap(a.box, b.box) for b in crops[i + 1:]), "one pixel comes from one pass"


def test_every_island_and_its_feathered_edge_lies_inside_one_crop():
    mask = blobs((3000, 2000), (200, 200), (2800, 1800), (1500, 1000), radius=40)
    crops = island_crops(mask, NATIVE, REACH)
    alpha = masks.shape_mask(mask, 8, 16)
    covered = np.zeros_like(alpha, bool)
    for plan in crops:
        covered[plan.box.y:plan.box.y1, plan.box.x:plan.box.x1] = True
    assert covered[alpha > 0].all()


def test_islands_whose_crops_would_overlap_merge():
    mask = blobs((2048, 2048), (300, 300), (600, 400), (1700, 1700), radius=40)
    crops = island_crops(mask, NATIVE, REACH)
    assert len(crops) == 2
    near = [plan for plan in crops if plan.box.x < 1000][0]
    assert near.box.x <= 300 - 40 - REACH and near.box.x1 >= 600 + 40 + REACH


def test_close_islands_stay_one_box_when_that_costs_less():
    mask = blobs((640, 480), (120, 120), (240, 150), radius=25)
    assert len(island_bounds(mask)) == 2
    assert len(island_crops(mask, NATIVE, REACH)) == 1


def test_a_scattered_mask_is_one_box():
    mask = np.zeros((4000, 4000), np.uint8)
    mask[::100, ::100] = 255  # 1600 specks
    assert len(island_bounds(mask)) > MAX_ISLANDS
    assert len(island_crops(mask, NATIVE, REACH)) == 1


def test_soft_and_diagonal_pixels_belong_to_their_island():
    mask = np.zeros((100, 100), np.uint8)
    mask[10, 10] = 255
    mask[11, 11] = 3  # touches diagonally, barely painted
    assert island_bounds(mask) == [Box(10, 10, 2, 2)]


# -- through the server ----------------------------------------------------------------------

def photo(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.dstack([(x * 7 + y) % 256, (y * 5) % 256, (x ^ y) % 256]).astype(np.uint8)
    return Image.fromarray(rgb)


def run(client, image, mask, **params):
    started, progress = [], []

    def on_event(event):
        if isinstance(event, Started):
            started.append(event)
        elif isinstance(event, Progress):
            progress.append(event)

    params = {"prompt": "a stone", "seed": 9, "steps": 3, **params}
    result = client.run("inpaint", image=png(image), mask=png(Image.fromarray(mask)), on_event=on_event, **params)
    return result, started[0], progress


@pytest.fixture(scope="module")
def three_islands():
    return photo(2048, 1536), blobs((2048, 1536), (200, 200), (1850, 250), (1000, 1350), radius=50)


def test_far_apart_islands_run_as_passes_in_one_layer(client, three_islands):
    image, mask = three_islands
    result, started, progress = run(client, image, mask)
    passes = started.passes
    assert len(passes) == 3
    for pass_box, size in passes:
        assert size == (pass_box[2], pass_box[3]) == (NATIVE, NATIVE), "each island at native scale"
    assert progress[-1].step == progress[-1].total == 3 * 3, "progress counts the steps of every pass"

    item, = result.images
    layer = decode(item.image)
    x, y = item.offset
    h, w = layer.shape[:2]
    assert [x, y, w, h] == list(started.box)
    original = np.asarray(image.convert("RGBA"))[y:y + h, x:x + w]
    outside = layer[..., 3] == 0
    assert (layer[outside][:, :3] == original[outside][:, :3]).all(), "untouched pixels are the input's bytes"
    for (bx, by, bw, bh), _ in passes:
        expected = masks.shape_mask(mask[by:by + bh, bx:bx + bw], 8, 16)
        assert (layer[by - y:by - y + bh, bx - x:bx - x + bw, 3] == expected).all()
    inside = mask[y:y + h, x:x + w] == 255
    assert np.abs(layer[inside][:, :3].astype(int) - original[inside][:, :3]).mean() > 5


def test_a_job_in_passes_costs_what_separate_jobs_cost_and_matches_the_first(client, three_islands):
    image, mask = three_islands
    result, started, _ = run(client, image, mask)
    layer = decode(result.images[0].image)
    ox, oy = result.images[0].offset
    separate = []
    for (bx, by, bw, bh), size in started.passes:
        alone = np.zeros_like(mask)
        alone[by:by + bh, bx:bx + bw] = mask[by:by + bh, bx:bx + bw]
        single, single_started, _ = run(client, image, alone)
        assert single_started.passes == [((bx, by, bw, bh), size)], "the same crop as the island's pass"
        separate.append(single)
    # The first pass uses the job's seed, so its island is exactly what a job on that island alone makes.
    (bx, by, bw, bh), _ = started.passes[0]
    alone = decode(separate[0].images[0].image)
    sx, sy = separate[0].images[0].offset
    island = layer[by - oy:by - oy + bh, bx - ox:bx - ox + bw]
    assert (island == alone[by - sy:by - sy + bh, bx - sx:bx - sx + bw]).all()


def test_same_job_in_passes_same_pixels(client, three_islands):
    image, mask = three_islands
    first, _, _ = run(client, image, mask, seed=4)
    again, _, _ = run(client, image, mask, seed=4)
    assert (decode(first.images[0].image) == decode(again.images[0].image)).all()


def test_conditioning_is_reused_across_images_passes_and_jobs(client, engine):
    image = photo(640, 480)
    mask = blobs((640, 480), (320, 240), radius=40)
    reference = png(photo(96, 96))
    params = {"control": [{"type": "canny", "preprocess": "on"}], "references": [{"image": reference}], "batch": 2}
    maps, embeddings = engine.control_maps, engine.adapters.embeddings
    before = (maps.hits, maps.misses, embeddings.hits, embeddings.misses)
    run(client, image, mask, **params)
    after_first = (maps.hits, maps.misses, embeddings.hits, embeddings.misses)
    assert after_first[1] - before[1] == 1, "one map made for the crop"
    assert after_first[0] - before[0] == 1, "the batch's second image reuses it"
    run(client, image, mask, **dict(params, seed=10, batch=1))  # another seed: canny edges stay the same
    run(client, image, mask, **params)  # the same job again: nothing computed
    assert (maps.misses, embeddings.misses) == (after_first[1], after_first[3])
    assert maps.hits - after_first[0] == 3 and embeddings.hits - after_first[2] == 2
    run(client, image, blobs((640, 480), (300, 250), radius=40), **params)  # a moved selection: a new crop
    assert maps.misses == after_first[1] + 1

"""Full resolution: whole-picture refine of large pictures in tiles at native scale, blended without seams."""

import dataclasses

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from backend.engine.compose import blend_tiles, tile_weights
from backend.engine.job import EditJob
from backend.engine.passes import Pass, is_two_stage, plan_passes
from conftest import decode, png
from shared.client import Progress, Started
from shared.geometry import Box, tile_grid, whole_canvas

NATIVE = 512


def edit(mode="img2img", width=1024, height=768, **params) -> EditJob:
    image = np.zeros((height, width, 4), np.uint8)
    return EditJob(mode=mode, model="demo", prompt="", negative_prompt="", seed=5, steps=10, guidance=7.0,
                   strength=params.pop("strength", 0.3), batch=1, sampler="euler", image=image, **params)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A statistically even texture with fine detail (no line of it special, unlike a tile border), the
    high frequencies a downscaled diffusion would lose."""
    noise = np.random.default_rng(seed).normal(size=(height, width, 3))
    texture = ndimage.gaussian_filter(noise, (1.5, 1.5, 0)) + ndimage.gaussian_filter(noise, (12, 12, 0)) * 6
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    return Image.fromarray((texture * 255).astype(np.uint8))


def seams(picture: np.ndarray, boxes: list[Box]) -> tuple[float, float]:
    """Mean gradient magnitude (8-bit levels) across the lines where tiles begin or end, and across the
    other lines at the same place in the 8-pixel latent grid (the demo model's pictures are blocky)."""
    return seams_at(picture, [c for b in boxes for c in (b.x, b.x1)], [r for b in boxes for r in (b.y, b.y1)])


def seams_at(picture: np.ndarray, columns: list[int], rows: list[int]) -> tuple[float, float]:
    """``seams`` across the borders before the given columns and rows only."""
    gray = picture[..., :3].astype(np.float32).mean(axis=2)
    border, interior = [], []
    for axis, coordinates in ((1, columns), (0, rows)):
        steps = np.abs(np.diff(gray, axis=axis)).mean(axis=1 - axis)  # one figure per line between pixels
        lines = {c - 1 for c in coordinates if 0 < c < gray.shape[axis]}
        phases = {line % 8 for line in lines}
        border += [steps[line] for line in lines]
        interior += [steps[line] for line in range(len(steps)) if line % 8 in phases and line not in lines]
    return float(np.mean(border)), float(np.mean(interior))


def no_seam(picture: np.ndarray, boxes: list[Box]) -> bool:
    """Tile borders no sharper than 1.2x the tile interiors (or than a quarter of one 8-bit level, on a
    picture so flat that the ratio of two near-zero gradients means nothing)."""
    border, interior = seams(picture, boxes)
    return border <= 1.2 * interior or border - interior < 0.25


# -- the planner --------------------------------------------------------------------------------

def test_a_picture_within_the_comfortable_area_is_one_pass_as_before():
    for width, height in ((320, 256), (640, 480), (700, 560)):
        (only,) = plan_passes(edit(width=width, height=height), NATIVE)
        plan = whole_canvas(width, height, NATIVE)
        assert (only.box, only.size, only.seed) == (plan.box, (plan.diffusion_width, plan.diffusion_height), 0)


def test_a_large_picture_is_tiled_at_native_scale():
    passes = plan_passes(edit(width=4096, height=3072), NATIVE)
    assert len(passes) == 9 * 7
    covered = np.zeros((3072, 4096), bool)
    for p in passes:
        assert p.size == (p.box.width, p.box.height) == (NATIVE, NATIVE), "every tile at scale 1.0"
        assert p.strength == 0.3
        covered[p.box.y:p.box.y1, p.box.x:p.box.x1] = True
    assert covered.all()
    columns = sorted({p.box.x for p in passes})
    assert all(b - a <= NATIVE - 64 for a, b in zip(columns, columns[1:])), "neighbours overlap by 64 or more"
    assert len({p.seed for p in passes}) == len(passes), "each tile its own noise"
    assert [p.seed for p in passes] == [p.seed for p in plan_passes(edit(width=4096, height=3072), NATIVE)]


def test_a_strong_img2img_of_a_large_picture_is_remade_whole_then_refined_in_tiles():
    """Tiles at strength 0.9 would each paint a picture of their own; the picture is remade near native
    first, as a large generate is made, and its tiles refine that at the hires strength."""
    first, *tiles = plan_passes(edit(width=2048, height=1536, strength=0.9), NATIVE)
    assert (first.box, first.size, first.strength) == (Box(0, 0, 2048, 1536), (592, 440), 0.9)
    assert len(tiles) == 5 * 4 and all(t.size == (512, 512) and t.strength == 0.5 for t in tiles)
    assert all(p.strength == 0.7 for p in plan_passes(edit(width=2048, height=1536, strength=0.7), NATIVE)), \
        "up to RECOMPOSE_STRENGTH the tiles refine the picture itself"


def test_a_strong_img2img_of_an_odd_sized_picture_is_still_two_stages():
    first, *tiles = plan_passes(edit(width=2001, height=1501, strength=0.9), NATIVE)
    assert first.box == Box(0, 0, 2001, 1501) and first.strength == 0.9
    assert tiles and all(t.strength == 0.5 and t.box.x % 8 == 0 and t.box.y % 8 == 0 for t in tiles)
    assert is_two_stage([first, *tiles]) and not is_two_stage(tiles), "a plain tile grid is one stage"
    # a large generate's own refine stage (refine 0.8 asked) refines its picture, it is not remade again
    stage = plan_passes(edit(width=2001, height=1501, strength=0.8, recompose=False), NATIVE)
    assert not is_two_stage(stage) and {p.strength for p in stage} == {0.8}


def test_a_long_strip_is_tiled_along_its_length():
    passes = plan_passes(edit(width=3000, height=400), NATIVE)
    assert len(passes) == 7
    assert all(p.box.height == 400 and p.size == (512, 400) for p in passes)


def test_tiles_of_a_picture_off_the_latent_grid_all_start_on_it():
    """The last column and row of tiles started at the picture's end minus the tile (x 3585 of 4097), off the
    8-px grid of the other tiles; now the tiles are those of the picture extended to the grid."""
    for width, height in ((1001, 701), (4097, 3001), (3000, 401)):
        passes = plan_passes(edit(width=width, height=height), NATIVE)
        assert all(p.box.x % 8 == 0 and p.box.y % 8 == 0 for p in passes), (width, height)
        assert all(p.size == (p.box.width, p.box.height) for p in passes), "still 1:1"
        reach = (max(p.box.x1 for p in passes), max(p.box.y1 for p in passes))
        assert reach == (-(-width // 8) * 8, -(-height // 8) * 8), "the picture extended to the grid"
    assert [p.box for p in plan_passes(edit(width=4096, height=3072), NATIVE)] == tile_grid(4096, 3072, NATIVE), \
        "a picture on the grid is tiled as before"


def test_a_picture_is_extended_to_the_grid_by_its_edge_pixels():
    from backend.engine.engine import extended
    from backend.engine.job import Control

    picture = np.asarray(photo(13, 9).convert("RGBA"))
    small = np.asarray(photo(26, 18, seed=1).convert("RGBA"))  # a control image twice the picture's size
    job = edit(width=13, height=9, control=(Control("tile", small, None, 1.0, 0.0, 1.0),
                                            Control("depth", None, "depth", 1.0, 0.0, 1.0)))
    job = extended(dataclasses.replace(job, image=picture), 16, 16)
    assert job.image.shape == (16, 16, 4)
    assert (job.image[:9, :13] == picture).all(), "the picture itself untouched"
    assert (job.image[:9, 13:] == picture[:, 12:13]).all() and (job.image[9:] == job.image[8:9]).all(), \
        "the edge repeated, not black"
    assert job.control[0].image.shape == (16, 16, 4), "stretched to the picture, then extended like it"
    assert job.control[1].image is None, "a unit on the picture itself follows it"


def test_tile_weights_fade_across_overlaps_and_cover_every_pixel():
    boxes = tile_grid(1300, 900, NATIVE)
    total = np.zeros((900, 1300))
    for box, weight in zip(boxes, tile_weights(boxes)):
        total[box.y:box.y1, box.x:box.x1] += weight
    assert total.min() > 0.5, "every pixel has a tile that counts (the blend divides by the sum)"
    first = tile_weights(boxes)[0]
    assert first[0, 0] == 1.0 and first[200, 0] == 1.0, "the picture's own edges are not faded"
    assert first[10, 511] == 0 and first[511, 10] == 0, "a tile's inner edge is left to its neighbour"
    assert 0 < first[10, 480] < first[10, 400] < first[10, 300] == 1.0, "and fades out towards it"


def test_blending_identical_tiles_gives_the_picture_back_exactly():
    picture = np.asarray(photo(1300, 900))
    boxes = tile_grid(1300, 900, NATIVE)
    passes = [Pass(box, (box.width, box.height), 0.5) for box in boxes]
    tiles = [picture[b.y:b.y1, b.x:b.x1] for b in boxes]
    assert (blend_tiles(passes, tiles) == picture).all()


def test_blending_holds_one_float_picture_not_one_per_step():
    """Refining a 6000 x 4000 photo 1.3x larger (216 tiles) peaked at 3.6 GB: every tile's weights at once and
    whole-picture temporaries of the final division, each as large as the float picture."""
    import tracemalloc

    width, height = 1800, 1300
    boxes = tile_grid(width, height, NATIVE)
    passes = [Pass(box, (box.width, box.height), 0.5) for box in boxes]
    tiles = [np.full((b.height, b.width, 3), 90 + 10 * (index % 3), np.uint8) for index, b in enumerate(boxes)]
    tracemalloc.start()
    try:
        blend_tiles(passes, tiles)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    float_picture = width * height * 3 * 4
    assert peak < 2 * float_picture, "the sums, their weights, one tile's weights and the 8-bit result"


# -- through the server -------------------------------------------------------------------------

def refine(client, image, **params):
    started = []
    params = {"prompt": "a stone wall", "seed": 3, "steps": 4, "strength": 0.5, **params}
    result = client.run("img2img", image=png(image), on_event=lambda e: isinstance(e, Started) and started.append(e),
                        **params)
    return result, started[0]


@pytest.fixture(scope="module")
def large():
    return photo(1100, 760)


def test_refine_of_a_large_picture_runs_in_tiles_at_full_resolution(client, large):
    result, started = refine(client, large)
    assert len(started.passes) == 6
    assert all(size == (NATIVE, NATIVE) for _, size in started.passes), "diffused 1:1, not scaled down"
    assert all(size == (box[2], box[3]) or box[0] + box[2] == 1100 for box, size in started.passes), \
        "boxes are the tiles (cut to the picture where its side is off the 8-px grid)"
    item, = result.images
    layer = decode(item.image)
    assert (layer.shape, tuple(item.offset)) == ((760, 1100, 4), (0, 0))
    assert (layer[..., 3] == 255).all()
    again, _ = refine(client, large)
    assert (decode(again.images[0].image) == layer).all(), "same seed, same pixels"
    other, _ = refine(client, large, seed=4)
    assert (decode(other.images[0].image) != layer).any()


def test_a_strong_img2img_of_a_large_picture_runs_in_two_stages(client, large):
    seen = []
    result = client.run("img2img", image=png(large), prompt="a harbour", strength=0.9, steps=4, seed=2,
                        on_event=seen.append)
    started = next(event for event in seen if isinstance(event, Started))
    assert [size for _, size in started.passes] == [(616, 424)] + [(512, 512)] * 6
    progress = [event for event in seen if isinstance(event, Progress)]
    assert [p.step for p in progress] == list(range(1, 3 + 6 * 2 + 1)), "3 steps at 0.9, then 2 per tile"
    assert decode(result.images[0].image).shape == (760, 1100, 4)


def test_tiles_leave_no_seams_on_a_flat_picture(client):
    flat = Image.new("RGB", (1100, 760), (120, 140, 90))
    result, started = refine(client, flat, strength=0.3, steps=10)
    layer = decode(result.images[0].image)
    boxes = [Box(*box) for box, _ in started.passes]
    assert no_seam(layer, boxes), seams(layer, boxes)


def test_tiles_leave_no_seams_on_a_photo(client, large):
    result, started = refine(client, large, strength=0.3, steps=10)
    layer = decode(result.images[0].image)
    border, interior = seams(layer, [Box(*box) for box, _ in started.passes])
    assert border <= 1.2 * interior, (border, interior)


def test_tiles_of_a_picture_off_the_latent_grid_leave_no_seams(client):
    """A 1001 x 701 picture's last column of tiles began at x 489 and its last row at y 189, off the 8-px grid of
    the others: the tiles' 8x8 latent blocks met out of phase there and the blend showed (border gradient 1.8x
    the interior's on a 4097 x 3001 picture). The tiles are now cut from the picture extended to the grid by
    its edge pixels, and the result cut back."""
    picture = photo(1001, 701)
    result, started = refine(client, picture, strength=0.3, steps=10)
    item, = result.images
    layer = decode(item.image)
    assert (layer.shape, tuple(item.offset)) == ((701, 1001, 4), (0, 0)), "the input's size"
    boxes = [Box(*box) for box, _ in started.passes]
    assert all(box.x % 8 == 0 and box.y % 8 == 0 for box in boxes), boxes
    assert tuple(started.box) == (0, 0, 1001, 701) and max(b.x1 for b in boxes) == 1001 and \
        max(b.y1 for b in boxes) == 701, "reported on the picture"
    assert {size for _, size in started.passes} == {(512, 512)}
    xs, ys = sorted({b.x for b in boxes}), sorted({b.y for b in boxes})
    border, interior = seams_at(layer, [xs[-1], xs[-2] + 512], [ys[-1], ys[-2] + 512])  # the last tiles' overlaps
    assert border <= 1.2 * interior, (border, interior)


def test_small_pictures_refine_exactly_as_one_pass(client):
    image = photo(320, 256)
    result, started = refine(client, image)
    assert started.passes == [((0, 0, 320, 256), (576, 456))]


# -- generate at canvas size ----------------------------------------------------------------------

def generate(width: int, height: int, strength: float = 0.5) -> EditJob:
    return EditJob(mode="generate", model="demo", prompt="", negative_prompt="", seed=5, steps=10, guidance=7.0,
                   strength=strength, batch=1, sampler="euler", width=width, height=height)


def test_a_generate_within_the_native_range_is_one_pass():
    job = generate(768, 512)
    assert [(p.box, p.size) for p in plan_passes(job, NATIVE)] == [(Box(0, 0, 768, 512), (768, 512))]


def test_a_generate_above_the_native_range_is_planned_small_then_tiled():
    first, *tiles = plan_passes(generate(2048, 1536), NATIVE)
    assert first.box == Box(0, 0, 2048, 1536) and first.size == (592, 440) and first.strength == 1.0
    assert len(tiles) == 5 * 4 and all(t.size == (512, 512) and t.strength == 0.5 for t in tiles)


def test_generate_at_canvas_size_runs_two_stages(client):
    seen = []
    params = dict(prompt="a harbour", width=1024, height=768, steps=4, seed=2)
    result = client.run("generate", on_event=seen.append, **params)
    started = next(event for event in seen if isinstance(event, Started))
    assert started.diffusion_size == (592, 440), "the first stage near native"
    assert [size for _, size in started.passes] == [(592, 440)] + [(512, 512)] * 6
    progress = [event for event in seen if isinstance(event, Progress)]
    assert [p.step for p in progress] == list(range(1, 4 + 6 * 2 + 1)), "steps of both stages, in order"
    assert {p.total for p in progress} == {16}
    layer = decode(result.images[0].image)
    assert layer.shape == (768, 1024, 4)
    assert (result.parameters["width"], result.parameters["height"], result.parameters["refine"]) == (1024, 768, 0.5)
    again = client.run("generate", **params)
    assert (decode(again.images[0].image) == layer).all(), "same seed, same pixels"


def test_a_painters_canvas_size_is_generated_whole(client):
    """4096 x 3072 was refused by the old 2048-px limit; it runs as the two stages above (cancelled once started)."""
    job = client.submit("generate", prompt="a harbour", width=4096, height=3072, steps=2, seed=2)
    started = next(event for event in client.events(job) if isinstance(event, Started))
    assert started.diffusion_size == (592, 440) and len(started.passes) == 1 + 63
    assert all(size == (512, 512) for _, size in started.passes[1:]), "the second stage at native scale"
    client.cancel(job)
    assert type(list(client.events(job))[-1]).__name__ in ("Cancelled", "Result")


def test_a_large_generate_with_too_few_steps_for_its_refine_says_so(client):
    """`steps` 1 (or `refine` 0.1 with 5 steps) above native size ran the whole first stage, then failed with
    "RuntimeError: stack expects a non-empty TensorList" [internal]: the second stage had no step to run."""
    from shared.client import Accepted, EaselError

    seen = []
    with pytest.raises(EaselError) as error:
        client.run("generate", width=1024, height=768, steps=5, refine=0.1, on_event=seen.append)
    assert (error.value.code, error.value.field) == ("too_few_steps", "refine")
    assert not any(isinstance(event, Accepted) for event in seen), "refused before `accepted`"
    seen = []
    with pytest.raises(EaselError) as error:
        client.run("generate", width=1024, height=768, steps=1, on_event=seen.append)
    assert (error.value.code, error.value.field) == ("too_few_steps", "steps")
    assert "at least 2 steps" in error.value.message
    assert not any(isinstance(event, Started) for event in seen), "before any work"
    assert client.run("generate", width=512, height=512, steps=1).images, "within the native range 1 step is fine"


# -- a large selection refined ---------------------------------------------------------------------

def ellipse_mask(width: int, height: int, box: Box) -> np.ndarray:
    """An ellipse filling ``box`` on a ``width`` x ``height`` canvas (255 inside)."""
    rows, columns = np.ogrid[:height, :width]
    cx, cy, rx, ry = box.x + box.width / 2, box.y + box.height / 2, box.width / 2, box.height / 2
    return np.where(((columns - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 <= 1, 255, 0).astype(np.uint8)


def masked(width: int, height: int, box: Box, strength: float, **params) -> EditJob:
    job = edit("inpaint", width, height, strength=strength, mask_grow=8, mask_feather=16, **params)
    return dataclasses.replace(job, mask=ellipse_mask(width, height, box))


def test_a_large_selection_refined_gently_is_tiled_at_native_scale():
    job = masked(2000, 1400, Box(300, 200, 1400, 1000), 0.4)
    passes = plan_passes(job, NATIVE)
    assert len(passes) > 1 and all(p.size == (p.box.width, p.box.height) for p in passes), "1:1, not scaled down"
    x0, y0 = min(p.box.x for p in passes), min(p.box.y for p in passes)
    assert all((p.box.x - x0) % 8 == 0 and (p.box.y - y0) % 8 == 0 for p in passes), "the tiles share one latent grid"
    assert all(p.alpha.shape == (p.box.height, p.box.width) and p.alpha.any() for p in passes), \
        "each tile has its part of the mask; tiles the mask does not reach are left out"
    assert len({p.seed for p in passes}) == len(passes)
    whole = plan_passes(dataclasses.replace(job, mask=np.full((1400, 2000), 255, np.uint8)), NATIVE)
    assert len(passes) < len(whole), "the corners the ellipse leaves out cost nothing"


def test_a_prefilled_large_selection_and_a_small_one_are_one_pass():
    """A pre-fill spans the whole selection, not a tile; a small selection is diffused as before, in a crop
    however large its ``mask_padding`` makes it (that context is what the padding asks for)."""
    for job in (masked(2000, 1400, Box(300, 200, 1400, 1000), 0.4, fill="blur"),
                masked(2000, 1400, Box(300, 200, 1400, 1000), 1.0, fill="blur"),
                masked(600, 500, Box(100, 100, 400, 300), 0.4),
                masked(600, 500, Box(100, 100, 400, 300), 1.0),
                masked(1600, 1200, Box(700, 500, 60, 60), 0.4, padding=400),  # large only by the context asked
                masked(1600, 1200, Box(700, 500, 60, 60), 1.0, padding=400)):
        passes = plan_passes(job, NATIVE)
        assert len(passes) == 1, [p.box for p in passes]


def test_a_large_selection_refines_at_full_resolution_and_keeps_every_other_pixel(client):
    """A painter's large selection refined at a low strength was one crop diffused at about the model's size
    and stretched back (soft beside the sharp picture around it); it is now refined in tiles at native scale.
    The picture is off the 8-px grid and the selection reaches its right edge, so the last tiles reach past it."""
    width, height = 1203, 901
    picture = np.asarray(photo(width, height))
    mask = ellipse_mask(width, height, Box(380, 90, 900, 760))
    seen = []
    result = client.run("inpaint", image=png(Image.fromarray(picture)), mask=png(Image.fromarray(mask)),
                        prompt="moss", strength=0.4, steps=10, seed=1, mask_grow=8, mask_feather=16,
                        on_event=seen.append)
    started = next(event for event in seen if isinstance(event, Started))
    assert len(started.passes) > 1 and all(size == (NATIVE, NATIVE) for _, size in started.passes)
    assert all(box[0] + box[2] <= width and box[1] + box[3] <= height for box, _ in started.passes), \
        "reported on the picture"
    item, = result.images
    layer = decode(item.image)
    x, y = item.offset
    assert x + layer.shape[1] <= width and y + layer.shape[0] <= height
    alpha = layer[..., 3]
    crop = picture[y:y + layer.shape[0], x:x + layer.shape[1]]
    assert (layer[alpha == 0, :3] == crop[alpha == 0]).all(), "outside the mask the picture's own bytes"
    inside = mask[y:y + layer.shape[0], x:x + layer.shape[1]] == 255
    assert (alpha[inside] == 255).all() and (layer[inside, :3] != crop[inside]).any()
    # seams, in the rectangle inside the ellipse (all of it refined; the ellipse's own edge is no seam)
    x0, y0, x1, y1 = 830 - 318 - x, 470 - 268 - y, 830 + 318 - x, 470 + 268 - y
    boxes = [Box(*box) for box, _ in started.passes]
    columns = [c - x - x0 for b in boxes for c in (b.x, b.x1) if x0 < c - x < x1]
    rows = [r - y - y0 for b in boxes for r in (b.y, b.y1) if y0 < r - y < y1]
    assert columns and rows
    border, interior = seams_at(layer[y0:y1, x0:x1], columns, rows)
    assert border <= 1.2 * interior, (border, interior)


def test_a_large_selection_remade_is_inpainted_near_native_then_refined_in_tiles():
    first, *tiles = plan_passes(masked(2000, 1400, Box(300, 200, 1400, 1000), 1.0), NATIVE)
    assert first.first_stage and first.resampled and first.strength == 1.0 and is_two_stage([first, *tiles])
    assert tiles and all(t.strength == 0.5 and t.size == (t.box.width, t.box.height) and t.alpha.any() for t in tiles)
    stage = plan_passes(dataclasses.replace(masked(2000, 1400, Box(300, 200, 1400, 1000), 1.0), recompose=False),
                        NATIVE)
    assert len(stage) == 1 and not is_two_stage(stage), "the first stage itself is one pass"


def test_a_large_selection_remade_runs_in_two_stages_and_keeps_every_other_pixel(client):
    width, height = 1203, 901
    picture = np.asarray(photo(width, height))
    mask = ellipse_mask(width, height, Box(380, 90, 900, 760))
    seen = []
    result = client.run("inpaint", image=png(Image.fromarray(picture)), mask=png(Image.fromarray(mask)),
                        prompt="a pond", strength=1.0, steps=4, seed=1, on_event=seen.append)
    started = next(event for event in seen if isinstance(event, Started))
    (first_box, first_size), *tiles = started.passes
    assert first_size != (first_box[2], first_box[3]) and tiles and all(size == (NATIVE, NATIVE) for _, size in tiles)
    progress = [event for event in seen if isinstance(event, Progress)]
    assert [p.step for p in progress] == list(range(1, 4 + 2 * len(tiles) + 1)), "4 steps, then 2 per tile"
    item, = result.images
    layer = decode(item.image)
    x, y = item.offset
    alpha = layer[..., 3]
    crop = picture[y:y + layer.shape[0], x:x + layer.shape[1]]
    assert (layer[alpha == 0, :3] == crop[alpha == 0]).all(), "outside the mask the picture's own bytes"
    assert (alpha[mask[y:y + layer.shape[0], x:x + layer.shape[1]] == 255] == 255).all()

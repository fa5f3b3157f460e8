"""The context-crop geometry shared by hosts and backend."""

import pytest

from shared.geometry import LATENT_GRID, Box, CropPlan, context_crop, diffusion_size, mask_bounds, whole_canvas


def test_mask_bounds_finds_the_painted_pixels():
    width, height = 50, 40
    mask = bytearray(width * height)
    for y in range(10, 20):
        mask[y * width + 5:y * width + 30] = b"\x80" * 25
    assert mask_bounds(mask, width, height) == Box(5, 10, 25, 10)
    assert mask_bounds(bytes(width * height), width, height) is None
    with pytest.raises(ValueError):
        mask_bounds(b"\0" * 10, width, height)


@pytest.mark.parametrize("canvas", [(512, 512), (4096, 4096), (8000, 3000)])
def test_small_edit_costs_the_same_on_any_canvas(canvas):
    bounds = Box(min(300, canvas[0] - 200), 150, 192, 192)
    plan = context_crop(bounds, *canvas, native=512, margin=24)
    assert (plan.diffusion_width, plan.diffusion_height) == (512, 512)
    assert (plan.box.width, plan.box.height) == (512, 512)


def test_box_holds_the_mask_and_its_margin_inside_the_canvas():
    for bounds in (Box(0, 0, 10, 10), Box(1000, 700, 300, 40), Box(1190, 790, 10, 10), Box(5, 300, 1190, 20)):
        plan = context_crop(bounds, 1200, 800, native=512, margin=20)
        box = plan.box
        assert 0 <= box.x and 0 <= box.y and box.x1 <= 1200 and box.y1 <= 800
        assert box.x <= max(0, bounds.x - 20) and box.y <= max(0, bounds.y - 20)
        assert box.x1 >= min(1200, bounds.x1 + 20) and box.y1 >= min(800, bounds.y1 + 20)
        assert plan.diffusion_width % LATENT_GRID == 0 and plan.diffusion_height % LATENT_GRID == 0
        assert max(box.width, box.height) / min(box.width, box.height) <= 2.0 + 0.05


def test_large_masks_are_diffused_near_native_area_keeping_aspect():
    plan = context_crop(Box(100, 100, 3000, 1500), 4096, 4096, native=1024)
    area = plan.diffusion_width * plan.diffusion_height
    assert 1024 * 1024 <= area <= 1.5 * 1024 * 1024 * 1.02
    assert plan.diffusion_width / plan.diffusion_height == pytest.approx(plan.box.width / plan.box.height, rel=0.02)


def test_small_canvas_is_diffused_at_native_size():
    plan = context_crop(Box(10, 10, 20, 20), 300, 200, native=512)
    assert plan.box == Box(0, 0, 300, 200)
    assert plan.diffusion_width * plan.diffusion_height >= 0.95 * 512 * 512


def test_cropping_then_planning_again_keeps_the_whole_crop():
    """Host and backend agree: the backend's plan on the host's crop is the whole crop."""
    for bounds, canvas in ((Box(2000, 1000, 192, 192), (4096, 4096)), (Box(10, 700, 900, 60), (1000, 800)),
                           (Box(0, 0, 700, 700), (2000, 900))):
        first = context_crop(bounds, *canvas, native=512, margin=30)
        shifted = Box(bounds.x - first.box.x, bounds.y - first.box.y, bounds.width, bounds.height)
        again = context_crop(shifted, first.box.width, first.box.height, native=512, margin=30)
        assert again.box == Box(0, 0, first.box.width, first.box.height)
        assert (again.diffusion_width, again.diffusion_height) == (first.diffusion_width, first.diffusion_height)


def test_whole_canvas_and_diffusion_size():
    assert diffusion_size(512, 512, 512) == (512, 512)
    assert diffusion_size(768, 512, 512) == (768, 512)  # within 1.5x native area: kept 1:1
    assert whole_canvas(4096, 4096, 512).diffusion_width == 624


def test_a_thin_strip_is_not_stretched_past_twice_native():
    # a 2000 x 8 strip was diffused at 8096 x 32 (scaled up to the model's area): four times wider than
    # it is, and eight times wider than the model composes
    assert whole_canvas(2000, 8, 512) == CropPlan(Box(0, 0, 2000, 8), 2000, 8)
    assert diffusion_size(8, 3000, 512) == (8, 3000)
    assert diffusion_size(1, 8192, 512) == (8, 8192)  # was 8 x 46344, past any max_side
    assert diffusion_size(1, 40, 512) == (24, 1024)  # scaled up until its long side is 2 x native
    assert diffusion_size(7, 3, 512) == (784, 336)  # up to 4:1 a small picture still reaches the model's area
    assert diffusion_size(1, 1, 512) == (512, 512)

"""The Krita plugin's pure core (no Krita, no Qt): pixel conversions, selection masks, the
request it builds and where results go, plus the plugin zip. In-Krita tests: test_krita_plugin.py."""

from __future__ import annotations

import ast
import dataclasses
import json
import struct
import subprocess
import sys
import zipfile
from array import array
from pathlib import Path

import numpy as np
import pytest

from backend.packaging import build
from conftest import decode, picture, rect_mask
from shared.client import Started
from shared.geometry import Box, context_crop, diffusion_size, mask_bounds
from shared.images import ImageData
from shared.messages import CONTROL_TYPES, REFERENCE_MODES, parse_client_message
from shared.rules import reach as mask_margin

PLUGIN = Path(__file__).resolve().parents[1] / "krita_plugin"
sys.path.insert(0, str(PLUGIN))

from easel_krita import liveness, models, pixels, placement, plan, turns  # noqa: E402
from easel_krita.completion import Completion, complete  # noqa: E402
from easel_krita.emphasis import reweigh  # noqa: E402
from easel_krita.protocol import capabilities  # noqa: E402

# -- pixels ------------------------------------------------------------------------------------

def every_value_rgba() -> bytes:
    """All 256 byte values in every channel (64 pixels)."""
    return bytes(range(256))


def test_bgra_and_rgba_swap_red_and_blue_only():
    assert pixels.swap_red_blue(bytes([1, 2, 3, 4, 5, 6, 7, 8])) == bytes([3, 2, 1, 4, 7, 6, 5, 8])
    data = every_value_rgba()
    assert pixels.swap_red_blue(pixels.swap_red_blue(data)) == data
    assert pixels.to_rgba8(bytes([10, 20, 30, 40]), "U8", False) == bytes([30, 20, 10, 40])


def test_linear_16_bit_becomes_srgb_8_bit():
    # B, G, R, A of linear light: mid-grey in linear light (0.2158) is sRGB 128; alpha is not curved.
    quarter = round(pixels.srgb_to_linear(128 / 255) * 65535)
    data = array("H", [0, quarter, 65535, 32768]).tobytes()
    assert pixels.to_rgba8(data, "U16", True) == bytes([255, 128, 0, 128])
    # A non-linear 16-bit document only loses precision.
    assert pixels.to_rgba8(array("H", [0, 32896, 65535, 65535]).tobytes(), "U16", False) == bytes([255, 128, 0, 255])


@pytest.mark.parametrize("depth", ["U16", "F16", "F32"])
@pytest.mark.parametrize("linear", [True, False])
def test_every_8_bit_value_survives_a_round_trip(depth, linear):
    data = every_value_rgba()
    deep = pixels.from_rgba8(data, depth, linear)
    assert len(deep) == len(data) * pixels.BYTES_PER_CHANNEL[depth]
    assert pixels.to_rgba8(deep, depth, linear) == data


def test_linear_8_bit_documents_get_the_srgb_curve_on_colour_only():
    mid = round(pixels.srgb_to_linear(128 / 255) * 255)  # 55
    assert pixels.to_rgba8(bytes([mid, 255, 0, mid]), "U8", True) == bytes([0, 255, 128, mid])
    assert pixels.from_rgba8(bytes([0, 255, 128, 7]), "U8", True) == bytes([mid, 255, 0, 7])


def test_float_documents_are_rgba_linear_and_clamped():
    # R, G, B, A order for floats; HDR and negative values clamp; alpha is linear.
    data = array("f", [1.0, pixels.srgb_to_linear(128 / 255), 0.0, 0.25, 4.0, -1.0, float("nan"), 1.0]).tobytes()
    assert pixels.to_rgba8(data, "F32", True) == bytes([255, 128, 0, 64, 255, 0, 0, 255])
    half = struct.pack("<4e", 1.0, 0.5, 0.0, 1.0)
    assert pixels.to_rgba8(half, "F16", False) == bytes([255, 128, 0, 255])
    red = pixels.from_rgba8(bytes([255, 128, 0, 255]), "F32", True)
    assert array("f", red).tolist() == pytest.approx([1.0, pixels.srgb_to_linear(128 / 255), 0.0, 1.0])


def test_transparent_layer_pixels_are_laid_on_a_background_before_they_steer_a_job():
    # A sketch layer: a black line pixel, transparent "black" around it, colour left under an erased pixel,
    # and an anti-aliased half-covered grey edge.
    sketch = bytes([0, 0, 0, 255, 0, 0, 0, 0, 200, 10, 90, 0, 0, 0, 0, 128])
    assert pixels.flatten(sketch, 255) == bytes([0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 255,
                                                 127, 127, 127, 255])
    assert pixels.flatten(sketch, 0) == bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    white_edge = bytes([255, 255, 255, 51])
    assert pixels.flatten(white_edge, 0) == bytes([51, 51, 51, 255])
    opaque = b"".join(bytes([v, 255 - v, v // 2, 255]) for v in range(256))
    assert pixels.flatten(opaque, 255) == opaque  # an opaque layer as it is
    with pytest.raises(ValueError):
        pixels.flatten(b"\x00" * 5, 0)


def test_a_control_layer_becomes_the_control_image_its_type_expects():
    # A sketch: one dark stroke pixel, one anti-aliased half pixel, three empty (transparent) ones.
    sketch = bytes([30, 30, 30, 255, 30, 30, 30, 128, 0, 0, 0, 0, 0, 0, 0, 0, 7, 7, 7, 0])
    on_paper = bytes([30, 30, 30, 255, 142, 142, 142, 255] + [255] * 12)
    assert plan.control_picture(sketch, "lineart", preprocess=True) == on_paper
    assert plan.control_picture(sketch, "tile", preprocess=False) == on_paper  # the picture is the map
    strokes = bytes([255, 255, 255, 255, 128, 128, 128, 255] + [0, 0, 0, 255] * 3)
    for line_type in ("lineart", "scribble", "canny", "softedge"):  # a ready line map: its strokes are lines
        assert plan.control_picture(sketch, line_type, preprocess=False) == strokes
    assert plan.control_picture(sketch, "depth", preprocess=False) == bytes(  # other maps: on black
        [30, 30, 30, 255, 15, 15, 15, 255] + [0, 0, 0, 255] * 3)
    # A ready map that is mostly opaque (white lines on black, a corner erased) stays a map, on black.
    map_ = bytes([255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9, 0])
    assert plan.control_picture(map_, "lineart", preprocess=False) == bytes(
        [255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])


def test_srgb_curve_matches_the_standard():
    assert pixels.linear_to_srgb(0.0) == 0 and pixels.linear_to_srgb(1.0) == pytest.approx(1.0)
    assert pixels.srgb_to_linear(0.5) == pytest.approx(0.214041, abs=1e-6)
    for v in (0.001, 0.01, 0.3, 0.9):
        assert pixels.linear_to_srgb(pixels.srgb_to_linear(v)) == pytest.approx(v)


def test_select_all_is_the_whole_picture_refined_at_full_size():
    everything = (Box(0, 0, 1400, 1000), b"\xff" * (1400 * 1000))
    assert plan.plan_region(1400, 1000, 0.4, 512, everything) == plan.plan_region(1400, 1000, 0.4, 512)
    assert plan.plan_region(1400, 1000, 1.0, 512, everything).mode == "generate"
    assert plan.plan_region(1400, 1000, 1.0, 512, everything, instruct=True).masked is False
    assert plan.plan_region(1400, 1000, 1.0, 512, everything, remove=True).mode == "remove"
    beyond = bytearray(b"\xff" * (1420 * 1010))  # a selection reaching past the canvas on every side
    assert plan.selects_everything(Box(-10, -5, 1420, 1010), bytes(beyond), 1400, 1000)
    beyond[(5 + 999) * 1420 + 10 + 1399] = 254  # the canvas's last pixel not quite selected
    assert not plan.selects_everything(Box(-10, -5, 1420, 1010), bytes(beyond), 1400, 1000)
    beyond[(5 + 999) * 1420 + 10 + 1399], beyond[0] = 255, 0  # outside the canvas: does not count
    assert plan.selects_everything(Box(-10, -5, 1420, 1010), bytes(beyond), 1400, 1000)
    almost = bytearray(everything[1])
    almost[700 * 1400 + 3] = 128  # one soft pixel: an inpaint, as before
    assert plan.plan_region(1400, 1000, 0.4, 512, (everything[0], bytes(almost))).mode == "inpaint"
    assert not plan.selects_everything(Box(0, 0, 1400, 999), b"\xff" * (1400 * 999), 1400, 1000)


def test_a_picture_the_server_would_refuse_for_its_size_is_a_sentence_before_it_is_read():
    wide = plan.plan_region(9000, 64, 0.5, 512)
    with pytest.raises(plan.PlanError, match=r"The canvas is 9000x64: the server takes pictures up to 8192 pixels a "
                                             r"side, so it cannot edit the whole of it. Select the part"):
        plan.check_picture_size(wide, 8192, 8192 * 8192)
    instruct = plan.plan_region(5000, 5000, 1.0, 512, instruct=True)
    with pytest.raises(plan.PlanError, match="5000x5000: the server takes pictures up to 16,000,000 pixels in all"):
        plan.check_picture_size(instruct, 8192, 16_000_000)
    band = (Box(0, 0, 9000, 40), b"\xff" * (9000 * 40))
    with pytest.raises(plan.PlanError, match="The selection, with its grown edge and the context around it, spans "
                                             "9000x64"):
        plan.check_picture_size(plan.plan_region(9000, 64, 1.0, 512, band), 8192, 8192 * 8192)
    with pytest.raises(plan.PlanError, match="Expanded, the canvas would be 8400x64: .* Add fewer pixels"):
        plan.check_picture_size(plan.plan_expand(8000, 64, (0, 0, 400, 0)), 8192, 8192 * 8192)
    corner = (Box(8900, 10, 20, 20), b"\xff" * 400)
    for fine in (plan.plan_region(9000, 64, 1.0, 512, corner), plan.plan_region(9000, 64, 1.0, 512),
                 plan.plan_region(8192, 64, 0.5, 512)):  # a small crop, a generate, a canvas at the limit
        plan.check_picture_size(fine, 8192, 8192 * 8192)


def test_a_control_or_reference_layer_must_still_be_there_and_line_up():
    plan.check_source_layer("control", "sketch", "", (300, 200), (300, 200))  # in this document
    plan.check_source_layer("reference", "photo", "photo.jpg", (4000, 3000), (300, 200))  # a photo beside it
    plan.check_source_layer("control", "depth", "depth.kra", (300, 200), (300, 200))  # another, the same size
    with pytest.raises(plan.PlanError, match="The reference layer “photo” is gone \\(deleted, or its document "
                                              "closed\\): remove it from the reference list"):
        plan.check_source_layer("reference", "photo", None, None, (300, 200))
    with pytest.raises(plan.PlanError, match="“sketch” is in another document \\(“old.kra”, 640x480\\) and cannot "
                                              "line up with this 300x200 canvas"):
        plan.check_source_layer("control", "sketch", "old.kra", (640, 480), (300, 200))
    with pytest.raises(plan.PlanError, match="“Selection Mask” is a selection mask, not a layer: pick a layer as the "
                                              "reference"):
        plan.check_source_layer("reference", "Selection Mask", "", (300, 200), (300, 200), "selectionmask")


@pytest.mark.parametrize("model, word", [("CMYKA", "CMYK"), ("GRAYA", "greyscale"), ("LABA", "L*a*b*")])
def test_other_colour_models_are_refused_with_a_sentence(model, word):
    with pytest.raises(pixels.UnsupportedColor, match=word) as error:
        pixels.check_color(model, "U8")
    assert "Convert Image Color Space" in str(error.value)
    pixels.check_color("RGBA", "F32")


def test_profiles():
    assert pixels.is_linear_profile("sRGB-elle-V2-g10.icc")
    assert not pixels.is_linear_profile("sRGB-elle-V2-srgbtrc.icc")
    assert not pixels.is_linear_profile("sRGB built-in")


@pytest.mark.parametrize("profile", ["sRGB-elle-V2-srgbtrc.icc", "sRGB-elle-V2-g10.icc", "sRGB built-in",
                                     "Artifex Software scRGB ICCProfile",
                                     "krita-2.5, lcms sRGB built-in with linear gamma TRC",
                                     "Artifex Software sRGB ICC Profile", "sRGB-elle-V4-g10.icc"])
def test_srgb_primaries_with_the_srgb_or_linear_curve_are_converted_exactly_here(profile):
    assert pixels.exact_profile(profile)


@pytest.mark.parametrize("profile", ["ClayRGB-elle-V2-g22.icc", "Rec2020-elle-V4-g10.icc", "ACEScg-elle-V4-g10.icc",
                                     "Artifex Software A98 ICC Profile ", "sRGB-elle-V2-rec709.icc",
                                     "sRGB-elle-V2-g22.icc", "WideRGB-elle-V2-g22.icc", "Display P3", "",
                                     "scRGB (linear)"])  # Krita's own: other primaries (its red is sRGB 255,16,25)
def test_other_primaries_or_curves_go_through_kritas_colour_management(profile):
    assert not pixels.exact_profile(profile)


# -- selection and plan ------------------------------------------------------------------------

def test_selection_bytes_are_the_mask_and_soft_values_stay():
    data = bytes([0, 64, 128, 255, 0, 1])
    assert plan.selection_mask(data, 3, 2) == data
    with pytest.raises(plan.PlanError, match="6 expected"):
        plan.selection_mask(data[:5], 3, 2)


def test_mode_follows_selection_and_strength():
    assert plan.choose_mode(True, 1.0) == "inpaint" and plan.choose_mode(True, 0.4) == "inpaint"
    assert plan.choose_mode(False, 1.0) == "generate" and plan.choose_mode(False, 0.99) == "img2img"


def selection_on(width, height, box, value=255):
    """A Krita-like selection: its bounding box and bytes over it."""
    x, y, w, h = box
    return Box(x, y, w, h), bytes([value]) * (w * h)


def test_a_small_selection_on_a_huge_canvas_sends_a_small_crop():
    region = plan.plan_region(8000, 6000, 1.0, 512, selection_on(8000, 6000, (5000, 3000, 100, 80)))
    assert region.mode == "inpaint"
    assert (region.box.width, region.box.height) == (512, 512)
    expected = context_crop(Box(5000, 3000, 100, 80), 8000, 6000, 512, margin=mask_margin(8, 16))
    assert region.box == expected.box
    assert region.box.x <= 5000 - 33 and region.box.x1 >= 5100 + 33  # the feathered edge fits


def test_selection_bounds_come_from_its_pixels_and_the_canvas():
    # Krita's selection box can be larger than what is selected, and reach past the canvas.
    sel_box = Box(-20, -10, 100, 50)
    data = bytearray(100 * 50)
    data[30 * 100 + 40] = 90  # one soft pixel at canvas (20, 20)
    region = plan.plan_region(300, 200, 0.5, 64, (sel_box, bytes(data)), grow=0, feather=0)
    expected = context_crop(Box(20, 20, 1, 1), 300, 200, 64, margin=mask_margin(0, 0))
    assert region.mode == "inpaint" and region.box == expected.box
    # A selection with nothing selected counts as none.
    assert plan.plan_region(300, 200, 0.5, 512, (sel_box, bytes(5000))).mode == "img2img"
    with pytest.raises(plan.PlanError, match="outside the canvas"):
        plan.plan_region(300, 200, 1.0, 512, selection_on(300, 200, (400, 10, 20, 20)))


def test_without_a_selection_the_whole_canvas_is_sent():
    region = plan.plan_region(256, 192, 1.0, 512)
    assert region.mode == "generate" and region.box == Box(0, 0, 256, 192)
    assert region.size == region.picture == diffusion_size(256, 192, 512)
    small = plan.plan_region(256, 192, 0.3, None)
    assert small.mode == "img2img" and small.picture == (256, 192) and not small.resampled
    # A canvas larger than the model's area goes out whole: the server refines it in tiles at native
    # scale, so the refine keeps the canvas's detail.
    big = plan.plan_region(6000, 4000, 0.3, 512)
    assert big.box == Box(0, 0, 6000, 4000) and big.picture == (6000, 4000) and not big.resampled
    assert big.size == (512, 512), "one tile at native scale"


def test_build_inpaint_job():
    region = plan.Region("inpaint", Box(10, 20, 4, 2), (512, 512))
    settings = plan.Settings(prompt="a red door", strength=0.8, steps=10, seed=3, batch=2)
    image, mask = bytes(range(32)), bytes([0, 255, 128, 0, 0, 0, 0, 0])
    control = plan.ControlUnit("canny", ImageData("rgba8", 4, 2, bytes(32)), "on", 0.5, 0.1, 0.9)
    ref = plan.Reference(ImageData("rgba8", 3, 1, bytes(12)), 0.7, "style")
    job = plan.build_job(region, settings, image, mask, [control], [ref])
    assert isinstance(job, plan.Job) and job.mode == "inpaint"
    assert job.image == ImageData("rgba8", 4, 2, image)
    assert job.mask == ImageData("l8", 4, 2, mask)
    sampling = job.sampling
    assert (sampling.strength, sampling.steps, sampling.seed, sampling.batch) == (0.8, 10, 3, 2)
    assert (job.mask_grow, job.mask_feather, job.output_format) == (8, 16, "rgba8")
    assert job.control == [plan.ControlUnit("canny", ImageData("rgba8", 4, 2, bytes(32)), scale=0.5, start=0.1,
                                            end=0.9, preprocess="on")]
    assert job.references == [plan.Reference(ImageData("rgba8", 3, 1, bytes(12)), weight=0.7, mode="style")]
    assert job.width is None


def test_the_job_is_a_valid_submit():
    """What the worker sends (``Client.submit`` uploads the images and sends ``to_message``) passes the
    server's own validation, with every setting in place."""
    region = plan.Region("inpaint", Box(10, 20, 4, 2), (512, 512))
    settings = plan.Settings(prompt="a red door", negative_prompt="blur", strength=0.8, steps=10, seed=3, batch=2,
                             model="demo", mask_grow=4, mask_feather=6, preview_every=2)
    control = plan.ControlUnit("depth", ImageData("rgba8", 4, 2, bytes(32)), "on", 0.5, 0.1, 0.9)
    ref = plan.Reference(ImageData("rgba8", 3, 1, bytes(12)), 0.7, "style")
    job = plan.build_job(region, settings, bytes(32), bytes(8), [control], [ref])
    uploads = []

    def upload(image, role):
        uploads.append((role, image))
        return {"frame": f"up-{len(uploads)}"}

    message = parse_client_message(json.dumps(job.to_message(upload)))
    assert [role for role, _ in uploads] == ["image", "mask", "control", "reference"]
    assert uploads[1][1] == ImageData("l8", 4, 2, bytes(8))
    assert message["mode"] == "inpaint" and (message["image"]["frame"], message["mask"]["frame"]) == ("up-1", "up-2")
    assert (message["prompt"], message["negative_prompt"], message["model"]) == ("a red door", "blur", "demo")
    assert (message["steps"], message["strength"], message["seed"], message["batch"]) == (10, 0.8, 3, 2)
    assert (message["mask_grow"], message["mask_feather"], message["preview_every"]) == (4, 6, 2)
    assert message["output_format"] == "rgba8" and "width" not in message
    frame = {"format": "png"}  # the validation's default for an image reference (unused with a frame)
    assert message["control"] == [{"type": "depth", "image": {"frame": "up-3", **frame}, "preprocess": "on",
                                   "scale": 0.5, "start": 0.1, "end": 0.9}]
    assert message["references"] == [{"image": {"frame": "up-4", **frame}, "weight": 0.7, "mode": "style"}]
    # A generate asks for the model's size and sends no picture.
    generate = plan.build_job(plan.plan_region(256, 192, 1.0, 512), plan.Settings(prompt="x"), None)
    message = parse_client_message(json.dumps(generate.to_message()))
    assert (message["width"], message["height"]) == diffusion_size(256, 192, 512) and "image" not in message


def test_a_big_refine_sends_the_whole_picture_and_is_refined_in_tiles(client):
    region = plan.plan_region(1400, 1000, 0.5, plan.native_size(client.models()))
    width, height = region.picture
    rgba = np.asarray(picture(width, height).convert("RGBA")).tobytes()
    job = plan.build_job(region, plan.Settings(prompt="oil painting", strength=0.5, steps=2, seed=1), rgba)
    assert (job.image.width, job.image.height) == (1400, 1000), "the canvas at full resolution"
    started = []
    result = client.run(job, on_event=lambda e: isinstance(e, Started) and started.append(e)).images[0]
    assert len(started[0].passes) == 9 and all(size == (512, 512) for _, size in started[0].passes)
    assert (result.image.width, result.image.height) == region.picture
    spot = placement.place(region, result.offset, result.image.width, result.image.height)
    assert (spot.x, spot.y, spot.width, spot.height, spot.scale) == (0, 0, 1400, 1000, False)


def test_a_generate_of_a_large_canvas_asks_the_server_for_the_canvas_size():
    """Not a near-native picture stretched 5x by Krita: the server makes it near native and refines it in
    tiles at the canvas's size (two stages)."""
    region = plan.plan_region(4000, 3000, 1.0, 512)
    job = plan.build_job(region, plan.Settings(prompt="x"), None)
    assert (job.width, job.height) == region.size == region.picture == (4000, 3000)
    assert placement.place(region, (0, 0), 4000, 3000) == placement.Placement(0, 0, 4000, 3000, scale=False)


def test_build_generate_job_asks_for_the_crop_at_model_size():
    region = plan.plan_region(256, 192, 1.0, 512)
    job = plan.build_job(region, plan.Settings(prompt="x"), None)
    assert (job.width, job.height) == region.size
    assert job.image is None and job.sampling.strength == 1.0 and job.mask is None


@pytest.mark.parametrize("width, height", [(200, 4000), (500, 6000), (3, 900), (1, 5000), (6000, 300)])
def test_a_generate_of_a_long_thin_canvas_stays_within_the_servers_generate_limit(width, height):
    """At native area a 200x4000 banner is 144x2808, which the server refuses ("Height 2808 is over this
    server's limit of 2048"): it is made within the limit, aspect kept, and scaled up to the canvas."""
    region = plan.plan_region(width, height, 1.0, 512, max_generate_side=2048)
    assert max(region.size) <= 2048 and region.picture == region.size
    assert min(region.size) >= 8 and all(side % 8 == 0 for side in region.size)
    assert (region.size[0] > region.size[1]) == (width > height)
    if min(width, height) >= 200:  # the aspect survives where the grid allows it
        assert region.size[0] / region.size[1] == pytest.approx(width / height, rel=0.1)
    assert plan.plan_region(width, height, 1.0, 512, max_generate_side=1024).size[width < height] == 1024
    assert placement.place(region, (0, 0), *region.size) == placement.Placement(0, 0, width, height, scale=True)
    assert plan.plan_region(256, 192, 1.0, 512).size == diffusion_size(256, 192, 512)  # within it: unchanged


@pytest.mark.parametrize("settings, words", [
    (plan.Settings(prompt="  "), "Type a prompt"),
    (plan.Settings(prompt="x", steps=3, strength=0.2), "no step"),
])
def test_impossible_jobs_are_sentences(settings, words):
    region = plan.Region("img2img", Box(0, 0, 2, 2), (8, 8))
    with pytest.raises(plan.PlanError, match=words):
        plan.build_job(region, settings, bytes(16))


def test_wrong_sizes_and_control_ranges_are_refused():
    region = plan.Region("img2img", Box(0, 0, 2, 2), (8, 8))
    with pytest.raises(plan.PlanError, match="15 bytes"):
        plan.build_job(region, plan.Settings(prompt="x"), bytes(15))
    unit = plan.ControlUnit("depth", ImageData("rgba8", 2, 2, bytes(16)), start=0.6, end=0.4)
    with pytest.raises(plan.PlanError, match="The depth control starts at 60% and ends at 40%: its start must come "
                                             "before its end"):
        plan.build_job(region, plan.Settings(prompt="x"), bytes(16), controls=[unit])


@pytest.mark.parametrize("change, words", [
    (dict(controls=[plan.ControlUnit("tile", ImageData("rgba8", 2, 2, bytes(16)), "on")]),
     "The tile control type has no preprocessor: the layer itself is its control image, so add it without "
     "Preprocess."),
    (dict(settings=plan.Settings(prompt="x", seed=2**32 - 2, batch=3)), "The seed must be at most 4294967293 for a "
                                                                         "batch of 3."),
    (dict(references=[plan.Reference(ImageData("rgba8", 1, 1, bytes(4)), mode="face"),
                      plan.Reference(ImageData("rgba8", 1, 1, bytes(4)), mode="style")]),
     "References are either all “face” or none: the face mode uses an adapter of its own."),
    (dict(controls=[plan.ControlUnit("depth", ImageData("rgba8", 3, 2, bytes(24)))]),
     "the depth control layer is 3x2, not the picture's 2x2"),
])
def test_jobs_the_server_would_refuse_are_sentences_before_sending(change, words):
    """``Job.check`` (the server's rules) runs on the job, and its refusals read as the docker speaks."""
    region = plan.Region("img2img", Box(0, 0, 2, 2), (8, 8))
    args = {"settings": plan.Settings(prompt="x", strength=0.5), "controls": (), "references": (), **change}
    with pytest.raises(plan.PlanError) as error:
        plan.build_job(region, args["settings"], bytes(16), None, args["controls"], args["references"])
    assert str(error.value) == words


def test_native_size_comes_from_the_models_reply():
    reply = {"default": "b", "models": [{"name": "a", "native_size": 1024}, {"name": "b", "native_size": 768}]}
    assert plan.native_size(reply) == 768 and plan.native_size(reply, "a") == 1024
    assert plan.native_size(None) == 512 and plan.native_size({"default": "c", "models": []}) == 512


# -- what the server offers ---------------------------------------------------------------------

def welcome(**capabilities) -> dict:
    limits = {"max_steps": 60, "max_batch": 4, "max_side": 4096, "max_pixels": 4096**2,
              "max_message_bytes": 2**26, "max_generate_side": 1024}
    base = {"control_types": ["tile", "canny", "depth"], "preprocessors": ["canny", "lineart_standard"],
            "reference_families": ["sd15"], "reference_modes": ["style", "reference"], "limits": limits}
    return {**base, **capabilities}  # welcome.capabilities


def test_the_docker_offers_the_servers_control_types_and_limits():
    offer = capabilities.offer(welcome())
    # The server sorts its types; the docker lists them in the protocol's order (common types first).
    assert offer.control_types == ("canny", "depth", "tile")
    assert offer.reference_modes == ("reference", "style") and offer.references
    assert (offer.max_steps, offer.max_batch, offer.max_side) == (60, 4, 4096)
    # Preprocess only where the server can run the type's preprocessor.
    assert offer.preprocessor("canny") == "canny" and offer.why_no_preprocessor("canny") == ""
    assert offer.preprocessor("depth") is None and "depth_midas" in offer.why_no_preprocessor("depth")
    assert offer.preprocessor("tile") is None and "no preprocessor" in offer.why_no_preprocessor("tile")
    # A type this plugin does not know yet is still offered (the server accepts it), after the known ones.
    assert capabilities.offer(welcome(control_types=["zoe", "canny"])).control_types == ("canny", "zoe")
    none = capabilities.offer(welcome(control_types=[], reference_families=[]))
    assert none.control_types == () and not none.references


def test_before_a_server_answers_the_docker_offers_the_whole_vocabulary():
    for reply in (None, {}):
        offer = capabilities.offer(reply)
        assert offer.control_types == CONTROL_TYPES and offer.reference_modes == REFERENCE_MODES
        assert (offer.max_steps, offer.max_batch) == (150, 8)


def test_a_changed_list_keeps_the_painters_choice_while_it_is_offered():
    assert capabilities.pick(("canny", "depth"), "depth", "lineart") == "depth"
    assert capabilities.pick(("canny", "lineart"), "depth", "lineart") == "lineart"
    assert capabilities.pick(("canny", "tile"), "depth", "lineart") == "canny"
    assert capabilities.pick((), "depth", "lineart") == ""


def test_the_offer_of_a_real_server(client):
    offer = capabilities.offer(client.welcome["capabilities"])
    limits = client.welcome["capabilities"]["limits"]
    assert set(offer.control_types) == set(client.welcome["capabilities"]["control_types"])
    assert offer.control_types[0] == "canny" and (offer.max_steps, offer.max_batch) == (limits["max_steps"],
                                                                                       limits["max_batch"])
    assert offer.preprocessor("canny") == "canny" and offer.preprocessor("tile") is None


# -- placement ---------------------------------------------------------------------------------

def test_layer_offset_is_crop_offset_plus_result_offset():
    region = plan.Region("inpaint", Box(100, 50, 512, 512), (512, 512))
    assert placement.place(region, (0, 0), 512, 512) == placement.Placement(100, 50, 512, 512)
    assert placement.place(region, (8, 16), 64, 32) == placement.Placement(108, 66, 64, 32)
    generated = plan.Region("generate", Box(0, 0, 250, 190), (592, 448), (592, 448))
    assert placement.place(generated, (0, 0), 592, 448) == placement.Placement(0, 0, 250, 190, scale=True)
    refined = plan.plan_region(3000, 2000, 0.5, 512)
    assert placement.place(refined, (0, 0), *refined.picture) == placement.Placement(0, 0, 3000, 2000)
    small = plan.plan_region(300, 200, 0.5, 512)
    assert placement.place(small, (0, 0), 300, 200) == placement.Placement(0, 0, 300, 200)


def test_a_result_fits_only_the_canvas_it_was_read_from_or_the_one_it_makes():
    assert placement.misfit((300, 200), (300, 200)) is None
    cropped = placement.misfit((260, 170), (300, 200))
    assert "260x170" in cropped and "300x200" in cropped and "Undo" in cropped
    assert placement.misfit((600, 400), (300, 200)) is not None  # scaled by the painter: off the picture
    # An upscale or expand makes a canvas: the document may be that already (an earlier result of its batch).
    assert placement.misfit((600, 400), (300, 200), made=(600, 400)) is None
    assert placement.misfit((300, 200), (300, 200), made=(600, 400)) is None
    assert placement.misfit((400, 300), (300, 200), made=(600, 400)) is not None


def test_layer_names_carry_prompt_and_seed():
    assert placement.layer_name("a  red\ndoor", 7) == "a red door [7]"
    long = placement.layer_name("x" * 100, 1)
    assert long.endswith("… [1]") and len(long) < 50
    assert placement.layer_name("a red door", 7, model="demo-base") == "a red door [7, demo-base]"
    # LoRA tags would fill the name; a job without a prompt says what it was
    assert placement.layer_name("<lora:detail:0.5> <LORA:ink-style:0.8>, a red door <lora:x>", 7) == "a red door [7]"
    assert placement.layer_name("<lora:detail:0.5>", 7, empty="removed") == "removed [7]"
    assert placement.layer_name("", 3, empty="expanded") == "expanded [3]"
    # in an animation the layer is a still one over every frame: its name says which frame it was made of
    assert placement.layer_name("a red door", 7, frame=0) == "a red door [7, frame 0]"
    assert placement.layer_name("a red door", 7, model="demo-base", frame=12) == "a red door [7, demo-base, frame 12]"


# -- the model picker ----------------------------------------------------------------------------

def test_the_model_picker_lists_what_each_model_is_and_can_do(client):
    entries = models.choices(client.models(), client.welcome["capabilities"])
    assert [e.name for e in entries] == [m["name"] for m in client.models()["models"]]
    demo, base, xl = (next(e for e in entries if e.name == n) for n in ("demo", "demo-base", "demo-xl"))
    assert demo.label == "demo (SD 1.5, 512 px) · default"
    assert xl.label.startswith("demo-xl (SDXL, ")
    assert "dedicated inpaint UNet" in demo.tooltip and "no inpaint UNet" in base.tooltip
    assert "ControlNet: canny" in base.tooltip and "reference layers: reference, style" in base.tooltip
    assert "instruct edits" in demo.tooltip and "instruct" not in base.tooltip
    # Each model's own capabilities, not the server's lists: the flux model takes neither ControlNets nor
    # references although the server has both configured for SD models.
    flux = next(e for e in entries if e.name == "demo-flux")
    assert flux.label.startswith("demo-flux (Flux, ") and "no ControlNet" in flux.tooltip
    assert "no reference layers" in flux.tooltip and "no negative prompt" in flux.tooltip
    assert "instruct edits (no image guidance)" in flux.tooltip
    only = next(e for e in entries if e.name == "demo-instruct")
    assert "cannot generate, img2img, inpaint, expand, remove" in only.tooltip
    caps = {**client.welcome["capabilities"], "control_types": [], "reference_families": ["sdxl"]}
    plain = models.describe({"name": "m", "family": "sd15", "native_size": 512}, caps)
    assert "no ControlNet" in plain.tooltip and "no reference layers" in plain.tooltip
    assert models.describe({"name": "x", "family": None, "native_size": None}).label == \
        "x (family unknown until loaded)"
    assert models.choices(None) == []


def test_the_picked_model_follows_the_document_then_the_painter_then_the_server():
    names = ["demo", "demo-base", "demo-xl"]
    assert models.pick(names, "demo-xl", "demo-base", "demo") == "demo-xl"
    assert models.pick(names, None, "demo-base", "demo") == "demo-base"
    assert models.pick(names, "gone", None, "demo") == "demo"  # a model the server no longer has
    assert models.pick(names, None, None, "also-gone") == "demo"
    assert models.pick([], "demo", "demo", "demo") is None


def test_document_settings_round_trip_and_foreign_bytes_read_as_none():
    saved = {"model": "demo-base"}
    assert models.read_saved(models.write_saved(saved)) == saved
    for junk in (None, b"", b"\xff\xfe", b"[1, 2]", b"not json"):
        assert models.read_saved(junk) == {}


def test_sending_only_the_crop_gives_the_same_layer_as_the_whole_canvas(client):
    """Against the real server: the plugin's crop + placement reproduce a whole-canvas inpaint."""
    width, height = 640, 480
    canvas = np.asarray(picture(width, height).convert("RGBA"))
    mask = np.asarray(rect_mask((width, height), (500, 380, 560, 420)))
    common = dict(prompt="a red door", seed=7, steps=2, output_format="rgba8")
    whole = client.run("inpaint", image=ImageData("rgba8", width, height, canvas.tobytes()),
                       mask=ImageData("l8", width, height, mask.tobytes()), **common).images[0]

    native = plan.native_size(client.models())
    sel = mask_bounds(mask.tobytes(), width, height)
    region = plan.plan_region(width, height, 1.0, native, (sel, mask[sel.y:sel.y1, sel.x:sel.x1].tobytes()))
    box = region.box
    assert box.width * box.height < width * height
    crop = lambda a: np.ascontiguousarray(a[box.y:box.y1, box.x:box.x1]).tobytes()  # noqa: E731
    job = plan.build_job(region, plan.Settings(prompt="a red door", seed=7, steps=2), crop(canvas), crop(mask))
    part = client.run(job).images[0]
    spot = placement.place(region, part.offset, part.image.width, part.image.height)
    assert (spot.x, spot.y) == whole.offset and (spot.width, spot.height) == (whole.image.width, whole.image.height)
    assert np.array_equal(decode(part.image), decode(whole.image))


# -- structure and packaging -------------------------------------------------------------------

PURE = ["pixels.py", "plan.py", "placement.py", "protocol.py", "models.py", "liveness.py", "turns.py"]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_adapter_imports_krita_and_the_core_no_qt():
    package = PLUGIN / "easel_krita"
    importers = sorted(p.name for p in package.glob("*.py") if "krita" in imports_of(p))
    assert importers == ["__init__.py", "host.py"]  # __init__ only probes whether it runs in Krita
    for name in PURE:
        assert not imports_of(package / name) & {"krita", "PyQt5", "PyQt6"}, name
    assert sorted(p.name for p in package.glob("*.py") if imports_of(p) & {"PyQt5", "PyQt6"}) == ["qt.py"]


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    return build("krita", tmp_path_factory.mktemp("dist"))


def test_the_zip_holds_what_krita_imports(plugin_zip):
    from importlib.metadata import version
    assert plugin_zip.name == f"easel-krita-{version('easel-bridge')}.zip"
    names = zipfile.ZipFile(plugin_zip).namelist()
    for wanted in ("easel.desktop", "easel_krita.action", "easel_krita/", "easel_krita/__init__.py",
                   "easel_krita/shared/client.py", "easel_krita/_vendor/websockets/sync/client.py",
                   "easel_krita/_vendor/websockets-LICENSE"):
        assert wanted in names
    assert not [n for n in names if n.endswith((".pyc", ".so")) or "__pycache__" in n]
    desktop = zipfile.ZipFile(plugin_zip).read("easel.desktop").decode()
    assert "X-KDE-Library=easel_krita" in desktop and "ServiceTypes=Krita/PythonPlugin" in desktop


def test_the_unpacked_plugin_runs_on_the_system_python_with_its_bundled_websockets(plugin_zip, tmp_path):
    # Krita's Python is the system one, which has no (recent) websockets: the bundled copy must do.
    zipfile.ZipFile(plugin_zip).extractall(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import easel_krita; from easel_krita import protocol; "
            "protocol.client_module(); import websockets; assert protocol._BUNDLED; print(websockets.__file__)")
    out = subprocess.run(["/usr/bin/python3", "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(tmp_path / "easel_krita" / "_vendor"))


def test_actions_have_shortcuts_that_krita_does_not_use_already():
    import re
    from xml.etree import ElementTree
    tree = ElementTree.parse(PLUGIN / "easel_krita.action")
    shortcuts = {a.get("name"): a.findtext("shortcut") for a in tree.iter("Action")}
    source = (PLUGIN / "easel_krita" / "extension.py").read_text()
    assert set(shortcuts) == set(re.findall(r'"(easel_\w+)": "Easel: ', source)) == {"easel_generate", "easel_cancel"}
    assert all(shortcuts.values())
    krita_actions = Path("/usr/share/krita/actions")
    if krita_actions.is_dir():  # Krita's own defaults, where it is installed
        taken = {s.lower() for f in krita_actions.glob("*.action")
                 for s in re.findall(r"<shortcut>([^<]+)</shortcut>", f.read_text())}
        assert not {s.lower() for s in shortcuts.values()} & taken


def test_remove_and_the_selection_settings_make_the_job():
    """The docker's Selection box (grow, feather, start from, soft) and its Remove button."""
    assert plan.choose_mode(True, 1.0, remove=True) == "remove"
    with pytest.raises(plan.PlanError, match="Select what to remove first"):
        plan.choose_mode(False, 1.0, remove=True)
    sel_box, sel_bytes = selection_on(640, 480, (300, 200, 40, 40))
    settings = plan.Settings(prompt="", remove=True, mask_grow=0, mask_feather=2, fill="blur", soft_inpaint=False)
    region = plan.plan_region(640, 480, 1.0, 512, (sel_box, sel_bytes), grow=0, feather=2, remove=True)
    assert region.mode == "remove" and region.picture == (region.box.width, region.box.height)
    w, h = region.picture
    job = plan.build_job(region, settings, bytes(w * h * 4), bytes(w * h))
    assert (job.mode, job.fill, job.soft_inpaint, job.mask_grow, job.mask_feather) == ("remove", "blur", False, 0, 2)
    assert job.prompt == "", "a removal needs no prompt"
    with pytest.raises(plan.PlanError, match=r"Remove refines the filled selection at 40% of the strength"):
        plan.build_job(region, dataclasses.replace(settings, steps=2), bytes(w * h * 4), bytes(w * h))
    inpaint = plan.build_job(plan.plan_region(640, 480, 1.0, 512, (sel_box, sel_bytes)),
                             plan.Settings(prompt="a door"), bytes(w * h * 4), bytes(w * h))
    assert inpaint.fill is None and inpaint.soft_inpaint is True
    with pytest.raises(plan.PlanError, match="Type a prompt first"):
        plan.build_job(region, plan.Settings(prompt=""), bytes(w * h * 4), bytes(w * h))
    spot = placement.place(region, (8, 4), 20, 10)
    assert (spot.x, spot.y, spot.scale) == (region.box.x + 8, region.box.y + 4, False)
    # Remove refines at 40% of the strength: with too few steps the way out is more steps, not more strength
    # (it said "2 steps at 100% strength leave no step to run: raise the strength or the steps").
    with pytest.raises(plan.PlanError, match=r"^Remove refines the filled selection at 40% of the strength: 2 steps "
                                             r"at 100% strength leave no step to run. Use at least 3 steps.$"):
        plan.build_job(region, dataclasses.replace(settings, steps=2), bytes(w * h * 4), bytes(w * h))
    refine = plan.plan_region(640, 480, 0.3, 512, (sel_box, sel_bytes))
    with pytest.raises(plan.PlanError, match=r"^3 steps at 30% strength leave no step to run: raise the strength, or "
                                             r"use at least 4 steps.$"):
        plan.build_job(refine, plan.Settings(prompt="a door", strength=0.3, steps=3), bytes(w * h * 4), bytes(w * h))
    # The same sentences before a pixel is read (Session.generate / upscale call this first).
    with pytest.raises(plan.PlanError, match=r"^3 steps at 30% strength leave no step to run: raise the strength, or "
                                             r"use at least 4 steps.$"):
        plan.check_steps(refine, plan.Settings(prompt="a door", strength=0.3, steps=3))
    with pytest.raises(plan.PlanError, match=r"^Remove refines the filled selection at 40% .* Use at least 3 steps.$"):
        plan.check_steps(region, dataclasses.replace(settings, steps=2))
    plan.check_steps(refine, plan.Settings(prompt="a door", strength=0.3, steps=4))
    plan.check_steps(plan.plan_region(640, 480, 1.0, 512), plan.Settings(prompt="a door", steps=1))  # a generate
    plan.check_steps(plan.plan_expand(64, 48, (8, 0, 0, 0)), plan.Settings(strength=0.01, steps=1))  # from noise
    same = plan.plan_upscale(101, 77, 1.0, 4096)  # the server refused it after the whole canvas was sent
    with pytest.raises(plan.PlanError, match=r"^An upscale to the document's own size without a refine changes"):
        plan.check_steps(same, plan.Settings(scale=1.0))
    plan.check_steps(same, plan.Settings(scale=1.0, refine=0.3, steps=10))  # a refine at full size


def test_expand_plans_the_whole_canvas_and_places_the_new_canvas_at_its_origin():
    region = plan.plan_expand(300, 200, (10, 0, 50, 20))
    assert region.mode == "expand" and region.box == Box(0, 0, 300, 200) and region.size == (360, 220)
    job = plan.build_job(region, plan.Settings(prompt="", expand=(10, 0, 50, 20), fill="blur"), bytes(300 * 200 * 4))
    assert (job.mode, job.expand, job.fill, job.mask) == ("expand", (10, 0, 50, 20), "blur", None)
    spot = placement.place(region, (0, 0), 360, 220)
    assert (spot.x, spot.y, spot.width, spot.height, spot.scale) == (0, 0, 360, 220, False)
    with pytest.raises(plan.PlanError, match="at least one side"):
        plan.plan_expand(300, 200, (0, 0, 0, 0))
    canvas = bytes([9, 9, 9, 255]) * (6 * 4)
    band = placement.band_only(canvas, 6, 1, 1, 3, 2)  # a 3 x 2 picture at (1, 1) on a 6 x 4 canvas
    alpha = band[3::4]
    assert [alpha[row * 6:(row + 1) * 6] for row in range(4)] == [
        bytes([255] * 6), bytes([255, 0, 0, 0, 255, 255]), bytes([255, 0, 0, 0, 255, 255]), bytes([255] * 6)]


# -- liveness ------------------------------------------------------------------------------------

def test_a_silent_server_is_probed_then_not_responding_then_responding_again():
    live = liveness.Liveness(probe_after=1.5, silent_after=5.0)
    assert live.tick(100.0) == liveness.Step()  # idle: silence is normal, nothing is sent
    live.wait(100.0)
    assert live.tick(101.0) == liveness.Step()
    assert live.tick(101.5).probe and not live.tick(102.0).probe  # one probe per 1.5 s of silence
    assert live.tick(103.0).probe
    live.heard(103.2)  # the probe's answer: the server is alive, a slow step is no hang
    assert live.tick(104.0) == liveness.Step() and live.responding
    assert live.tick(108.1).change is None  # 4.9 s since the answer
    assert live.tick(108.3) == liveness.Step(probe=False, change="not_responding")
    assert not live.responding and live.silence(108.3) == pytest.approx(5.1)
    assert live.tick(108.5).change is None  # said once
    live.heard(109.0)
    assert live.tick(109.1).change == "responding" and live.responding
    live.done()
    assert live.tick(200.0) == liveness.Step() and live.silence(200.0) == 0


def test_silence_counts_from_when_the_wait_began_not_from_the_last_message_before_it():
    live = liveness.Liveness(probe_after=1.5, silent_after=5.0)
    live.heard(10.0)  # the last idle heartbeat's answer
    live.wait(60.0)  # a job sent much later
    assert live.silence(61.0) == 1.0 and live.tick(61.0) == liveness.Step()
    assert live.tick(65.0).change == "not_responding"


def test_the_not_responding_sentence_says_what_the_painter_can_do():
    busy = liveness.not_responding("ws://box:8760/", 5.2, busy=True)
    assert "not responding (nothing for 5 s)" in busy and "Cancel stops waiting" in busy
    assert "reconnects" in liveness.not_responding("ws://box:8760/", 5, busy=False)


def test_a_probe_is_answered_mid_job_and_its_reply_is_not_kept(server):
    from shared.client import Client, Progress, Result
    with Client(server.url, name="pytest") as easel:
        job = easel.submit("generate", prompt="x", steps=6, width=64, height=64, seed=1, preview_every=0)
        seen = None
        for event in easel.events(job):
            if isinstance(event, Progress) and seen is None:
                seen = easel.heard
                easel.probe()
            if isinstance(event, Result):
                break
        assert easel.heard > seen
        status = easel.status()  # the probe's reply was dropped, so this is a fresh one
        assert status["running"] is None and not easel._replies["status"]


def test_abort_ends_a_reading_thread_at_once_without_resuming(server):
    import threading
    import time

    from shared.client import Client, EaselError
    easel = Client(server.url, name="pytest").connect()
    job = easel.submit("generate", prompt="x", steps=40, width=64, height=64, seed=1, preview_every=0)
    errors = []

    def read():
        try:
            for _ in easel.events(job):
                pass
        except EaselError as exc:
            errors.append((exc.code, time.monotonic()))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    started = time.monotonic()
    easel.abort()
    reader.join(5)
    assert errors and errors[0][0] == "closed" and errors[0][1] - started < 2


# -- strips and upscale ------------------------------------------------------------------------------

def test_strips_cover_the_box_in_full_width_bands_within_the_budget():
    box = Box(10, 20, 6000, 4000)
    bands = plan.strips(box, 4)
    assert all(b.x == 10 and b.width == 6000 and b.width * b.height * 4 <= plan.STRIP_BYTES for b in bands)
    assert [b.y for b in bands][0] == 20 and sum(b.height for b in bands) == 4000
    assert all(a.y1 == b.y for a, b in zip(bands, bands[1:]))
    assert len(bands) == 12  # 349 rows of 6000 8-bit pixels each
    assert plan.strips(Box(0, 0, 300, 200), 16) == [Box(0, 0, 300, 200)]  # small: one read
    assert len(plan.strips(Box(0, 0, 10**7, 3), 4)) == 3  # never less than a row


def test_a_refusal_only_the_painter_can_mend_is_not_retried():
    # A wrong token retried every few seconds flickered "Connecting …" over the sentence saying what to do.
    assert not liveness.retry("unauthorized") and not liveness.retry("unsupported_protocol")
    assert not liveness.retry("bad_url")
    assert liveness.retry("unreachable") and liveness.retry("closed") and liveness.retry("shutting_down")
    assert liveness.retry(None)
    # a pinned certificate that is not the server's fails the same way on every try
    assert not liveness.retry("unreachable", tls=True)


def test_an_insert_fills_the_whole_box_before_it_touches_the_document():
    box = Box(7, 3, 6000, 4000)
    steps = plan.insert_steps(box, 4, 6000 * 4000)
    fills = [s.box for s in steps if s.kind == "fill"]
    # The layer goes in whole, or not at all, with one change of the layer stack: one undo step for the
    # painter, even when the Easel group is made for it (making it first was a step of its own).
    assert [s.kind for s in steps[len(fills):]] == ["add"]
    assert all(s.kind == "fill" for s in steps[:len(fills)]) and len(fills) == 23  # 174 rows each
    assert fills[0].y == 3 and all(a.y1 == b.y for a, b in zip(fills, fills[1:])) and fills[-1].y1 == box.y1
    assert all(b.x == 7 and b.width == 6000 and b.width * b.height * 4 <= plan.WRITE_STRIP_BYTES for b in fills)
    assert steps[-1].alone and not any(s.alone for s in steps[:-1])


def test_an_insert_into_a_small_canvas_needs_no_turns_of_its_own():
    steps = plan.insert_steps(Box(10, 10, 50, 40), 4, 256 * 192)
    assert [(s.kind, s.alone) for s in steps] == [("fill", False), ("add", False)]
    # a small result in a huge canvas: the add still recomposites all of the canvas
    assert plan.insert_steps(Box(0, 0, 50, 40), 4, 6000 * 4000)[-1].alone


def _pieces(costs, budget=0.03):
    """Run a generator of pieces with these costs (seconds; "alone" marks a piece after ALONE) on a fake
    clock; returns the pieces run in each turn."""
    now, ran = [0.0], []

    def steps():
        for index, cost in enumerate(costs):
            heavy = isinstance(cost, tuple)
            yield turns.ALONE if heavy else None
            now[0] += cost[1] if heavy else cost
            ran[-1].append(index)
        return "layer"

    work = turns.Turns(steps(), budget, clock=lambda: now[0])
    while not work.done:
        ran.append([])
        work.turn()
    return ran, work.value


def test_turns_hold_about_a_budget_of_light_pieces():
    ran, value = _pieces([0.01] * 7)
    assert ran == [[0, 1, 2], [3, 4, 5], [6]] and value == "layer"
    assert _pieces([0.001] * 5)[0] == [[0, 1, 2, 3, 4]]  # quick work ends in the first turn


def test_a_heavy_piece_has_a_turn_to_itself():
    ran, value = _pieces([0.01, 0.01, ("alone", 0.1), ("alone", 0.1)])
    assert ran == [[0, 1], [2], [3]] and value == "layer"
    assert _pieces([("alone", 0.1), 0.01, 0.01])[0] == [[0], [1, 2]]  # first: no empty turn before it
    assert _pieces([0.001, ("alone", 0.001)])[0] == [[0], [1]]  # even when it would be quick


def test_an_upscale_sends_the_whole_canvas_and_its_result_is_the_new_canvas():
    region = plan.plan_upscale(256, 192, 2.0, 8192)
    assert (region.mode, region.box, region.size) == ("upscale", Box(0, 0, 256, 192), (512, 384))
    settings = plan.Settings(scale=2.0, upscaler="2x-demo-esrgan", refine=0.3, steps=10, seed=4)
    job = plan.build_job(region, settings, bytes(256 * 192 * 4))
    message = job.to_message(lambda image, role: {"frame": role})
    assert message["mode"] == "upscale" and message["scale"] == 2.0 and message["refine"] == 0.3
    assert message["upscaler"] == "2x-demo-esrgan" and "mask" not in message
    plain = plan.build_job(region, plan.Settings(scale=2.0), bytes(256 * 192 * 4)).to_message(lambda i, r: {})
    assert "refine" not in plain and "upscaler" not in plain  # the server's defaults
    assert placement.place(region, (0, 0), 512, 384) == placement.Placement(0, 0, 512, 384)
    with pytest.raises(plan.PlanError, match="up to 1024 pixels a side. Pick 1.7x or less"):
        plan.plan_upscale(600, 400, 2.0, 1024)
    # A server of fewer pixels than its side allows squared (a small GPU's max_pixels): refused before the
    # read, with the factor that fits, as the server refused it only after the whole canvas was sent.
    # (the largest that fits, to the spin box's two decimals: it offered 1.1x, 4400x3300, when 4720x3540 fit)
    with pytest.raises(plan.PlanError, match=r"4000x3000 is 8000x6000: .* up to 16,777,216 pixels in all. "
                                             r"Pick 1.18x or less"):
        plan.plan_upscale(4000, 3000, 2.0, 8192, 4096 * 4096)
    with pytest.raises(plan.PlanError, match="already as large as the server allows"):
        plan.plan_upscale(4096, 4096, 1.5, 8192, 4096 * 4096)
    assert plan.plan_upscale(4000, 3000, 1.18, 8192, 4096 * 4096).size == (4720, 3540)
    with pytest.raises(plan.PlanError, match="1 to 8 times"):
        plan.plan_upscale(600, 400, 9, 8192)
    with pytest.raises(plan.PlanError, match="10 steps at 5% refine leave no step to run: raise the refine, or use "
                                             "at least 20 steps"):
        plan.build_job(region, plan.Settings(scale=2.0, refine=0.05, steps=10), bytes(256 * 192 * 4))
    plan.build_job(region, plan.Settings(scale=2.0, refine=0.05, steps=20), bytes(256 * 192 * 4))  # as it says
    with pytest.raises(plan.PlanError, match="2 steps at 10% refine leave no step to run: .* at least 10 steps"):
        plan.check_upscale_refine(plan.Settings(scale=2.0, refine=0.1, steps=2))  # before a pixel is read
    plan.check_upscale_refine(plan.Settings(scale=2.0, refine=0.1, steps=10))
    plan.check_upscale_refine(plan.Settings(scale=2.0, steps=1))  # no refine: no step needed


def test_a_plain_upscale_is_named_for_the_upscale_not_for_a_prompt_left_in_the_box():
    assert placement.upscale_label("a castle", 2.0, 0.0) == "upscaled 2x"  # the prompt took no part in it
    assert placement.upscale_label("a castle", 1.5, 0.3) == "a castle"
    assert placement.upscale_label("  ", 3.3, 0.3) == "upscaled 3.3x"


# -- instruct edits and what the chosen model can do ------------------------------------------------

def rgba_of(image) -> bytes:
    return np.asarray(image.convert("RGBA")).tobytes()


def test_instruct_in_a_selection_edits_only_the_selection(client):
    """Instruct with a selection: the context crop and the selection's mask go with the job (as for
    inpaint); the layer sits on the selection and beyond the feathered mask it leaves the canvas as it is."""
    width, height, box = 256, 192, (100, 80, 40, 30)
    canvas = picture(width, height, seed=5)
    mask = np.asarray(rect_mask((width, height), (box[0], box[1], box[0] + box[2], box[1] + box[3]))).tobytes()
    sel = (Box(0, 0, width, height), mask)
    region = plan.plan_region(width, height, 1.0, 512, sel, instruct=True)
    assert (region.mode, region.masked) == ("instruct", True)
    assert region.box == context_crop(Box(*box), width, height, 512, margin=mask_margin(8, 16)).box
    crop = canvas.crop((region.box.x, region.box.y, region.box.x1, region.box.y1))
    x0, y0 = box[0] - region.box.x, box[1] - region.box.y
    crop_mask = rect_mask(crop.size, (x0, y0, x0 + box[2], y0 + box[3]))
    settings = plan.Settings(prompt="make it winter", steps=2, seed=4, instruct=True, image_guidance=2.0)
    job = plan.build_job(region, settings, rgba_of(crop), np.asarray(crop_mask).tobytes(),
                         model=plan.model_of(client.models(), "demo"))
    assert job.mask is not None and job.image_guidance == 2.0 and job.sampling.guidance == 7.5
    assert (job.mask_grow, job.mask_feather, job.fill) == (8, 16, None)
    result = client.run(job)
    assert (result.parameters["mode"], result.parameters["image_guidance"]) == ("instruct", 2.0)
    item = result.images[0]
    spot = placement.place(region, item.offset, item.image.width, item.image.height)
    layer = decode(item.image)
    assert not spot.scale and layer.shape[2] == 4
    composite = np.asarray(canvas.convert("RGBA")).copy()
    under = composite[spot.y:spot.y + spot.height, spot.x:spot.x + spot.width].astype(np.float64)
    alpha = layer[..., 3:4] / 255.0
    composite[spot.y:spot.y + spot.height, spot.x:spot.x + spot.width] = np.round(
        layer.astype(np.float64) * alpha + under * (1 - alpha)).astype(np.uint8)
    original = np.asarray(canvas.convert("RGBA"))
    reach = mask_margin(8, 16)
    beyond = np.ones((height, width), bool)
    beyond[box[1] - reach:box[1] + box[3] + reach, box[0] - reach:box[0] + box[2] + reach] = False
    assert np.array_equal(composite[beyond], original[beyond]), "pixels beyond the selection changed"
    inside = (slice(box[1], box[1] + box[3]), slice(box[0], box[0] + box[2]))
    assert (layer[..., 3][box[1] - spot.y:box[1] - spot.y + box[3], box[0] - spot.x:box[0] - spot.x + box[2]]
            == 255).all(), "the selection is not covered"
    assert not np.array_equal(composite[inside], original[inside]), "the selection was not edited"


def test_instruct_without_a_selection_edits_the_whole_picture(client):
    region = plan.plan_region(200, 150, 0.4, 512, None, instruct=True)
    assert (region.mode, region.masked, region.box) == ("instruct", False, Box(0, 0, 200, 150))
    job = plan.build_job(region, plan.Settings(prompt="make it winter", steps=2, seed=1, strength=0.4,
                                               instruct=True), rgba_of(picture(200, 150)))
    assert job.mask is None and job.image_guidance == 1.5 and job.sampling.strength == 1.0, "all steps run"
    message = parse_client_message(json.dumps(job.to_message(lambda image, role: {"frame": role})))
    assert message["mode"] == "instruct" and message["image_guidance"] == 1.5 and "mask" not in message
    item = client.run(job).images[0]
    spot = placement.place(region, item.offset, item.image.width, item.image.height)
    assert (spot.x, spot.y, spot.width, spot.height, spot.scale) == (0, 0, 200, 150, False)
    assert (decode(item.image)[..., 3] == 255).all()


def test_instruct_needs_an_instruction_and_remove_stays_remove():
    with pytest.raises(plan.PlanError, match="Type an instruction first"):
        plan.check_prompt(plan.Settings(prompt=" ", instruct=True), [])
    assert plan.choose_mode(True, 1.0, remove=True, instruct=True) == "remove"
    assert plan.choose_mode(False, 0.5, instruct=True) == "instruct"


def test_guidance_on_auto_suits_the_family_and_the_mode():
    assert plan.default_guidance("sd15", "img2img") == 7.0 and plan.default_guidance(None, "generate") == 7.0
    assert plan.default_guidance("sd15", "instruct") == 7.5
    assert plan.default_guidance("flux", "generate") == 3.5 and plan.default_guidance("flux", "inpaint") == 30.0
    assert plan.default_guidance("flux", "expand") == 30.0 and plan.default_guidance("flux", "instruct") == 2.5
    region = plan.Region("img2img", Box(0, 0, 2, 2), (8, 8))
    flux = ("f", plan.ModelCapabilities("flux", ("img2img",), negative_prompt=False))
    job = plan.build_job(region, plan.Settings(prompt="x", strength=0.5), bytes(16), model=flux)
    assert job.sampling.guidance == 3.5
    job = plan.build_job(region, plan.Settings(prompt="x", strength=0.5, guidance=5.0), bytes(16), model=flux)
    assert job.sampling.guidance == 5.0, "a guidance the painter set wins"


def test_guidance_on_auto_is_left_to_the_server_while_the_model_is_not_known():
    """Before ``models`` arrives (or for a model not loaded yet, family unknown) auto sends no guidance:
    7 would have run a Flux Fill inpaint at a quarter of its 30."""
    region = plan.Region("inpaint", Box(0, 0, 2, 2), (8, 8), masked=True)
    job = plan.build_job(region, plan.Settings(prompt="x"), bytes(16), bytes(4))
    assert job.sampling.guidance is None and "guidance" not in job.to_message(lambda image, role: {})
    unloaded = ("f", plan.ModelCapabilities(None, ("inpaint",)))
    job = plan.build_job(region, plan.Settings(prompt="x"), bytes(16), bytes(4), model=unloaded)
    assert job.sampling.guidance is None
    job = plan.build_job(region, plan.Settings(prompt="x", guidance=4.0), bytes(16), bytes(4))
    assert job.sampling.guidance == 4.0, "a guidance the painter set is sent"


TINY = ImageData("rgba8", 2, 2, bytes(16))


@pytest.mark.parametrize("model, mode, change, words", [
    ("demo-base", "instruct", {}, "The model “demo-base” cannot edit by instruction: it serves generate, img2img, "
                                  "inpaint, expand, remove, upscale. Pick a model with an instruct component"),
    ("demo-instruct", "img2img", {}, "The model “demo-instruct” cannot refine a picture: it serves instruct."),
    ("demo-flux-file", "inpaint", {}, "The model “demo-flux-file” cannot inpaint a selection"),
    ("demo-flux", "img2img", {"controls": [plan.ControlUnit("canny", TINY)]},
     "The model “demo-flux” cannot use a canny control layer: take it off the list"),
    ("demo", "instruct", {"controls": [plan.ControlUnit("canny", TINY)]},
     "The model “demo” cannot use a canny control layer in an instruct edit"),
    ("demo-flux", "img2img", {"references": [plan.Reference(TINY)]}, "The model “demo-flux” cannot use reference "
                                                                      "layers: take them off the list"),
    ("demo-flux", "img2img", {"negative_prompt": "blur"}, "The model “demo-flux” takes no negative prompt"),
    ("demo-flux", "instruct", {"image_guidance": 2.0}, "The model “demo-flux” has no image guidance"),
    ("demo-flux", "img2img", {"prompt": "x <lora:demo-lora:0.8>"},
     "The model “demo-flux” takes no LoRAs: take the <lora:demo-lora> tag out of the prompt"),
])
def test_what_the_chosen_model_cannot_do_is_a_sentence_before_sending(client, model, mode, change, words):
    """The plan checks the job against the picked model's ``capabilities`` (the server's own rule): the
    painter reads a sentence at once, both before the pixels are read and on the finished job."""
    reply = client.models()
    picked = plan.model_of(reply, model)
    masked = mode == "inpaint"
    region = plan.Region(mode, Box(0, 0, 2, 2), (8, 8), masked=masked)
    settings = plan.Settings(prompt=change.get("prompt", "x"), strength=0.5, model=model, instruct=mode == "instruct",
                             negative_prompt=change.get("negative_prompt", ""),
                             image_guidance=change.get("image_guidance"))
    controls, references = change.get("controls", []), change.get("references", [])
    with pytest.raises(plan.PlanError) as early:
        plan.check_model(region, settings, [(u.type, u.scale) for u in controls],
                         [(r.mode, r.weight) for r in references], picked)
    assert str(early.value).startswith(words)
    with pytest.raises(plan.PlanError) as late:
        plan.build_job(region, settings, bytes(16), bytes(4) if masked else None, controls, references, picked)
    assert str(late.value) == str(early.value)
    # The server, asked the same, refuses it too (the plan only says so sooner).
    job = plan.build_job(region, settings, bytes(16), bytes(4) if masked else None, controls, references)
    with pytest.raises(Exception) as refused:
        client.run(job)
    assert getattr(refused.value, "code", None) in ("unsupported", "unsupported_mode")


def test_what_each_model_can_do_passes(client):
    reply = client.models()
    for model, mode, settings in [
            ("demo-flux", "inpaint", plan.Settings(prompt="x", model="demo-flux")),
            ("demo-flux", "instruct", plan.Settings(prompt="x", model="demo-flux", instruct=True, image_guidance=None)),
            ("demo", "instruct", plan.Settings(prompt="x", instruct=True, negative_prompt="blur")),
            ("demo-instruct", "instruct", plan.Settings(prompt="x", model="demo-instruct", instruct=True))]:
        region = plan.Region(mode, Box(0, 0, 2, 2), (8, 8), masked=mode == "inpaint")
        plan.check_model(region, settings, model=plan.model_of(reply, model))
    assert plan.model_of(reply, None)[0] == reply["default"] and plan.model_of(reply, "nope") is None


def test_an_upscale_refine_the_model_cannot_run_is_refused_before_the_read():
    # It was refused only on the worker, after the whole picture had been read; a plain upscale runs no model.
    instruct = ("i", plan.ModelCapabilities("sd15", ("instruct",)))
    region = plan.plan_upscale(64, 48, 2, 4096)
    with pytest.raises(plan.PlanError, match="cannot refine an upscale"):
        plan.check_model(region, plan.Settings(prompt="x", scale=2, refine=0.3), model=instruct)
    plan.check_model(region, plan.Settings(scale=2), model=instruct)


def test_a_flux_inpaint_goes_to_the_flux_model_and_keeps_the_canvas_outside_the_selection(client):
    """With a flux model picked, Generate on a selection is an ordinary inpaint (the server uses the model's
    Fill transformer) at Flux's guidance; outside the feathered mask the canvas is byte-identical."""
    width, height, box = 128, 96, (40, 30, 24, 20)
    canvas = picture(width, height, seed=2)
    mask = np.asarray(rect_mask((width, height), (box[0], box[1], box[0] + box[2], box[1] + box[3]))).tobytes()
    region = plan.plan_region(width, height, 1.0, 512, (Box(0, 0, width, height), mask), grow=2, feather=4)
    crop = canvas.crop((region.box.x, region.box.y, region.box.x1, region.box.y1))
    x0, y0 = box[0] - region.box.x, box[1] - region.box.y
    crop_mask = rect_mask(crop.size, (x0, y0, x0 + box[2], y0 + box[3]))
    settings = plan.Settings(prompt="a red door", steps=2, seed=3, model="demo-flux", mask_grow=2, mask_feather=4)
    job = plan.build_job(region, settings, rgba_of(crop), np.asarray(crop_mask).tobytes(),
                         model=plan.model_of(client.models(), "demo-flux"))
    assert job.sampling.guidance == 30.0
    result = client.run(job)
    assert (result.parameters["model"], result.parameters["mode"]) == ("demo-flux", "inpaint")
    listed = {m["name"]: m for m in client.models()["models"]}  # the docker reads them again after a job
    assert listed["demo-flux"]["loaded"] and listed["demo-flux"]["capabilities"]["control_types"] == []
    layer = decode(result.images[0].image)
    reach = mask_margin(2, 4)
    outside = np.ones(layer.shape[:2], bool)
    x0, y0 = box[0] - region.box.x, box[1] - region.box.y
    outside[max(0, y0 - reach):y0 + box[3] + reach, max(0, x0 - reach):x0 + box[2] + reach] = False
    assert (layer[..., 3][outside] == 0).all(), "the layer covers pixels outside the selection"
    assert (layer[..., 3][y0:y0 + box[3], x0:x0 + box[2]] == 255).all()


def test_a_flux_expand_goes_to_the_flux_model_and_keeps_the_old_canvas(client):
    region = plan.plan_expand(64, 48, (16, 0, 0, 8))
    canvas = picture(64, 48, seed=4)
    settings = plan.Settings(steps=2, seed=2, model="demo-flux", expand=(16, 0, 0, 8))
    job = plan.build_job(region, settings, rgba_of(canvas), model=plan.model_of(client.models(), "demo-flux"))
    assert job.sampling.guidance == 30.0 and job.negative_prompt == ""
    result = client.run(job)
    assert (result.parameters["model"], result.parameters["mode"]) == ("demo-flux", "expand")
    grown = decode(result.images[0].image)
    assert grown.shape[:2] == (56, 80)
    assert np.array_equal(grown[0:48, 16:80, :3], np.asarray(canvas)), "the old canvas changed"


def test_the_docker_offers_only_what_the_chosen_model_can_do(client):
    reply, server = client.models(), capabilities.offer(client.welcome["capabilities"])

    def offer_for(name):
        return models.offer(name, plan.model_of(reply, name)[1], server)

    demo = offer_for("demo")
    assert (demo.generate, demo.remove, demo.expand, demo.instruct, demo.control, demo.reference,
            demo.negative_prompt, demo.image_guidance) == ("",) * 8
    assert demo.control_types == server.control_types and "face" in demo.reference_modes
    flux = offer_for("demo-flux")
    assert flux.control_types == () and flux.reference_modes == ()
    assert flux.control == "The model “demo-flux” (Flux) takes no ControlNet units."
    assert flux.reference == "The model “demo-flux” (Flux) takes no reference layers (IP-Adapter)."
    assert flux.negative_prompt.startswith("The model “demo-flux” takes no negative prompt")
    assert flux.image_guidance.startswith("The model “demo-flux” has no image guidance")
    assert (flux.generate, flux.remove, flux.expand, flux.instruct) == ("",) * 4, "Fill and Kontext serve these"
    base = offer_for("demo-base")
    assert base.instruct.startswith("The model “demo-base” cannot edit by instruction")
    assert base.image_guidance == "The model “demo-base” makes no instruct edits."
    only = offer_for("demo-instruct")
    assert only.generate == "The model “demo-instruct” cannot generate, refine or inpaint: it serves instruct."
    assert only.remove and only.expand and not only.instruct
    fill_less = offer_for("demo-flux-file")
    assert fill_less.remove and fill_less.expand and fill_less.instruct and not fill_less.generate
    # An SD model on a server without its family's adapters: the server's configuration is named.
    bare = models.offer("m", plan.ModelCapabilities("sdxl", ("generate",)), server)
    assert bare.control == "No ControlNet is configured for SDXL models on this server."
    # Nothing known of the model: the server's own offer.
    unknown = models.offer(None, None, server)
    assert unknown.control_types == server.control_types and unknown.instruct == ""
    # What the prompt completes: the model's family's LoRAs and embeddings, none on flux.
    assert set(demo.loras) == {"demo-lora", "demo-lora-diffusers"} and "demo-embedding" in demo.embeddings
    assert "demo-embedding-xl" not in demo.embeddings and "demo-embedding-xl" in unknown.embeddings
    assert flux.loras == () and flux.embeddings == ()


LORAS, EMBEDDINGS = ("ink-wash", "Paper", "detail-tweaker"), ("easynegative", "EasyStyle", "bad-hands-5")


@pytest.mark.parametrize("text, cursor, expected", [
    ("a cat <", None, Completion(6, 7, ("<lora:detail-tweaker:1>", "<lora:ink-wash:1>", "<lora:Paper:1>"))),
    ("a cat <LoRa:pa", None, Completion(6, 14, ("<lora:Paper:1>",))),  # names and "lora:" in any case
    ("<lora:tw", None, Completion(0, 8, ("<lora:detail-tweaker:1>",))),  # within the name too
    ("<lora:ink:0.", None, None),  # the weight is being typed
    ("<img", None, None),
    ("blurry, easy", None, Completion(8, 12, ("easynegative", "EasyStyle"))),
    ("blurry, easyneg, ugly", 12, Completion(8, 15, ("easynegative", "EasyStyle"))),  # the whole word goes
    ("easynegative", None, None),  # typed in full
    ("e", None, None),  # one letter offers nothing
    ("(embedding:", None, Completion(1, 11, ("embedding:bad-hands-5", "embedding:easynegative",
                                             "embedding:EasyStyle"))),
    ("hands", None, Completion(0, 5, ("bad-hands-5",))),
])
def test_the_prompt_completes_lora_tags_and_embedding_names(text, cursor, expected):
    assert complete(text, len(text) if cursor is None else cursor, LORAS, EMBEDDINGS) == expected


def test_nothing_to_complete_without_loras_or_embeddings():
    assert complete("a cat <", 7, (), EMBEDDINGS) is None and complete("easy", 4, LORAS, ()) is None


@pytest.mark.parametrize("text, start, end, up, expected", [
    ("a red door", 2, 5, True, ("a (red:1.1) door", 3, 6)),
    ("a (red:1.1) door", 3, 6, True, ("a (red:1.2) door", 3, 6)),
    ("a (red:1.1) door", 3, 6, False, ("a red door", 2, 5)),  # weight 1: no group
    ("a red door", 3, 3, False, ("a (red:0.9) door", 3, 6)),  # the word at the cursor
    ("a (red door:1.5), sky", 5, 5, True, ("a (red door:1.6), sky", 3, 11)),  # the group the cursor is in
    ("a  red  door", 1, 7, True, ("a  (red:1.1)  door", 4, 7)),  # the selection's spaces stay out
    ("(a:10)", 1, 2, True, ("(a:10)", 1, 2)),  # the syntax's limit
    ("(a:0.1)", 1, 2, False, ("(a:0)", 1, 2)),
    ("a , b", 2, 2, True, ("a , b", 2, 2)),  # nothing at the cursor
    ("(style: baroque)", 3, 3, True, ("((style:1.1): baroque)", 2, 7)),  # words after the colon: no weight
])
def test_ctrl_arrows_weigh_the_words_at_the_cursor(text, start, end, up, expected):
    assert reweigh(text, start, end, up) == expected


def test_a_job_the_server_cancelled_says_why():
    # `cancelled.reason`: the painter pressed no Cancel, and a bare "Cancelled" read as if they had.
    assert plan.cancelled_sentence(None) == "Cancelled; nothing was added."
    assert plan.cancelled_sentence("shutting_down") == ("Cancelled by the server: the server is shutting down; "
                                                        "nothing was added.")
    assert plan.cancelled_sentence("overheated") == ("Cancelled by the server: the server gave the reason "
                                                     "'overheated'; nothing was added.")


def test_the_model_says_whether_it_takes_loras_and_clip_skip():
    """``models[].capabilities.loras`` / ``clip_skip``; a server older than them: flux takes neither."""
    said = plan.ModelCapabilities.from_wire("sd15", {"modes": ["img2img"], "loras": False, "clip_skip": False})
    assert not said.loras and not said.clip_skip
    older = plan.ModelCapabilities.from_wire("flux", {"modes": ["img2img"]})
    assert not older.loras and not older.clip_skip
    assert plan.ModelCapabilities.from_wire("sd15", {"modes": ["img2img"]}).loras
    region = plan.Region("img2img", Box(0, 0, 2, 2), (8, 8))
    with pytest.raises(plan.PlanError, match="takes no LoRAs"):
        plan.check_model(region, plan.Settings(prompt="x <lora:ink>", strength=0.5), model=("sd-x", said))
    plan.check_model(region, plan.Settings(prompt="x <lora:ink:0>", strength=0.5), model=("sd-x", said))  # off
    entry = {"name": "sd-x", "family": "sd15", "capabilities": said.to_wire()}
    assert "no LoRAs" in models.describe(entry).tooltip

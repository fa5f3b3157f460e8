"""ControlNet units through the real server, on the demo model's tiny ControlNets."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import decode, picture, png, rect_mask
from shared.client import EaselError


def halves(size, vertical=True):
    """An asymmetric control map: white on one half, black on the other."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    if vertical:
        pixels[:, : width // 2] = 255
    else:
        pixels[: height // 2] = 255
    return Image.fromarray(pixels)


def run(client, mode="img2img", control=(), **params):
    image = picture(256, 256)
    base = {"prompt": "a house", "steps": 4, "seed": 3}
    if mode != "generate":
        base["image"] = png(image)
        base["strength"] = 0.8
    if mode == "inpaint":
        base["mask"] = png(rect_mask(image.size, (60, 60, 200, 200)))
    units = [{**unit, "image": {"data": png(unit["image"]).to_base64()}} if "image" in unit else unit
             for unit in control]
    params = {**base, **params}
    if units:
        params["control"] = units
    result = client.run(mode, width=256, height=256, **params) if mode == "generate" else client.run(mode, **params)
    return decode(result.images[0].image)


@pytest.mark.parametrize("mode", ["generate", "img2img", "inpaint"])
def test_scale_zero_equals_no_control_and_scale_one_differs(client, mode):
    plain = run(client, mode)
    off = run(client, mode, [{"type": "canny", "image": halves((256, 256)), "scale": 0}])
    on = run(client, mode, [{"type": "canny", "image": halves((256, 256)), "scale": 1}])
    assert (off == plain).all()
    assert np.abs(on.astype(int) - plain).mean() > 1


def test_start_and_end_change_the_result(client):
    unit = {"type": "depth", "image": halves((256, 256))}
    whole = run(client, "img2img", [unit])
    late = run(client, "img2img", [{**unit, "start": 0.5}])
    assert not (whole == late).all()


def test_two_units_at_once(client):
    one = run(client, "inpaint", [{"type": "canny", "image": halves((256, 256))}])
    two = run(client, "inpaint", [{"type": "canny", "image": halves((256, 256))},
                                  {"type": "depth", "image": halves((256, 256), vertical=False)}])
    assert not (one == two).all()


def test_control_image_of_another_size_is_resized_like_the_picture(client):
    """A half-size asymmetric map steers like the same map at full size, not like its mirror image."""
    big = halves((256, 256))
    small = big.resize((128, 96), Image.Resampling.NEAREST)  # another size and another aspect
    mirrored = big.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    reference, from_small, from_mirror = (run(client, "inpaint", [{"type": "canny", "image": control}]).astype(int)
                                          for control in (big, small, mirrored))
    assert np.abs(from_small - reference).mean() < 0.5 * np.abs(from_mirror - reference).mean()


def test_unit_without_image_uses_the_picture_and_preprocesses(client):
    plain = run(client, "img2img")
    canny = run(client, "img2img", [{"type": "canny", "preprocess": "on"}])
    assert not (canny == plain).all()


def test_inpaint_with_control_keeps_untouched_pixels(client):
    image = picture(256, 256)
    layer = run(client, "inpaint", [{"type": "inpaint"}, {"type": "canny", "image": halves((256, 256))}])
    outside = layer[..., 3] == 0
    assert outside.any() and (layer[outside][:, :3] == np.asarray(image)[outside]).all()


def test_missing_control_model_and_preprocessor_are_clear_errors(client):
    with pytest.raises(EaselError) as caught:
        run(client, "img2img", [{"type": "tile", "preprocess": "on"}])
    assert caught.value.code == "unknown_preprocessor" and "tile" in caught.value.message
    with pytest.raises(EaselError) as caught:
        run(client, "generate", [{"type": "canny"}])
    assert caught.value.field == "control[0].image"


def test_preprocess_returns_a_map_of_the_inputs_size(client):
    image = picture(300, 200)
    control_map = decode(client.preprocess("canny", png(image)))
    assert control_map.shape == (200, 300, 4)
    extremes = np.isin(control_map[..., :3], (0, 255)).mean()
    assert extremes > 0.9, "an edge map (black with white edges), not a picture"
    raw = client.preprocess("canny", png(image), output_format="rgba8")
    assert raw.format == "rgba8"
    np.testing.assert_array_equal(decode(raw), control_map)
    assert control_map[..., :3].max() > 200, "edges were found"
    with pytest.raises(EaselError) as caught:
        client.preprocess("inpaint", png(image))
    assert caught.value.code == "unknown_preprocessor"


def test_unknown_control_model_names_type_and_family(demo_config):
    import dataclasses

    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device
    from backend.server import ServerThread
    from shared.client import Client

    canny = demo_config.controlnets["sd15"]["canny"]
    only_sd15 = dataclasses.replace(demo_config, controlnets={"sd15": {"canny": canny}})
    engine = Engine(ModelRegistry(only_sd15, *pick_device("cpu")))
    with ServerThread(only_sd15, engine) as server, Client(server.url) as other:
        with pytest.raises(EaselError) as caught:
            run(other, "img2img", [{"type": "canny", "image": halves((256, 256))}], model="demo-xl")
    assert caught.value.code == "unknown_control_model"
    assert "canny" in caught.value.message and "sdxl" in caught.value.message
    assert caught.value.field == "control[0].type"


@pytest.mark.parametrize("mode", ["generate", "img2img", "inpaint"])
def test_sdxl_control_units(client, mode):
    plain = run(client, mode, model="demo-xl")
    steered = run(client, mode, [{"type": "canny", "image": halves((256, 256))}], model="demo-xl")
    assert np.abs(steered.astype(int) - plain).mean() > 1


def test_controlnets_beyond_the_budget_drop_the_least_recent_never_the_jobs_own(demo_config, monkeypatch):
    from backend.engine.controlnets import ControlNetCache

    cache = ControlNetCache(demo_config.controlnets, torch.device("cpu"), torch.float32, budget_bytes=1)
    loads = []
    original = cache._load
    monkeypatch.setattr(cache, "_load", lambda source: loads.append(source) or original(source))
    kinds = list(demo_config.controlnets["sd15"])[:3]

    pair = cache.get("sd15", kinds[:2])
    assert cache.get("sd15", kinds[:2]) == pair and len(loads) == 2  # both kept, though over the budget
    cache.get("sd15", kinds[2:3])
    assert cache.loaded() == [("sd15", kinds[2])]  # the others were least recent
    cache.get("sd15", kinds[1:3])
    assert cache.loaded() == [("sd15", kinds[1]), ("sd15", kinds[2])] and len(loads) == 4


@pytest.mark.parametrize("mode", ["img2img", "expand"])
def test_a_unit_on_the_picture_itself_never_sees_the_colour_under_transparency(client, mode):
    # The model's input is pre-filled where the picture is transparent (an expand's new band too), but a unit
    # without `image` read the colour stored there (black, or whatever was erased): a tile unit pulled an
    # expand's band toward black, and a canny preprocess drew the picture's border as an edge.
    rgba = np.dstack([np.asarray(picture(128, 128)), np.full((128, 128), 255, np.uint8)])
    rgba[:, 80:, 3] = 0
    hidden_black, hidden_white = rgba.copy(), rgba.copy()
    hidden_black[:, 80:, :3], hidden_white[:, 80:, :3] = 0, 255
    params = {"prompt": "x", "steps": 2, "seed": 4, "strength": 0.8}
    if mode == "expand":
        params["expand_right"] = 64

    def result(pixels, control):
        layer = decode(client.run(mode, image=png(Image.fromarray(pixels, "RGBA")), control=control,
                                  **params).images[0].image)
        return np.where(layer[..., 3:] > 0, layer, 0)  # (an expand keeps the picture's hidden colour, unseen)

    assert (result(hidden_black, []) == result(hidden_white, [])).all(), "the model's input is pre-filled"
    for unit in ({"type": "tile"}, {"type": "canny", "preprocess": "on"}):
        assert (result(hidden_black, [unit]) == result(hidden_white, [unit])).all(), unit["type"]


def test_a_transparent_control_map_or_reference_reads_as_painted_not_as_its_hidden_colour(client):
    # A sketch in dark strokes on a transparent layer (a paint program's or a web canvas's PNG, sent as it is by
    # `easel run --control`) read as an all-black map: the colour under transparency is black, as the strokes.
    strokes = np.zeros((128, 128, 4), np.uint8)
    strokes[30:34, 10:118, 3] = strokes[10:118, 60:64, 3] = 255  # black strokes, black under transparency
    lines = np.zeros((128, 128, 3), np.uint8)
    lines[30:34, 10:118] = lines[10:118, 60:64] = 255  # the same lines as a ready map: white on black
    photo = np.asarray(picture(128, 128))
    cut_out = np.dstack([photo, np.full((128, 128), 255, np.uint8)])
    cut_out[:, 64:] = 0  # half the reference erased: transparent, black under it
    on_paper = np.asarray(picture(128, 128)).copy()
    on_paper[:, 64:] = 255

    def result(**params):
        return decode(client.run("img2img", image=png(picture(128, 128, seed=1)), prompt="x", steps=2, seed=4,
                                 strength=0.8, **params).images[0].image)

    def as_png(pixels):
        return png(Image.fromarray(pixels))

    assert (result(control=[{"type": "canny", "image": as_png(strokes)}]) ==
            result(control=[{"type": "canny", "image": as_png(lines)}])).all()
    assert (result(references=[{"image": as_png(cut_out)}]) == result(references=[{"image": as_png(on_paper)}])).all()

"""The edit toolbox: soft inpainting, transparency, pre-fill modes, expand and remove.

Pure parts (mask ramp, fills, composite) are checked on arrays; the rest through a real server and
the real client on the demo model (9-channel inpaint UNet: ``demo``; 4-channel base: ``demo-base``).
"""

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from backend.engine import compose, fill, masks
from backend.engine.engine import expand_match
from backend.engine.expand import expand_plan
from backend.engine.job import EditJob
from backend.engine.passes import plan_passes
from backend.imaging import to_array
from conftest import decode, picture, png, rect_mask
from shared.client import EaselError, Started
from shared.compose import composite
from shared.images import ImageData
from shared.rules import blend_over, reach

# -- soft inpainting: the alpha ramp ------------------------------------------------------------


def hard_square(size=96, lo=36, hi=60):
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo:hi] = 255
    return mask


@pytest.mark.parametrize("feather", [8, 16, 40])
def test_soft_feather_is_a_continuous_ramp_without_a_step(feather):
    lo = reach(8, feather) + 10
    alpha = masks.shape_mask(hard_square(2 * lo + 40, lo, lo + 40), 8, feather, soft=True)
    steps = np.abs(np.diff(alpha.astype(int), axis=1)).max()
    assert steps <= 255 / 8, f"largest one-pixel step {steps} is over 1/8 of the ramp"
    assert (alpha[lo - 8:lo + 48, lo - 8:lo + 48] == 255).all(), "the mask and its growth stay at full strength"
    assert (alpha[lo + 20, :lo - reach(8, feather)] == 0).all(), "within shared.rules.reach"
    ramp = alpha[lo + 20, lo - 8 - feather * 3 // 2 - 1:lo - 8]
    assert (np.diff(ramp.astype(int)) >= 0).all() and ramp[0] == 0 and len(set(ramp.tolist())) > feather


def test_soft_feather_keeps_soft_mask_values():
    half = hard_square() // 2  # a 50% selection
    alpha = masks.shape_mask(half, 8, 16, soft=True)
    assert (alpha[half > 0] == 127).all() and alpha.max() == 127, "a half-strength selection stays half"
    assert 0 < alpha[48, 36 - 8 - 6] < 127 and alpha[48, 0] == 0, "and fades outward from there"


def test_faint_specks_in_a_painted_mask_do_not_spread():
    """A brush's faint stray values (gradio 4's editor leaves some) stay where they are: a ramp only
    grows from mask values of 31 and more."""
    mask = hard_square()
    mask[90, 5] = 3
    alpha = masks.shape_mask(mask, 8, 16, soft=True)
    assert alpha[90, 5] == 3 and alpha[90, 14] == 0 and alpha[81, 5] == 0, "grown, not ramped"


def test_hard_feather_keeps_the_old_half_height_step():
    alpha = masks.shape_mask(hard_square(), 8, 16, soft=False)
    row = alpha[48].astype(int)
    assert np.abs(np.diff(row)).max() > 100, "today's max(grown, blur) edge, kept behind soft_inpaint=false"


# -- transparency: the one composite ------------------------------------------------------------


def test_composite_over_transparent_pixels_never_shows_their_hidden_colour():
    base = np.zeros((32, 32, 4), np.uint8)
    base[..., :3] = (255, 0, 255)  # magenta hidden under alpha 0 ...
    base[:, 16:] = (10, 120, 30, 255)  # ... beside an opaque green half
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[..., :3] = (200, 200, 200)
    layer[..., 3] = np.linspace(0, 255, 32).astype(np.uint8)[None, :].repeat(32, 0)
    out = composite(base, layer, (0, 0))
    seen = layer[..., 3] > 0
    left = seen[:, :16]
    assert (out[:, :16][left][:, :3] == 200).all(), "over a transparent pixel the layer's colour is all there is"
    assert (out[..., 3][~seen] == base[..., 3][~seen]).all(), "alpha outside the layer is the picture's"
    assert (out[:, 16:, 3] == 255).all()
    assert blend_over(200, 10, 77, 0) == (200, 10) and blend_over(200, 0, 77, 40) == (77, 40)


def test_sixteen_bit_colour_is_rounded_not_truncated(tmp_path):
    import cv2

    rng = np.random.default_rng(3)
    wide = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    ok, data = cv2.imencode(".png", wide[..., ::-1])
    pixels = to_array(Image.open(io.BytesIO(data.tobytes())), "RGB", data.tobytes())
    np.testing.assert_array_equal(pixels, np.rint(wide / 257).astype(np.uint8))


# -- pre-fill -----------------------------------------------------------------------------------


def test_fill_modes_fill_only_the_mask():
    rgb = np.asarray(picture(96, 64))
    mask = np.asarray(rect_mask((96, 64), (30, 20, 60, 44)))
    inside, outside = mask == 255, mask == 0
    results = {mode: fill.prefill(rgb, None, mask, mode) for mode in ("none", "neutral", "blur", "border", "inpaint")}
    for mode, out in results.items():
        assert (out[outside] == rgb[outside]).all(), mode
    assert (results["none"] == rgb).all()
    assert (results["neutral"][inside] == 127).all()
    np.testing.assert_array_equal(results["border"][25, 30:45], np.repeat(rgb[25, 29:30], 15, axis=0))
    ring = masks.grow(mask, 6).astype(bool) & outside
    blurred = results["blur"][inside].astype(int)
    assert np.abs(np.diff(results["blur"][20:44, 30:60].astype(int), axis=1)).mean() < 3, "blur is smooth"
    assert np.abs(blurred.mean(0) - rgb[ring].mean(0)).max() < 40, "blur takes the colours around"

    def seam(out):  # how much the fill jumps across the mask's left and right edges
        return (np.abs(out[20:44, 30].astype(int) - rgb[20:44, 29]).mean()
                + np.abs(out[20:44, 59].astype(int) - rgb[20:44, 60]).mean())

    assert seam(results["inpaint"]) < 0.5 * seam(results["neutral"]), "Telea continues the edges inward"
    assert seam(results["border"]) == 0


def test_transparent_pixels_are_filled_as_new_canvas():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:, :20] = (30, 90, 200)
    rgb[:, 20:] = (255, 0, 255)  # hidden under alpha 0
    alpha = np.zeros((40, 40), np.uint8)
    alpha[:, :20] = 255
    out = fill.prefill(rgb, alpha, None, "none")
    assert (out[:, 20:] == (30, 90, 200)).all(), "edge-extended from the visible part, not the hidden colour"


def test_expand_plan_covers_the_band_once_at_native_scale():
    plans = expand_plan((300, 400), (0, 0, 900, 0), 256)
    todo = np.zeros((300, 1300), int)
    for box, size, mask, alpha in plans:
        todo[box.y:box.y1, box.x:box.x1] += alpha == 255
        assert size[0] * size[1] <= 1.5 * 256 * 256 and (box.width, box.height) == size, "native scale"
        assert (mask[alpha == 255] == 255).all()
    assert (todo[:, 400:] == 1).all() and (todo[:, :400] == 0).all(), "each band pixel in one cell, no picture pixel"
    assert len(plans) > 2


def smooth(width, height, seed=0):
    """Photo-like light: a gradient with soft blotches (about a level a pixel, no hard edges)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.dstack([70 + 90 * x / width, 80 + 70 * y / height, 150 - 50 * x / width])
    rgb += 30 * np.dstack([np.cos(x / 23 + c) * np.sin(y / 17 - c) for c in range(3)])
    rgb += rng.normal(0, 1.5, rgb.shape)
    return np.dstack([np.clip(np.rint(rgb), 0, 255), np.full((height, width), 255)]).astype(np.uint8)


def grad(rgba):
    grey = rgba[..., :3].astype(np.float64).mean(axis=2)
    return np.hypot(*np.gradient(grey))


def expand_with_wrong_light(truth, sides, match=True, native=64):
    """An expand of ``truth`` less its ``sides`` whose every pass returns the truth with its light off
    (each pass by its own 14-34 levels, sloping by 6 across its box): the band continues the picture but
    meets it, and the cells meet each other, with a step."""
    left, top, right, bottom = sides
    height, width = truth.shape[:2]
    canvas = np.zeros_like(truth)
    canvas[top:height - bottom, left:width - right] = truth[top:height - bottom, left:width - right]
    job = EditJob(mode="expand", model="demo", prompt="", negative_prompt="", seed=1, steps=1, guidance=1.0,
                  strength=1.0, batch=1, sampler="euler", image=canvas.copy(), expand=sides, fill="border")
    passes = plan_passes(job, native)
    for index, p in enumerate(passes):
        slope = np.linspace(-3, 3, p.box.width)[None, :, None] + np.linspace(-3, 3, p.box.height)[:, None, None]
        repaint = truth[p.box.y:p.box.y1, p.box.x:p.box.x1, :3] + (14, 34, 20, 28)[index % 4] + slope
        repaint = np.clip(np.rint(repaint), 0, 255).astype(np.uint8)
        if p.resampled:
            repaint = np.asarray(Image.fromarray(repaint).resize(p.size, Image.Resampling.LANCZOS))
        compose.paint(canvas, p, repaint, *(expand_match(job, native) if match else (0, 0)))
    return canvas, len(passes)


@pytest.mark.parametrize("sides", [(0, 0, 72, 0), (40, 24, 0, 56)])
def test_expand_meets_the_picture_light_without_a_seam_and_keeps_it_byte_for_byte(sides):
    left, top, right, bottom = sides
    truth = smooth(112 + left + right, 80 + top + bottom)
    inside = np.zeros(truth.shape[:2], bool)
    inside[top:top + 80, left:left + 112] = True
    band = np.rint(ndimage.distance_transform_edt(~inside)).astype(int)
    ratios = {}
    for match in (True, False):
        out, passes = expand_with_wrong_light(truth, sides, match)
        assert passes >= 3, "several passes: cells meet the picture and each other"
        np.testing.assert_array_equal(out[inside], truth[inside])
        assert (out[..., 3] == 255).all()
        # the seam: the composite's gradient over the picture's own, at the picture's edge and into the band
        edge = ~inside & (band <= 2) | inside & (ndimage.distance_transform_edt(inside) <= 2)
        ratios[match] = grad(out)[edge].mean() / grad(truth)[edge].mean()
        if match:  # nor where the cells meet each other, across the band
            assert grad(out)[~inside].mean() / grad(truth)[~inside].mean() <= 1.2
    assert ratios[True] <= 1.3, ratios
    assert ratios[False] > 2, "the case has a seam to remove"


def test_expand_light_matching_ignores_colour_hidden_under_transparent_pixels():
    truth = smooth(120, 64)
    results = []
    for hidden in ((255, 0, 255), (0, 0, 0)):
        picture_ = truth.copy()
        picture_[:, 40:80, 3] = 0  # a transparent stripe reaching the old edge
        picture_[:, 40:80, :3] = hidden
        sides = (0, 0, 40, 0)
        canvas = np.zeros_like(truth)
        canvas[:, :80] = picture_[:, :80]
        job = EditJob(mode="expand", model="demo", prompt="", negative_prompt="", seed=1, steps=1, guidance=1.0,
                      strength=1.0, batch=1, sampler="euler", image=canvas.copy(), expand=sides, fill="border")
        for p in plan_passes(job, 64):
            compose.paint(canvas, p, np.full((*p.size[::-1], 3), 200, np.uint8), *expand_match(job, 64))
        np.testing.assert_array_equal(canvas[:, :80], picture_[:, :80])
        results.append(canvas[:, 80:])
    np.testing.assert_array_equal(results[0], results[1])
    # a wholly transparent picture has no light to meet: the band is laid in as painted
    cell = np.zeros((16, 24), bool)
    cell[:, 12:] = True
    painted = np.full((16, 24, 3), 200, np.uint8)
    assert masks.match_band_light(painted, np.zeros((16, 24, 4), np.uint8), cell, 16, 64) is painted


def test_the_engine_lays_an_expand_in_with_its_light_matched(engine, monkeypatch):
    """Through the engine: the demo model cannot get the light slightly wrong, so a stand-in for the pipeline
    call returns what each pass was given (the border-extended canvas), 24 levels lighter."""
    from backend.engine import engine as engine_module

    def lighter(pipe, inputs, on_step):
        return np.clip(np.asarray(inputs.image).astype(int) + 24, 0, 255).astype(np.uint8)

    monkeypatch.setattr(engine_module, "run_pass", lighter)
    picture_ = smooth(96, 64)
    canvas = np.zeros((64, 144, 4), np.uint8)
    canvas[:, :96] = picture_
    bands = {}
    for soft in (True, False):
        job = EditJob(mode="expand", model="demo", prompt="", negative_prompt="", seed=1, steps=2, guidance=1.0,
                      strength=1.0, batch=1, sampler="euler", image=canvas, expand=(0, 0, 48, 0), fill="border",
                      soft=soft)
        out = engine.run(job, Quiet()).layers[0].pixels
        np.testing.assert_array_equal(out[:, :96], picture_)
        bands[soft] = out[:, 96:104, :3].astype(int) - picture_[:, 95:96, :3].astype(int)
    assert abs(bands[True].mean()) < 3, "the band starts at the picture's light"
    assert bands[False].mean() > 18, "laid in as painted, the step stays"


class Quiet:
    def started(self, steps, passes):
        pass

    def progress(self, *args):
        pass

    def is_cancelled(self):
        return False


# -- through the server -------------------------------------------------------------------------


def run(client, mode, image, mask=None, **params):
    params = {"prompt": "a red door", "seed": 3, "steps": 4, **params}
    events = []
    result = client.run(mode, image=png(image), mask=png(mask) if mask is not None else None,
                        on_event=events.append, **params)
    return result, next(e for e in events if isinstance(e, Started))


@pytest.mark.parametrize("model", ["demo", "demo-base"])
def test_soft_inpaint_changes_each_pixel_as_much_as_its_mask_says(client, model):
    """Differential diffusion, on the 9-channel inpaint UNet and on a 4-channel base model: a faint mask
    pixel changes a little, a half-strength one more, the core most; with soft_inpaint off the mask is
    cut at 50% (the 9-channel UNet then repaints even the faint pixels whole)."""
    image = picture(320, 256)
    mask = rect_mask(image.size, (120, 90, 200, 170))
    original = np.asarray(image.convert("RGBA")).astype(int)
    changes = {}
    for soft in (True, False):
        result, _ = run(client, "inpaint", image, mask, model=model, soft_inpaint=soft, mask_feather=24)
        item = result.images[0]
        layer = decode(item.image).astype(int)
        x, y = item.offset
        h, w = layer.shape[:2]
        alpha = layer[..., 3]
        assert (alpha == masks.shape_mask(np.asarray(mask)[y:y + h, x:x + w], 8, 24, soft=soft)).all()
        diff = np.abs(layer[..., :3] - original[y:y + h, x:x + w, :3]).mean(axis=2)
        changes[soft] = [diff[(alpha > lo) & (alpha <= hi)].mean() for lo, hi in ((0, 64), (64, 128), (254, 255))]
        assert result.parameters["soft_inpaint"] is soft and result.parameters["fill"] == "none"
    faint, half, core = changes[True]
    assert core > 20, "the core is repainted"
    assert faint < half < core and faint < 0.2 * core, f"change follows the mask: {changes[True]}"
    if model == "demo":
        assert faint < 0.2 * changes[False][0], "cut at 50%, the inpaint UNet repaints faint pixels whole"


def test_transparent_areas_under_the_mask_are_new_canvas_and_alpha_outside_is_kept(client):
    rgba = np.asarray(picture(256, 192).convert("RGBA")).copy()
    rgba[:, :128, 3] = 0
    hidden = rgba.copy()
    hidden[:, :128, :3] = (255, 0, 255)  # the same picture, another colour under its transparent half
    mask = rect_mask((256, 192), (100, 60, 160, 120))
    outs = []
    for pixels in (rgba, hidden):
        result, _ = run(client, "inpaint", Image.fromarray(pixels, "RGBA"), mask, strength=0.6)
        item = result.images[0]
        layer = decode(item.image)
        outs.append(composite(pixels, layer, tuple(item.offset)))
    out = outs[0]
    visible = out[..., 3] > 0
    assert (outs[1][..., 3] == out[..., 3]).all()
    assert (outs[0][visible] == outs[1][visible]).all(), "hidden colour never reaches the model or the result"
    shaped = masks.shape_mask(np.asarray(mask), 8, 16) > 0
    assert (out[..., 3][~shaped] == rgba[..., 3][~shaped]).all()
    assert (out[..., 3][np.asarray(mask) == 255] == 255).all(), "painted new canvas is opaque"


def test_a_mask_painted_in_black_on_a_transparent_layer_is_its_alpha(client):
    """A mask exported as black strokes on transparency was refused as empty ("paint (white)")."""
    image = picture(96, 64)
    strokes = np.zeros((64, 96, 4), np.uint8)
    strokes[20:40, 30:60, 3] = 255
    result, _ = run(client, "inpaint", image, Image.fromarray(strokes, "RGBA"), steps=1)
    item = result.images[0]
    layer = decode(item.image)
    x, y = item.offset
    expected = masks.shape_mask(strokes[..., 3], 8, 16)[y:y + layer.shape[0], x:x + layer.shape[1]]
    assert (layer[..., 3] == expected).all()
    original = np.asarray(image)[y:y + layer.shape[0], x:x + layer.shape[1]]
    assert (layer[..., :3][expected == 0] == original[expected == 0]).all()


def test_a_mask_of_another_size_is_refused_saying_what_to_send(client):
    with pytest.raises(EaselError) as refused:
        run(client, "inpaint", picture(96, 64), rect_mask((64, 96), (10, 10, 30, 30)), steps=1)
    assert refused.value.code == "size_mismatch" and refused.value.field == "mask"
    assert "mask is 64x96 but the image is 96x64: a mask must have the picture's size" in refused.value.message


def test_fill_mode_decides_what_a_low_strength_inpaint_starts_from(client):
    image = picture(256, 192)
    mask = rect_mask(image.size, (90, 60, 170, 140))
    inside = np.asarray(mask) == 255
    layers = {}
    for mode in ("none", "neutral"):
        result, _ = run(client, "inpaint", image, mask, fill=mode, strength=0.3, steps=10)
        item = result.images[0]
        assert result.parameters["fill"] == mode
        layers[mode] = composite(np.asarray(image.convert("RGBA")), decode(item.image), tuple(item.offset))
    grey = [np.abs(layers[mode][inside][:, :3].astype(int) - 127).mean() for mode in ("none", "neutral")]
    assert grey[1] < grey[0], "a neutral pre-fill pulls the result toward grey"


def test_expand_grows_the_canvas_and_keeps_the_picture_byte_for_byte(client):
    image = picture(160, 128)
    rgba = np.asarray(image.convert("RGBA"))
    result, started = run(client, "expand", image, expand_left=40, expand_top=24, expand_right=600, steps=2)
    item = result.images[0]
    canvas = decode(item.image)
    assert canvas.shape == (128 + 24, 160 + 40 + 600, 4) and tuple(item.offset) == (0, 0)
    np.testing.assert_array_equal(canvas[24:24 + 128, 40:40 + 160], rgba)
    assert (canvas[..., 3] == 255).all(), "the new band is painted, opaque"
    band = canvas[:, 200:, :3].astype(int)
    assert band.std() > 5, "painted, not left edge-extended"
    assert tuple(started.box) == (0, 0, 800, 152)
    assert len(started.passes) >= 3, "a long band is painted in several passes"
    assert all(size[0] * size[1] <= 1.5 * 512 * 512 for _, size in started.passes), "each at native scale"
    assert result.parameters["fill"] == "border" and result.parameters["expand_right"] == 600


def test_expand_refusals_name_the_field(client):
    image = picture(64, 48)
    with pytest.raises(EaselError) as caught:
        client.run("expand", image=png(image), steps=2)
    assert caught.value.code == "invalid_field" and caught.value.field == "expand_left"
    with pytest.raises(EaselError) as caught:
        client.run("inpaint", image=png(image), mask=png(rect_mask((64, 48), (1, 1, 9, 9))), expand_top=8)
    assert caught.value.field == "expand_top"
    with pytest.raises(EaselError) as caught:
        client.run("img2img", image=png(image), fill="blur")
    assert caught.value.field == "fill"


def test_remove_fills_the_selection_with_a_short_refining_pass(client):
    image = picture(256, 192)
    mask = rect_mask(image.size, (100, 70, 150, 120))
    result, started = run(client, "remove", image, mask, prompt="", steps=20)
    assert started.steps == 8, "20 steps x 0.4: a refining pass"
    item = result.images[0]
    layer = decode(item.image)
    x, y = item.offset
    h, w = layer.shape[:2]
    original = np.asarray(image.convert("RGBA"))[y:y + h, x:x + w]
    assert (layer[..., 3] == masks.shape_mask(np.asarray(mask)[y:y + h, x:x + w], 8, 16)).all()
    assert (layer[layer[..., 3] == 0][:, :3] == original[layer[..., 3] == 0][:, :3]).all()
    assert result.parameters["fill"] == "inpaint"


def test_sixteen_bit_input_reaches_the_result_rounded(client):
    import cv2

    wide = (np.asarray(picture(96, 64)).astype(np.uint16) * 257 + 200).clip(0, 65535).astype(np.uint16)
    ok, data = cv2.imencode(".png", wide[..., ::-1])
    sent = ImageData("png", 96, 64, data.tobytes())
    result = client.run("expand", image=sent, expand_right=32, steps=2, seed=1)
    canvas = decode(result.images[0].image)
    np.testing.assert_array_equal(canvas[:, :96, :3], np.rint(wide / 257).astype(np.uint8))


def test_inpaint_fill_runs_lama_through_spandrel_when_configured(demo_config, tmp_path):
    """``[server] lama``: the `inpaint` fill is the LaMa network (here the random demo one), which fills
    only around the hole; a bad file fails the job before it starts, naming the fill."""
    import dataclasses

    from backend.engine.engine import Engine
    from backend.engine.job import EditJob
    from backend.engine.models import ModelError, ModelRegistry, pick_device
    from backend.fixtures.demo_lama import ensure_demo_lama

    lama = fill.Lama(str(ensure_demo_lama()), "cpu")
    rgb = np.asarray(picture(128, 96))
    region = np.zeros((96, 128), bool)
    region[40:60, 50:80] = True
    out = lama(rgb, region)
    assert (out[~region] == rgb[~region]).all() and not (out[region] == rgb[region]).all()
    assert not (out[region] == fill.telea(rgb, region)[region]).all(), "the network, not Telea"

    (tmp_path / "lama.safetensors").write_bytes(b"not a network")
    engine = Engine(ModelRegistry(dataclasses.replace(demo_config, lama=str(tmp_path / "lama.safetensors")),
                                  *pick_device("cpu")))
    image = np.asarray(picture(128, 96).convert("RGBA"))
    job = EditJob(mode="remove", model="demo", prompt="", negative_prompt="", seed=1, steps=4, guidance=7.0,
                  strength=1.0, batch=1, sampler="euler", image=image, mask=region.astype(np.uint8) * 255,
                  fill="inpaint")

    class Reporter:
        began = False

        def started(self, *args):
            self.began = True

        def progress(self, *args):
            pass

        def is_cancelled(self):
            return False

    reporter = Reporter()
    with pytest.raises(ModelError) as caught:
        engine.run(job, reporter)
    assert caught.value.field == "fill" and "lama.safetensors" in caught.value.message and not reporter.began

    engine.lama = lama
    with_lama = engine.run(job, Reporter()).layers[0].pixels
    engine.lama = None
    with_telea = engine.run(job, Reporter()).layers[0].pixels
    assert (with_lama[..., 3] == with_telea[..., 3]).all() and not (with_lama == with_telea).all()


def test_lama_on_a_reduced_crop_keeps_nothing_of_what_it_removes():
    """A thin band across a wide picture is filled at a reduced size: the colour under it (the wire to
    remove) must not reach the fill (it came back, blurred, up to 80 levels off on a 6000 x 400 panorama)."""
    from backend.fixtures.demo_lama import ensure_demo_lama

    lama = fill.Lama(str(ensure_demo_lama()), "cpu")
    rgb = np.asarray(picture(2048, 48))
    region = np.zeros((48, 2048), bool)
    region[22:25, 16:2032] = True  # 3 px, under a pixel once reduced to LaMa's 512 px
    filled = [lama(np.where(region[..., None], np.uint8(wire), rgb), region)[region] for wire in ((255, 0, 255),
                                                                                                (0, 255, 0))]
    assert (filled[0] == filled[1]).all()


def test_mask_padding_sets_the_context_kept_around_the_mask(client):
    """A1111's "only masked padding": more padding, a larger crop around the same mask (and the
    crop a host plans with the same padding)."""
    from shared.geometry import context_crop, mask_bounds

    image = picture(1600, 1200)
    mask = rect_mask(image.size, (700, 500, 760, 560))
    boxes = []
    for padding in (0, 400):
        result, started = run(client, "inpaint", image, mask, mask_padding=padding, steps=1)
        assert result.parameters["mask_padding"] == padding
        boxes.append(tuple(started.box))
        bounds = mask_bounds(np.asarray(mask).tobytes(), 1600, 1200)
        plan = context_crop(bounds, 1600, 1200, 512, margin=reach(8, 16), padding=padding)
        assert tuple(started.box) == tuple(plan.box.as_list())
    assert boxes[1][2] > boxes[0][2] and boxes[1][3] > boxes[0][3]

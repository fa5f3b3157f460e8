"""Editing semantics through a real server and the real client, on the demo model."""

import numpy as np
import pytest

from backend.engine import masks
from conftest import decode, picture, png, rect_mask
from shared.client import Progress, Started
from shared.images import ImageData


def inpaint(client, image, mask, **params):
    params = {"prompt": "a red door", "seed": 3, "steps": 4, **params}
    return client.run("inpaint", image=png(image), mask=png(mask), **params)


@pytest.mark.parametrize("model", ["demo", "demo-base", "demo-xl"])
def test_inpaint_changes_only_the_feathered_mask(client, model):
    image = picture(640, 480)
    mask = rect_mask(image.size, (400, 300, 470, 360))
    result = inpaint(client, image, mask, model=model, mask_grow=4, mask_feather=8)
    item = result.images[0]
    layer = decode(item.image)
    x, y = item.offset
    h, w = layer.shape[:2]
    original = np.asarray(image.convert("RGBA"))
    expected_alpha = masks.shape_mask(np.asarray(mask)[y:y + h, x:x + w], 4, 8)

    assert (layer[..., 3] == expected_alpha).all(), "alpha is the grown and feathered mask"
    outside = layer[..., 3] == 0
    assert (layer[outside][:, :3] == original[y:y + h, x:x + w][outside][:, :3]).all()
    inside = np.asarray(mask)[y:y + h, x:x + w] == 255
    changed = np.abs(layer[inside][:, :3].astype(int) - original[y:y + h, x:x + w][inside][:, :3]).mean()
    assert changed > 5, "the masked area was repainted"
    assert (x, y, w, h) != (0, 0, 640, 480), "a small edit is a crop of the canvas"


def test_result_names_seeds_and_parameters(client):
    image = picture()
    result = inpaint(client, image, rect_mask(image.size, (100, 100, 160, 160)), batch=2, seed=41)
    assert [item.seed for item in result.images] == [41, 42]
    assert result.parameters["seeds"] == [41, 42] and result.parameters["steps"] == 4
    assert set(result.timings) == {"queued", "load", "run", "total"}


def test_batch_image_equals_a_single_run_with_its_seed(client):
    image = picture()
    mask = rect_mask(image.size, (100, 100, 160, 160))
    batch = inpaint(client, image, mask, batch=2, seed=10)
    single = inpaint(client, image, mask, seed=11)
    assert (decode(batch.images[1].image) == decode(single.images[0].image)).all()


def test_same_seed_same_pixels_other_seed_different(client):
    image = picture()
    mask = rect_mask(image.size, (60, 60, 200, 200))
    first, again, other = (decode(inpaint(client, image, mask, seed=s).images[0].image) for s in (5, 5, 6))
    assert (first == again).all()
    assert not (first == other).all()


def test_img2img_moves_further_from_the_source_with_strength(client):
    image = picture(512, 512)
    source = np.asarray(image).astype(float)
    distance = {}
    for strength in (0.2, 0.5, 0.9):
        result = client.run("img2img", prompt="a watercolour", image=png(image), strength=strength, steps=10,
                            seed=1)
        pixels = decode(result.images[0].image)
        assert pixels.shape[:2] == (512, 512)
        distance[strength] = np.abs(pixels[..., :3] - source).mean()
    assert distance[0.2] < distance[0.5] < distance[0.9], distance


@pytest.mark.parametrize("model", ["demo", "demo-xl"])
def test_generate_makes_a_picture_of_the_asked_size(client, model):
    result = client.run("generate", prompt="a lighthouse", width=192, height=128, steps=3, seed=0, model=model)
    pixels = decode(result.images[0].image)
    assert pixels.shape == (128, 192, 4) and pixels[..., :3].std() > 0


@pytest.mark.parametrize("model", ["demo", "demo-xl"])  # linear latent previews; TAESD previews
def test_progress_every_step_and_previews_at_the_asked_rate(client, model):
    image = picture()
    job = client.submit("inpaint", prompt="x", image=png(image), mask=png(rect_mask(image.size, (90, 90, 150, 150))),
                        steps=6, seed=1, preview_every=2, preview_size=96, model=model)
    events = list(client.events(job))
    started = next(e for e in events if isinstance(e, Started))
    progress = [e for e in events if isinstance(e, Progress)]
    assert started.steps == 6
    assert [p.step for p in progress] == [1, 2, 3, 4, 5, 6]
    previews = [p for p in progress if p.preview is not None]
    assert [p.step for p in previews] == [2, 4, 6]
    assert max(previews[0].preview.width, previews[0].preview.height) == 96
    assert decode(previews[-1].preview)[..., :3].std() > 1, "a preview shows a picture, not a flat colour"


def test_raw_images_in_and_out(client):
    image = picture(200, 160)
    rgba = np.asarray(image.convert("RGBA"))
    mask = np.zeros((160, 200), np.uint8)
    mask[40:90, 50:120] = 255
    result = client.run("inpaint", prompt="x", steps=3, seed=2, output_format="rgba8",
                        image=ImageData("rgba8", 200, 160, rgba.tobytes()),
                        mask=ImageData("l8", 200, 160, mask.tobytes()))
    item = result.images[0]
    assert item.image.format == "rgba8"
    layer = decode(item.image)
    x, y = item.offset
    outside = layer[..., 3] == 0
    assert (layer[outside] [:, :3] == rgba[y:y + layer.shape[0], x:x + layer.shape[1]][outside][:, :3]).all()


def test_inline_base64_for_simple_clients(client):
    image = picture(128, 128)
    result = client.run("img2img", prompt="x", steps=4, strength=0.5, seed=0, inline=True,
                        image={"data": png(image).to_base64(), "format": "png"})
    assert decode(result.images[0].image).shape == (128, 128, 4)


def test_a_host_that_sends_only_the_crop_gets_the_same_edit(client):
    """Hosts plan the crop with shared.geometry; the backend's plan on that crop is the whole crop."""
    from shared.geometry import context_crop, mask_bounds
    from shared.messages import CLIENT_MESSAGES
    from shared.rules import reach as mask_margin

    image = picture(1400, 900, seed=3)
    mask = rect_mask(image.size, (900, 120, 1010, 230))
    full = inpaint(client, image, mask).images[0]

    native = {m["name"]: m["native_size"] for m in client.models()["models"]}["demo"]
    defaults = CLIENT_MESSAGES["submit"]
    margin = mask_margin(defaults["mask_grow"].default, defaults["mask_feather"].default)
    plan = context_crop(mask_bounds(mask.tobytes(), *image.size), *image.size, native, margin=margin)
    box = (plan.box.x, plan.box.y, plan.box.x1, plan.box.y1)
    cropped = inpaint(client, image.crop(box), mask.crop(box)).images[0]

    assert cropped.offset == (0, 0)
    assert full.offset == (plan.box.x, plan.box.y)
    assert (decode(cropped.image) == decode(full.image)).all()


def test_each_job_gets_the_sampler_it_names(client):
    """A job's sampler must not leak into the next job's (same seed, same sampler -> same pixels)."""
    def run(sampler=None):
        params = {"sampler": sampler} if sampler else {}
        result = client.run("generate", prompt="x", width=64, height=64, steps=4, seed=5, **params)
        return decode(result.images[0].image)

    euler = run("euler")
    run()  # the default sampler, dpmpp_2m_karras
    assert (run("euler") == euler).all()
    assert not (run("dpmpp_2m") == run("dpmpp_2m_karras")).all()

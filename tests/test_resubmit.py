"""A result's `parameters`, sent back with the same pictures, make the same pixels (a tool keeps them to
run a job again later)."""

import dataclasses

import pytest

from conftest import decode, picture, png, rect_mask
from shared.client import Client
from shared.job import Job

IMAGE = picture(96, 96)
MASK = rect_mask((96, 96), (20, 20, 76, 76))
REFERENCE = picture(64, 64, seed=3)


def _again(client, result, **images):
    return client.run(Job.from_parameters(result.parameters, **images))


def _same_pixels(first, second):
    assert [image.seed for image in first.images] == [image.seed for image in second.images]
    return all((decode(a.image) == decode(b.image)).all() for a, b in zip(first.images, second.images))


def test_a_control_unit_preprocessed_at_its_own_resolution_runs_again_at_it(client):
    unit = {"type": "canny", "preprocess": "on", "resolution": 64, "image": png(IMAGE)}
    job = dict(prompt="a house", width=128, height=128, steps=2, seed=3)
    first = client.run("generate", control=[unit], **job)
    # (the resolution must matter here, or this test could not fail)
    at_diffusion_size = client.run("generate", control=[dict(unit, resolution=None)], **job)
    assert not _same_pixels(first, at_diffusion_size)
    assert first.parameters["control"][0]["resolution"] == 64
    assert _same_pixels(first, _again(client, first, control_images=[png(IMAGE)]))


@pytest.mark.parametrize(("mode", "params", "images"), [
    ("inpaint", dict(prompt="a door", strength=0.8, mask_grow=4, mask_feather=6, mask_padding=12, fill="blur",
                     soft_inpaint=False, references=[{"image": png(REFERENCE), "weight": 0.7, "mode": "style"}],
                     control=[{"type": "canny", "preprocess": "on", "resolution": 96, "scale": 0.8, "end": 0.6}],
                     clip_skip=2, sampler="euler_a", batch=2),
     dict(image=png(IMAGE), mask=png(MASK), reference_images=[png(REFERENCE)])),
    ("generate", dict(preset="lightning", prompt="a house", width=64, height=64,
                      loras=[{"name": "demo-lora", "weight": 0.6}]), {}),
    ("generate", dict(prompt="a field", width=768, height=576, refine=0.6, steps=2, clip_skip=2), {}),
    ("img2img", dict(preset="lcm", prompt="a house", strength=0.2), dict(image=png(IMAGE))),
    ("upscale", dict(scale=1.5, refine=0.5, steps=4, prompt="sharp", upscaler="2x-demo-esrgan"),
     dict(image=png(IMAGE))),
    ("upscale", dict(width=150, height=120, refine=0.5, steps=4, prompt="sharp", batch=2), dict(image=png(IMAGE))),
    ("instruct", dict(prompt="make it winter", image_guidance=2.0, guidance=5.0, steps=2),
     dict(image=png(IMAGE), mask=png(MASK))),
])
def test_a_result_s_parameters_run_again_make_the_same_pixels(client, mode, params, images):
    given = dict(images)
    given.pop("reference_images", None)
    first = client.run(mode, **{"steps": 2, **params}, **given)
    again = _again(client, first, **images)
    assert _same_pixels(first, again)
    assert again.parameters == first.parameters
    assert mode != "generate" or "preset" in params or first.parameters["refine"] == 0.6, "a generate in two stages"


def test_parameters_with_references_need_their_pictures_again():
    # (leaving them out would run the job without its references: other pixels, and no word of it)
    parameters = {"mode": "img2img", "prompt": "a house", "seed": 1, "seeds": [1],
                  "references": [{"weight": 0.5, "mode": "style"}]}
    with pytest.raises(TypeError, match="1 reference"):
        Job.from_parameters(parameters, image=png(IMAGE))
    job = Job.from_parameters(parameters, image=png(IMAGE), reference_images=[png(REFERENCE)])
    assert [(r.weight, r.mode) for r in job.references] == [(0.5, "style")] and job.sampling.seed == 1


@pytest.fixture(scope="module")
def templated(demo_config, engine):
    """A client of a server whose config has a preset with a prompt template, ``watercolour``."""
    from backend.presets import parse_presets
    from backend.server import ServerThread

    presets = parse_presets({"watercolour": {"prompt": "watercolour painting of {prompt}, soft edges", "steps": 3}})
    with ServerThread(dataclasses.replace(demo_config, presets=presets).check(), engine) as running, \
            Client(running.url) as client:
        yield client


def test_a_preset_s_prompt_template_wraps_the_prompt_once_when_run_again(templated):
    # `parameters.prompt` was the wrapped prompt, which the preset wrapped again: other pixels
    first = templated.run("img2img", preset="watercolour", prompt="a house <lora:demo-lora:0.5>", image=png(IMAGE),
                          strength=0.6, seed=5)
    assert (first.parameters["prompt"], first.parameters["encoded_prompt"]) == (
        "a house", "watercolour painting of a house, soft edges")
    again = _again(templated, first, image=png(IMAGE))
    assert _same_pixels(first, again) and again.parameters == first.parameters
    twice = _again(templated, dataclasses.replace(first, parameters=dict(
        first.parameters, prompt=first.parameters["encoded_prompt"])), image=png(IMAGE))
    assert not _same_pixels(first, twice), "(wrapped twice, as before: other pixels, or this test could not fail)"

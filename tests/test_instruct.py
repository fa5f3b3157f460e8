"""instruct mode (InstructPix2Pix on the demo model) and per-model capabilities, through a real server."""

from __future__ import annotations

import numpy as np
import pytest

from shared.client import Accepted, EaselError
from tests.conftest import decode, picture, png, rect_mask


def run(client, image, mask=None, **params):
    params = {"prompt": "make it winter", "steps": 3, "seed": 4, **params}
    extra = {"mask": png(mask)} if mask is not None else {}
    result = client.run("instruct", image=png(image), **extra, **params)
    return result


def test_instruct_edits_the_whole_picture_and_image_guidance_changes_it(client):
    image = picture(192, 160)
    low = run(client, image, image_guidance=1.0)
    [layer] = low.images
    pixels = decode(layer.image)
    assert pixels.shape == (160, 192, 4) and (pixels[..., 3] == 255).all()
    assert np.abs(pixels[..., :3].astype(int) - np.asarray(image)).mean() > 1, "the picture was edited"
    high = decode(run(client, image, image_guidance=3.0).images[0].image)
    assert np.abs(high.astype(int) - pixels).mean() > 0.5, "image_guidance changes the result"
    distances = [np.abs(decode(run(client, image, image_guidance=scale).images[0].image)[..., :3].astype(int)
                        - np.asarray(image)).mean() for scale in (1.0, 2.0, 4.0)]
    assert distances[0] > distances[1] > distances[2], f"higher image guidance keeps closer: {distances}"
    again = decode(run(client, image, image_guidance=1.0).images[0].image)
    assert (again == pixels).all(), "same seed, same pixels"


@pytest.mark.parametrize("model", ["demo", "demo-instruct"])
def test_masked_instruct_leaves_every_pixel_outside_the_mask_byte_identical(client, model):
    image = picture(256, 224, seed=3)
    mask = rect_mask(image.size, (96, 80, 160, 140))
    result = run(client, image, mask, model=model)
    [layer] = result.images
    x, y = layer.offset
    pixels = decode(layer.image)
    canvas = np.dstack([np.asarray(image), np.full((224, 256), 255, np.uint8)]).copy()
    region = canvas[y:y + pixels.shape[0], x:x + pixels.shape[1]]
    alpha = pixels[..., 3:4].astype(np.int32)
    region[...] = ((pixels.astype(np.int32) * alpha + region.astype(np.int32) * (255 - alpha) + 127) // 255)
    far = np.ones((224, 256), bool)
    far[40:181, 56:201] = False  # the mask grown (8) and feathered (16) reaches 33 px beyond it
    assert (canvas[far][:, :3] == np.asarray(image)[far]).all()
    inside = canvas[100:120, 110:140, :3].astype(int) - np.asarray(image)[100:120, 110:140]
    assert np.abs(inside).mean() > 1, "the masked part was edited"


def test_an_empty_mask_on_instruct_says_the_mask_may_be_left_out(client):
    # A host with nothing selected sends an all-black mask; for instruct the fix is to send none.
    with pytest.raises(EaselError) as caught:
        run(client, picture(64, 64), rect_mask((64, 64), (0, 0, 0, 0)))
    assert (caught.value.code, caught.value.field) == ("empty_mask", "mask")
    assert "leave `mask` out to edit the whole picture" in caught.value.message


def test_image_guidance_below_one_is_refused_saying_it_would_switch_guidance_off(client):
    # diffusers' InstructPix2Pix guides only while image_guidance >= 1: 0, 0.5 and 0.99 all made the picture
    # of guidance 1 (the instruction unguided too), a cliff just below the "1 = not held to the picture".
    with pytest.raises(EaselError) as caught:
        run(client, picture(64, 64), image_guidance=0.5)
    assert (caught.value.code, caught.value.field) == ("invalid_field", "image_guidance")
    assert "at least 1" in caught.value.message and "no guidance at all" in caught.value.message
    assert run(client, picture(64, 64), image_guidance=1.0, steps=1).parameters["image_guidance"] == 1.0


@pytest.mark.parametrize("params, field", [({"image_guidance": -1}, "image_guidance"),
                                           ({"image_guidance": 25}, "image_guidance"),
                                           ({"guidance": 60}, "guidance")])
def test_bad_instruct_values_are_refused_naming_the_field(client, params, field):
    with pytest.raises(EaselError) as caught:
        run(client, picture(64, 64), **params)
    assert (caught.value.code, caught.value.field) == ("invalid_field", field)


def test_instruct_needs_a_picture_and_image_guidance_is_for_instruct_only(client):
    with pytest.raises(EaselError) as caught:
        client.run("instruct", prompt="make it winter", steps=2)
    assert (caught.value.code, caught.value.field) == ("invalid_field", "image")
    with pytest.raises(EaselError) as caught:
        client.run("img2img", image=png(picture(64, 64)), prompt="x", steps=2, image_guidance=1.5)
    assert (caught.value.code, caught.value.field) == ("invalid_field", "image_guidance")


def test_an_instruct_without_an_instruction_is_refused_saying_what_to_write(client):
    for prompt in ("", "  ", "<lora:demo-lora:0.5>"):
        with pytest.raises(EaselError) as caught:
            client.run("instruct", image=png(picture(64, 64)), prompt=prompt, steps=2)
        assert (caught.value.code, caught.value.field) == ("invalid_field", "prompt"), prompt
        assert "make it winter" in caught.value.message


def test_models_list_capabilities_and_a_model_asked_for_more_is_refused_before_accepted(client):
    listed = {m["name"]: m["capabilities"] for m in client.models()["models"]}
    assert "instruct" in listed["demo"]["modes"] and "instruct" not in listed["demo-base"]["modes"]
    assert listed["demo-instruct"]["modes"] == ["instruct"]
    assert listed["demo"]["image_guidance"] and listed["demo-instruct"]["image_guidance"]
    assert not listed["demo-base"]["image_guidance"], "a model without instruct has no image guidance to take"
    # instruct takes no ControlNets or references: a host picking demo-instruct must not offer them
    assert listed["demo-instruct"]["control_types"] == listed["demo-instruct"]["reference_modes"] == []
    assert "canny" in listed["demo"]["control_types"] and "face" in listed["demo"]["reference_modes"]
    seen = []
    with pytest.raises(EaselError) as caught:
        run(client, picture(64, 64), model="demo-base", on_event=seen.append)
    assert (caught.value.code, caught.value.field) == ("unsupported_mode", "mode")
    assert "demo-base" in caught.value.message
    # (it said what demo-base serves and stopped: the painter had to find a model that instructs)
    assert caught.value.message.endswith("pick a model that can: demo, demo-instruct, demo-flux, demo-flux-gguf")
    assert not any(isinstance(event, Accepted) for event in seen), "refused before `accepted`"
    with pytest.raises(EaselError) as caught:
        run(client, picture(64, 64), control=[{"type": "canny", "image": png(picture(64, 64))}])
    assert (caught.value.code, caught.value.field) == ("unsupported", "control[0].type")
    with pytest.raises(EaselError) as caught:
        client.run("generate", model="demo-instruct", prompt="x", steps=2, width=64, height=64)
    assert (caught.value.code, caught.value.field) == ("unsupported_mode", "mode")


def test_instruct_reads_the_prompt_as_every_other_mode_does(client):
    # The instruction went to InstructPix2Pix as raw text: `(word:1.0)` was brackets and digits, clip skip and
    # `embedding:name` did nothing, while `result.parameters` echoed the clip skip as if it had run.
    image = picture(64, 64, seed=1)
    edit = lambda **params: decode(run(client, image, guidance=5.0, **params).images[0].image)  # noqa: E731
    plain = edit(prompt="make it red")
    assert (edit(prompt="(make it red:1.0)") == plain).all(), "weight 1 is the plain prompt"
    assert not (edit(prompt="(make it red:1.4)") == plain).all()
    assert not (edit(prompt="make it red", clip_skip=2) == plain).all(), "clip skip reads an earlier layer"
    named = edit(prompt="make it red embedding:demo-style")
    assert (edit(prompt="make it red demo-style") == named).all() and not (named == plain).all()


def test_masked_instruct_plans_its_crop_with_mask_padding_and_says_so(client):
    # The padding was honoured but documented for inpaint and remove only, and the result did not list it.
    image, mask = picture(640, 576, seed=2), rect_mask((640, 576), (300, 260, 330, 290))
    tight = run(client, image, mask, steps=1, mask_padding=0)
    wide = run(client, image, mask, steps=1, mask_padding=280)
    assert (tight.parameters["mask_padding"], wide.parameters["mask_padding"]) == (0, 280)
    assert decode(wide.images[0].image).shape[0] > decode(tight.images[0].image).shape[0], "more context diffused"
    assert "mask_padding" not in run(client, picture(64, 64), steps=1).parameters, "no mask: no crop"
    # soft_inpaint shapes its edge and matches its light too (documented for inpaint, remove, expand only)
    hard = run(client, image, mask, steps=1, mask_padding=0, soft_inpaint=False)
    assert (tight.parameters["soft_inpaint"], hard.parameters["soft_inpaint"]) == (True, False)
    assert hard.images[0].image.data != tight.images[0].image.data

"""The A1111 tab's job building and result handling (``easel_a1111.params`` / ``jobs``), without
gradio: tab values in, a ``Job`` (and its ``submit``) out, the backend's offer, and real jobs against
the demo server."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.run_files import read_picture
from conftest import JobsAhead, picture, rect_mask
from netfaults import Blinker
from shared.messages import CONTROL_TYPES, REFERENCE_MODES, parse_client_message
from shared.rules import reach as mask_margin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "a1111_extension"))

from easel_a1111 import jobs  # noqa: E402
from easel_a1111.params import (  # noqa: E402
    OWN_IMAGE,
    USE_INPUT,
    ControlSpec,
    InputError,
    ReferenceSpec,
    TabValues,
    build_job,
    easel_sampler,
    mask_from_painting,
    sampler_from_infotext,
    seed_from_infotext,
    unused_mask_note,
)
from easel_a1111.protocol import ImageData, Result, ResultImage, infotext  # noqa: E402
from easel_a1111.protocol import capabilities as offered_by  # noqa: E402

offer = offered_by.offer


def pixels(image_data) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_data.data)))


def painted(size=(128, 96), box=(30, 20, 60, 50)) -> Image.Image:
    """What gradio 3's sketch tool returns: white strokes on black, RGB."""
    return rect_mask(size, box).convert("RGB")


def values(**changes) -> TabValues:
    base = dict(mode="inpaint", picture=picture(128, 96).convert("RGBA"), mask=painted(), prompt="a red door",
                steps=4, seed=7)
    return TabValues(**{**base, **changes})


def test_inpaint_request_sends_the_exact_picture_and_the_painted_mask():
    source = values()
    job = build_job(source)
    assert job.mode == "inpaint"
    assert (pixels(job.image) == np.asarray(source.picture)).all()
    mask = pixels(job.mask)
    assert mask.shape == (96, 128) and mask[20:50, 30:60].min() == 255 and mask.sum() == 255 * 30 * 30
    assert job.sampling.seed == 7 and job.sampling.steps == 4 and job.sampling.strength == 1.0
    assert (job.mask_grow, job.mask_feather) == (8, 16)
    assert job.control == [] and job.references == [] and job.width is None


def test_random_seed_is_left_to_the_server_and_generate_sends_its_size():
    job = build_job(values(mode="generate", seed=-1, picture=None, mask=None, width=320, height=256))
    assert job.mode == "generate" and job.sampling.seed is None and job.image is None and job.mask is None
    assert (job.width, job.height) == (320, 256) and job.sampling.strength == 1.0


def test_strength_is_the_refine_of_a_generate_above_the_models_native_size():
    from shared.model_list import chosen

    sd = chosen(CAPABLE, "sd")  # 512 px
    large = build_job(values(mode="generate", picture=None, mask=None, width=1024, height=1024, strength=0.35,
                             chosen=sd))
    assert large.refine == 0.35 and large.sampling.strength == 1.0
    # at the native size there is no refine, and Strength 1 leaves the server's own (as before)
    assert build_job(values(mode="generate", picture=None, mask=None, width=512, height=512, strength=0.35,
                            chosen=sd)).refine is None
    assert build_job(values(mode="generate", picture=None, mask=None, width=1024, height=1024,
                            chosen=sd)).refine is None
    with pytest.raises(InputError, match=r"^Strength 0.1 with 4 steps leaves no step for the refine of a picture "
                                         r"this large \(above the model's native size\): raise"):
        build_job(values(mode="generate", picture=None, mask=None, width=1024, height=1024, strength=0.1, steps=4,
                         chosen=sd))
    text = infotext({"mode": "generate", "prompt": "a cat", "steps": 4, "refine": 0.35, "upscaler": "lanczos"},
                    1, (1024, 1024))
    assert text.endswith("Size: 1024x1024, Denoising strength: 0.35, Easel upscaler: lanczos, Easel mode: generate")


def test_img2img_ignores_the_painting():
    job = build_job(values(mode="img2img", strength=0.5))
    assert job.mode == "img2img" and job.mask is None and job.sampling.strength == 0.5


def test_the_job_is_a_valid_submit():
    """What ``jobs.run`` sends (``Client.submit`` uploads the images and sends ``to_message``) passes the
    server's own validation with the tab's settings in place."""
    own = picture(64, 64, seed=3)
    job = build_job(values(mode="inpaint", strength=0.6, guidance=5.0, sampler="euler_a", batch=2,
                           negative_prompt="fog", mask_grow=3, mask_feather=5,
                           controls=[ControlSpec(enabled=True, type="depth", source=OWN_IMAGE, image=own, end=0.7)],
                           references=[ReferenceSpec(image=own, weight=0.4, mode="composition")]))
    roles = []
    message = parse_client_message(json.dumps(job.to_message(
        lambda image, role: roles.append(role) or {"frame": f"{role}-{len(roles)}"})))
    assert roles == ["image", "mask", "control", "reference"]
    assert (message["mode"], message["prompt"], message["negative_prompt"]) == ("inpaint", "a red door", "fog")
    assert (message["steps"], message["strength"], message["guidance"], message["sampler"]) == (4, 0.6, 5.0, "euler_a")
    assert (message["seed"], message["batch"], message["mask_grow"], message["mask_feather"]) == (7, 2, 3, 5)
    (unit,) = message["control"]
    assert (unit["type"], unit["image"]["frame"], unit["end"], unit["preprocess"]) == ("depth", "control-3", 0.7, "off")
    (ref,) = message["references"]
    assert (ref["image"]["frame"], ref["weight"], ref["mode"]) == ("reference-4", 0.4, "composition")


def test_strokes_on_a_transparent_layer_count_by_alpha():
    # gradio 4's editor: coloured strokes on a transparent layer; transparent means "keep".
    layer = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
    layer.paste((255, 255, 255, 255), (10, 10, 20, 20))
    mask = np.asarray(mask_from_painting(layer, (64, 64)))
    assert mask[10:20, 10:20].min() == 255 and mask.sum() == 255 * 100
    assert mask_from_painting(Image.new("RGBA", (64, 64), (255, 255, 255, 0)), (64, 64)) is None
    # a canvas handed back at another size is scaled to the picture
    assert mask_from_painting(layer, (128, 128)).size == (128, 128)


@pytest.mark.parametrize("changes, sentence", [
    (dict(mask=Image.new("RGB", (128, 96))), "Paint over the part of the picture to change first"),
    (dict(mask=None), "Paint over the part of the picture to change first"),
    (dict(picture=None), "Inpaint needs a picture: upload one first."),
    (dict(mode="img2img", picture=None), "Img2img needs a picture"),
    (dict(prompt="  "), "Describe what to paint in the prompt."),
    (dict(strength=0.1), "Strength 0.1 with 4 steps leaves no step to run"),
    (dict(mode="remove", steps=2),  # ("raise the strength" too, when 1 is the most there is)
     "Strength 1 with 2 steps leaves no step to run (remove refines at 0.4 × the strength): raise the steps.$"),
    (dict(seed=2**32 - 1, batch=2), "The seed must be at most 4294967294 for a batch of 2"),
    (dict(controls=[ControlSpec(enabled=True, source=OWN_IMAGE)]), "Control unit 1 is on but has no image"),
    (dict(controls=[ControlSpec(), ControlSpec(enabled=True, start=0.6, end=0.5)]),
     "Control unit 2: its start (0.6) must come before its end (0.5)."),
    (dict(mode="generate", controls=[ControlSpec(enabled=True, source=USE_INPUT)]),
     "Control unit 1 uses the input picture, but generate has none"),
    (dict(controls=[ControlSpec(), ControlSpec(), ControlSpec(enabled=True, type="tile", preprocess=True)]),
     "Control unit 3: the tile type has no preprocessor, its image is the map itself; untick Preprocess."),
    (dict(references=[ReferenceSpec(image=picture(64, 64), mode="face"), ReferenceSpec(image=picture(64, 64))]),
     "References are either all “face” or none: the face mode uses an adapter of its own."),
])
def test_bad_tab_values_give_one_readable_sentence(changes, sentence):
    with pytest.raises(InputError, match="^" + sentence.replace("(", r"\(").replace(")", r"\)")):
        build_job(values(**changes))


def test_control_units_and_references():
    own = picture(64, 64, seed=3)
    job = build_job(values(
        controls=[ControlSpec(enabled=True, type="canny", source=USE_INPUT, preprocess=True, scale=0.7, end=0.8),
                  ControlSpec(enabled=False, type="depth", source=OWN_IMAGE, image=own),
                  ControlSpec(enabled=True, type="lineart", source=OWN_IMAGE, image=own, start=0.1)],
        references=[ReferenceSpec(image=own, weight=0.5, mode="style"), ReferenceSpec(image=None)]))
    first, second = job.control
    assert (first.type, first.image, first.scale, first.start, first.end, first.preprocess) == (
        "canny", None, 0.7, 0.0, 0.8, "on")  # no image: the input picture
    assert second.type == "lineart" and second.preprocess == "off" and second.start == 0.1
    assert (pixels(second.image) == np.asarray(own)).all()
    (ref,) = job.references
    assert (ref.weight, ref.mode) == (0.5, "style") and (pixels(ref.image) == np.asarray(own)).all()


def test_composite_keeps_the_picture_where_the_layer_is_transparent():
    base = picture(64, 48).convert("RGBA")
    layer = np.zeros((16, 16, 4), np.uint8)
    layer[..., :3] = 9
    layer[4:12, 4:12, 3] = 255
    layer[0, 0, 3] = 128
    result = Result("a", [ResultImage(0, 5, (20, 10), ImageData("rgba8", 16, 16, layer.tobytes()))],
                    {"mode": "inpaint", "prompt": "x"})
    (out,), _ = jobs.finish(values(picture=base), result)  # the shared composite, as the tab shows results
    out = np.asarray(out)
    expected = np.asarray(base).copy()
    expected[14:22, 24:32, :3] = 9
    changed = np.any(out != expected, axis=-1)
    assert changed.sum() == 1 and changed[10, 20]  # only the half-transparent pixel blends


def test_the_tab_offers_what_the_backend_offers():
    capabilities = {"control_types": ["tile", "depth", "canny"], "reference_modes": ["style", "reference"],
                    "reference_families": ["sd15"], "preprocessors": ["canny"],
                    "limits": {"max_steps": 60, "max_batch": 4, "max_generate_side": 1024}}
    offered = offer(capabilities)
    assert offered.control_types == ("canny", "depth", "tile") and offered.reference_modes == ("reference", "style")
    assert (offered.max_steps, offered.max_batch, offered.max_generate_side, offered.references) == (60, 4, 1024, True)
    assert not offer({**capabilities, "reference_families": []}).references
    # No backend while the WebUI builds the tab: everything the protocol knows, the default limits.
    everything = offer(None)
    assert everything.control_types == CONTROL_TYPES and everything.reference_modes == REFERENCE_MODES
    assert (everything.max_steps, everything.max_batch, everything.max_generate_side) == (150, 8, 8192)


def test_the_capabilities_of_a_real_backend(server):
    capabilities = jobs.capabilities(jobs.Connection(server.url))
    assert offer(capabilities).control_types[0] == "canny"
    assert set(offer(capabilities).control_types) == set(capabilities["control_types"])
    assert offer(capabilities).max_steps == capabilities["limits"]["max_steps"]
    assert jobs.capabilities(jobs.Connection("ws://127.0.0.1:9/")) is None


def test_infotext_reads_like_the_webuis():
    text = infotext({"mode": "inpaint", "prompt": "a red door", "negative_prompt": "blurry", "steps": 20,
                     "sampler": "euler_a", "guidance": 7.0, "strength": 0.75, "model": "demo", "mask_grow": 8,
                     "mask_feather": 16, "control": [{"type": "canny", "preprocess": "canny", "scale": 1.0,
                                                      "start": 0.0, "end": 1.0}],
                     "references": [{"weight": 0.5, "mode": "style"}]}, 42, (128, 96))
    prompt, negative, last = text.split("\n")
    assert prompt == "a red door" and negative == "Negative prompt: blurry"
    assert last.startswith("Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 128x96, Model: demo, "
                           "Denoising strength: 0.75, Mask blur: 16")
    assert 'Easel control 1: "canny, preprocess canny, scale 1, 0-1"' in last
    assert 'Easel reference 1: "style, weight 0.5"' in last
    # the WebUI keeps <lora:> tags in the prompt it saves; the server hands them back apart
    text = infotext({"mode": "generate", "prompt": "a cat", "loras": [{"name": "ink wash", "weight": 0.8}]}, 1, (8, 8))
    assert text.split("\n")[0] == "a cat <lora:ink wash:0.8>"
    assert infotext({"mode": "remove", "prompt": "", "steps": 4}, 1, (8, 8)).startswith("Steps: 4, ")


def test_infotext_says_the_clip_skip_a_job_ran_at():
    # the WebUI's paste reads a missing "Clip skip" as 1: a picture made at 2 came back from its infotext at 1
    text = infotext({"mode": "generate", "prompt": "a cat", "steps": 4, "clip_skip": 2}, 1, (8, 8))
    assert "Clip skip: 2" in text.split("\n")[-1].split(", ")
    assert "Clip skip" not in infotext({"mode": "generate", "prompt": "a cat", "steps": 4}, 1, (8, 8))


def test_infotext_names_the_preset_and_a_control_unit_s_resolution():
    # both change the pixels and showed nowhere: a preset's timestep spacing, a preprocessor's working size
    text = infotext({"mode": "generate", "prompt": "a cat", "steps": 4, "preset": "lightning",
                     "control": [{"type": "canny", "preprocess": "canny", "scale": 1.0, "start": 0.0, "end": 1.0,
                                  "resolution": 384}]}, 1, (8, 8))
    items = text.split("\n")[-1]
    assert "Easel preset: lightning" in items.split(", ")
    assert 'Easel control 1: "canny, preprocess canny, scale 1, 0-1, resolution 384"' in items
    assert "Easel preset" not in infotext({"mode": "generate", "prompt": "a cat", "steps": 4}, 1, (8, 8))
    # A preset's template: the prompt as encoded, which the tab (sending no preset) pastes and encodes the same; the
    # submit's own prompt would lose the template there
    templated = infotext({"mode": "generate", "prompt": "a cat", "encoded_prompt": "watercolour of a cat, soft",
                          "steps": 4, "preset": "watercolour", "loras": [{"name": "paper", "weight": 0.5}]}, 1, (8, 8))
    assert templated.split("\n")[0] == "watercolour of a cat, soft <lora:paper:0.5>"


def test_infotext_says_the_masked_area_padding_an_inpaint_ran_with():
    # the WebUI's paste reads a missing "Masked area padding" as 32: an inpaint at 96 came back at 32
    text = infotext({"mode": "inpaint", "prompt": "a door", "steps": 4, "mask_padding": 96}, 1, (8, 8))
    assert {"Inpaint area: Only masked", "Masked area padding: 96"} <= set(text.split("\n")[-1].split(", "))


def test_reuse_seed_reads_the_seed_of_the_shown_result():
    text = infotext({"mode": "generate", "prompt": "Seed: 3, a cat", "steps": 2}, 2802081332, (64, 64))
    assert seed_from_infotext(text) == 2802081332  # the prompt's "Seed: 3" is not the parameters'
    assert seed_from_infotext("") is None and seed_from_infotext(None) is None
    assert seed_from_infotext("a cat\nSteps: 2, Sampler: Euler") is None


def test_a_mask_painted_for_a_mode_that_edits_the_whole_picture_is_said_to_be_unused(server):
    # (img2img with a painted mask ran on the whole picture without a word: a painter expects the mask to count)
    final = list(jobs.run(jobs.Connection(server.url), values(mode="img2img", strength=0.5), "unit"))[-1]
    assert final.status.startswith("Done: 1 image") and final.status.endswith(
        "The painted mask was not used: img2img changes the whole picture (inpaint changes only the painted "
        "part)."), final.status
    assert not unused_mask_note(values()), "inpaint uses it"
    assert not unused_mask_note(values(mode="img2img", mask=None))
    assert not unused_mask_note(values(mode="img2img", mask=Image.new("RGB", (128, 96)))), "nothing painted"
    assert "upscale enlarges the whole picture" in unused_mask_note(values(mode="upscale"))


def test_a_sentence_keeps_its_lora_tags_in_the_tabs_markdown():
    shown = jobs.markdown("`prompt`: '<lora:x:0.8:0.5>' gives two weights; write <lora:x:WEIGHT> (`<b>` as is)")
    assert shown == ("`prompt`: '&lt;lora:x:0.8:0.5&gt;' gives two weights; write &lt;lora:x:WEIGHT&gt; "
                     "(`<b>` as is)")


def test_the_status_counts_down_the_jobs_ahead_while_the_job_waits(server):
    # the count said at `accepted` stayed until the job started: behind a long queue the tab looked stuck
    said = []
    with JobsAhead(server.url, 2) as ahead:
        for update in jobs.run(jobs.Connection(server.url), values(), "unit"):
            said.append(update.status)
            if "ahead" in update.status:
                ahead.pass_one()  # the queue moves: the next status must show it
    assert [text for text in said if "ahead" in text] == ["Waiting: 2 jobs ahead in the backend's queue…",
                                                           "Waiting: 1 job ahead in the backend's queue…"]
    assert said[-1].startswith("Done: 1 image"), said


def test_a_real_inpaint_job_keeps_every_unpainted_pixel(server):
    source = values(picture=picture(128, 96, seed=5).convert("RGBA"))
    updates = list(jobs.run(jobs.Connection(server.url), source, "unit"))
    assert any(update.status.startswith("Step 1/4") and update.preview is not None for update in updates)
    final = updates[-1]
    assert final.done and final.status.startswith("Done: 1 image"), final.status
    (result,) = final.images
    out, before = np.asarray(result), np.asarray(source.picture)
    assert result.size == (128, 96)
    margin = mask_margin(8, 16)  # how far grow + feather reach beyond the painted box
    near = np.zeros((96, 128), bool)
    near[max(0, 20 - margin):50 + margin, max(0, 30 - margin):60 + margin] = True
    assert (out[~near] == before[~near]).all()
    assert (out[25:45, 35:55] != before[25:45, 35:55]).any()
    assert "Seed: 7" in final.infotexts[0] and "Easel mode: inpaint" in final.infotexts[0]


def test_backend_down_and_server_refusals_read_as_sentences(server):
    down = list(jobs.run(jobs.Connection("ws://127.0.0.1:9/"), values(), "unit"))
    assert down[-1].status == ("Cannot reach the Easel backend at ws://127.0.0.1:9/ (nothing is listening at that "
                               "address and port): start it with `easel serve`, "
                               "or set its address in Settings > Easel.")
    assert jobs.status_line(jobs.Connection("ws://127.0.0.1:9/")).startswith("Cannot reach the Easel backend")
    refused = list(jobs.run(jobs.Connection(server.url), values(steps=100000), "unit"))
    assert refused[-1].status.startswith("The Easel backend refused the job: ") and "steps" in refused[-1].status
    assert refused[-1].status.endswith(" (Steps).")  # the tab's name for the field, not the protocol's
    too_large = list(jobs.run(jobs.Connection(server.url), values(mode="upscale", scale=8.0, strength=1.0,
                                                                   picture=picture(2048, 64)), "unit"))
    assert too_large[-1].status.endswith(" (Upscale by)."), too_large[-1].status
    assert "on cpu" in jobs.status_line(jobs.Connection(server.url))  # and it still serves


def test_preview_map_of_the_input_picture(server):
    image, message = jobs.preprocess(jobs.Connection(server.url), "canny", picture(128, 96))
    assert image.size == (128, 96) and message == "canny map made by the backend."
    edges = np.asarray(image.convert("L"))
    assert (edges > 200).mean() < 0.5 and (edges > 200).any()  # sparse bright edges on black
    none, message = jobs.preprocess(jobs.Connection(server.url), "tile", picture(128, 96))
    assert none is None and message.startswith("The Easel backend refused the job: ")


def test_toolbox_values_make_the_jobs_the_webui_user_expects():
    """Masked content, soft inpainting, invert mask, remove without a prompt and expand."""
    job = build_job(values(masked_content="fill", soft_inpaint=False))
    assert job.fill == "blur" and job.soft_inpaint is False
    assert build_job(values()).fill is None, "the mode's default is the server's"
    assert build_job(values(mask_padding=96)).mask_padding == 96 and build_job(values()).mask_padding == 32
    inverted = build_job(values(invert_mask=True))
    assert (pixels(inverted.mask) == 255 - pixels(build_job(values()).mask)).all()
    removal = build_job(values(mode="remove", prompt="", masked_content="inpaint (Telea / LaMa)"))
    assert removal.mode == "remove" and removal.fill == "inpaint" and removal.mask is not None
    wider = build_job(values(mode="expand", mask=None, expand_right=64, expand_top=8))
    assert wider.mode == "expand" and wider.expand == (0, 8, 64, 0) and wider.mask is None
    message = parse_client_message(json.dumps(wider.to_message(lambda image, role: {"frame": role})))
    assert (message["expand_right"], message["expand_top"], message["mode"]) == (64, 8, "expand")
    with pytest.raises(InputError, match="Expand needs pixels to add"):
        build_job(values(mode="expand"))
    with pytest.raises(InputError, match="to keep first"):
        build_job(values(mask=painted(box=(0, 0, 128, 96)), invert_mask=True))


def test_a_real_expand_and_remove_from_the_tab(server):
    source = values(picture=picture(128, 96, seed=5).convert("RGBA"))
    final = list(jobs.run(jobs.Connection(server.url), values(**{**source.__dict__, "mode": "expand",
                                                                 "expand_right": 32}), "unit"))[-1]
    assert final.done and final.status.startswith("Done: 1 image"), final.status
    (wide,) = final.images
    assert wide.size == (160, 96) and (np.asarray(wide)[:, :128] == np.asarray(source.picture)).all()
    assert 'Easel expand: "0, 0, 32, 0"' in final.infotexts[0] and "Easel fill: border" in final.infotexts[0]
    final = list(jobs.run(jobs.Connection(server.url), values(**{**source.__dict__, "mode": "remove",
                                                                 "prompt": ""}), "unit"))[-1]
    assert final.done and final.status.startswith("Done: 1 image"), final.status
    out, before = np.asarray(final.images[0]), np.asarray(source.picture)
    margin = mask_margin(8, 16)
    near = np.zeros((96, 128), bool)
    near[max(0, 20 - margin):50 + margin, max(0, 30 - margin):60 + margin] = True
    assert (out[~near] == before[~near]).all() and "Easel fill: inpaint" in final.infotexts[0]


def test_upscale_sends_the_picture_scale_and_upscaler_and_refines_below_strength_1():
    values = TabValues(mode="upscale", picture=picture(64, 48), strength=1.0, scale=3, upscaler="4x-demo-compact")
    job = build_job(values)
    assert (job.mode, job.scale, job.upscaler, job.refine, job.mask) == ("upscale", 3.0, "4x-demo-compact", None, None)
    assert "refine" not in job.to_message(lambda image, role: {"frame": role}), "the upscaler alone"
    values.strength = 0.3
    with pytest.raises(InputError, match="prompt"):
        build_job(values)
    values.prompt = "a harbour"
    assert build_job(values).refine == 0.3
    with pytest.raises(InputError, match="Upscale needs a picture"):
        build_job(TabValues(mode="upscale"))


def test_an_upscale_from_the_tab_lands_whole_in_the_gallery(server):
    source = TabValues(mode="upscale", picture=picture(64, 48).convert("RGBA"), scale=2, upscaler="lanczos")
    final = list(jobs.run(jobs.Connection(server.url), source, "unit"))[-1]
    assert final.done, final.status
    (result,) = final.images
    assert result.size == (128, 96)
    assert (np.asarray(result.convert("RGB")) == np.asarray(source.picture.convert("RGB").resize(
        (128, 96), Image.Resampling.LANCZOS))).all()
    assert "Easel mode: upscale" in final.infotexts[0]
    assert "Postprocess upscale by: 2.0, Postprocess upscaler: lanczos" in final.infotexts[0]
    # the upscaler alone: nothing of the diffusion settings, which took no part
    assert not {"Denoising strength", "Steps", "Sampler", "CFG scale", "Seed", "Model"} & set(
        item.split(":")[0].strip() for item in final.infotexts[0].split("\n")[-1].split(","))
    refined = list(jobs.run(jobs.Connection(server.url), replace(source, strength=0.3, prompt="a house", steps=4),
                            "unit"))[-1]
    assert "Denoising strength: 0.3," in refined.infotexts[0], refined.infotexts[0]


def test_the_sampler_list_is_the_webuis_and_maps_to_easels_samplers():
    assert easel_sampler("DPM++ 2M Karras") == "dpmpp_2m_karras" and easel_sampler("Euler a") == "euler_a"
    assert easel_sampler("euler_a") == "euler_a"  # Easel's own names still work
    with pytest.raises(InputError, match="Easel has no 'LMS' sampler: choose one of DPM\\+\\+ 2M, "):
        easel_sampler("LMS")
    assert build_job(values(sampler="DDIM")).sampling.sampler == "ddim"
    # Pasted infotext: WebUI 1.8 names the schedule in the sampler, 1.9+ (Forge) apart
    assert sampler_from_infotext({"Sampler": "DPM++ 2M Karras"}) == "DPM++ 2M Karras"
    assert sampler_from_infotext({"Sampler": "DPM++ 2M", "Schedule type": "Karras"}) == "DPM++ 2M Karras"
    assert sampler_from_infotext({"Sampler": "DPM++ 2M", "Schedule type": "Automatic"}) == "DPM++ 2M"
    assert sampler_from_infotext({"Sampler": "LMS"}) is None and sampler_from_infotext({}) is None


def test_the_model_picked_goes_into_the_job():
    assert build_job(values(model="demo-xl")).model == "demo-xl"
    assert build_job(values(model="")).model is None  # the server's default
    assert build_job(values(mode="upscale", strength=1.0, model="demo-base")).model == "demo-base"


def test_the_model_picker_lists_what_each_model_can_do():
    from shared.model_list import label_for, model_choices, picker_labels

    reply = {"type": "models", "default": "sd", "models": [
        {"name": "sd", "family": "sd15", "native_size": 512, "inpaint_model": True, "loaded": True},
        {"name": "xl", "family": "sdxl", "native_size": 1024, "inpaint_model": False, "loaded": False},
        {"name": "odd", "family": None, "native_size": None, "inpaint_model": False, "loaded": False}]}
    capabilities = {"reference_families": ["sdxl"]}
    # A server that does not list capabilities per model: references from welcome's families.
    assert [choice.label for choice in model_choices(reply, capabilities)] == [
        "sd (SD 1.5, 512 px: inpaint UNet), default", "xl (SDXL, 1024 px: references)", "odd"]
    labels = picker_labels(reply, capabilities)
    assert list(labels.values()) == ["", "sd", "xl", "odd"] and next(iter(labels)) == "Server default (sd)"
    assert label_for(labels, "xl") == "xl (SDXL, 1024 px: references)"
    assert label_for(labels, "gone") == label_for(labels, None) == "Server default (sd)"
    assert model_choices(None) == () and picker_labels(None) == {"Server default": ""}


def test_a_saved_model_label_is_read_by_the_models_name_whatever_the_offer_says_now():
    # A saved default (ui-config.json) holds the label of its day: a ControlNet or an IP-Adapter added since
    # changes the label, and one that no longer matches was dropped for the server's default.
    from shared.model_list import name_for, picker_labels

    reply = {"type": "models", "default": "demo-xl", "models": [
        {"name": "demo", "family": "sd15", "native_size": 512},
        {"name": "demo-xl", "family": "sdxl", "native_size": 1024, "inpaint_model": True},
        {"name": "plain", "family": None}]}
    labels = picker_labels(reply, {"reference_families": ["sdxl"]})
    assert name_for(labels, "demo-xl (SDXL, 1024 px: inpaint UNet, references), default") == "demo-xl"
    assert name_for(labels, "demo-xl (SDXL, 1024 px: inpaint UNet, 13 ControlNet types), default") == "demo-xl"
    assert name_for(labels, "demo (SD 1.5, 512 px: references + face)") == "demo"  # not "demo-xl"
    assert name_for(labels, "plain, default") == "plain" and name_for(labels, "plain") == "plain"
    assert name_for(labels, "Server default (demo)") == name_for(labels, None) == ""  # the server's, whichever
    assert name_for(labels, "gone (SD 1.5, 512 px)") is None and name_for(labels, "demonic") is None
    assert name_for(picker_labels(None), "demo (SD 1.5, 512 px)") is None  # no backend: not listed yet


def test_the_model_picker_describes_each_model_by_its_own_capabilities():
    from shared.model_list import model_choices

    assert [choice.label for choice in model_choices(CAPABLE, {"reference_families": ["sd15", "sdxl"]})] == [
        "sd (SD 1.5, 512 px: inpaint UNet, instruct, 13 ControlNet types, references + face), default",
        "ip2p (SD 1.5, 512 px: instruct only)",
        "xl (SDXL, 1024 px: ControlNet (canny, depth), references)",
        "flux (Flux, 1024 px: Fill inpaint, instruct, no negative prompt)",
        "flux-dev (Flux, 1024 px: no inpaint, no negative prompt)",
        "fill (SD 1.5, 512 px: inpaint only, 13 ControlNet types, references + face)"]


def caps(modes, control_types=CONTROL_TYPES, reference_modes=REFERENCE_MODES, negative_prompt=True,
         image_guidance=True) -> dict:
    return {"modes": list(modes), "control_types": list(control_types), "reference_modes": list(reference_modes),
            "negative_prompt": negative_prompt, "image_guidance": image_guidance}


SD, FLUX = ("generate", "img2img", "inpaint", "expand", "remove", "upscale"), ("generate", "img2img", "upscale")
# A models reply as the server sends it (the demo's kinds of model)
CAPABLE = {"type": "models", "default": "sd", "models": [
    {"name": "sd", "family": "sd15", "native_size": 512, "inpaint_model": True, "capabilities": caps(
        SD + ("instruct",))},
    {"name": "ip2p", "family": "sd15", "native_size": 512, "capabilities": caps(("instruct",))},
    {"name": "xl", "family": "sdxl", "native_size": 1024, "capabilities": caps(SD, ("canny", "depth"),
                                                                                 REFERENCE_MODES[:3])},
    {"name": "flux", "family": "flux", "native_size": 1024, "inpaint_model": True, "capabilities": caps(
        SD + ("instruct",), (), (), False, False)},
    {"name": "flux-dev", "family": "flux", "native_size": 1024, "capabilities": caps(FLUX, (), (), False, False)},
    {"name": "fill", "family": "sd15", "native_size": 512, "inpaint_model": True, "capabilities": caps(
        ("inpaint", "expand", "remove"))}]}


def test_instruct_edits_inside_the_painted_mask_or_the_whole_picture():
    source = values(mode="instruct", prompt="make it winter", strength=0.3, image_guidance=2.5, guidance=6.0)
    job = build_job(source)
    job.check()
    assert job.mode == "instruct" and job.prompt == "make it winter" and job.image_guidance == 2.5
    assert job.sampling.guidance == 6.0 and job.sampling.strength == 1.0  # every step runs: no strength
    assert (pixels(job.image) == np.asarray(source.picture)).all()
    mask = pixels(job.mask)
    assert mask[20:50, 30:60].min() == 255 and mask.sum() == 255 * 30 * 30
    assert (job.mask_grow, job.mask_feather) == (8, 16)
    message = parse_client_message(json.dumps(job.to_message(lambda image, role: {"frame": role})))
    assert (message["mode"], message["image_guidance"], message["mask"]["frame"]) == ("instruct", 2.5, "mask")

    whole = build_job(values(mode="instruct", prompt="make it winter", mask=None))
    assert whole.mask is None and whole.image_guidance == 1.5  # the default, as the WebUI's Image CFG scale
    inverted = pixels(build_job(values(mode="instruct", invert_mask=True)).mask)  # all but the painted box
    assert inverted[20:50, 30:60].max() == 0 and inverted.sum() == 255 * (128 * 96 - 30 * 30)
    with pytest.raises(InputError, match="^Write the instruction in the prompt"):
        build_job(values(mode="instruct", prompt=" "))
    with pytest.raises(InputError, match="^Instruct needs a picture: upload one first.$"):
        build_job(values(mode="instruct", picture=None))
    with pytest.raises(InputError, match="^Control unit 2: instruct edits take no ControlNet units; turn the unit"):
        build_job(values(mode="instruct", controls=[ControlSpec(), ControlSpec(enabled=True)]))
    with pytest.raises(InputError, match="^Reference 1: instruct edits take no reference pictures"):
        build_job(values(mode="instruct", references=[ReferenceSpec(image=picture(64, 64))]))
    assert "Image CFG scale" not in infotext({"mode": "inpaint", "image_guidance": 1.5}, 1, (8, 8))


@pytest.mark.parametrize("model, changes, sentence", [
    ("ip2p", {}, "The model ip2p cannot inpaint: it does instruct. Pick another mode or model."),
    ("flux-dev", {}, "The model flux-dev cannot inpaint: it does img2img, generate, upscale. Pick another mode "
                     "or model."),
    ("fill", {"mode": "instruct"}, "The model fill cannot instruct: it does inpaint, expand, remove. Pick another "
                                   "mode or model."),
    ("flux", {"controls": [ControlSpec(), ControlSpec(enabled=True)]},
     "Control unit 2: the model flux takes no ControlNet units; turn the unit off or pick another model."),
    ("xl", {"controls": [ControlSpec(enabled=True, type="pose")]},
     "Control unit 1: the backend has no pose ControlNet for SDXL models like xl; choose another type or turn "
     "the unit off."),
    ("flux", {"references": [ReferenceSpec(), ReferenceSpec(image=picture(64, 64))]},
     "Reference 2: the model flux takes no reference pictures; remove the picture or pick another model."),
    ("xl", {"references": [ReferenceSpec(image=picture(64, 64), mode="face")]},
     "Reference 1: the model xl takes references as reference, style, composition, not face."),
    ("flux", {"negative_prompt": "blurry"},
     "The model flux takes no negative prompt (Flux uses distilled guidance): clear the Negative prompt or pick "
     "another model."),
])
def test_the_picked_model_refuses_what_it_cannot_do_before_sending(model, changes, sentence):
    from shared.model_list import chosen

    with pytest.raises(InputError) as refused:
        build_job(values(model=model, chosen=chosen(CAPABLE, model), **changes))
    assert str(refused.value) == sentence


def test_what_the_picked_model_can_do_passes_and_kontext_gets_no_image_guidance():
    from shared.model_list import chosen

    assert chosen(CAPABLE, "").name == chosen(CAPABLE, None).name == "sd" and chosen(CAPABLE, "gone") is None
    on_default = values(chosen=chosen(CAPABLE, ""), negative_prompt="fog", mode="instruct", controls=[
        ControlSpec(enabled=True, scale=0.0)], references=[ReferenceSpec(image=picture(64, 64), weight=0.0)])
    assert build_job(on_default).image_guidance == 1.5  # switched-off units and references ask nothing
    assert build_job(values(chosen=chosen(CAPABLE, "ip2p"), model="ip2p", mode="instruct")).image_guidance == 1.5
    kontext = build_job(values(chosen=chosen(CAPABLE, "flux"), model="flux", mode="instruct"))
    assert kontext.image_guidance is None  # Flux Kontext has none: left out rather than refused
    assert build_job(values(chosen=chosen(CAPABLE, "flux"), model="flux")).mode == "inpaint"  # its Fill model
    assert build_job(values(chosen=chosen(CAPABLE, "flux-dev"), mode="upscale", strength=1.0)).mode == "upscale"
    with pytest.raises(InputError, match="^The model ip2p cannot upscale"):
        build_job(values(chosen=chosen(CAPABLE, "ip2p"), mode="upscale", strength=0.5))


def test_the_tab_shows_only_what_the_picked_model_can_use():
    from easel_a1111.params import TAB_MODES, model_offer
    from shared.model_list import chosen

    everything = offer({"control_types": ["depth", "canny", "pose"], "reference_modes": list(REFERENCE_MODES),
                        "reference_families": ["sd15", "sdxl"]})
    sd = model_offer(chosen(CAPABLE, "sd"), everything)
    assert sd.modes == TAB_MODES and sd.control_types == ("canny", "depth", "pose") and sd.negative_prompt
    xl = model_offer(chosen(CAPABLE, "xl"), everything)
    assert "instruct" not in xl.modes and xl.control_types == ("canny", "depth")
    assert xl.reference_modes == ("reference", "style", "composition")
    flux = model_offer(chosen(CAPABLE, "flux-dev"), everything)
    assert flux.modes == ("img2img", "generate", "upscale") and flux.control_types == flux.reference_modes == ()
    assert not flux.negative_prompt and not flux.image_guidance
    ip2p = model_offer(chosen(CAPABLE, "ip2p"), everything)  # instruct takes neither ControlNets nor references
    assert ip2p.modes == ("upscale", "instruct") and ip2p.control_types == ip2p.reference_modes == ()
    assert model_offer(chosen(CAPABLE, "gone"), everything).modes == TAB_MODES  # not described: everything
    assert model_offer(None, offer({"control_types": [], "reference_families": []})).reference_modes == ()


def test_the_lora_picker_lists_the_models_loras_and_adds_a_tag_once():
    from easel_a1111.params import model_offer, with_lora
    from shared.model_list import chosen

    loras = offer({"loras": [{"name": "ink", "family": "sd15"}, {"name": "xl-ink", "family": "sdxl"},
                             {"name": "any"}]})
    assert model_offer(chosen(CAPABLE, "sd"), loras).loras == ("ink", "any")
    assert model_offer(chosen(CAPABLE, "flux"), loras).loras == (), "the server refuses LoRAs on flux models"
    assert model_offer(None, loras).loras == ("ink", "xl-ink", "any")
    assert with_lora("a cat ", "ink") == "a cat <lora:ink:1>" and with_lora("", "ink", 0.5) == "<lora:ink:0.5>"
    assert with_lora("a cat <lora:Ink:0.3>", "ink") == "a cat <lora:Ink:0.3>"  # tagged already: its weight kept


def test_what_a_model_takes_none_of_stays_out_of_its_jobs():
    # Hidden units and references, and the greyed-out negative prompt, may still hold values (a saved
    # default, a picture from before the model changed): a Flux job gets none of them.
    from easel_a1111.params import model_offer, within_offer
    from shared.model_list import chosen

    everything = offer({"control_types": ["canny"], "reference_modes": list(REFERENCE_MODES),
                        "reference_families": ["sd15", "sdxl"]})
    held = values(mode="img2img", strength=0.5, negative_prompt="fog",
                  controls=[ControlSpec(enabled=True)], references=[ReferenceSpec(image=picture(64, 64), weight=0.7)])
    flux = within_offer(held, model_offer(chosen(CAPABLE, "flux-dev"), everything))
    job = build_job(replace(flux, model="flux-dev", chosen=chosen(CAPABLE, "flux-dev")))
    assert job.control == [] and job.references == [] and job.negative_prompt == ""
    sd = within_offer(held, model_offer(chosen(CAPABLE, "sd"), everything))
    assert sd == held  # a model that takes them keeps them, weights and all


def test_the_webuis_file_name_patterns_get_the_jobs_parameters():
    from easel_a1111.params import saving_fields

    second = saving_fields(values(mode="img2img", strength=0.4, sampler="Euler a", guidance=5.0), [7, 8], 1)
    assert (second["seed"], second["all_seeds"], second["batch_size"], second["batch_index"]) == (8, [7, 8], 2, 1)
    assert (second["steps"], second["cfg_scale"], second["sampler_name"]) == (4, 5.0, "Euler a")
    assert second["denoising_strength"] == 0.4 and second["prompt"] == "a red door" and second["styles"] == []
    assert saving_fields(values(mode="generate", strength=0.4), [7], 0)["denoising_strength"] is None
    assert saving_fields(values(mode="upscale", strength=1.0), [7], 0)["denoising_strength"] is None


def test_a_real_instruct_edit_keeps_every_unpainted_pixel_and_says_so(server):
    from shared.model_list import chosen

    offered = jobs.offered(jobs.Connection(server.url))
    source = values(mode="instruct", prompt="make it winter", picture=picture(128, 96, seed=5).convert("RGBA"),
                    image_guidance=2.0, model="demo-instruct", chosen=chosen(offered.models, "demo-instruct"))
    final = list(jobs.run(jobs.Connection(server.url), source, "unit"))[-1]
    assert final.done and final.status.startswith("Done: 1 image"), final.status
    out, before = np.asarray(final.images[0]), np.asarray(source.picture)
    near = np.zeros((96, 128), bool)
    margin = mask_margin(8, 16)
    near[max(0, 20 - margin):50 + margin, max(0, 30 - margin):60 + margin] = True
    assert out.shape == before.shape and (out[~near] == before[~near]).all()
    assert (out[25:45, 35:55] != before[25:45, 35:55]).any()
    text = final.infotexts[0]
    assert "Image CFG scale: 2.0" in text and "Easel mode: instruct" in text and "Mask blur: 16" in text, text
    # Nothing painted: the whole picture is edited.
    whole = list(jobs.run(jobs.Connection(server.url), values(**{**vars(source), "mask": None}), "unit"))[-1]
    assert whole.status.startswith("Done: 1 image"), whole.status
    edited = np.asarray(whole.images[0])
    assert edited.shape == before.shape and (edited[~near] != before[~near]).any(axis=-1).mean() > 0.5
    assert "Mask blur" not in whole.infotexts[0] and "Image CFG scale: 2.0" in whole.infotexts[0]
    # The demo's Flux model takes no negative prompt: refused in the tab, nothing sent.
    flux = values(negative_prompt="fog", model="demo-flux", chosen=chosen(offered.models, "demo-flux"))
    assert list(jobs.run(jobs.Connection("ws://127.0.0.1:9/"), flux, "unit"))[-1].status.startswith(
        "The model demo-flux takes no negative prompt")


def test_the_models_of_a_real_backend(server):
    offered = jobs.offered(jobs.Connection(server.url))
    assert offered.models["default"] == "demo" and "demo-xl" in [m["name"] for m in offered.models["models"]]
    assert jobs.offered(jobs.Connection("ws://127.0.0.1:9/")) == jobs.Offered()


def test_a_wss_backend_with_its_certificate(demo_config, engine, tmp_path):
    # Settings > Easel: a wss:// address and the server's certificate (pinned); another certificate is refused.
    import dataclasses

    from backend.server import ServerThread
    from backend.tls import make_cert

    cert, key = make_cert(tmp_path / "box", ["127.0.0.1"])
    impostor, _ = make_cert(tmp_path / "impostor", ["127.0.0.1"])
    with ServerThread(dataclasses.replace(demo_config, tls_cert=str(cert), tls_key=str(key)), engine) as secure:
        assert secure.url.startswith("wss://")
        trusted = jobs.Connection(secure.url, cert=str(cert))
        assert jobs.status_line(trusted).startswith(f"Easel backend at {secure.url}: easel/")
        updates = list(jobs.run(trusted, values(mode="generate", width=64, height=64, steps=2), "wss"))
        assert updates[-1].status.startswith("Done: 1 image"), updates[-1].status
        refused = jobs.status_line(jobs.Connection(secure.url, cert=str(impostor)))
        assert refused.startswith(f"Cannot reach the Easel backend at {secure.url}: the TLS handshake")
        assert refused.endswith("Give the server's certificate (from `easel cert`) in Settings > Easel.")


def test_a_wrong_token_or_address_says_what_to_set(demo_config, engine):
    # Settings > Easel is where both are fixed; neither is a server that is down or a job it refused.
    import dataclasses

    from backend.server import ServerThread

    with ServerThread(dataclasses.replace(demo_config, token="sekrit"), engine) as guarded:
        for token in ("", "wrong"):
            expected = (f"The Easel backend at {guarded.url} needs a token, and the one in Settings > Easel is missing "
                        "or wrong: give the one the server was started with (--token).")
            assert jobs.status_line(jobs.Connection(guarded.url, token=token)) == expected
            assert list(jobs.run(jobs.Connection(guarded.url, token=token), values(), "token"))[-1].status == expected
        assert jobs.status_line(jobs.Connection(guarded.url, token="sekrit")).startswith("Easel backend at ")
    assert jobs.status_line(jobs.Connection("localhost:8760")) == (
        "localhost:8760 is not an Easel backend address: set one like ws://127.0.0.1:8760/ (wss:// for a server "
        "with a certificate) in Settings > Easel.")


@pytest.fixture
def blinker(server):
    proxy = Blinker(server.url)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("cancel", [False, True])
def test_a_backend_that_stops_answering_mid_job_is_not_waited_for(blinker, monkeypatch, cancel):
    # A stopped (SIGSTOP) or hung backend closes nothing: without a probe the tab showed its last step for
    # as long as it stayed stopped, and a Cancel showed nothing at all.
    monkeypatch.setattr(jobs, "SILENT_AFTER", 3.0, raising=False)
    monkeypatch.setattr(jobs, "CANCEL_GRACE", 1.0, raising=False)
    runner = jobs.run(jobs.Connection(blinker.url), values(mode="generate", width=256, height=256, steps=150),
                      f"frozen-{cancel}")
    for update in runner:
        if update.status.startswith("Step 2/"):
            break
    blinker.frozen = True
    started = time.monotonic()
    thaw = threading.Timer(20, setattr, (blinker, "frozen", False))  # a tab that waits fails, not hangs
    thaw.start()
    if cancel:
        assert jobs.cancel(f"frozen-{cancel}") is None  # sent (into a socket nobody reads)
    rest = list(runner)
    thaw.cancel()
    blinker.frozen = False
    if cancel:
        assert rest[-1].status == (f"Cancelled here: the Easel backend at {blinker.url} did not answer the Cancel "
                                   "within 1 s (it may be stuck or paused), so the tab stopped waiting for the job.")
    else:
        assert rest[-1].status == (f"The Easel backend at {blinker.url} stopped answering mid-job (nothing for 3 s): "
                                   "it may be stuck or paused. The tab stopped waiting for the job; restart the "
                                   "backend if it does not recover.")
    assert time.monotonic() - started < 10 and rest[-1].done


def test_a_map_preview_from_a_backend_that_stops_answering_is_not_waited_for(blinker, monkeypatch):
    monkeypatch.setattr(jobs, "SILENT_AFTER", 2.0, raising=False)
    made = jobs.Connection.client

    def frozen_once_connected(self, open_timeout=5):  # hung between the hello and the preview's answer
        client = made(self, open_timeout)
        connect = client.connect
        client.connect = lambda: (connect(), setattr(blinker, "frozen", True))[0]
        return client

    monkeypatch.setattr(jobs.Connection, "client", frozen_once_connected)
    thaw = threading.Timer(20, setattr, (blinker, "frozen", False))  # a tab that waits fails, not hangs
    thaw.start()
    image, message = jobs.preprocess(jobs.Connection(blinker.url), "canny", picture(128, 96))
    thaw.cancel()
    blinker.frozen = False
    assert image is None and message.startswith(f"The Easel backend at {blinker.url} stopped answering"), message


def test_a_job_whose_connection_blinked_still_lands_once(blinker):
    """The link drops after the first step and stays down longer than one immediate retry: the tab
    reconnects, resumes its session, and shows the finished picture once."""
    source = values(picture=picture(128, 96, seed=5).convert("RGBA"), steps=8)
    updates = []
    for update in jobs.run(jobs.Connection(blinker.url), source, "unit"):
        updates.append(update)
        if update.status.startswith("Step 1/") and blinker.connections == 1:
            blinker.cut(1.5)
    final = updates[-1]
    assert final.done and final.status.startswith("Done: 1 image"), [u.status for u in updates]
    assert blinker.connections >= 2, "the job ended without the link being cut"
    assert any("reconnecting" in update.status for update in updates)
    assert sum(update.images is not None for update in updates) == 1 and sum(u.done for u in updates) == 1
    (result,) = final.images
    expected = list(jobs.run(jobs.Connection(blinker.url), source, "unit"))[-1].images[0]
    assert (np.asarray(result) == np.asarray(expected)).all(), "the result that was kept is the job's own"


def test_a_link_that_drops_while_the_picture_uploads_still_runs_the_job(blinker):
    blinker.cut_on_upload = True  # on the first frame at least UPLOAD_BYTES long: a picture of noise is
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 128, 4), np.uint8))
    updates = list(jobs.run(jobs.Connection(blinker.url), values(picture=noise), "unit"))
    assert blinker.connections == 2, "the link was cut under the upload, then the tab resumed"
    assert updates[-1].done and updates[-1].status.startswith("Done: 1 image"), [u.status for u in updates]


def test_a_link_that_stays_down_ends_in_one_sentence(blinker, monkeypatch):
    monkeypatch.setattr(jobs, "RECONNECT_WINDOW", 1.0)
    updates = []
    started = time.monotonic()
    for update in jobs.run(jobs.Connection(blinker.url), values(steps=8), "unit"):
        updates.append(update)
        if update.status.startswith("Step 1/") and blinker.connections == 1:
            blinker.cut(600)
    assert time.monotonic() - started < 30
    final = updates[-1]
    assert final.done and final.status.startswith(
        f"Lost the connection to the Easel backend at {blinker.url} mid-job"), final.status
    assert "1 s" in final.status and final.images is None


@pytest.mark.parametrize("pressed", [0, 0.6])  # s after the tab says "reconnecting": at once, or while it retries
def test_cancel_while_the_link_is_down_cancels_once_it_is_back(blinker, pressed):
    updates, said = [], []
    # The most steps allowed: the job must outlast the 2 s outage and the retries even on a fast machine
    # (40 steps ran in 3.5 s on an idle CI machine and finished before the link came back).
    for update in jobs.run(jobs.Connection(blinker.url), values(steps=150), "blinking"):
        updates.append(update)
        if update.status.startswith("Step 1/") and blinker.connections == 1:
            blinker.cut(2.0)
        elif "reconnecting" in update.status:
            threading.Timer(pressed, lambda: said.append(jobs.cancel("blinking"))).start()
    assert [(update.status, update.failed) for update in said] == [
        ("Cancelling once the connection to the backend is back…", False)]
    assert updates[-1].status == "Cancelled." and updates[-1].done, [u.status for u in updates]
    assert blinker.connections >= 2


def test_a_cancel_that_cannot_reach_the_backend_is_said_as_an_error(server, monkeypatch):
    # The connection closed as the job ended, just as Cancel was pressed: "Could not cancel: …" was shown as a
    # plain status line among the tab's marked error lines.
    client = jobs.Connection(server.url).client().connect()
    client.close()
    monkeypatch.setitem(jobs._running, "ending", (client, "its-job"))
    sent = client.cancel

    def ends_meanwhile(job):  # the job's runner ends it as the Cancel goes out
        jobs._running.pop("ending")
        sent(job)

    monkeypatch.setattr(client, "cancel", ends_meanwhile)
    said = jobs.cancel("ending")
    assert said.failed and said.status.startswith("Could not cancel: "), said
    assert jobs.markdown(said.status, said.failed).startswith("<div class='error'>")


def test_a_sketch_on_a_clear_layer_is_sent_with_its_transparency():
    # Dark lines on a transparent PNG (a paint program's export): sent as RGB, the colour stored under the
    # transparency (black here) came through, and the line map was black on black.
    sketch = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    sketch.paste((20, 20, 20, 255), (10, 30, 54, 33))
    job = build_job(values(mode="img2img", strength=0.5,
                           controls=[ControlSpec(enabled=True, type="scribble", source=OWN_IMAGE, image=sketch)],
                           references=[ReferenceSpec(image=sketch, weight=0.5)]))
    for sent in (job.control[0].image, job.references[0].image):
        alpha = np.asarray(Image.open(io.BytesIO(sent.data)).convert("RGBA"))[..., 3]
        assert alpha[0, 0] == 0 and alpha[31, 20] == 255, "the strokes and the clear layer around them"


def test_cfg_scale_on_auto_gets_the_models_own_guidance(server):
    """The CFG slider's 0 is auto: the job leaves guidance out and the backend picks the model's (a Flux
    Fill inpaint 30, which the tab's fixed 7 ran at a quarter of); the infotext and the saved file's [cfg]
    say what was used, and the slider's note names it for the picked model and mode."""
    from easel_a1111.params import guidance_note, saving_fields
    from shared.model_list import chosen

    offered = jobs.offered(jobs.Connection(server.url))
    flux = chosen(offered.models, "demo-flux")
    auto = values(guidance=0.0, steps=2, model="demo-flux", chosen=flux)
    assert "guidance" not in build_job(auto).to_message(lambda image, role: {})
    assert build_job(replace(auto, guidance=5.0)).sampling.guidance == 5.0, "a CFG scale the painter set is sent"
    final = list(jobs.run(jobs.Connection(server.url), auto, "unit"))[-1]
    assert final.status.startswith("Done: 1 image"), final.status
    assert "CFG scale: 30.0" in final.infotexts[0], final.infotexts[0]
    made = saving_fields(auto, final.seeds, 0, final.guidance, final.sampler)
    assert made["cfg_scale"] == 30.0
    # Flux runs its own Euler whatever sampler is picked: the file name's [sampler] is the one that ran,
    # as the infotext says (it read the tab's "DPM++ 2M Karras")
    assert auto.sampler == "DPM++ 2M Karras" and made["sampler_name"] == "Euler", made
    assert "Sampler: Euler," in final.infotexts[0], final.infotexts[0]
    assert guidance_note(flux, "inpaint") == "0 = auto: 30, this model's own for inpaint"
    assert guidance_note(flux, "img2img") == "0 = auto: 3.5, this model's own for img2img"
    # a plain upscale runs no model: the note says whose CFG scale it is
    assert guidance_note(flux, "upscale") == ("0 = auto: 3.5, this model's own for an upscale's refine "
                                              "(Strength below 1)")
    assert guidance_note(chosen(offered.models, "demo"), "inpaint") == "0 = auto: 7, this model's own for inpaint"
    assert guidance_note(None, "inpaint") == "0 = auto: the model's own (the backend picks it)"


def test_a_job_the_backend_cancels_says_why(demo_config, engine):
    # A backend stopping (SIGTERM) cancels the running job with `reason: shutting_down`: the painter, who
    # pressed no Cancel, was shown a bare "Cancelled." as if they had.
    import dataclasses

    from backend.server import ServerThread

    stopping = ServerThread(dataclasses.replace(demo_config, shutdown_grace=0), engine).start()
    stopper = threading.Thread(target=stopping.stop)
    try:
        shown = []
        for update in jobs.run(jobs.Connection(stopping.url), values(steps=60, mode="img2img", strength=1.0), "unit"):
            shown.append(update.status)
            if update.status.startswith("Step") and not stopper.is_alive():
                stopper.start()
    finally:
        stopper.join(60) if stopper.is_alive() else stopping.stop()
    assert shown[-1] == "Cancelled by the Easel backend: the server is shutting down.", shown


def test_a_model_that_takes_no_loras_gets_none_offered_and_a_tagged_prompt_is_refused_in_the_tab():
    # What the model's capabilities say (`loras: false`), not its family; an older server's flux takes none.
    from easel_a1111.params import model_offer
    from shared.model_list import chosen

    loras = offer({"loras": [{"name": "ink", "family": "sd15"}]})
    plain = {**CAPABLE, "models": [{"name": "sd-x", "family": "sd15", "native_size": 512,
                                    "capabilities": {**caps(SD), "loras": False, "clip_skip": False}}]}
    assert model_offer(chosen(plain, "sd-x"), loras).loras == ()
    with pytest.raises(InputError, match="The model sd-x takes no LoRAs: take <lora:ink> out of the Prompt"):
        build_job(values(prompt="a door <lora:ink:0.7>", model="sd-x", chosen=chosen(plain, "sd-x")))
    with pytest.raises(InputError, match="The model flux takes no LoRAs"):
        build_job(values(prompt="a door <lora:ink>", model="flux", chosen=chosen(CAPABLE, "flux")))


def test_a_picture_sent_to_easel_lands_in_the_mode_it_came_from():
    # "Send to Easel" from img2img's inpaint tabs lands in inpaint, from its img2img tabs in img2img (at the
    # WebUI's 0.75 when Strength is 1, which would paint the picture over); from txt2img a generate, which
    # would ignore the picture, becomes inpaint, and any other mode stays the painter's.
    from easel_a1111.params import sent_mode

    for tab in (2, 3, 4):  # Inpaint, Inpaint sketch, Inpaint upload
        assert sent_mode("img2img", tab, "generate", 1.0) == ("inpaint", 1.0)
    assert sent_mode("img2img", 0, "inpaint", 1.0) == ("img2img", 0.75)
    assert sent_mode("img2img", 1, "inpaint", 0.4) == ("img2img", 0.4)  # (Sketch) the painter's strength kept
    assert sent_mode("txt2img", None, "generate", 1.0) == ("inpaint", 1.0)
    assert sent_mode("txt2img", None, "upscale", 1.0) == ("upscale", 1.0)
    assert sent_mode("txt2img", None, "img2img", 0.5) == ("img2img", 0.5)


def test_png_info_sets_the_mode_of_a_picture_that_is_not_an_easel_result():
    # PNG Info's Send to Easel of a WebUI picture left the tab on generate, which ignored the picture; an
    # Easel result's infotext names its mode, which the paste sets (None: left to it).
    from easel_a1111.params import pnginfo_mode

    webui = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64, Model: v1-5-pruned-emaonly"
    assert pnginfo_mode(webui, "generate") == "inpaint"
    assert pnginfo_mode(webui, "img2img") == "img2img" and pnginfo_mode("", "generate") == "inpaint"
    easel = infotext({"mode": "generate", "prompt": "Easel mode: upscale", "steps": 2}, 5, (64, 64))
    assert pnginfo_mode(easel, "inpaint") is None


@pytest.mark.parametrize("kind, scale, levels", [
    ("F", 1 / 127, 255),  # 0..1, as most programs write floats
    ("F", 1.0, 1),  # 0..127: taken as levels
    ("I", 100_000, 255 / 12_700_000),  # 32-bit integers past 16 bits: scaled by the largest (v / 257 was white)
])
def test_a_float_or_32_bit_grey_picture_is_sent_in_its_greys_as_easel_run_reads_it(tmp_path, kind, scale, levels):
    # A float TIFF (a depth map from a 3D program) opens in Pillow as F, whose conversion to 8 bits takes the
    # values as 0..255 levels: one of 0..1 reached the job all but black.
    ramp = np.mgrid[0:48, 0:128][1].astype(np.float64) * scale  # one level a column
    Image.fromarray(ramp.astype(np.float32 if kind == "F" else np.int32), kind).save(tmp_path / "depth.tif")
    depth = Image.open(tmp_path / "depth.tif")
    greys = np.rint(ramp * levels).astype(np.uint8)
    unit = ControlSpec(enabled=True, type="depth", source=OWN_IMAGE, image=depth)
    job = build_job(values(picture=depth, controls=[unit], steps=4))
    assert (pixels(job.image)[..., 0] == greys).all() and (pixels(job.control[0].image)[..., 0] == greys).all()
    assert (pixels(job.image)[..., 0] == np.asarray(read_picture(tmp_path / "depth.tif", "image", "--image")
                                                     .upright.convert("L"))).all(), "as easel run reads it"


def test_a_16_bit_grey_picture_is_sent_and_kept_in_its_greys(server):
    # A 16-bit grey PNG (a depth map, a scan) opens in Pillow as I;16, whose conversion to 8 bits clips:
    # the job got a white picture (and a white depth map), and an inpaint was composited over white.
    deep = Image.fromarray((np.mgrid[0:96, 0:128][1] * 516).astype(np.uint16))  # 0 .. 65532 left to right
    greys = ((np.asarray(deep, np.int64) + 128) // 257).astype(np.uint8)
    unit = ControlSpec(enabled=True, type="depth", source=OWN_IMAGE, image=deep)
    source = values(picture=deep, controls=[unit], steps=4)
    job = build_job(source)
    assert (pixels(job.image)[..., 0] == greys).all() and (pixels(job.control[0].image)[..., 0] == greys).all()
    final = list(jobs.run(jobs.Connection(server.url), source, "deep"))[-1]
    assert final.status.startswith("Done: 1 image"), final.status
    out = np.asarray(final.images[0])
    assert (out[80:, 100:, 0] == greys[80:, 100:]).all() and (out[80:, 100:, 3] == 255).all()  # far from the mask

"""Intake: a protocol job plus this connection's uploads become a job the engine can run.

Everything a client can get wrong is caught here, before the job is queued: images that do not
decode or are too large, a mask of the wrong size or with nothing in it, unknown models, limits,
and the shared rules (``Job.check``: strength x steps, schedule ranges, seed range ...).
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
from collections.abc import Callable, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from backend.config import Limits
from backend.engine.embeddings import explicit_names
from backend.engine.job import Control, EditJob, PreprocessJob, Reference
from backend.imaging import opaque_control, to_array
from backend.presets import Preset
from shared import loras as lora_rules
from shared import rules
from shared.errors import shown
from shared.images import CHANNELS, ImageData, png_size
from shared.job import Job
from shared.job import PreprocessJob as PreprocessRequest
from shared.messages import MAX_SEED, ProtocolError
from shared.model_capabilities import ModelCapabilities, refusal
from shared.rules import HIRES_REFINE, IMAGE_GUIDANCE
from shared.vocabulary import BUILTIN_UPSCALER

MIN_PREPROCESS_SIDE = 16
FLUX_SAMPLER = "euler"  # the name of the sampler a flux model runs (FlowMatchEulerDiscreteScheduler)


def build_edit_job(job: Job, uploads: dict[str, ImageData], limits: Limits, models: list[str],
                   default_model: str | None, upscalers: list[str] | None = None,
                   default_upscaler: str = BUILTIN_UPSCALER,
                   with_preset: Callable[[Job], tuple[Job, Preset | None]] | None = None,
                   loras: Mapping[str, str | None] | None = None,
                   model_family: Callable[[str], str | None] | None = None,
                   capabilities: Callable[[str], ModelCapabilities] | None = None,
                   embeddings: Callable[[str], tuple[str | None, list[str]]] | None = None,
                   left_out: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {})) -> EditJob:
    """Check a protocol job against the rules and the server's state; raise ProtocolError if unfit.
    ``with_preset``: the job with its preset applied, and the preset (``backend.presets.apply_preset``);
    ``loras``: the server's LoRAs and their families; ``model_family``: a model's family (None: not known);
    ``capabilities``: what a model can do (modes, control, references ...); ``embeddings``: a model's family
    and the textual-inversion embeddings it can use; ``left_out``: the model files and LoRA files the
    server found but cannot use (name -> why), for the error a job naming one gets."""
    # A submit consumes the frames it names, accepted or refused, so a retry must upload again. Within
    # the submit one frame may be named several times (the picture as `image` and as a control image).
    refs = [job.image, job.mask, *(unit.image for unit in job.control), *(ref.image for ref in job.references)]
    try:
        image = _resolve(job.image, uploads, "image") if job.image is not None else None
        mask = _resolve(job.mask, uploads, "mask") if job.mask is not None else None
        control_images = [_resolve(unit.image, uploads, f"control[{i}].image") if unit.image is not None else None
                          for i, unit in enumerate(job.control)]
        reference_images = [_resolve(ref.image, uploads, f"references[{i}].image")
                            for i, ref in enumerate(job.references)]
    finally:
        _consume(refs, uploads)
    # The submit's own prompt loses its <lora:> tags before a preset's template wraps it: the result gives it back
    # as `prompt`, so that sent again with the preset it is wrapped into the same text (the wrapped one came back,
    # and was wrapped twice)
    asked = job.prompt
    submitted, tags = lora_rules.split_prompt(asked)
    job = dataclasses.replace(job, prompt=submitted)
    job, preset = with_preset(job) if with_preset else (job, None)
    # The server's limits first: a batch of 10**30 was told its seed must be at most -10**30 (the seed range rule)
    rules.check_limit("steps", job.sampling.steps, limits.max_steps)
    rules.check_limit("batch", job.sampling.batch, limits.max_batch)
    job.check(few_step=preset is not None and preset.few_step)
    model = default_model if job.model is None else job.model  # "" names no model: refused below
    if model not in models:
        raise ProtocolError("unknown_model", lora_rules.missing("model", model, models, left_out[0]), "model")
    offers = capabilities(model) if capabilities is not None else None
    # (with the prompt as asked: a model without LoRAs refuses its tags)
    refused = refusal(dataclasses.replace(job, prompt=asked), model, offers) if offers is not None else None
    if refused is not None and refused.code == "unsupported_mode":  # say which models would do
        able = [name for name in models if name != model and job.mode in capabilities(name).modes]
        raise ProtocolError(refused.code, f"{refused.message}; " + (
            f"pick a model that can: {', '.join(able[:6])}{f' and {len(able) - 6} more' if len(able) > 6 else ''}"
            if able else f"no model on this server can {job.mode}"),
            refused.field)
    if refused is not None:
        raise refused
    prompt, template_tags = lora_rules.split_prompt(job.prompt)  # (a template's own tags are the preset's LoRAs)
    wanted = lora_rules.merge(("loras", [(lora.name, lora.weight) for lora in job.loras]), ("prompt", tags),
                              ("preset", template_tags + list(preset.loras) if preset else []))
    family = model_family(model) if model_family else None
    lora_rules.check(wanted, loras or {}, family, model, left_out[1])
    if family == "flux" or (offers is not None and not offers.loras):  # (a flux LoRA passed the family check
        # and was not applied, yet listed as run; a preset's LoRAs are checked here only)
        for name, weight, where in wanted:
            if weight != 0:
                raise ProtocolError("unsupported", f"model {model!r} ({family}) takes no LoRAs here yet: LoRA "
                                    f"{shown(name)} would not be applied (leave it out, or give it weight 0)", where)
    if embeddings is not None:
        check_embeddings(job, model, *embeddings(model))
    if family != "flux":  # (flux runs its own Euler, whatever sampler the job names)
        rules.check_schedule_length(job.sampling.sampler, job.sampling.steps)
    sampling = job.sampling
    if job.mode != "upscale":  # (an upscale's target size is checked against max_side once the picture's is known)
        rules.check_generate_side(job.width, job.height, limits.max_generate_side)
    seed = sampling.seed if sampling.seed is not None else random.randint(0, MAX_SEED - limits.max_batch)

    control = tuple(Control(unit.type, opaque_control(decode_image(image, limits, f"control[{i}].image", "RGBA"),
                                                      unit.type, bool(unit.preprocessor)) if image else None,
                            unit.preprocessor, float(unit.scale), float(unit.start), float(unit.end), unit.resolution)
                    for i, (unit, image) in enumerate(zip(job.control, control_images)))
    references = tuple(Reference(opaque_control(decode_image(image, limits, f"references[{i}].image", "RGBA"),
                                                None, False), float(ref.weight), ref.mode)
                       for i, (ref, image) in enumerate(zip(job.references, reference_images)))
    pixels = decode_image(image, limits, "image", "RGBA") if image is not None else None
    mask_pixels = None
    if mask is not None:
        mask_pixels = decode_image(mask, limits, "mask", "L")
        if mask_pixels.shape != pixels.shape[:2]:
            raise ProtocolError("size_mismatch", f"mask is {mask_pixels.shape[1]}x{mask_pixels.shape[0]} but the "
                                f"image is {pixels.shape[1]}x{pixels.shape[0]}: a mask must have the picture's size "
                                "(scale or pad it to the picture; a crop of the picture needs the same crop of the "
                                "mask)", "mask")
        if not mask_pixels.any():
            whole = "; or leave `mask` out to edit the whole picture" if job.mode == "instruct" else ""
            raise ProtocolError("empty_mask", "the mask is empty: paint (white) where the picture should change"
                                + whole, "mask")
    if job.mode == "expand":
        pixels = _expanded_canvas(pixels, job.expand, limits)
    width, height, strength = job.width, job.height, float(sampling.strength)
    if job.mode == "upscale":
        width, height = _upscale_size(job, pixels, limits, upscalers or [BUILTIN_UPSCALER])
        strength = float(job.refine or 0.0)
    elif job.mode == "generate":  # the strength of a large picture's second stage ("hires fix")
        strength = float(job.refine or HIRES_REFINE)
    if preset is not None and preset.few_step and job.mode != "generate" and strength > 0:
        # A few-step job runs its one step on a schedule long enough for steps x strength to reach 1: at a tiny
        # strength that schedule has millions of steps (or more than memory holds), built on the GPU worker.
        schedule = rules.schedule_steps(sampling.steps, rules.pass_strength(job.mode, strength))
        most, whose = limits.max_steps, f"this server's limit of {limits.max_steps} (max_steps)"
        if family != "flux" and rules.SCHEDULE_MOST.get(sampling.sampler, most) < most:
            most = rules.SCHEDULE_MOST[sampling.sampler]
            whose = f"the {most} its {sampling.sampler} sampler can draw"
        if schedule > most:
            least = math.ceil(1000 / (most * rules.pass_strength(job.mode, 1.0))) / 1000
            key = "refine" if job.mode == "upscale" else "strength"
            raise ProtocolError("limit_exceeded", f"`{key}` {strength:g} is too low for preset {job.preset!r}: its one "
                                f"step would need a schedule of {shown(schedule)} steps, over {whose}; raise `{key}` "
                                f"to at least {least:g}", key)
    work = EditJob(
        mode=job.mode, model=model, prompt=prompt, negative_prompt=job.negative_prompt, seed=seed,
        steps=sampling.steps, strength=strength,
        guidance=float(sampling.guidance if sampling.guidance is not None else
                       rules.default_guidance(family, job.mode)),
        batch=sampling.batch, width=width,
        # (flux runs its own flow-matching Euler whatever the job says: the result says so, not dpmpp_2m_karras)
        sampler=FLUX_SAMPLER if family == "flux" else sampling.sampler, height=height, image=pixels,
        mask=mask_pixels, mask_grow=job.mask_grow, mask_feather=job.mask_feather, preview_every=job.preview_every,
        preview_size=job.preview_size, control=control, references=references, fill=job.fill_mode,
        soft=job.soft_inpaint, expand=job.expand, padding=job.mask_padding, clip_skip=sampling.clip_skip,
        upscaler=(job.upscaler or default_upscaler) if job.mode in ("upscale", "generate") else None,
        # (None where the model has no image guidance, e.g. Flux Kontext: the result does not claim one)
        image_guidance=None if offers is not None and not offers.image_guidance
        else float(IMAGE_GUIDANCE if job.image_guidance is None else job.image_guidance))
    return dataclasses.replace(
        work, loras=tuple((name, float(weight)) for name, weight, _ in wanted), preset=job.preset,
        few_step=bool(preset and preset.few_step), timestep_spacing=preset.timestep_spacing if preset else None)


def check_embeddings(job: Job, model: str, family: str | None, usable: list[str]) -> None:
    """Refuse ``embedding:name`` in a prompt when the model's family has no embedding of that name."""
    for key in ("prompt", "negative_prompt"):
        for name in explicit_names(getattr(job, key)):
            if name not in usable:
                raise ProtocolError("unknown_embedding", f"`{key}` names embedding {shown(name)}, which this server "
                                    f"does not have for model {model!r}{f' ({family})' if family else ''}; available: "
                                    f"{', '.join(usable) or 'none'}", key)


def _expanded_canvas(pixels: np.ndarray, sides: tuple[int, int, int, int], limits: Limits) -> np.ndarray:
    """The canvas an expand paints on: transparent, with the picture at (left, top); refused over the limits."""
    height, width = pixels.shape[:2]
    left, top = sides[:2]
    new_width, new_height = rules.check_expanded_size(width, height, sides, limits.max_side, limits.max_pixels)
    canvas = np.zeros((new_height, new_width, 4), np.uint8)
    canvas[top:top + height, left:left + width] = pixels
    return canvas


def _upscale_size(job: Job, pixels: np.ndarray, limits: Limits, upscalers: list[str]) -> tuple[int, int]:
    """The size an upscale makes, refused (before the job is queued) when over the server's limits."""
    if job.upscaler is not None and job.upscaler not in upscalers:
        raise ProtocolError("unknown_upscaler", f"no upscaler named {shown(job.upscaler)}; available: "
                            f"{', '.join(upscalers)}", "upscaler")
    height, width = pixels.shape[:2]
    target = rules.check_upscale_limits(width, height, job.scale, job.width, job.height, limits.max_side,
                                        limits.max_pixels)
    field = rules.upscale_field(job.width, job.height)
    if target[0] < width or target[1] < height:
        raise ProtocolError("invalid_field", f"{target[0]}x{target[1]} is smaller than the {width}x{height} "
                            "picture: upscale makes pictures larger", field)
    if target == (width, height) and not job.refine:  # (it handed back a copy of the picture as a new layer)
        raise ProtocolError("invalid_field", f"upscaling the {width}x{height} picture to its own size without "
                            "`refine` changes nothing: ask for a larger size, or give `refine` to refine it at "
                            "this size", field)
    return target


def build_preprocess_job(request: PreprocessRequest, uploads: dict[str, ImageData], limits: Limits) -> PreprocessJob:
    """A ``preprocess`` request as the engine's job: one preprocessor run on one picture."""
    request.check()  # before the upload is looked up (and consumed): a refused preprocessor leaves it there
    try:
        image = _resolve(request.image, uploads, "image")
    finally:
        _consume([request.image], uploads)
    pixels = opaque_control(decode_image(image, limits, "image", "RGBA"), None, True)
    if min(pixels.shape[:2]) < MIN_PREPROCESS_SIDE:
        raise ProtocolError("invalid_field", f"the picture is {pixels.shape[1]}x{pixels.shape[0]}; preprocessors "
                            f"need at least {MIN_PREPROCESS_SIDE} pixels a side", "image")
    return PreprocessJob(request.resolved, pixels, request.resolution)


def _resolve(ref: dict, uploads: dict[str, ImageData], role: str) -> ImageData:
    if "frame" in ref:
        if ref["frame"] not in uploads:
            raise ProtocolError("unknown_image", f"`{role}` names frame {ref['frame']!r}, which was not uploaded "
                                "on this connection (or was used by an earlier request)", role)
        return uploads[ref["frame"]]
    if "data" in ref:
        try:
            return ImageData.from_base64(ref["data"], ref["format"])
        except ProtocolError as exc:
            exc.field = role
            raise
    raise ProtocolError("invalid_field", f"`{role}` needs `frame` or `data`", role)


def _consume(refs: list, uploads: dict[str, ImageData]) -> None:
    """Drop the uploads a request named: each frame serves one request."""
    for ref in refs:
        if isinstance(ref, dict) and "frame" in ref:
            uploads.pop(ref["frame"], None)


def decode_image(image: ImageData, limits: Limits, role: str, mode: str) -> np.ndarray:
    """Decode to an RGBA (H x W x 4) or L (H x W) array, refusing oversize pictures before decoding."""
    try:
        if image.format in CHANNELS:
            rules.check_picture_size(image.width, image.height, limits.max_side, limits.max_pixels, role)
            image.check()
            shape = (image.height, image.width, CHANNELS[image.format])
            pixels = np.frombuffer(image.data, np.uint8).reshape(shape)
            pil = Image.fromarray(pixels[..., 0] if image.format == "l8" else pixels,
                                  "L" if image.format == "l8" else "RGBA")
        else:
            if image.format == "png":
                # From the PNG's header, before Pillow reads it: past its own bomb limit Pillow refuses it in words
                # that name Pillow's limit (178956970 pixels), not this server's.
                try:
                    rules.check_picture_size(*png_size(image.data), limits.max_side, limits.max_pixels, role)
                except ProtocolError as exc:
                    if exc.code == "limit_exceeded":
                        raise
            pil = Image.open(io.BytesIO(image.data))
            rules.check_picture_size(pil.width, pil.height, limits.max_side, limits.max_pixels, role)
            if image.width and (pil.width, pil.height) != (image.width, image.height):
                raise ProtocolError("bad_image", f"`{role}` is declared {image.width}x{image.height} but the file is "
                                    f"{pil.width}x{pil.height}", role)
            pil.load()
    except ProtocolError as exc:
        exc.field = role
        raise
    except Image.DecompressionBombError as exc:
        raise ProtocolError("limit_exceeded", f"`{role}` is too large to decode safely: {exc}", role) from None
    except UnidentifiedImageError:
        raise ProtocolError("bad_image", f"`{role}` is not a picture this server can read (corrupt, or not a "
                            f"{image.format.upper()} file)", role) from None
    except (OSError, ValueError) as exc:
        raise ProtocolError("bad_image", f"`{role}` could not be decoded: {exc}", role) from None
    return to_array(pil, mode, None if image.format in CHANNELS else image.data)


"""The runner: one diffusion pass through a diffusers pipeline.

The only module that knows how diffusers wants its arguments: which pipelines take ``width`` and
``height``, that the ControlNet image is ``image`` when generating and ``control_image`` otherwise,
that one ControlNet takes single values and several take lists, the SD1.5 inpaint
ControlNet's convention for masked pixels, and how to steer the latents between steps (soft
inpainting).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from shared import rules

PromptAt = Callable[[int, int], dict]
"""A prompt that changes as it is painted: its embeddings at step (from 1) of steps."""


@dataclass
class ControlInput:
    """A control unit's map for one pass, at the pass's diffusion size."""

    picture: Image.Image  # RGB
    scale: float
    start: float
    end: float
    masked: bool = False  # the SD1.5 inpaint ControlNet: masked pixels are marked, not shown


@dataclass
class PassInputs:
    """Everything one pipeline call needs; ``image`` and ``mask`` are None where the mode has none."""

    mode: str
    size: tuple[int, int]
    steps: int
    guidance: float
    strength: float
    seed: int
    prompt: dict | PromptAt  # the prompt's words or embeddings, as the pipeline takes them
    image: Image.Image | None = None  # RGB, diffusion size
    mask: Image.Image | None = None  # L, diffusion size
    control: list[ControlInput] = field(default_factory=list)
    adapter: dict = field(default_factory=dict)  # the references' embeddings, when there are any
    change: np.ndarray | None = None  # soft inpaint: H x W floats 0-1, how much each pixel may change
    image_guidance: float | None = 1.5  # instruct: how closely the edit keeps to the picture (None: no such scale)
    extra: dict = field(default_factory=dict)  # further arguments of this family's pipelines (flux.py)
    guidance_rescale: float = 0.0  # zero-terminal-SNR models: rescaled CFG, where the pipeline has it


def run_pass(pipe, inputs: PassInputs, on_step: Callable) -> np.ndarray:
    """One image of one pass, as H x W x 3 uint8 at diffusion size."""
    width, height = inputs.size
    prompt = inputs.prompt
    if callable(prompt):
        prompt = prompt(1, steps_run(inputs))
        on_step = following(inputs.prompt, prompt, on_step)
    if inputs.change is not None and inputs.mode == "inpaint":
        on_step = differential(inputs, on_step)
    kwargs = dict(prompt, num_inference_steps=inputs.steps, guidance_scale=inputs.guidance,
                  generator=torch.Generator("cpu").manual_seed(inputs.seed), output_type="np",
                  callback_on_step_end=on_step, **inputs.adapter)
    if inputs.guidance_rescale and "guidance_rescale" in inspect.signature(type(pipe).__call__).parameters:
        kwargs["guidance_rescale"] = inputs.guidance_rescale
    if inputs.mode == "generate":
        kwargs.update(width=width, height=height)
    elif inputs.mode == "img2img":
        kwargs.update(image=inputs.image, strength=inputs.strength)
    elif inputs.mode == "instruct":  # the picture conditions every step (no strength); a mask is the compositor's
        kwargs.update(image=inputs.image)
        if inputs.image_guidance is not None:
            kwargs.update(image_guidance_scale=inputs.image_guidance)
    else:
        kwargs.update(image=inputs.image, mask_image=inputs.mask, strength=inputs.strength, width=width,
                      height=height)
    kwargs.update(inputs.extra)
    if inputs.control:
        single = len(inputs.control) == 1
        pick = (lambda values: values[0]) if single else list
        maps = [_control_image(unit, inputs.mask) for unit in inputs.control]
        kwargs["image" if inputs.mode == "generate" else "control_image"] = pick(maps)
        kwargs.update(controlnet_conditioning_scale=pick([unit.scale for unit in inputs.control]),
                      control_guidance_start=pick([unit.start for unit in inputs.control]),
                      control_guidance_end=pick([unit.end for unit in inputs.control]))
    images = pipe(**kwargs).images
    return (np.clip(images[0], 0, 1) * 255).round().astype(np.uint8)


def steps_run(inputs: PassInputs) -> int:
    """The denoising steps the pipeline runs: all of them from noise, the strength's share from a picture
    (diffusers' ``get_timesteps`` with a first-order scheduler, as all of ours are)."""
    return max(1, rules.denoising_steps(inputs.mode, inputs.steps, inputs.strength))


def following(prompt_at: PromptAt, first: dict, on_step: Callable) -> Callable:
    """Prompt editing through the step callback: after each step, the embeddings of the next one.

    The pipeline starts with ``first``; whenever the next step's prompt differs, the callback hands the
    denoising loop its embeddings (and on SDXL its pooled embedding, where the pipeline takes it back:
    not in the ControlNet inpaint one, which keeps the first step's). Steps are counted from the
    pipeline's own, so the shares of ``[from:to:0.5]`` are shares of the steps that run.
    """
    current = first

    def step(pipe, index, timestep, tensors):
        nonlocal current
        out = on_step(pipe, index, timestep, tensors) or {}
        total = pipe.num_timesteps
        if index + 1 < total:
            upcoming = prompt_at(index + 2, total)
            if upcoming is not current:
                current = upcoming
                out = {**out, **_conditioning(pipe, upcoming)}
        return out

    return step


def _conditioning(pipe, prompt: dict) -> dict:
    """A prompt's embeddings as the denoising loop holds them: under guidance, the negative's stacked first."""
    guided = pipe.do_classifier_free_guidance

    def stacked(negative, positive):
        return torch.cat([negative, positive]) if guided else positive

    out = {"prompt_embeds": stacked(prompt["negative_prompt_embeds"], prompt["prompt_embeds"])}
    if "pooled_prompt_embeds" in prompt:  # SDXL's pooled embedding conditions through `add_text_embeds`
        out["add_text_embeds"] = stacked(prompt["negative_pooled_prompt_embeds"], prompt["pooled_prompt_embeds"])
    return out


def _control_image(unit: ControlInput, mask: Image.Image | None):
    """The map as the pipeline takes it: a picture, or for the inpaint ControlNet a tensor with the
    masked pixels at -1 (what that ControlNet was trained on)."""
    if not unit.masked:
        return unit.picture
    pixels = np.asarray(unit.picture, dtype=np.float32) / 255.0
    pixels[np.asarray(mask) >= 128] = -1.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def differential(inputs: PassInputs, on_step: Callable) -> Callable:
    """Differential diffusion through the step callback: a soft mask acts per pixel.

    Each latent pixel is held to the picture (its latent, noised to the schedule's next level) until
    the remaining share of the schedule drops below its change value, then released into the
    denoising: a pixel at 1 is painted from the first step, one at 0.5 only over the last half (like
    img2img at strength 0.5), one at 0 is kept. The pipeline's own mask (given as everything that may
    change) shows a 9-channel inpaint UNet where to paint; with a 4-channel UNet the pipeline's hard
    blend is the same as this one outside the mask. The noise is drawn from the pass's seed.
    """
    state: dict = {}

    def step(pipe, index, timestep, tensors):
        latents = tensors["latents"]
        if not state:
            state.update(_differential_state(pipe, inputs, latents))
        total = pipe.num_timesteps
        held = state["change"] <= 1.0 - (index + 1) / total  # not released yet
        if index + 1 < total:
            schedule = pipe.scheduler.timesteps
            upcoming = schedule[len(schedule) - total + index + 1]
            target = pipe.scheduler.add_noise(state["picture"], state["noise"], upcoming.reshape(1))
        else:
            target = state["picture"]
        latents = torch.where(held, target.to(latents.dtype), latents)
        out = on_step(pipe, index, timestep, dict(tensors, latents=latents)) or {}
        return {"latents": latents, **out}

    return step


def _differential_state(pipe, inputs: PassInputs, latents: torch.Tensor) -> dict:
    """The picture's latents, the noise that holds it, and the change map at latent size."""
    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)  # SDXL's VAE overflows in fp16
    pixels = pipe.image_processor.preprocess(inputs.image).to(vae.device, torch.float32 if upcast else dtype)
    try:
        if upcast:
            vae.to(torch.float32)
        with torch.no_grad():
            picture = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    finally:
        if upcast:
            vae.to(dtype)
    picture = picture.to(latents.device, latents.dtype).expand_as(latents)
    generator = torch.Generator("cpu").manual_seed(inputs.seed)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    change = torch.from_numpy(np.ascontiguousarray(inputs.change, dtype=np.float32))[None, None]
    change = torch.nn.functional.interpolate(change, size=latents.shape[-2:], mode="area").to(latents.device)
    return {"picture": picture, "noise": noise, "change": change}

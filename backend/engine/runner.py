"""The runner: one diffusion pass through a diffusers pipeline.

The only module that knows how diffusers wants its arguments: which pipelines take ``width`` and
``height``, that the ControlNet image is ``image`` when generating and ``control_image`` otherwise,
that one ControlNet takes single values and several take lists, and the SD1.5 inpaint
ControlNet's convention for masked pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image


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
    prompt: dict  # the prompt's words or embeddings, as the pipeline takes them
    image: Image.Image | None = None  # RGB, diffusion size
    mask: Image.Image | None = None  # L, diffusion size
    control: list[ControlInput] = field(default_factory=list)
    adapter: dict = field(default_factory=dict)  # the references' embeddings, when there are any


def run_pass(pipe, inputs: PassInputs, on_step: Callable) -> np.ndarray:
    """One image of one pass, as H x W x 3 uint8 at diffusion size."""
    width, height = inputs.size
    kwargs = dict(inputs.prompt, num_inference_steps=inputs.steps, guidance_scale=inputs.guidance,
                  generator=torch.Generator("cpu").manual_seed(inputs.seed), output_type="np",
                  callback_on_step_end=on_step, **inputs.adapter)
    if inputs.mode == "generate":
        kwargs.update(width=width, height=height)
    elif inputs.mode == "img2img":
        kwargs.update(image=inputs.image, strength=inputs.strength)
    else:
        kwargs.update(image=inputs.image, mask_image=inputs.mask, strength=inputs.strength, width=width,
                      height=height)
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


def _control_image(unit: ControlInput, mask: Image.Image | None):
    """The map as the pipeline takes it: a picture, or for the inpaint ControlNet a tensor with the
    masked pixels at -1 (what that ControlNet was trained on)."""
    if not unit.masked:
        return unit.picture
    pixels = np.asarray(unit.picture, dtype=np.float32) / 255.0
    pixels[np.asarray(mask) >= 128] = -1.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]

"""The engine: runs one EditRequest through diffusers and returns RGBA layers.

``Engine.run`` reads as its stages: load the model, plan the crop, prepare the inputs at the
model's resolution, diffuse each image of the batch (reporting progress, honouring cancel), and
put the results back at canvas resolution as layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from backend.engine import masks
from backend.engine.adapters import IPAdapters
from backend.engine.controlnets import ControlNetCache
from backend.engine.preprocessors import Preprocessors
from backend.engine.models import LoadedModel, ModelError, ModelRegistry
from backend.engine.previews import Previewer
from backend.engine.prompt_cache import PromptCache
from backend.requests import EditRequest
from shared.geometry import Box, CropPlan, context_crop, mask_bounds, round_to_grid, whole_canvas
from shared.rules import reach as mask_margin


class JobCancelled(Exception):
    """Raised inside a pipeline's step callback to stop a cancelled job at once."""


class Reporter(Protocol):
    """Where the engine tells the world how a job is going (called on the worker thread)."""

    def started(self, steps: int, diffusion_size: tuple[int, int], box: Box | None) -> None: ...

    def progress(self, step: int, total: int, preview: Image.Image | None) -> None: ...

    def is_cancelled(self) -> bool: ...


@dataclass
class Layer:
    """One result: RGBA pixels to place at ``offset`` on the submitted picture."""

    index: int
    seed: int
    offset: tuple[int, int]
    pixels: np.ndarray  # H x W x 4 uint8


@dataclass
class EngineResult:
    layers: list[Layer]
    load_seconds: float
    run_seconds: float


@dataclass
class _Inputs:
    """A job's pictures at diffusion resolution, plus what is needed to paste the results back."""

    size: tuple[int, int]  # what the model diffuses at
    plan: CropPlan | None = None  # None when generating
    image: Image.Image | None = None  # RGB, diffusion size
    mask: Image.Image | None = None  # L, diffusion size
    original: np.ndarray | None = None  # RGBA crop at canvas resolution
    alpha: np.ndarray | None = None  # feathered mask over the crop
    control: list = field(default_factory=list)  # the active control units
    control_images: list = field(default_factory=list)  # their images at diffusion size
    adapter_kwargs: dict = field(default_factory=dict)  # the references' embeddings, when there are any


def make_scheduler(name: str, config):
    """A fresh scheduler instance for one job, built from the model's own scheduler config.

    Sigma spacing is set explicitly for every sampler, so nothing a model ships (or an earlier
    job chose) leaks into a sampler that names something else.
    """
    import diffusers as d

    cls, karras = {
        "dpmpp_2m": (d.DPMSolverMultistepScheduler, False),
        "dpmpp_2m_karras": (d.DPMSolverMultistepScheduler, True),
        "euler": (d.EulerDiscreteScheduler, False),
        "euler_a": (d.EulerAncestralDiscreteScheduler, False),
        "ddim": (d.DDIMScheduler, False),
        "unipc": (d.UniPCMultistepScheduler, False),
    }[name]
    return cls.from_config(config, use_karras_sigmas=karras)


class Engine:
    """Runs jobs on the models of a registry, one at a time (the caller's worker thread)."""

    def __init__(self, registry: ModelRegistry):
        config = registry.config
        self.registry = registry
        self.speed = registry.speed
        self.controlnets = ControlNetCache(config.controlnets, self.speed.load_device, registry.dtype,
                                           config.controlnet_memory_mb * 2**20, config.allow_pickle,
                                           prepare=self.speed.prepare_controlnet)
        self.prompts = PromptCache(config.performance.prompt_cache)
        self.adapters = IPAdapters(config.ip_adapters, config.allow_pickle)
        self.preprocessors = Preprocessors(config.annotators, registry.device)
        self._previewers: dict[str, Previewer] = {}

    @property
    def device(self) -> torch.device:
        return self.registry.device

    def run(self, request: EditRequest, reporter: Reporter) -> EngineResult:
        """Run a job; raises JobCancelled if the reporter says it was cancelled."""
        start = time.perf_counter()
        if request.mode == "preprocess":
            return self._preprocess(request, reporter, start)
        model = self.registry.get(request.model)
        pipe = model.pipeline(request.mode)
        self.speed.keep_only(pipe.unet, model.unets)  # before adapters load into it or anything runs
        loaded = time.perf_counter()

        inputs = self._prepare(request, model)
        pipe = self._with_control(request, model, inputs) or pipe
        references = [reference for reference in request.references if reference.weight > 0]
        if references:
            inputs.adapter_kwargs = self.adapters.switch_on(model, pipe, references, request.guidance > 1)
        else:  # exactly the no-adapter job, even right after a job with references
            self.adapters.switch_off(pipe)
        reporter.started(request.denoising_steps, inputs.size, inputs.plan.box if inputs.plan else None)

        layers = []
        for index in range(request.batch):
            if reporter.is_cancelled():
                raise JobCancelled()
            seed = request.seed + index
            pipe.scheduler = make_scheduler(request.sampler, model.scheduler_config)
            with self.speed.job(pipe, inputs.size, model.native_size):
                pixels = self._diffuse(pipe, model, request, inputs, seed,
                                       self._on_step(request, model, reporter, index))
            layers.append(Layer(index, seed, *self._to_layer(request, inputs, pixels)))
        return EngineResult(layers, loaded - start, time.perf_counter() - loaded)

    def _preprocess(self, request: EditRequest, reporter: Reporter, start: float) -> EngineResult:
        """A ``preprocess`` job: the control map of the whole picture, at its size."""
        height, width = request.image.shape[:2]
        unit = request.control[0]
        self.preprocessors.load(unit.preprocessor)  # a missing annotator fails before `started`
        reporter.started(0, (width, height), None)
        picture = Image.fromarray(np.ascontiguousarray(request.image[..., :3]))
        control_map = np.asarray(self.preprocessors.run(unit.preprocessor, picture, unit.resolution))
        return EngineResult([Layer(0, 0, (0, 0), _opaque(control_map))], 0.0, time.perf_counter() - start)

    # -- stages -------------------------------------------------------------------------------

    def _prepare(self, request: EditRequest, model: LoadedModel) -> _Inputs:
        """Crop and resample the picture and mask to what the model will diffuse."""
        if request.mode == "generate":
            # The size as run goes back to the client in the result's parameters.
            request.width = round_to_grid(request.width or model.native_size)
            request.height = round_to_grid(request.height or model.native_size)
            return _Inputs((request.width, request.height))
        height, width = request.image.shape[:2]
        if request.mode == "img2img":
            plan = whole_canvas(width, height, model.native_size)
            return _Inputs(_plan_size(plan), plan, image=_resample(request.image[..., :3], plan))

        bounds = mask_bounds(request.mask.tobytes(), width, height)
        margin = mask_margin(request.mask_grow, request.mask_feather)
        plan = context_crop(bounds, width, height, model.native_size, margin=margin)
        box = plan.box
        crop = request.image[box.y:box.y1, box.x:box.x1]
        alpha = masks.shape_mask(request.mask[box.y:box.y1, box.x:box.x1], request.mask_grow,
                                 request.mask_feather)
        return _Inputs(_plan_size(plan), plan, image=_resample(crop[..., :3], plan), mask=_resample(alpha, plan),
                       original=crop, alpha=alpha)

    def _with_control(self, request: EditRequest, model: LoadedModel, inputs: _Inputs):
        """The ControlNet pipeline for the job's active units (scale 0 switches a unit off), with their
        images prepared into ``inputs``; None when no unit is active."""
        active = [(i, unit) for i, unit in enumerate(request.control) if unit.scale > 0]
        if not active:
            return None
        controlnets = self.controlnets.get(model.family, [unit.type for _, unit in active],
                                           [f"control[{i}].type" for i, _ in active])
        inputs.control = [unit for _, unit in active]
        for i, unit in active:
            if unit.preprocessor:
                try:
                    self.preprocessors.load(unit.preprocessor)
                except ModelError as exc:
                    exc.field = f"control[{i}].preprocess"
                    raise
        inputs.control_images = [self._control_image(request, model, inputs, unit) for _, unit in active]
        return model.control_pipeline(request.mode, controlnets)

    def _control_image(self, request: EditRequest, model: LoadedModel, inputs: _Inputs, unit):
        """A unit's image, resized to the picture, then cropped and resized exactly like it."""
        source = (unit.image if unit.image is not None else request.image)[..., :3]
        if inputs.plan is None:
            picture = Image.fromarray(np.ascontiguousarray(source)).resize(inputs.size, Image.Resampling.LANCZOS)
        else:
            height, width = request.image.shape[:2]
            if source.shape[:2] != (height, width):
                source = np.asarray(Image.fromarray(np.ascontiguousarray(source)).resize(
                    (width, height), Image.Resampling.LANCZOS))
            box = inputs.plan.box  # crop before anything else touches a big canvas's map
            picture = _resample(source[box.y:box.y1, box.x:box.x1], inputs.plan)
        if unit.preprocessor:
            picture = self.preprocessors.run(unit.preprocessor, picture, unit.resolution, seed=request.seed)
        if unit.type == "inpaint" and request.mode == "inpaint" and model.family == "sd15":
            # The SD1.5 inpaint ControlNet's convention: the picture with masked pixels at -1.
            pixels = np.asarray(picture, dtype=np.float32) / 255.0
            pixels[np.asarray(inputs.mask) >= 128] = -1.0
            return torch.from_numpy(pixels).permute(2, 0, 1)[None]
        return picture

    def _diffuse(self, pipe, model: LoadedModel, request: EditRequest, inputs: _Inputs, seed: int,
                 on_step) -> np.ndarray:
        """One image of the batch, as H x W x 3 uint8 at diffusion size."""
        kwargs = self.prompts.kwargs(model.name, pipe, model.family, request.prompt,
                                     request.negative_prompt or None, request.guidance > 1)
        kwargs = dict(kwargs, num_inference_steps=request.steps, guidance_scale=request.guidance,
                      generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                      callback_on_step_end=on_step)
        width, height = inputs.size
        if request.mode == "generate":
            kwargs.update(width=width, height=height)
        elif request.mode == "img2img":
            kwargs.update(image=inputs.image, strength=request.strength)
        else:
            kwargs.update(image=inputs.image, mask_image=inputs.mask, strength=request.strength,
                          width=width, height=height)
        kwargs.update(inputs.adapter_kwargs)
        if inputs.control:
            single = len(inputs.control) == 1
            pick = (lambda values: values[0]) if single else list
            kwargs["image" if request.mode == "generate" else "control_image"] = pick(inputs.control_images)
            kwargs.update(controlnet_conditioning_scale=pick([u.scale for u in inputs.control]),
                          control_guidance_start=pick([u.start for u in inputs.control]),
                          control_guidance_end=pick([u.end for u in inputs.control]))
        images = pipe(**kwargs).images
        return (np.clip(images[0], 0, 1) * 255).round().astype(np.uint8)

    def _on_step(self, request: EditRequest, model: LoadedModel, reporter: Reporter, index: int):
        per_image = request.denoising_steps
        total = per_image * request.batch

        def on_step(pipe, step, timestep, tensors):
            if reporter.is_cancelled():
                raise JobCancelled()
            preview = None
            if request.preview_every and (step + 1) % request.preview_every == 0:
                preview = self._previewer(model)(tensors["latents"], request.preview_size)
            reporter.progress(min(index * per_image + step + 1, total), total, preview)
            return {}

        return on_step

    def _previewer(self, model: LoadedModel) -> Previewer:
        if model.name not in self._previewers:
            self._previewers[model.name] = Previewer(model.base.vae, model.preview_decoder)
        return self._previewers[model.name]

    @staticmethod
    def _to_layer(request: EditRequest, inputs: _Inputs, pixels: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
        """Back to canvas resolution; inpaint results keep the input's bytes wherever alpha is 0."""
        if inputs.plan is None:
            return (0, 0), _opaque(pixels)
        box = inputs.plan.box
        if inputs.plan.is_resampled:
            pixels = np.asarray(Image.fromarray(pixels).resize((box.width, box.height), Image.Resampling.LANCZOS))
        if request.mode == "img2img":
            return (0, 0), _opaque(pixels)
        return (box.x, box.y), masks.make_layer(pixels, inputs.original, inputs.alpha)


def _plan_size(plan: CropPlan) -> tuple[int, int]:
    return plan.diffusion_width, plan.diffusion_height


def _resample(pixels: np.ndarray, plan: CropPlan) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if plan.is_resampled:
        image = image.resize((plan.diffusion_width, plan.diffusion_height), Image.Resampling.LANCZOS)
    return image


def _opaque(rgb: np.ndarray) -> np.ndarray:
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])

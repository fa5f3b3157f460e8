"""The engine: runs one job through diffusers and returns RGBA layers.

``Engine.run`` reads as its stages: load the model, plan the passes, prepare the conditioning
(prompt, control maps, references), then for each image of the batch and each pass: prepare the
pass's pictures, run it, and compose the passes into the image's result layer.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch
from PIL import Image

from backend.engine import compose, fill
from backend.engine.adapters import IPAdapters
from backend.engine.conditioning import ContentCache, digest
from backend.engine.controlnets import ControlNetCache
from backend.engine.job import Control, EditJob, PreprocessJob
from backend.engine.models import LoadedModel, ModelError, ModelRegistry
from backend.engine.passes import Pass, plan_passes
from backend.engine.preprocessors import SEEDED, Preprocessors
from backend.engine.previews import Previewer
from backend.engine.prompt_cache import PromptCache
from backend.engine.runner import ControlInput, PassInputs, run_pass
from shared.geometry import Box
from shared.vocabulary import MAX_SEED

CONTROL_MAP_CACHE = 16  # preprocessed control maps kept (a few MB each at most)


class JobCancelled(Exception):
    """Raised inside a pipeline's step callback to stop a cancelled job at once."""


class Reporter(Protocol):
    """Where the engine tells the world how a job is going (called on the worker thread)."""

    def started(self, steps: int, passes: list[Pass]) -> None: ...

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
    """A job's layers, the passes that made them, and where the time went."""

    layers: list[Layer]
    load_seconds: float
    run_seconds: float
    passes: list[Pass]


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
        self.control_maps = ContentCache(CONTROL_MAP_CACHE)
        self.adapters = IPAdapters(config.ip_adapters, config.allow_pickle)
        self.preprocessors = Preprocessors(config.annotators, registry.device)
        self.lama = fill.Lama(config.lama, registry.device, config.allow_pickle) if config.lama else None
        self._previewers: dict[str, Previewer] = {}

    @property
    def device(self) -> torch.device:
        return self.registry.device

    def run(self, job: EditJob | PreprocessJob, reporter: Reporter) -> EngineResult:
        """Run a job; raises JobCancelled if the reporter says it was cancelled, ModelError when a
        model, ControlNet, adapter or annotator cannot serve it."""
        if isinstance(job, PreprocessJob):
            return self._preprocess(job, reporter)
        start = time.perf_counter()
        model = self.registry.get(job.model)
        pipe = model.pipeline(pipeline_mode(job.mode))
        self.speed.keep_only(pipe.unet, model.unets)  # before adapters load into it or anything runs
        loaded = time.perf_counter()

        passes = plan_passes(job, model.native_size)
        active = [(index, unit) for index, unit in enumerate(job.control) if unit.scale > 0]
        pipe = self._with_control(job, model, active) or pipe
        adapter = self._references(job, model, pipe)
        prompt = self.prompts.kwargs(model.name, pipe, model.family, job.prompt, job.negative_prompt or None,
                                     job.guidance > 1)
        if self.lama is not None and any(p.fill == "inpaint" for p in passes):
            self.lama.load()  # a network that cannot load fails the job before `started`
        reporter.started(job.denoising_steps, passes)

        layers = []
        for index in range(job.batch):
            outputs = []
            canvas = job.image.copy() if job.mode == "expand" else job.image  # expand paints it pass by pass
            for number, p in enumerate(passes):
                if reporter.is_cancelled():
                    raise JobCancelled()
                inputs = self._pass_inputs(job, model, p, active, prompt, adapter, job.seed + index, canvas)
                pipe.scheduler = make_scheduler(job.sampler, model.scheduler_config)
                on_step = self._on_step(job, model, reporter, index * len(passes) + number, len(passes))
                with self.speed.job(pipe, p.size, model.native_size):
                    outputs.append(run_pass(pipe, inputs, on_step))
                if job.mode == "expand":
                    compose.paint(canvas, p, outputs[-1])
            if job.mode == "expand":
                offset, pixels = (0, 0), canvas
            else:
                offset, pixels = compose.layer(pipeline_mode(job.mode), job.image, passes, outputs)
            layers.append(Layer(index, job.seed + index, offset, pixels))
        return EngineResult(layers, loaded - start, time.perf_counter() - loaded, passes)

    def _preprocess(self, job: PreprocessJob, reporter: Reporter) -> EngineResult:
        """A ``preprocess`` job: the control map of the whole picture, at its size."""
        start = time.perf_counter()
        height, width = job.image.shape[:2]
        self.preprocessors.load(job.preprocessor)  # a missing annotator fails before `started`
        whole = Pass(Box(0, 0, width, height), (width, height), 0.0)
        reporter.started(0, [whole])
        picture = Image.fromarray(np.ascontiguousarray(job.image[..., :3]))
        control_map = np.asarray(self.preprocessors.run(job.preprocessor, picture, job.resolution))
        return EngineResult([Layer(0, 0, (0, 0), compose.opaque(control_map))], 0.0, time.perf_counter() - start,
                            [whole])

    # -- conditioning -------------------------------------------------------------------------

    def _with_control(self, job: EditJob, model: LoadedModel, active: list[tuple[int, Control]]):
        """The ControlNet pipeline for the job's active units (scale 0 switches a unit off); None
        when no unit is active. Missing ControlNets and annotators fail here, before ``started``."""
        if not active:
            return None
        try:
            controlnets = self.controlnets.get(model.family, [unit.type for _, unit in active])
        except ModelError as exc:  # the cache names its position among the active units
            exc.unit = active[exc.unit][0] if exc.unit is not None else None
            raise
        for index, unit in active:
            if unit.preprocessor:
                with _unit(index, "preprocess"):
                    self.preprocessors.load(unit.preprocessor)
        return model.control_pipeline(pipeline_mode(job.mode), controlnets)

    def _references(self, job: EditJob, model: LoadedModel, pipe) -> dict:
        """The adapter switched on for the job's references (the call's kwargs), or off."""
        references = [reference for reference in job.references if reference.weight > 0]
        if not references:  # exactly the no-adapter job, even right after a job with references
            self.adapters.switch_off(pipe)
            return {}
        return self.adapters.switch_on(model, pipe, references, job.guidance > 1)

    def _pass_inputs(self, job: EditJob, model: LoadedModel, p: Pass, active: list[tuple[int, Control]],
                     prompt: dict, adapter: dict, image_seed: int, canvas: np.ndarray | None = None) -> PassInputs:
        """The pictures of one pass at its diffusion size: its crop of the picture (pre-filled under the
        mask and where it is transparent), mask and maps. ``canvas``: the picture as painted so far."""
        inputs = PassInputs(pipeline_mode(job.mode), p.size, job.steps, job.guidance, p.strength,
                            (image_seed + p.seed) % (MAX_SEED + 1), prompt, adapter=adapter)
        picture = job.image if canvas is None else canvas
        mask = p.mask if p.mask is not None else p.alpha
        if picture is not None:
            crop = picture[p.box.y:p.box.y1, p.box.x:p.box.x1]
            filled = fill.prefill(crop[..., :3], crop[..., 3] if crop.shape[2] == 4 else None, mask,
                                  p.fill or "none", self.lama)
            inputs.image = _resample(filled, p.size)
        if mask is not None:
            resized = np.asarray(_resample(mask, p.size))
            if job.soft:  # differential diffusion: the pipeline may change whatever the map lets change
                inputs.change = resized.astype(np.float32) / 255.0
                resized = np.where(resized > 0, 255, 0).astype(np.uint8)
            inputs.mask = Image.fromarray(resized)
        masked = pipeline_mode(job.mode) == "inpaint" and model.family == "sd15"
        inputs.control = [ControlInput(self._control_map(job, p, unit), unit.scale, unit.start, unit.end,
                                       masked=masked and unit.type == "inpaint") for _, unit in active]
        return inputs

    def _control_map(self, job: EditJob, p: Pass, unit: Control) -> Image.Image:
        """A unit's map for one pass: its image stretched to the picture, then cut and resized exactly
        like the picture (and preprocessed there, so the map matches what the model sees)."""
        source = (unit.image if unit.image is not None else job.image)[..., :3]
        if job.image is None:  # generate: the map is the whole picture
            picture = Image.fromarray(np.ascontiguousarray(source)).resize(p.size, Image.Resampling.LANCZOS)
        else:
            height, width = job.image.shape[:2]
            if source.shape[:2] != (height, width):
                source = np.asarray(Image.fromarray(np.ascontiguousarray(source)).resize(
                    (width, height), Image.Resampling.LANCZOS))
            picture = _resample(source[p.box.y:p.box.y1, p.box.x:p.box.x1], p.size)  # crop first: big canvases
        if not unit.preprocessor:
            return picture
        seed = job.seed if unit.preprocessor in SEEDED else None
        key = (unit.preprocessor, unit.resolution, seed, digest(picture))
        return self.control_maps.get(key, lambda: self.preprocessors.run(unit.preprocessor, picture,
                                                                          unit.resolution, seed=job.seed))

    # -- progress -----------------------------------------------------------------------------

    def _on_step(self, job: EditJob, model: LoadedModel, reporter: Reporter, run: int, passes: int):
        """The step callback of the ``run``-th pass of the job (counting over the whole batch)."""
        per_pass = job.denoising_steps
        total = per_pass * passes * job.batch

        def on_step(pipe, step, timestep, tensors):
            if reporter.is_cancelled():
                raise JobCancelled()
            preview = None
            if job.preview_every and (step + 1) % job.preview_every == 0:
                preview = self._previewer(model)(tensors["latents"], job.preview_size)
            reporter.progress(min(run * per_pass + step + 1, total), total, preview)
            return {}

        return on_step

    def _previewer(self, model: LoadedModel) -> Previewer:
        if model.name not in self._previewers:
            self._previewers[model.name] = Previewer(model.base.vae, model.preview_decoder)
        return self._previewers[model.name]


def pipeline_mode(mode: str) -> str:
    """The pipeline a mode runs on: expand and remove are inpaints of a pre-filled picture."""
    return "inpaint" if mode in ("expand", "remove") else mode


@contextlib.contextmanager
def _unit(index: int, field: str) -> Iterator[None]:
    """Errors raised inside name ``field`` of control unit ``index``."""
    try:
        yield
    except ModelError as exc:
        exc.unit, exc.field = index, field
        raise


def _resample(pixels: np.ndarray, size: tuple[int, int]) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image

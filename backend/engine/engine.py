"""The engine: runs one job through diffusers and returns RGBA layers.

``Engine.run`` reads as its stages: load the model, plan the passes, prepare the conditioning
(prompt, control maps, references), then for each image of the batch and each pass: prepare the
pass's pictures, run it, and compose the passes into the image's result layer. An ``upscale`` runs the
super-resolution model first and refines its picture as an img2img; a generate above the native range
generates small, upscales and refines (each stage a run of its own, under the one ``started``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from PIL import Image

from backend.config import ConfigError, scan_folders
from backend.engine import compose, fill, prompts
from backend.engine.adapters import IPAdapters
from backend.engine.conditioning import ContentCache, digest
from backend.engine.controlnets import ControlNetCache
from backend.engine.embeddings import EmbeddingError, Embeddings
from backend.engine.job import Control, EditJob, PreprocessJob
from backend.engine.loras import Loras
from backend.engine.models import LoadedModel, ModelError, ModelRegistry
from backend.engine.passes import Pass, is_two_stage, layer_box, on_picture, plan_passes
from backend.engine.preprocessors import SEEDED, Preprocessors
from backend.engine.previews import Previewer
from backend.engine.prompt_cache import PromptCache
from backend.engine.runner import ControlInput, PassInputs, PromptAt, run_pass
from backend.engine.upscalers import Upscalers
from shared import prompt_syntax, rules
from shared.geometry import Box
from shared.vocabulary import MAX_SEED

log = logging.getLogger(__name__)

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


def make_scheduler(name: str, config, spacing: str | None = None):
    """A fresh scheduler instance for one job, built from the model's own scheduler config.

    Sigma spacing is set explicitly for every sampler, so nothing a model ships (or an earlier
    job chose) leaks into a sampler that names something else. ``spacing``: the timestep spacing
    (a preset's ``trailing`` for few-step models); the model's own when None.
    """
    import diffusers as d

    extra = {"timestep_spacing": spacing} if spacing else {}
    if name in ("lcm", "tcd"):  # no sigma spacing to choose: their schedules are their own
        return (d.LCMScheduler if name == "lcm" else d.TCDScheduler).from_config(config, **extra)

    cls, karras = {
        "dpmpp_2m": (d.DPMSolverMultistepScheduler, False),
        "dpmpp_2m_karras": (d.DPMSolverMultistepScheduler, True),
        "euler": (d.EulerDiscreteScheduler, False),
        "euler_a": (d.EulerAncestralDiscreteScheduler, False),
        "ddim": (d.DDIMScheduler, False),
        "unipc": (d.UniPCMultistepScheduler, False),
    }[name]
    return cls.from_config(config, use_karras_sigmas=karras, **extra)


MATCH_LIGHT_MIN = 8
"""Pixels of ring (and twice that of fade inside) for matching a repaint's light, at the smallest feathers."""


def expand_match(job: EditJob, native: int) -> tuple[int, int]:
    """(ring width, full-strength length) of an expand's light matching: the ring of an inpaint's, and half
    the native side at full strength, fading out over as much again (a light error undone over less
    makes a band of its own: fading a 24-level error out over 128 px raised a smooth picture's gradient
    there to 1.38 x its own, bench/toolbox.py)."""
    return max(job.mask_feather, MATCH_LIGHT_MIN), max(native // 2, 4 * MATCH_LIGHT_MIN)


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
        self.embeddings = Embeddings(config.embedding_folders)
        self.control_maps = ContentCache(CONTROL_MAP_CACHE)
        self.adapters = IPAdapters(config.ip_adapters, config.allow_pickle)
        self.preprocessors = Preprocessors(config.annotators, registry.device)
        self.lama = fill.Lama(config.lama, registry.device, config.allow_pickle) if config.lama else None
        self.upscalers = Upscalers(config.upscalers, registry.device, registry.dtype, config.default_upscaler)
        self.loras = Loras(config.loras, self.speed)
        self._refreshed_on_miss = -1e9
        self._refresh_error: str | None = None
        self._previewers: dict[str, Previewer] = {}

    @property
    def device(self) -> torch.device:
        return self.registry.device

    def refresh_folders(self, at_most_every: float = 0.0) -> None:
        """Read the model and LoRA folders again, so a file added, replaced or removed since the server
        started shows in the next ``welcome`` / ``models`` and can be asked for (a model already loaded stays, and
        keeps the weights it loaded, its file gone or not)."""
        config = self.registry.config
        if not (config.model_folders or config.lora_folders):
            return
        if at_most_every:  # on a client's misses: a client naming nothing real, again and again, must not walk
            now = time.monotonic()  # the folders each time
            if now - self._refreshed_on_miss < at_most_every:
                return
            self._refreshed_on_miss = now
        try:
            if scan_folders(config, keep=self.registry.loaded_names()):
                self.loras.files = dict(config.loras)
            self._refresh_error = None
        except ConfigError as exc:  # a folder on a disk that went away: keep what was found before
            if str(exc) != self._refresh_error:  # once, not at every hello while it is away
                log.warning("cannot read the model folders again: %s", exc)
            self._refresh_error = str(exc)
        except Exception:  # a folder's oddity must never cost a client its hello
            log.exception("cannot read the model folders again")

    def run(self, job: EditJob | PreprocessJob, reporter: Reporter) -> EngineResult:
        """Run a job; raises JobCancelled if the reporter says it was cancelled, ModelError when a
        model, ControlNet, adapter or annotator cannot serve it."""
        if isinstance(job, PreprocessJob):
            return self._preprocess(job, reporter)
        if job.mode == "upscale":
            return self._upscale(job, reporter)
        start = time.perf_counter()
        model = self.registry.get(job.model)
        pipe = model.pipeline(pipeline_mode(job.mode))
        flux = model.family == "flux"  # (backend/engine/flux.py: no UNet, no adapters, its own scheduler)
        if not flux:
            self.speed.keep_only(pipe.unet, model.unets)  # before adapters load into it or anything runs
        loaded = time.perf_counter()

        passes = plan_passes(job, model.native_size)
        if is_two_stage(passes):
            return self._two_stages(job, reporter, passes, loaded - start)
        shown, cut = passes, None  # the passes as reported; the picture's size when its result is cut back to it
        reach = layer_box(passes)
        if job.image is not None and (reach.x1 > job.image.shape[1] or reach.y1 > job.image.shape[0]):
            # the tiles of a picture whose sides are off the 8-px grid reach past it (refine_passes): they are
            # cut from the picture extended there, and reported (and the result returned) on the picture
            cut = job.image.shape[:2]
            shown = on_picture(passes, cut[1], cut[0])
            job = extended(job, reach.x1, reach.y1)
        active = [(index, unit) for index, unit in enumerate(job.control) if unit.scale > 0]
        pipe = self._with_control(job, model, active) or pipe
        adapter = self._references(job, model, pipe) if not flux else {}
        # (the prompt's embeddings depend on the LoRAs active in the text encoders; flux takes none)
        text_loras = self.loras.apply(model, pipe, job.loras) if not flux else ()
        if flux:  # (its encoders take no weights: emphasis gives its words, not its brackets and numbers)
            prompt = model.prompt(pipe, *(prompt_syntax.words(prompt_syntax.parse(text, key)) for text, key in
                                          ((job.prompt, "prompt"), (job.negative_prompt, "negative_prompt"))))
        else:
            prompt = self._prompt(job, model, pipe, text_loras, lambda: self._check_cancel(reporter))
        if self.lama is not None and any(p.fill == "inpaint" for p in passes):
            self.lama.load()  # a network that cannot load fails the job before `started`
        reporter.started(job.denoising_steps, shown)

        layers = []
        for index in range(job.batch):
            outputs = []
            canvas = job.image.copy() if job.mode == "expand" else job.image  # expand paints it pass by pass
            for number, p in enumerate(passes):
                if reporter.is_cancelled():
                    raise JobCancelled()
                inputs = self._pass_inputs(job, model, p, active, prompt, adapter, job.seed + index, canvas,
                                           check=lambda: self._check_cancel(reporter))
                if flux:
                    model.adapt(inputs, pipe)
                    model.before_call(pipe, self.device)
                    pipe.scheduler = type(pipe.scheduler).from_config(model.scheduler_config)
                else:
                    inputs.guidance_rescale = model.prediction.guidance_rescale
                    pipe.scheduler = make_scheduler(job.sampler, model.scheduler_config, job.timestep_spacing)
                on_step = self._on_step(job, model, reporter, index * len(passes) + number, len(passes))
                with self.speed.job(pipe, p.size, model.native_size):
                    outputs.append(run_pass(pipe, inputs, on_step))
                if flux:  # (it ran on the model's own grid)
                    outputs[-1] = model.fit(outputs[-1], p.size)
                if job.mode == "expand":  # (soft: its cells meet the picture's light, as an inpaint's edge does)
                    compose.paint(canvas, p, outputs[-1], *(expand_match(job, model.native_size) if job.soft
                                                            else (0, 0)))
            if job.mode == "expand":
                offset, pixels = (0, 0), canvas
            else:
                # soft inpainting also matches the repaint's light to the picture along the edge
                match = max(job.mask_feather, MATCH_LIGHT_MIN) if job.soft else 0
                offset, pixels = compose.layer(pipeline_mode(job.mode), job.image, passes, outputs, match,
                                               job.mask_grow)
                if cut is not None:  # (a masked crop's layer starts at its offset, not at the corner)
                    pixels = pixels[:cut[0] - offset[1], :cut[1] - offset[0]]
            layers.append(Layer(index, job.seed + index, offset, pixels))
        return EngineResult(layers, loaded - start, time.perf_counter() - loaded, shown)

    def _preprocess(self, job: PreprocessJob, reporter: Reporter) -> EngineResult:
        """A ``preprocess`` job: the control map of the whole picture, at its size."""
        start = time.perf_counter()
        height, width = job.image.shape[:2]
        self.preprocessors.load(job.preprocessor)  # a missing annotator fails before `started`
        whole = Pass(Box(0, 0, width, height), (width, height), 0.0)
        reporter.started(0, [whole])
        picture = Image.fromarray(np.ascontiguousarray(job.image[..., :3]))
        control_map = np.asarray(self.preprocessors.run(job.preprocessor, picture, job.resolution,
                                                        check=lambda: self._check_cancel(reporter)))
        return EngineResult([Layer(0, 0, (0, 0), compose.opaque(control_map))], 0.0, time.perf_counter() - start,
                            [whole])

    def _upscale(self, job: EditJob, reporter: Reporter) -> EngineResult:
        """An ``upscale``: the picture through the super-resolution model at ``width`` x ``height``, then,
        when ``strength`` is above 0, refined as an img2img of that size (in tiles at native scale)."""
        start = time.perf_counter()
        upscaler = self.upscalers.load(job.upscaler)  # unknown or unreadable: fails before `started`
        refine = job.strength > 0
        native = self.registry.get(job.model).native_size if refine else 0
        passes = on_picture(plan_passes(job, native), job.width, job.height)
        if refine:
            self._load_ahead(dataclasses.replace(job, mode="img2img"))
        reporter.started(job.denoising_steps, passes)
        loaded = time.perf_counter()
        # progress counts the super-resolution tiles, then the refine's steps: a slow upscaler (the x4
        # pipeline, a large picture) does not leave the bar standing still before the refine
        tiles = self.upscalers.tiles(upscaler, (job.image.shape[1], job.image.shape[0]), (job.width, job.height))
        total = tiles + (job.denoising_steps * len(passes) * job.batch if refine else 0)

        def on_tile(done: int, _: int) -> None:
            self._check_cancel(reporter)
            reporter.progress(done, total, None)

        alpha = job.image[..., 3]
        rgb = np.ascontiguousarray(job.image[..., :3])
        if (alpha == 0).any():  # the colour hidden under transparency (often black) would bleed into the
            rgb = fill.prefill(rgb, alpha, None, "none")  # resampled edge as a dark fringe: new canvas
        rgb = self.upscalers.run(upscaler, rgb, (job.width, job.height), on_tile, prompt=_words(job.prompt),
                                 seed=job.seed, steps=job.steps)
        picture = compose.opaque(rgb)
        if (alpha < 255).any():  # transparency keeps its shape, resampled
            picture[..., 3] = np.asarray(Image.fromarray(alpha).resize((job.width, job.height),
                                                                       Image.Resampling.LANCZOS))
        if not refine:
            return EngineResult([Layer(0, job.seed, (0, 0), picture)], loaded - start,
                                time.perf_counter() - loaded, passes)
        refined = self.run(dataclasses.replace(job, mode="img2img", image=picture, width=None, height=None,
                                               upscaler=None, recompose=False), _AlreadyStarted(reporter, tiles, total))
        if (alpha < 255).any():
            for layer in refined.layers:
                layer.pixels[..., 3] = picture[..., 3]
        return EngineResult(refined.layers, loaded - start + refined.load_seconds,
                            time.perf_counter() - loaded - refined.load_seconds, passes)

    def _two_stages(self, job: EditJob, reporter: Reporter, passes: list[Pass], load: float) -> EngineResult:
        """A generate above the model's native range ("hires fix"), a strong img2img of a picture too large for
        one pass, or a large selection remade (an inpaint above RECOMPOSE_STRENGTH), in two stages: each image
        is made (or remade) at ``passes[0].size`` (near native), brought to full size — the whole picture
        upscaled, or the selection's pass laid into the picture — and refined there in tiles at native scale
        (``passes[1:]``; a selection's through the same shaped mask, so every pixel outside it keeps the input's
        bytes); progress counts the steps of both stages."""
        selection = job.mode == "inpaint"
        upscaler = None if selection else self.upscalers.load(job.upscaler)  # before `started`
        first, tiles = passes[0], passes[1:]
        width, height = (first.box.width, first.box.height) if job.image is None else job.image.shape[1::-1]
        refine_mode = "inpaint" if selection else "img2img"
        first_steps = rules.denoising_steps(job.mode, job.steps, first.strength, job.few_step)
        refine_steps = rules.denoising_steps(refine_mode, job.steps, tiles[0].strength, job.few_step)
        if refine_steps < 1:  # (the default refine: an explicit one was refused before `accepted`)
            if selection:
                what = (f"a {first.box.width}x{first.box.height} selection at strength {first.strength:g} is "
                        "inpainted near native size")
            else:
                made = "made" if job.mode == "generate" else f"remade at strength {first.strength:g}"
                what = f"a {width}x{height} {job.mode} is above the model's native size: it is {made} near native size"
            raise ModelError("too_few_steps", f"{what} and refined in tiles at strength {tiles[0].strength:g}, and "
                             f"{job.steps} step(s) x {tiles[0].strength:g} leaves no refine step; ask for at least "
                             f"{rules.schedule_steps(1, tiles[0].strength)} steps" +
                             (", or a higher `refine`" if job.mode == "generate" else ""), "steps")
        passes = on_picture(passes, width, height)  # (the refine stage plans its own, off-grid tiles included)
        self._load_ahead(job)
        reporter.started(job.denoising_steps, passes)
        start = time.perf_counter()
        per_image = first_steps + len(tiles) * refine_steps
        layers = []
        for index in range(job.batch):
            seed = job.seed + index
            base = index * per_image
            stage = _AlreadyStarted(reporter, base, per_image * job.batch)
            if selection:  # its one pass near native, laid into the picture where its alpha reaches
                made = self.run(dataclasses.replace(job, batch=1, seed=seed, recompose=False), stage).layers[0]
                (x, y), pixels = made.offset, made.pixels
                picture = job.image.copy()
                picture[y:y + pixels.shape[0], x:x + pixels.shape[1], :3] = pixels[..., :3]
                refine = dataclasses.replace(job, image=picture, batch=1, seed=seed, strength=tiles[0].strength,
                                             recompose=False)
            else:
                if job.image is None:
                    small = dataclasses.replace(job, width=first.size[0], height=first.size[1], batch=1, seed=seed)
                else:  # the picture at the first stage's size: one pass there (its control maps follow it)
                    shrunk = np.asarray(Image.fromarray(job.image).resize(first.size, Image.Resampling.LANCZOS))
                    small = dataclasses.replace(job, image=shrunk, batch=1, seed=seed)
                made = self.run(small, stage).layers[0]
                picture = self.upscalers.run(upscaler, made.pixels[..., :3], (width, height),
                                             lambda done, total: self._check_cancel(reporter),
                                             prompt=_words(job.prompt), seed=seed, steps=job.steps)
                refine = dataclasses.replace(job, mode="img2img", image=compose.opaque(picture), width=None,
                                             height=None, batch=1, seed=seed, strength=tiles[0].strength,
                                             recompose=False)
            refined = self.run(refine, _AlreadyStarted(reporter, base + first_steps, per_image * job.batch)).layers[0]
            layers.append(Layer(index, seed, refined.offset, refined.pixels))
        return EngineResult(layers, load, time.perf_counter() - start, passes)

    def _load_ahead(self, job: EditJob) -> None:
        """Load what the stages of ``job`` load only after its ``started`` (each stage is a run of its own):
        a missing ControlNet, annotator or IP-Adapter then fails the job before ``started``, as in one pass."""
        model = self.registry.get(job.model)
        if model.family == "flux":
            return
        active = [(index, unit) for index, unit in enumerate(job.control) if unit.scale > 0]
        pipe = self._with_control(job, model, active) or model.pipeline(pipeline_mode(job.mode))
        self._references(job, model, pipe)

    @staticmethod
    def _check_cancel(reporter: Reporter) -> None:
        if reporter.is_cancelled():
            raise JobCancelled()

    # -- conditioning -------------------------------------------------------------------------

    def _prompt(self, job: EditJob, model: LoadedModel, pipe, text_loras: tuple = (),
                check: Callable[[], None] = lambda: None) -> dict | PromptAt:
        """The prompt's embeddings (cached by the parsed prompt): emphasis, long prompts, embeddings, clip skip.
        A prompt that changes as it is painted (``[from:to:when]``, ``[a|b]``) gives a function of the step
        instead. ``text_loras``: the LoRAs active in the text encoders, which the embeddings depend on;
        ``check`` raises when the job is cancelled between two of its prompts' encodings."""
        clip_skip = job.clip_skip or model.clip_skip
        layers = prompts.encoder_layers(pipe)
        if clip_skip > layers:
            raise ModelError("invalid_field", f"clip skip {clip_skip} is more than the {layers} layers of model "
                             f"{model.name!r}'s text encoder", "clip_skip")
        positive = prompt_syntax.read(job.prompt, "prompt")
        negative = prompt_syntax.read(job.negative_prompt, "negative_prompt") if job.negative_prompt else None
        guided = job.guidance > 1

        def encode(step: int = 1, steps: int = 1) -> dict:
            try:
                pos = self.embeddings.apply(model, positive.pieces(step, steps), "prompt")
                neg = negative and self.embeddings.apply(model, negative.pieces(step, steps), "negative_prompt")
            except EmbeddingError as exc:
                raise ModelError(exc.code, exc.message, exc.field) from exc
            if job.mode == "instruct" and prompts.is_plain(pipe, pos, neg, clip_skip):
                # InstructPix2Pix has no encode_prompt: a plain prompt goes as text (its three-way guidance
                # repeats the negative); emphasis, long prompts and clip skip come as embeddings below
                return {"prompt": prompt_syntax.plain(pos),
                        "negative_prompt": prompt_syntax.plain(neg) if neg else None}
            key = (model.name, text_loras, pos, neg, guided, clip_skip)
            return self.prompts.get(key, lambda: prompts.encode(pipe, model.family, pos, neg, guided, clip_skip))

        if job.mode == "instruct" or not (positive.changes or (negative and negative.changes)):
            return encode()  # (instruct: its three-way guidance reads one prompt; hosts' prompts are refused)
        by_text: dict = {}  # each text encoded once a job, even with the prompt cache off

        def at(step: int, steps: int) -> dict:
            key = (positive.pieces(step, steps), negative.pieces(step, steps) if negative else None)
            if key not in by_text:
                by_text[key] = encode(step, steps)
            return by_text[key]

        for step in range(1, job.denoising_steps + 1):  # now, so that a bad embedding fails before `started`
            check()
            at(step, job.denoising_steps)
        return at

    def usable_embeddings(self, model: str) -> tuple[str | None, list[str]]:
        """The family of a configured model (None: unknown until it loads) and the embeddings it can use."""
        family = self.registry.family(model) if model in self.registry.config.models else None
        return family, self.embeddings.names(family)

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
                     prompt: dict | PromptAt, adapter: dict, image_seed: int, canvas: np.ndarray | None = None,
                     check: Callable[[], None] | None = None) -> PassInputs:
        """The pictures of one pass at its diffusion size: its crop of the picture (pre-filled under the
        mask and where it is transparent), mask and maps. ``canvas``: the picture as painted so far;
        ``check`` raises when the job is cancelled while a preprocessor runs."""
        steps = rules.schedule_steps(job.steps, p.strength) if job.few_step and job.mode != "generate" else job.steps
        inputs = PassInputs(pipeline_mode(job.mode), p.size, steps, job.guidance, p.strength,
                            (image_seed + p.seed) % (MAX_SEED + 1), prompt, adapter=adapter,
                            image_guidance=job.image_guidance)
        picture = job.image if canvas is None else canvas
        mask = p.mask if p.mask is not None else p.alpha
        if picture is not None:
            crop = picture[p.box.y:p.box.y1, p.box.x:p.box.x1]
            filled = fill.prefill(crop[..., :3], crop[..., 3] if crop.shape[2] == 4 else None, mask,
                                  p.fill or "none", self.lama)
            inputs.image = _resample(filled, p.size)
        if mask is not None and job.mode != "instruct":  # (an instruct edit is laid in through the alpha)
            resized = np.asarray(_resample(mask, p.size))
            if job.soft:  # differential diffusion: the pipeline may change whatever the map lets change
                inputs.change = resized.astype(np.float32) / 255.0
                resized = np.where(resized > 0, 255, 0).astype(np.uint8)
            inputs.mask = Image.fromarray(resized)
        masked = pipeline_mode(job.mode) == "inpaint" and model.family == "sd15"
        inputs.control = [ControlInput(self._control_map(job, p, unit, check), unit.scale, unit.start, unit.end,
                                       masked=masked and unit.type == "inpaint") for _, unit in active]
        return inputs

    def _control_map(self, job: EditJob, p: Pass, unit: Control, check: Callable[[], None] | None = None
                     ) -> Image.Image:
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
            crop = source[p.box.y:p.box.y1, p.box.x:p.box.x1]  # crop first: big canvases
            if unit.image is None:  # the picture's transparent pixels (an expand's new band) are new canvas
                # here too, as the model sees them, not the colour stored under them
                crop = fill.prefill(crop, job.image[p.box.y:p.box.y1, p.box.x:p.box.x1, 3], None, "none")
            picture = _resample(crop, p.size)
        if not unit.preprocessor:
            return picture
        seed = job.seed if unit.preprocessor in SEEDED else None
        key = (unit.preprocessor, unit.resolution, seed, digest(picture))
        return self.control_maps.get(key, lambda: self.preprocessors.run(unit.preprocessor, picture,
                                                                          unit.resolution, job.seed, check))

    # -- progress -----------------------------------------------------------------------------

    def _on_step(self, job: EditJob, model: LoadedModel, reporter: Reporter, run: int, passes: int):
        """The step callback of the ``run``-th pass of the job (counting over the whole batch)."""
        per_pass = job.denoising_steps
        total = per_pass * passes * job.batch

        def on_step(pipe, step, timestep, tensors):
            if reporter.is_cancelled():
                raise JobCancelled()
            preview = None
            if job.preview_every and (step + 1) % job.preview_every == 0 and model.family != "flux":
                preview = self._previewer(model)(tensors["latents"], job.preview_size)
            reporter.progress(min(run * per_pass + step + 1, total), total, preview)
            return {}

        return on_step

    def _previewer(self, model: LoadedModel) -> Previewer:
        if model.name not in self._previewers:
            self._previewers[model.name] = Previewer(model.base.vae, model.preview_decoder)
        return self._previewers[model.name]


def _words(prompt: str) -> str:
    """A prompt's words for a model that takes text alone (the x4 upscaler): no brackets, weights or BREAKs."""
    return prompt_syntax.words(prompt_syntax.parse(prompt))


def pipeline_mode(mode: str) -> str:
    """The pipeline a mode runs on: expand and remove are inpaints of a pre-filled picture."""
    return "inpaint" if mode in ("expand", "remove") else mode


class _AlreadyStarted:
    """A reporter for a stage of a job whose ``started`` was sent already (the refine of an upscale, the two
    stages of a large generate): its steps count from ``before`` out of ``total`` (its own when None)."""

    def __init__(self, reporter: Reporter, before: int = 0, total: int | None = None):
        self.reporter, self.before, self.total = reporter, before, total

    def started(self, steps: int, passes: list[Pass]) -> None:
        pass

    def progress(self, step: int, total: int, preview: Image.Image | None) -> None:
        self.reporter.progress(self.before + step, self.total or total, preview)

    def is_cancelled(self) -> bool:
        return self.reporter.is_cancelled()


@contextlib.contextmanager
def _unit(index: int, field: str) -> Iterator[None]:
    """Errors raised inside name ``field`` of control unit ``index``."""
    try:
        yield
    except ModelError as exc:
        exc.unit, exc.field = index, field
        raise


def extended(job: EditJob, width: int, height: int) -> EditJob:
    """``job`` on its picture extended to ``width`` x ``height`` on the right and bottom by repeating its edge
    pixels (black there would darken the edge tiles), and its control images likewise, once stretched to the
    picture as ``_control_map`` does (stretched to the extended size instead, they would shift against it)."""
    rows, columns = job.image.shape[:2]

    def extend(pixels: np.ndarray) -> np.ndarray:
        if pixels.shape[:2] != (rows, columns):
            pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize((columns, rows),
                                                                                       Image.Resampling.LANCZOS))
        return np.pad(pixels, ((0, height - rows), (0, width - columns), (0, 0)), mode="edge")

    control = [unit if unit.image is None else dataclasses.replace(unit, image=extend(unit.image))
               for unit in job.control]
    return dataclasses.replace(job, image=extend(job.image), control=tuple(control))


def _resample(pixels: np.ndarray, size: tuple[int, int]) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image

"""Model loading: hub ids, diffusers folders and single-file checkpoints, shared across modes.

Each configured model is loaded once, on first use, and kept. All pipelines of a model (generate,
img2img, inpaint) are built with ``from_pipe`` from one base pipeline, so they share one copy of
the weights; a dedicated 9-channel inpaint UNet, when configured, is the only extra module.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
import transformers

from backend import model_files
from backend.config import Config, ModelSpec
from backend.engine import prediction as predictions
from backend.engine.capabilities import WEIGHT_FILE_SUFFIXES, configured_kind, weight_shapes
from backend.engine.capabilities import capabilities as model_capabilities
from backend.engine.speed import Speed
from shared.model_capabilities import ModelCapabilities

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SDXL_KEY = "conditioner.embedders.1.model.ln_final.weight"
# A Flux transformer's input projection: BFL / ComfyUI layout, with a prefix, diffusers layout.
FLUX_KEYS = {"img_in.weight", "model.diffusion_model.img_in.weight", "x_embedder.weight"}

# A server's log is no place for progress bars.
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()


class ModelError(Exception):
    """A model cannot be found, loaded or used; ``code`` is the protocol error code.

    ``field`` names what is at fault; ``unit``, when set, is the index of the control unit it
    belongs to (the server turns ``unit`` 1 and field ``type`` into ``control[1].type``).
    """

    def __init__(self, code: str, message: str, field: str = "model", unit: int | None = None):
        super().__init__(message)
        self.code, self.message, self.field, self.unit = code, message, field, unit


def pick_device(preference: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The device to run on (cuda, then mps, then cpu) and its dtype: ``dtype`` (fp16, bf16, fp32) or,
    for "auto", bf16 on CUDA GPUs that support it, fp16 on other GPUs, fp32 on the CPU."""
    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            preference = "mps"
        else:
            preference = "cpu"
    try:
        device = torch.device(preference)
    except RuntimeError:  # torch's own message lists twenty device types Easel cannot run on
        device = None
    if device is None or device.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device {preference!r} is not one Easel runs on: use auto, cuda (cuda:1 for the second GPU), "
                         "mps or cpu")
    # else the server started and every job failed, deep in torch ("Torch not compiled with CUDA enabled")
    if device.type == "cuda" and (device.index or 0) >= (torch.cuda.device_count() if torch.cuda.is_available() else 0):
        raise ValueError(f"device {preference}: this torch sees {torch.cuda.device_count()} CUDA GPU(s) (torch "
                         f"{torch.__version__}, CUDA {torch.version.cuda or 'not built in'}): use auto, or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device mps: Apple's Metal is not available here: use auto, or cpu")
    if dtype != "auto":
        return device, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16  # float32's range (no fp16 overflows), fp16's tensor-core speed
    return device, (torch.float32 if device.type == "cpu" else torch.float16)


def _pipeline_classes(family: str, control: bool = False) -> dict[str, type]:
    import diffusers as d

    if control and family == "sdxl":
        return {"generate": d.StableDiffusionXLControlNetPipeline,
                "img2img": d.StableDiffusionXLControlNetImg2ImgPipeline,
                "inpaint": d.StableDiffusionXLControlNetInpaintPipeline}
    if control:
        return {"generate": d.StableDiffusionControlNetPipeline, "img2img": d.StableDiffusionControlNetImg2ImgPipeline,
                "inpaint": d.StableDiffusionControlNetInpaintPipeline}
    if family == "sdxl":
        return {"generate": d.StableDiffusionXLPipeline, "img2img": d.StableDiffusionXLImg2ImgPipeline,
                "inpaint": d.StableDiffusionXLInpaintPipeline}
    return {"generate": d.StableDiffusionPipeline, "img2img": d.StableDiffusionImg2ImgPipeline,
            "inpaint": d.StableDiffusionInpaintPipeline, "instruct": d.StableDiffusionInstructPix2PixPipeline}


def _from_pipe(cls, pipe, **components):
    """``cls`` sharing ``pipe``'s modules and dtype. (diffusers 0.42 logs a meaningless "should be kept
    in float32: []" warning for every module it casts to the dtype they already have.)"""
    logger = diffusers.utils.logging.get_logger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel("ERROR")
    try:
        return cls.from_pipe(pipe, dtype=pipe.dtype, **components)
    finally:
        logger.setLevel(level)


@dataclass
class LoadedModel:
    """A model family's base pipeline plus the mode pipelines built from it."""

    name: str
    family: str
    base: object
    inpaint_unet: object | None = None
    preview_decoder: object | None = None
    pipelines: dict = field(default_factory=dict)
    scheduler_config: dict = field(default_factory=dict)
    instruct_unet: object | None = None  # an InstructPix2Pix UNet (8 channels) beside the base one
    prediction: predictions.Prediction = field(default_factory=predictions.Prediction)
    clip_skip: int = 1  # the model's default (A1111's count); jobs may set their own

    def __post_init__(self):
        # Jobs replace pipe.scheduler (the generate pipeline is the base itself), so keep the
        # model's own scheduler config aside as the one every job's scheduler is built from
        # (with what the model predicts: v-prediction, zero terminal SNR).
        self.scheduler_config = dict(self.base.scheduler.config) | self.prediction.scheduler_overrides()

    @property
    def unets(self) -> tuple:
        return tuple(unet for unet in (self.base.unet, self.inpaint_unet, self.instruct_unet) if unet is not None)

    @property
    def native_size(self) -> int:
        return int(self.base.unet.config.sample_size) * int(self.base.vae_scale_factor)

    @property
    def inpaint_only(self) -> bool:
        """A dedicated inpaint checkpoint served on its own (its UNet wants mask channels)."""
        return self.base.unet.config.in_channels == 9

    @property
    def kind(self) -> str:
        """base, inpaint (a 9-channel UNet alone) or instruct (an InstructPix2Pix UNet alone)."""
        return {9: "inpaint", 8: "instruct"}.get(self.base.unet.config.in_channels, "base")

    def pipeline(self, mode: str):
        """The pipeline for ``mode``, sharing the base pipeline's modules and dtype."""
        if mode != "inpaint" and self.inpaint_only:
            raise ModelError("unsupported_mode", f"model {self.name!r} is an inpainting model: it can only inpaint",
                             "mode")
        if (mode == "instruct") != (self.kind == "instruct") and not (mode == "instruct" and self.instruct_unet):
            raise ModelError("unsupported_mode", f"model {self.name!r} cannot {mode}", "mode")
        if mode not in self.pipelines:
            cls = _pipeline_classes(self.family)[mode]
            extra = {"unet": self.inpaint_unet} if mode == "inpaint" and self.inpaint_unet is not None else {}
            if mode == "instruct" and self.instruct_unet is not None:
                extra = {"unet": self.instruct_unet}
            pipe = self.base if type(self.base) is cls else _from_pipe(cls, self.base, **extra)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[mode] = pipe
        return self.pipelines[mode]

    def control_pipeline(self, mode: str, controlnets: list):
        """The ControlNet variant of ``mode``'s pipeline for these ControlNets (built per job: cheap,
        and jobs never share the ControlNet slot)."""
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        base = self.pipeline(mode)
        controlnet = controlnets[0] if len(controlnets) == 1 else MultiControlNetModel(controlnets)
        pipe = _from_pipe(_pipeline_classes(self.family, control=True)[mode], base, controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        return pipe


@dataclass(frozen=True)
class ModelDescription:
    """What is known of a configured model, loaded or not."""

    name: str
    family: str | None  # None: unknown until it loads
    native_size: int | None  # side of the square it was trained at
    inpaint_model: bool  # has a dedicated 9-channel inpaint UNet
    loaded: bool
    capabilities: ModelCapabilities | None = None
    prediction_type: str | None = "epsilon"  # or v_prediction; None: flow matching (flux), not listed
    zero_terminal_snr: bool | None = False


class ModelRegistry:
    """The configured models; loads each lazily on the worker thread and keeps it loaded."""

    def __init__(self, config: Config, device: torch.device, dtype: torch.dtype):
        self.config, self.device, self.dtype = config, device, dtype
        self.speed = Speed(config.performance, device)  # [performance] switches, resolved for the device
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    @property
    def default(self) -> str | None:
        return self.config.default

    def names(self) -> list[str]:
        return list(self.config.models)

    def loaded_names(self) -> list[str]:
        return list(self._loaded)

    def describe(self) -> list[ModelDescription]:
        """Each configured model as it stands: a loaded one from its weights, the others from the config
        (the server turns these into the ``models`` message)."""
        out = []
        for name, spec in self.config.models.items():
            model = self._loaded.get(name)
            family = model.family if model else configured_family(spec)
            out.append(ModelDescription(
                name=name,
                family=family,
                native_size=model.native_size if model else configured_native_size(spec),
                inpaint_model=((model.inpaint_unet is not None or model.inpaint_only) if model
                               else bool(spec.inpaint)),
                loaded=model is not None,
                capabilities=self.capabilities(name),
                # (flux is flow matching: no UNet prediction type to tell)
                **(dict(prediction_type=None, zero_terminal_snr=None) if family == "flux" else
                   _prediction_fields(model.prediction if model else predictions.resolve(spec))),
            ))
        return out

    def family(self, name: str) -> str | None:
        """Model ``name``'s family: from its weights once loaded, else from its configuration (None: unknown)."""
        model = self._loaded.get(name)
        return model.family if model else configured_family(self.config.models[name])

    def capabilities(self, name: str) -> ModelCapabilities:
        """What model ``name`` can do: from its weights once loaded, else from its configuration."""
        spec, model = self.config.models[name], self._loaded.get(name)
        if model is not None:
            return model_capabilities(spec, model.family, model.kind, self.config)
        return model_capabilities(spec, configured_family(spec), configured_kind(spec), self.config)

    def get(self, name: str | None) -> LoadedModel:
        """The loaded model called ``name`` (the default when None), loading it on first use."""
        name = name or self.default
        models = self.config.models  # one look: reading the folders again replaces the dict
        if name not in models:
            raise ModelError("unknown_model", f"no model named {name!r}; "
                             f"configured: {', '.join(models) or 'none'}")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(models[name])
            return self._loaded[name]

    # -- loading ------------------------------------------------------------------------------

    def _load(self, spec: ModelSpec) -> LoadedModel:
        source = Path(spec.source).expanduser()
        if source.is_absolute() and not source.exists():  # else diffusers takes the path for a hub id and says so
            raise ModelError("model_load_failed", f"model {spec.name!r} could not be loaded: {spec.source} does not "
                             "exist (moved, renamed or deleted?); put it back, or pick another model (the `models` "
                             "list is read from the model folders again)")
        if source.is_file() and source.suffix.lower() == ".safetensors":
            problem = model_files.file_problem(source, model_files.misplaced)  # else a loader's traceback
            if problem:
                raise ModelError("model_load_failed", f"model {spec.name!r}: {spec.source} {problem}")
        try:
            family = spec.family or detect_family(spec.source)
            log.info("loading model %s (%s) from %s", spec.name, family, spec.source)
            if family == "flux":
                from backend.engine.flux import load_flux

                return load_flux(spec, self.speed.load_device, self.dtype, self.config.allow_pickle)
            base = self._load_pipeline(spec, family)
            inpaint_unet = self._load_unet(spec.inpaint, spec) if spec.inpaint else None
            instruct_unet = self._load_unet(spec.instruct, spec, 8) if spec.instruct and family == "sd15" else None
            preview = self._load_preview(spec.preview) if spec.preview else None
            self.speed.prepare_model(base, inpaint_unet)
            for extra in (inpaint_unet, instruct_unet):
                if extra is not None:
                    self.speed.park(extra)  # after prepare: the host copy keeps channels_last
        except ModelError:
            raise
        except Exception as exc:
            hint = ""
            if Path(spec.source).expanduser().is_file() and not spec.config:
                where = "set `config`"
                if spec.name in self.config.folder_models:  # it has no entry of its own to set it in
                    where = (f"serve it with an entry of its own, [models.{json.dumps(spec.name)}] with source = "
                             f"{json.dumps(spec.source)} and `config`")
                hint = (" (a single-file checkpoint needs its diffusers configuration: allow hub access once, or "
                        f"{where} set to a local diffusers folder of the same architecture)")
            said = str(exc).replace(" Please check out the root cause in the stacktrace above.", "")  # (none is shown)
            if not hint and not Path(spec.source).expanduser().exists() and any(
                    word in said for word in ("cached", "connect", "offline", "model_index.json")):
                hint = (" (read as a hub id: the hub cache has no copy of it and the hub could not be reached or has "
                        "no such model: connect once to download it, or give a local diffusers folder or .safetensors "
                        "file)")
            raise ModelError("model_load_failed", f"model {spec.name!r} could not be loaded from "
                             f"{spec.source}: {said}{hint}") from exc
        prediction = predictions.resolve(spec, dict(base.scheduler.config))
        return LoadedModel(spec.name, family, base, inpaint_unet, preview, instruct_unet=instruct_unet,
                           prediction=prediction, clip_skip=spec.clip_skip or 1)

    def _common(self) -> dict:
        return {"dtype": self.dtype, "use_safetensors": None if self.config.allow_pickle else True}

    def _load_pipeline(self, spec: ModelSpec, family: str):
        check_pickle(spec.source, self.config.allow_pickle)
        cls = _pipeline_classes(family)["generate"]
        extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
        path = Path(spec.source).expanduser()
        if path.is_file():
            pipe = cls.from_single_file(str(path), dtype=self.dtype, config=spec.config, **extra)
        else:
            pipe = cls.from_pretrained(str(path) if path.is_dir() else spec.source, **self._common(), **extra)
        return to_device(pipe, self.speed.load_device)

    def _load_unet(self, source: str, spec: ModelSpec, channels: int = 9):
        from diffusers import UNet2DConditionModel

        check_pickle(source, self.config.allow_pickle)
        path = Path(source).expanduser()
        if path.is_file() and path.suffix.lower() == ".safetensors":
            try:  # said before diffusers' shape-mismatch traceback
                found = model_files.unet_channels(model_files.read_header(path)[0])
            except (OSError, ValueError):
                found = None
            if found is not None and found != channels:
                raise ModelError("model_load_failed", _channels_message(source, found, channels))
        if path.is_file():
            # The base model's configs describe the architecture; only the mask channels differ.
            config = spec.config or (spec.source if Path(spec.source).expanduser().is_dir() else None)
            unet = UNet2DConditionModel.from_single_file(str(path), dtype=self.dtype, config=config,
                                                        subfolder="unet" if config else None,
                                                        in_channels=channels)
        elif path.is_dir() and not (path / "unet").is_dir():
            unet = UNet2DConditionModel.from_pretrained(str(path), **self._common())
        else:
            unet = UNet2DConditionModel.from_pretrained(str(path) if path.is_dir() else source,
                                                        subfolder="unet", **self._common())
        if unet.config.in_channels != channels:
            raise ModelError("model_load_failed", _channels_message(source, unet.config.in_channels, channels))
        # Parked straight from the file (see _load): the GPU never holds both UNets, not even while loading.
        return unet if self.speed.parks_idle_unet else to_device(unet, self.speed.load_device)

    def _load_preview(self, source: str):
        from diffusers import AutoencoderTiny

        check_pickle(source, self.config.allow_pickle)
        path = Path(source).expanduser()
        return to_device(AutoencoderTiny.from_pretrained(str(path) if path.is_dir() else source,
                                               **self._common()), self.device)


def _channels_message(source: str, found: int, channels: int) -> str:
    what = "an InstructPix2Pix" if channels == 8 else "a dedicated inpaint"
    return (f"{'instruct' if channels == 8 else 'inpaint'} UNet {source} has {found} input channels; {what} model has "
            f"{channels}" + (" (this is a base model: leave `inpaint` out, and base models inpaint too)"
                             if found == 4 else ""))


def _prediction_fields(prediction: predictions.Prediction) -> dict:
    return {"prediction_type": prediction.prediction_type, "zero_terminal_snr": prediction.zero_terminal_snr}


FAMILY_NATIVE_SIZE = {"sd15": 512, "sdxl": 1024, "flux": 1024}
FLUX_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size


def configured_native_size(spec: ModelSpec) -> int | None:
    """A model's native size without loading it: from a diffusers folder's configs, else its family
    (``configured_family``: a single file's is read from its header)."""
    for folder in (spec.source, spec.config):
        if not folder:
            continue
        folder = Path(folder).expanduser()
        try:
            vae = json.loads((folder / "vae" / "config.json").read_text())
            if (folder / "transformer").is_dir():  # Flux: its pipelines' default of 128 latents a side
                sample_size = FLUX_SAMPLE_SIZE
            else:
                sample_size = json.loads((folder / "unet" / "config.json").read_text())["sample_size"]
            return int(sample_size) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return FAMILY_NATIVE_SIZE.get(configured_family(spec))


def configured_family(spec: ModelSpec) -> str | None:
    """A model's family without loading it: the configured one, else detected from a local source (a
    ``.safetensors`` file's tensor names, read from its header; a diffusers folder's model index).
    None for a hub id (no network here) or a source that cannot be read."""
    if spec.family:
        return spec.family
    path = Path(spec.source).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return None
    if path.is_file() and path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        return None
    return _local_family(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _local_family(path: str, mtime_ns: int, size: int) -> str | None:
    """``detect_family`` of a local source, once per version of it (``models`` replies ask often)."""
    try:
        return detect_family(path)
    except Exception as exc:  # a truncated or foreign file: the family shows once it loads, or fails to
        log.debug("cannot tell the family of %s: %s", path, exc)
        return None


def check_pickle(source: str, allow_pickle: bool) -> None:
    """Refuse pickle checkpoints, which can run code when loaded, unless the user opted in."""
    if source.lower().endswith(PICKLE_SUFFIXES) and not allow_pickle:
        raise ModelError("model_load_failed", f"{source} is a pickle checkpoint, which can run code when "
                         "loaded; convert it to .safetensors or set allow_pickle = true")


def to_device(module, device: torch.device):
    """Modules load on the CPU already; moving them there again only prints warnings."""
    return module if device.type == "cpu" else module.to(device)


def detect_family(source: str) -> str:
    """Guess sd15 or sdxl from a diffusers folder, a single file's keys, or a hub id's model index."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
            raise ModelError("model_load_failed", f"cannot tell the family of {source}; set family in the config")
        keys = set(weight_shapes(path))
        if keys & FLUX_KEYS:
            return "flux"
        if path.suffix.lower() == ".gguf":
            raise ModelError("model_load_failed", f"{source} holds no Flux transformer: GGUF files are read as "
                             "Flux transformers only (city96's FLUX.1 GGUFs, for example)")
        return "sdxl" if SDXL_KEY in keys else "sd15"
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            files = sorted(file.name for file in path.iterdir() if file.suffix.lower() == ".safetensors")
            hint = f"; for a checkpoint file in it, give the file: {path / files[0]}" if files else ""
            raise ModelError("model_load_failed", f"{source} is not a diffusers pipeline folder "
                             f"(no model_index.json){hint}")
        class_name = json.loads(index.read_text()).get("_class_name", "")
    else:
        from diffusers import DiffusionPipeline

        class_name = DiffusionPipeline.load_config(source).get("_class_name", "")
    return "flux" if "Flux" in class_name else "sdxl" if "XL" in class_name else "sd15"

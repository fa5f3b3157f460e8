"""The flux family: loading Flux (dev, schnell, Fill, Kontext) and what its pipeline calls need.

A flux model is one base pipeline (``FluxPipeline``) whose modes share its text encoders and VAE:
generate and img2img run its transformer, inpaint (and expand, remove) a Fill transformer, instruct a
Kontext transformer, each configured as ``inpaint`` / ``instruct`` on the model (a diffusers folder,
or one ``.safetensors`` or ``.gguf`` transformer file). The source is a diffusers folder, a hub id, or a
single transformer file as ComfyUI keeps it (``models/diffusion_models``, ``models/unet``), with
``config`` naming a diffusers folder of configs and tokenizers and ``text_encoder`` (CLIP-L),
``text_encoder_2`` (T5) and ``vae`` naming their files or folders.

Smaller GPUs: a ``.gguf`` transformer (city96's quantised FLUX.1 files) stays quantised in memory
through diffusers' GGUF support; ``quantize = "int8"`` quantises folder / hub transformers as they load
(torchao through diffusers' ``TorchAoConfig``); ``cpu_offload`` keeps the modules in RAM between uses.

Guidance is Flux's distilled guidance (the job's ``guidance``); a negative prompt needs ``true_cfg``
above 1 (true classifier-free guidance, two transformer passes a step). The sampler is the model's
own flow-matching Euler scheduler, whatever the job's ``sampler`` says.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.config import ModelSpec
from backend.engine.capabilities import safetensors_shapes
from backend.engine.prediction import Prediction

log = logging.getLogger(__name__)

_CLASSES = {"generate": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxFillPipeline",
            "instruct": "FluxKontextPipeline"}
_BFL_PREFIXES = ("double_blocks.", "model.diffusion_model.double_blocks.")  # the original (ComfyUI) layout
_DIFFUSERS_IN = "x_embedder.weight"


@dataclass
class FluxModel:
    """A loaded flux model: its base pipeline and the transformers of its other modes."""

    name: str
    base: object
    fill: object | None = None  # a Fill transformer (inpaint)
    kontext: object | None = None  # a Kontext transformer (instruct)
    true_cfg: float = 1.0
    cpu_offload: bool = False
    pipelines: dict = field(default_factory=dict)
    family: str = "flux"
    preview_decoder = None  # (an SD model's fields the engine and registry read)
    unets = ()
    prediction = Prediction()  # (flow matching: no epsilon / v-prediction choice)

    def __post_init__(self):
        self.scheduler_config = dict(self.base.scheduler.config)

    @property
    def kind(self) -> str:
        name = type(self.base).__name__
        return "inpaint" if "Fill" in name else "instruct" if "Kontext" in name else "base"

    @property
    def inpaint_unet(self):
        return self.fill

    @property
    def inpaint_only(self) -> bool:
        return self.kind == "inpaint"

    @property
    def native_size(self) -> int:
        return int(self.base.default_sample_size) * int(self.base.vae_scale_factor)

    def pipeline(self, mode: str):
        """The pipeline for ``mode`` (expand and remove are inpaints), sharing the base's modules."""
        from backend.engine.models import ModelError, _from_pipe

        if mode not in self.pipelines:
            import diffusers

            cls = getattr(diffusers, _CLASSES[mode])
            extra = {}
            if mode == "inpaint" and self.kind != "inpaint":
                extra = {"transformer": self.fill}
            elif mode == "instruct" and self.kind != "instruct":
                extra = {"transformer": self.kontext}
            elif mode in ("generate", "img2img") and self.kind != "base":
                extra = {"transformer": None}
            if "transformer" in extra and extra["transformer"] is None:
                raise ModelError("unsupported_mode", f"model {self.name!r} cannot {mode}", "mode")
            if mode == "instruct":
                extra.update(image_encoder=None, feature_extractor=None)
            if type(self.base) is cls:
                pipe = self.base
            else:  # (from_pipe casts every module to the dtype, which a quantised transformer refuses)
                transformer = extra.pop("transformer", self.base.transformer)
                quantized = is_quantized(transformer)
                pipe = _from_pipe(cls, self.base, transformer=None if quantized else transformer, **extra)
                if quantized:
                    pipe.register_modules(transformer=transformer)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[mode] = pipe
        return self.pipelines[mode]

    def prompt(self, pipe, prompt: str, negative: str) -> dict:
        """The call's prompt arguments: Fill takes no negative prompt; the others one only with true CFG."""
        kwargs = {"prompt": prompt}
        if negative and self.true_cfg > 1 and "true_cfg_scale" in inspect.signature(pipe.__call__).parameters:
            kwargs.update(negative_prompt=negative, true_cfg_scale=self.true_cfg)
        return kwargs

    @property
    def grid(self) -> int:
        """Pixels a packed latent token spans (16 on FLUX.1): the pipelines floor every size to it."""
        return 2 * int(self.base.vae_scale_factor)

    def call_kwargs(self, mode: str, pipe, size: tuple[int, int]) -> dict:
        """What a flux call needs beyond the common arguments: the size (img2img and Kontext would pick
        their own) on the model's grid, the T5 length, and Kontext's own resizing switched off (the pass
        is sized already). Passes are planned on the 8-pixel grid; FLUX.1's pipelines floored 1208 to 1200
        without a word (a generate came back 992 wide for 1000, a repaint 0.7% off the picture it sits
        in): the call runs at the nearest size on its grid, and ``fit`` brings the result back."""
        width, height = (max(self.grid, round(side / self.grid) * self.grid) for side in size)
        extra = {"width": width, "height": height,
                 "max_sequence_length": min(512, int(pipe.tokenizer_2.model_max_length))}
        if mode == "instruct":  # else Kontext scales the size to its max_area (1024²) and the picture to its own
            extra.update(max_area=width * height, _auto_resize=False)
        return extra

    @staticmethod
    def fit(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A pass's output (H x W x 3) at the pass's ``size`` (width, height)."""
        if (pixels.shape[1], pixels.shape[0]) == tuple(size):
            return pixels
        return np.asarray(Image.fromarray(pixels).resize(tuple(size), Image.Resampling.LANCZOS))

    def adapt(self, inputs, pipe) -> None:
        """A pass's inputs as a flux pipeline takes them: no image guidance, no per-pixel change map
        (the compositor lays the Fill result in through the feathered mask), the size and T5 length."""
        inputs.image_guidance, inputs.change = None, None
        inputs.extra = self.call_kwargs(inputs.mode, pipe, inputs.size)

    def before_call(self, pipe, device: torch.device) -> None:
        """``cpu_offload``: modules wait in RAM and move to the GPU one at a time (hooked per pipeline)."""
        if self.cpu_offload and device.type != "cpu":
            pipe.enable_model_cpu_offload(device=device)


def load_flux(spec: ModelSpec, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False) -> FluxModel:
    """Load a flux model: a diffusers folder or hub id, or a single transformer file with its components."""
    import diffusers

    from backend.engine.models import ModelError, check_pickle, to_device

    for source in (spec.source, spec.inpaint, spec.instruct, spec.text_encoder, spec.text_encoder_2, spec.vae):
        if source:
            check_pickle(source, allow_pickle)
    path = Path(spec.source).expanduser()
    configs = spec.config or (str(path) if path.is_dir() else None if path.is_file() else spec.source)
    components = {key: _component(key, getattr(spec, key), configs, dtype)
                  for key in ("text_encoder", "text_encoder_2", "vae") if getattr(spec, key)}
    quantize = spec.quantize
    if path.is_file():
        if not configs:
            raise ModelError("model_load_failed", f"model {spec.name!r}: a single-file Flux transformer needs "
                             "`config`, a diffusers folder (or hub id) with the pipeline's configs and tokenizers")
        components["transformer"] = load_transformer(str(path), configs, dtype, quantize)
        base = diffusers.FluxPipeline.from_pretrained(configs, dtype=dtype, **components)
    else:
        if quantize:  # (loaded on its own: the pipeline's loader would not quantise it)
            components["transformer"] = load_transformer(spec.source, configs, dtype, quantize)
        base = diffusers.DiffusionPipeline.from_pretrained(str(path) if path.is_dir() else spec.source,
                                                           dtype=dtype, **components)
    fill = load_transformer(spec.inpaint, configs, dtype, quantize) if spec.inpaint else None
    kontext = load_transformer(spec.instruct, configs, dtype, quantize) if spec.instruct else None
    if not spec.cpu_offload:
        base = to_device(base, device)
        fill, kontext = (to_device(module, device) if module is not None else None for module in (fill, kontext))
    return FluxModel(spec.name, base, fill, kontext, spec.true_cfg, spec.cpu_offload)


def load_transformer(source: str, configs: str | None, dtype: torch.dtype, quantize: str | None = None):
    """A Flux transformer from a diffusers pipeline or model folder, a hub id, one ``.safetensors`` file
    (the original layout, as in ComfyUI's ``models/diffusion_models``, or diffusers' keys) or one ``.gguf``
    file (quantised already). ``quantize`` ("int8"): a folder's or hub id's weights quantised as they load."""
    from diffusers import FluxTransformer2DModel

    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return load_gguf_transformer(path, configs, dtype)
    if path.is_file() and quantize:
        raise ValueError(f"quantize = {quantize!r} applies to transformers from a diffusers folder or hub id, not "
                         f"to the single file {path}: use a GGUF of it (Q8_0 is about int8's size)")
    quantized = quantization(quantize)
    if path.is_dir():
        sub = "transformer" if (path / "transformer").is_dir() else None
        return FluxTransformer2DModel.from_pretrained(str(path), subfolder=sub, dtype=dtype, **quantized)
    if not path.is_file():
        return FluxTransformer2DModel.from_pretrained(source, subfolder="transformer", dtype=dtype, **quantized)
    shapes = safetensors_shapes(path)
    if any(name.startswith(_BFL_PREFIXES) for name in shapes):
        key = next(name for name in shapes if name.endswith("img_in.weight"))
        return FluxTransformer2DModel.from_single_file(str(path), config=configs, subfolder="transformer",
                                                       dtype=dtype, in_channels=shapes[key][1])
    config = FluxTransformer2DModel.load_config(configs, subfolder="transformer")
    config.update(in_channels=shapes[_DIFFUSERS_IN][1], out_channels=64)  # a Fill file has more input channels
    return _with_weights(FluxTransformer2DModel.from_config(config), path, dtype)


def load_gguf_transformer(path: Path, configs: str | None, dtype: torch.dtype):
    """A quantised Flux transformer from one ``.gguf`` file (city96's FLUX.1 GGUFs in ComfyUI's
    ``models/unet`` or ``models/diffusion_models``: Q8_0, Q5_K_S, Q4_K_S ...; the original layout or
    diffusers'), loaded by diffusers' GGUF support: the linear layers keep their quantised blocks
    (``GGUFParameter``) and dequantise them to ``dtype`` as they run, so the transformer takes about
    the file's size in memory. The architecture comes from ``configs``' transformer config; the input
    and output widths from the file (a Fill transformer has more input channels)."""
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    from backend.engine.capabilities import gguf_shapes

    shapes = gguf_shapes(path)  # ValueError naming the file when it is not GGUF
    bfl = any(name.startswith(_BFL_PREFIXES) for name in shapes)
    first = next((name for name in shapes if name.endswith(("img_in.weight", _DIFFUSERS_IN))), None)
    last = next((name for name in shapes if name.endswith(("final_layer.linear.weight", "proj_out.weight"))
                 and not name.startswith(("single_transformer_blocks.", "single_blocks."))), None)
    if first is None or last is None or not (bfl or _DIFFUSERS_IN in shapes):
        names = ", ".join(list(shapes)[:3]) or "no tensors"
        raise ValueError(f"{path} holds no Flux transformer (its tensors: {names} ...); a Flux GGUF has img_in / "
                         "double_blocks (the original layout) or x_embedder / transformer_blocks (diffusers')")
    try:
        model = FluxTransformer2DModel.from_single_file(
            str(path), config=configs, subfolder="transformer", dtype=dtype,
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            in_channels=shapes[first][1], out_channels=shapes[last][0])
    except (ValueError, KeyError, RuntimeError, IndexError) as exc:  # a layout or shape that does not fit
        raise ValueError(f"{path} does not fit the Flux transformer of {configs}: {exc}") from exc
    empty = [name for name, param in model.named_parameters() if param.device.type == "meta"]
    if empty:
        raise ValueError(f"{path} does not fit FluxTransformer2DModel: it lacks {', '.join(empty[:3])}")
    return model


def quantization(quantize: str | None) -> dict:
    """``from_pretrained``'s quantisation argument for the model setting ``quantize``: "int8" is torchao's
    int8 weight-only quantisation (each linear weight one byte a parameter plus a scale a row; activations
    stay in the model's dtype) through diffusers' ``TorchAoConfig``."""
    if not quantize:
        return {}
    from diffusers import TorchAoConfig

    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as exc:
        raise ValueError(f"quantize = {quantize!r} needs the torchao package (pip install torchao)") from exc
    return {"quantization_config": TorchAoConfig(Int8WeightOnlyConfig())}


def is_quantized(module) -> bool:
    """Whether ``module`` holds quantised weights (a GGUF or torchao transformer): diffusers refuses to cast
    such a model to a dtype, which ``from_pipe`` does to every module it is given."""
    return getattr(module, "hf_quantizer", None) is not None or getattr(module, "is_quantized", False)


def _component(key: str, source: str, configs: str | None, dtype: torch.dtype):
    """A text encoder or the VAE from its folder, hub id, or single file (built from ``configs``' config)."""
    import diffusers
    import transformers

    cls = {"text_encoder": transformers.CLIPTextModel, "text_encoder_2": transformers.T5EncoderModel,
           "vae": diffusers.AutoencoderKL}[key]
    path = Path(source).expanduser()
    if not path.is_file():
        folder = str(path) if path.is_dir() else source
        sub = key if path.is_dir() and (path / key).is_dir() else None
        kwargs = {"subfolder": sub} if sub else {}
        return cls.from_pretrained(folder, dtype=dtype, **kwargs)
    if key == "vae":
        if "encoder.down.0.block.0.conv1.weight" in safetensors_shapes(path):  # the original (BFL) layout
            return cls.from_single_file(str(path), config=configs, subfolder="vae", dtype=dtype)
        return _with_weights(cls.from_config(cls.load_config(configs, subfolder="vae")), path, dtype)
    config = transformers.AutoConfig.from_pretrained(configs, subfolder=key)
    return _with_weights(cls(config), path, dtype)


def _with_weights(module, path: Path, dtype: torch.dtype):
    from safetensors.torch import load_file

    weights = load_file(str(path))
    missing, unexpected = module.load_state_dict(weights, strict=False)
    tied = {"encoder.embed_tokens.weight", "text_model.embeddings.position_ids"}  # tied to `shared` / buffers
    if set(missing) - tied:
        raise ValueError(f"{path} does not fit {type(module).__name__}: it lacks {', '.join(sorted(missing)[:3])}")
    if unexpected:  # e.g. a CLIP file's text_projection or logit_scale, which the text encoder does not use
        log.info("%s: %d tensors not used by %s (%s ...)", path, len(unexpected), type(module).__name__,
                 sorted(unexpected)[0])
    if hasattr(module, "tie_weights"):
        module.tie_weights()
    return module.to(dtype).eval()

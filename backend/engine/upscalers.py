"""Super-resolution: configured upscaler models (through spandrel) and plain resampling.

spandrel reads the architecture (ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, DAT, SPAN ...) from the weights
of a ``.pth`` (with its restricted unpickler: tensors only, no code) or ``.safetensors`` file. Pictures
run in overlapping tiles of TILE input pixels, blended like diffusion tiles, so any size fits in memory;
a model is applied again while the picture is still smaller than the target (a 2x model for 4x), and
the tiles of its last application are resampled to their part of the exact target size before blending
(memory follows the result, not the model's full output).

diffusers' ``StableDiffusionUpscalePipeline`` (the x4 upscaler, a diffusers folder or hub id) is the other
kind: a latent diffusion model guided by the job's prompt, run in tiles of 128 input pixels (its native
512 output) with the same blending, each tile with its own seed.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from backend.engine.models import ModelError
from shared.geometry import Box, tile_spans
from shared.vocabulary import BUILTIN_UPSCALER

TILE = 512
"""Input pixels per tile side."""

TILE_OVERLAP = 32
"""Input pixels neighbouring tiles share (the blend runs over them, times the model's scale)."""

MAX_ROUNDS = 3
"""A model is applied at most this many times (a 2x model reaches 8x)."""


@dataclass(frozen=True)
class UpscalerDescription:
    name: str
    scale: int | None  # None until loaded, unless the file name says (4x-UltraSharp, RealESRGAN_x2plus)
    architecture: str | None
    loaded: bool


class Upscalers:
    """The configured upscalers by name, loaded on first use and kept."""

    def __init__(self, sources: dict[str, str], device: torch.device, dtype: torch.dtype,
                 default: str | None = None):
        self.sources = dict(sources)
        self.device, self.dtype = device, dtype
        self.default = default or next(iter(self.sources), BUILTIN_UPSCALER)
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return [BUILTIN_UPSCALER] + [name for name in self.sources if name != BUILTIN_UPSCALER]

    def describe(self) -> list[UpscalerDescription]:
        out = [UpscalerDescription(BUILTIN_UPSCALER, None, None, True)]
        for name, source in self.sources.items():
            model = self._loaded.get(name)
            if model is not None:
                out.append(UpscalerDescription(name, model.scale, model.architecture.name, True))
            else:
                scale = 4 if is_diffusion_upscaler(source) else scale_from_name(Path(source).stem)
                out.append(UpscalerDescription(name, scale, None, False))
        return out

    def load(self, name: str | None):
        """The spandrel model of ``name`` (None: the default), or None for plain resampling."""
        name = name or self.default
        if name == BUILTIN_UPSCALER:
            return None
        if name not in self.sources:
            raise ModelError("unknown_upscaler", f"no upscaler named {name!r}; available: "
                             f"{', '.join(self.names())}", "upscaler")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._read(name, self.sources[name])
            return self._loaded[name]

    def _read(self, name: str, source: str):
        if is_diffusion_upscaler(source):
            return self._read_pipeline(name, source)
        import spandrel

        try:
            descriptor = spandrel.ModelLoader(self.device).load_from_file(source)
        except spandrel.UnsupportedModelError:
            raise ModelError("model_load_failed", f"upscaler {name!r}: {Path(source).name} is no architecture "
                             "spandrel knows", "upscaler") from None
        except Exception as exc:  # a missing, truncated or pickled-code file
            raise ModelError("model_load_failed", f"upscaler {name!r} could not be read from {source}: {exc}",
                             "upscaler") from None
        if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3 \
                or descriptor.output_channels != 3:
            raise ModelError("model_load_failed", f"upscaler {name!r} is not an RGB image-to-image model",
                             "upscaler")
        half = self.dtype == torch.float16 and descriptor.supports_half
        bf16 = self.dtype == torch.bfloat16 and descriptor.supports_bfloat16
        descriptor.to(self.dtype if half or bf16 else torch.float32).eval()
        return descriptor

    def _read_pipeline(self, name: str, source: str):
        from diffusers import StableDiffusionUpscalePipeline

        try:
            pipe = StableDiffusionUpscalePipeline.from_pretrained(source, torch_dtype=self.dtype)
        except Exception as exc:
            raise ModelError("model_load_failed", f"upscaler {name!r} could not be loaded from {source} as a "
                             f"StableDiffusionUpscalePipeline: {exc}", "upscaler") from None
        pipe.set_progress_bar_config(disable=True)
        return DiffusionUpscaler(pipe.to(self.device))

    def tiles(self, model, picture: tuple[int, int], size: tuple[int, int]) -> int:
        """How many tiles ``run`` takes from a ``picture`` (width, height) to ``size`` (0 for plain resampling)."""
        if model is None:
            return 0
        tile, overlap = getattr(model, "tile", TILE), getattr(model, "overlap", TILE_OVERLAP)
        return sum(len(tile_boxes(w, h, tile, overlap)) for w, h in upscale_rounds(*picture, model.scale, size))

    def run(self, model, rgb: np.ndarray, size: tuple[int, int],
            on_tile: Callable[[int, int], None] = lambda done, total: None, *, prompt: str = "", seed: int = 0,
            steps: int = 20) -> np.ndarray:
        """``rgb`` (H x W x 3 uint8) at ``size`` (width, height): through ``model`` (rounds of tiles, the last
        one resampled tile by tile to the exact size); plain Lanczos resampling when ``model`` is None.
        ``on_tile(done, total)`` counts the tiles of all rounds. ``prompt``, ``seed`` and ``steps`` guide a
        diffusion upscaler."""
        width, height = size
        picture = rgb
        if isinstance(model, DiffusionUpscaler):
            model.prompt, model.seed, model.steps, model.calls = prompt, seed, steps, 0
        if model is not None:
            tile, overlap = getattr(model, "tile", TILE), getattr(model, "overlap", TILE_OVERLAP)
            rounds = upscale_rounds(rgb.shape[1], rgb.shape[0], model.scale, size)
            total = self.tiles(model, (rgb.shape[1], rgb.shape[0]), size)
            done = 0
            for number, (w, h) in enumerate(rounds):
                # The last round goes straight to the target: a 6000 x 4000 picture made 1.3x larger by a 4x
                # model never holds its 24000 x 16000 intermediate (18 GB of blend buffers).
                last = number == len(rounds) - 1
                picture = upscale_tiled(model, picture, lambda d, t, before=done: on_tile(before + d, total),
                                        tile, overlap, size if last else None)
                done += len(tile_boxes(w, h, tile, overlap))
        if picture.shape[:2] != (height, width):
            picture = np.asarray(Image.fromarray(picture).resize((width, height), Image.Resampling.LANCZOS))
        return picture


def upscale_rounds(width: int, height: int, scale: int, size: tuple[int, int]) -> list[tuple[int, int]]:
    """The input sizes of the applications of a ``scale``x model that bring ``width`` x ``height`` up to
    ``size``: again while the picture is still smaller than the target, at most MAX_ROUNDS times."""
    rounds = []
    while len(rounds) < MAX_ROUNDS and (width < size[0] or height < size[1]):
        rounds.append((width, height))
        width, height = width * scale, height * scale
    return rounds


def tile_boxes(width: int, height: int, tile: int = TILE, overlap: int = TILE_OVERLAP) -> list[Box]:
    """The input tiles of one application of a model to a ``width`` x ``height`` picture, row by row."""
    return [Box(x, y, w, h) for y, h in tile_spans(height, tile, overlap, 1)
            for x, w in tile_spans(width, tile, overlap, 1)]


def upscale_tiled(model, rgb: np.ndarray, on_tile: Callable[[int, int], None] = lambda done, total: None,
                  tile: int = TILE, overlap: int = TILE_OVERLAP, size: tuple[int, int] | None = None) -> np.ndarray:
    """One application of a spandrel model to ``rgb`` in overlapping tiles, blended where they overlap.

    ``size`` (width, height): the result's size when it is not the model's scale times the picture's; each
    tile's output is then resampled to its part of that size before blending, so memory follows the result,
    not the model's full output."""
    from backend.engine.compose import iter_tile_weights

    height, width = rgb.shape[:2]
    scale = model.scale
    out_width, out_height = size or (width * scale, height * scale)
    boxes = tile_boxes(width, height, tile, overlap)
    out_boxes = [_scaled(b, out_width / width, out_height / height) for b in boxes]
    parameter = next(model.model.parameters())

    def run(box: Box, out: Box) -> np.ndarray:  # one tile at its output box, as H x W x 3 float32 in 0 ... 255
        crop = torch.from_numpy(rgb[box.y:box.y1, box.x:box.x1].copy()).permute(2, 0, 1)[None]
        crop = crop.to(parameter.device, parameter.dtype) / 255.0
        with torch.inference_mode():
            made = (model(crop).clamp(0, 1)[0].permute(1, 2, 0).float() * 255.0).cpu().numpy()
        if made.shape[:2] == (out.height, out.width):
            return made
        return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(made[..., c]), "F").resize(
            (out.width, out.height), Image.Resampling.LANCZOS)) for c in range(3)], axis=-1)

    if len(boxes) == 1:  # the whole picture in one call: nothing to blend
        result = run(boxes[0], out_boxes[0])
        on_tile(1, 1)
        return np.clip(np.rint(result), 0, 255).astype(np.uint8)
    total = np.zeros((out_height, out_width, 3), np.float32)
    weights = np.zeros((out_height, out_width, 1), np.float32)
    for number, (box, out, weight) in enumerate(zip(boxes, out_boxes, iter_tile_weights(out_boxes))):
        total[out.y:out.y1, out.x:out.x1] += run(box, out) * weight[..., None]
        weights[out.y:out.y1, out.x:out.x1] += weight[..., None]
        on_tile(number + 1, len(boxes))
    total /= weights  # in place: at 8000 px a side each temporary would be another 770 MB
    np.rint(total, out=total)
    np.clip(total, 0, 255, out=total)
    return total.astype(np.uint8)


def _scaled(box: Box, sx: float, sy: float) -> Box:
    """``box`` on a picture resampled by ``sx`` x ``sy``: neighbouring boxes stay edge to edge."""
    x0, y0, x1, y1 = round(box.x * sx), round(box.y * sy), round(box.x1 * sx), round(box.y1 * sy)
    return Box(x0, y0, x1 - x0, y1 - y0)


class DiffusionUpscaler:
    """diffusers' x4 upscale pipeline behind the face of a spandrel model (``scale``, ``model``, a call on a
    [0, 1] tensor), so it runs in the same tiles; each call (tile) has its own seed."""

    scale = 4
    tile, overlap = 128, 16  # input pixels: the pipeline's native 512 output per tile

    class architecture:  # noqa: N801 - reads like spandrel's descriptor.architecture.name
        name = "StableDiffusionUpscalePipeline"

    def __init__(self, pipe):
        self.pipe, self.model = pipe, pipe.unet
        self.prompt, self.seed, self.steps, self.calls = "", 0, 20, 0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed((self.seed + 1_000_003 * self.calls) % 2**32)
        self.calls += 1
        result = self.pipe(prompt=self.prompt, image=image.float().clamp(0, 1), num_inference_steps=self.steps,
                           generator=generator, output_type="pt").images
        return result.to(image.dtype)


def is_diffusion_upscaler(source: str) -> bool:
    """A diffusers folder or hub id (the x4 upscale pipeline), not a super-resolution weights file."""
    return not source.lower().endswith((".pth", ".safetensors"))


def scale_from_name(stem: str) -> int | None:
    """The factor a file name states (``4x-UltraSharp``, ``RealESRGAN_x2plus``, ``2xLexicaHAT``), or None."""
    found = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", stem.lower())
    return int(found.group(1) or found.group(2)) if found else None

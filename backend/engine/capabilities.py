"""What each configured model can do on this server, told without loading it where possible.

A model's kind comes from its weights' layout: a 9-channel UNet (or a Flux Fill transformer) only
inpaints, an 8-channel UNet (InstructPix2Pix) or a Flux Kontext pipeline only follows instructions;
a base model does everything its family does, plus inpaint with its `inpaint` component and instruct
with its `instruct` component. ControlNets and IP-Adapters come from the server's configuration per
family. The result (``shared.model_capabilities.ModelCapabilities``) is listed in ``models`` and
checked against every submit before `accepted`.
"""

from __future__ import annotations

import functools
import json
import logging
import struct
from pathlib import Path

from backend.config import Config, ModelSpec
from shared.model_capabilities import SD_FAMILIES, ModelCapabilities, reference_modes

log = logging.getLogger(__name__)

MASKED_MODES = ("inpaint", "expand", "remove")
SD_MODES = ("generate", "img2img") + MASKED_MODES + ("upscale",)
# Input channels of a single file's first UNet convolution (LDM layout) and a Flux transformer's input
# projection (BFL / ComfyUI layout, then diffusers layout).
_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
_FLUX_IN = ("img_in.weight", "model.diffusion_model.img_in.weight", "x_embedder.weight")
FLUX_FILL_IN = 384  # packed latents (64) + packed masked-image latents (64) + packed mask (256)
WEIGHT_FILE_SUFFIXES = (".safetensors", ".gguf")  # single files whose tensor names and shapes are read unloaded


def capabilities(spec: ModelSpec, family: str | None, kind: str | None, config: Config) -> ModelCapabilities:
    """``spec``'s capabilities as a model of ``family`` and ``kind`` (base, inpaint, instruct; None: unknown)."""
    if kind == "inpaint":
        modes = MASKED_MODES
    elif kind == "instruct":
        modes = ("instruct",)
    elif family == "flux":
        modes = ("generate", "img2img") + (MASKED_MODES if spec.inpaint else ()) + ("upscale",)
    else:
        modes = SD_MODES
    if spec.instruct and kind != "inpaint" and family in ("sd15", "flux", None):
        modes += ("instruct",)
    # (only instruct takes it: a model without instruct said `image_guidance: true`)
    image_guidance = "instruct" in modes and family != "flux"
    if family not in SD_FAMILIES:
        return ModelCapabilities(family, modes, negative_prompt=family != "flux" or spec.true_cfg > 1,
                                 image_guidance=image_guidance, loras=family != "flux", clip_skip=family != "flux")
    if modes == ("instruct",):  # instruct takes no control units or references: listing its family's misled hosts
        return ModelCapabilities(family, modes)
    adapter = config.ip_adapters.get(family)
    return ModelCapabilities(family, modes, tuple(sorted(config.controlnets.get(family, {}))),
                             reference_modes(bool(adapter.face)) if adapter else (), image_guidance=image_guidance)


def configured_kind(spec: ModelSpec) -> str | None:
    """``spec``'s kind from its local weights (a diffusers folder's pipeline class or UNet config, a
    single file's tensor shapes); None for a hub id or an unreadable source (then it is known on load)."""
    path = Path(spec.source).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return None
    return _kind(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _kind(path: str, mtime_ns: int, size: int) -> str | None:
    try:
        source = Path(path)
        if source.is_file():
            return _file_kind(source) if source.suffix.lower() in WEIGHT_FILE_SUFFIXES else None
        name = json.loads((source / "model_index.json").read_text()).get("_class_name", "")
        if "InstructPix2Pix" in name or "Kontext" in name:
            return "instruct"
        if "Inpaint" in name or "Fill" in name:
            return "inpaint"
        return "base"
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as exc:  # truncated, foreign
        log.debug("cannot tell the kind of %s: %s", path, exc)
        return None


def _file_kind(path: Path) -> str:
    shapes = weight_shapes(path)
    if _UNET_IN in shapes:
        return {9: "inpaint", 8: "instruct"}.get(shapes[_UNET_IN][1], "base")
    flux = next((shapes[key] for key in _FLUX_IN if key in shapes), None)
    if flux is not None and flux[1] == FLUX_FILL_IN:
        return "inpaint"
    return "base"


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from a ``.safetensors`` file's header (no tensor is read)."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{path} has a {length}-byte header")
        header = json.loads(file.read(length))
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}


def gguf_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape (in torch's order, a quantised tensor's logical shape), read from a ``.gguf``
    file's header with the ``gguf`` package (the tensors are mapped, not read). ValueError, naming the
    file, for one that is not GGUF or is cut short."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        return {tensor.name: [int(n) for n in reversed(tensor.shape)] for tensor in reader.tensors}
    except ImportError:
        raise
    except Exception as exc:  # bad magic, a version it cannot read, a header or data cut short
        raise ValueError(f"{path} is not a readable GGUF file: not GGUF at all, or cut short ({exc})") from exc


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """A single weights file's tensor shapes: ``.gguf`` (GGUF) or else ``.safetensors``."""
    return gguf_shapes(path) if Path(path).suffix.lower() == ".gguf" else safetensors_shapes(path)

"""What a weights file in a user's model folder is, told from its ``.safetensors`` header alone.

A1111 and ComfyUI folders hold more than their names promise: a VAE, LoRA or embedding dropped into
``models/Stable-diffusion``, an embedding in ``models/Lora``, a download still in progress. Served as
models (or LoRAs) they failed only when a job used them, with a loader's traceback, or (an embedding
as a LoRA) ran as if nothing had been asked. The checks here are pure functions of a header (its
tensor names and offsets) and the file's size; ``read_header`` and ``walk`` are the only I/O.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

MAX_HEADER = 100 * 2**20
# A Flux transformer's input projection: BFL / ComfyUI layout, with a prefix, diffusers layout.
FLUX_KEYS = ("img_in.weight", "model.diffusion_model.img_in.weight", "x_embedder.weight")
EMBEDDING_KEYS = ("emb_params", "clip_l", "clip_g", "string_to_param.*", "string_to_token.*")
WHERE = {"lora": "a LoRA: put it into a folder of lora_folders (A1111: models/Lora, ComfyUI: models/loras)",
         "embedding": "a textual-inversion embedding: put it into a folder of embedding_folders (A1111: embeddings)",
         "controlnet": "a ControlNet: put it into a folder of controlnet_folders (A1111: models/ControlNet)",
         "vae": "a VAE alone, not a whole model (A1111: models/VAE; a flux model's `vae`)",
         "text_encoder": "a text encoder alone, not a whole model (a flux model's `text_encoder` / `text_encoder_2`)",
         "lycoris": "a LyCORIS LoHa / LoKr, which Easel cannot load (LoRA and LoCon files work)"}


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """A ``.safetensors`` file's header (tensor name -> {dtype, shape, data_offsets}, and ``__metadata__``)
    and the bytes of tensor data after it; ValueError saying what is wrong with a file that is not one."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as file:
        start = file.read(8)
        if len(start) < 8:
            raise ValueError("is empty" if size == 0 else f"is {size} bytes: too short for a .safetensors file")
        length = int.from_bytes(start, "little")
        if not 2 <= length <= min(MAX_HEADER, size - 8):
            raise ValueError("is not a .safetensors file (its first bytes give no header length that fits)")
        try:
            header = json.loads(file.read(length))
        except ValueError:
            raise ValueError("is not a .safetensors file (its header is no JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("is not a .safetensors file (its header is no JSON object)")
    return header, size - 8 - length


def cut_short(header: dict, data: int) -> str | None:
    """A sentence when the tensors the header lists run past the ``data`` bytes the file holds after it
    (a download still running, a copy that stopped), else None."""
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2 and isinstance(entry["data_offsets"][1], int)]
    needed = max(ends, default=0)
    if data < needed:
        return f"is cut short ({data} of its {needed} bytes of weights: still downloading, or a broken copy)"
    return None


def kind_of(keys) -> str:
    """What the tensor names say a file holds: checkpoint, lora, lycoris, controlnet, text_encoder, embedding,
    vae or other."""
    keys = [key for key in keys if key != "__metadata__"]
    if any(key.startswith("model.diffusion_model.") or key in FLUX_KEYS or key.startswith("double_blocks.")
           for key in keys):
        return "checkpoint"
    if any(".hada_w1_" in key or ".lokr_w1" in key for key in keys):
        return "lycoris"
    if any(key.startswith(("lora_unet_", "lora_te")) or ".lora_A." in key or ".lora_down." in key
           or ".lora.down." in key for key in keys):
        return "lora"
    if any(key.startswith(("control_model.", "controlnet_", "input_hint_block.")) for key in keys):
        return "controlnet"
    if any(key.startswith(("text_model.", "encoder.block.", "encoder.layers.", "text_encoders.")) for key in keys):
        return "text_encoder"  # CLIP, T5
    if keys and all(key in EMBEDDING_KEYS[:3] or key.startswith(("string_to_param.", "string_to_token."))
                    for key in keys):
        return "embedding"
    if keys and all(key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model."))
                    for key in keys):
        return "vae"
    return "other"


UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"  # a single file's first UNet convolution


def family_evidence(header: dict) -> str | None:
    """The family a single checkpoint's own text encoders prove (sd15: CLIP-L alone, sdxl: CLIP-L and
    OpenCLIP-G, flux: its transformer), or None when the file does not prove one (SD 2, a UNet alone)."""
    if "conditioner.embedders.1.model.ln_final.weight" in header:
        return "sdxl"
    if any(key in header for key in FLUX_KEYS):
        return "flux"
    if any(key.startswith("cond_stage_model.transformer.") for key in header):
        return "sd15"
    return None


def family_problem(header: dict, family: str) -> str | None:
    """Why a checkpoint cannot be served as ``family`` (a configured ``family`` the weights contradict)."""
    proven = family_evidence(header)
    if proven is not None and proven != family:
        return f"is a {proven} checkpoint, not {family}"
    return None


def unet_channels(header: dict) -> int | None:
    """Input channels of a single file's UNet (4 base, 9 inpaint, 8 InstructPix2Pix), None when not told."""
    shape = header.get(UNET_IN, {}).get("shape") if isinstance(header.get(UNET_IN), dict) else None
    return shape[1] if isinstance(shape, list) and len(shape) == 4 and isinstance(shape[1], int) else None


def checkpoint_problem(header: dict, data: int) -> str | None:
    """Why a ``.safetensors`` file in a model folder is no model to serve (a sentence after its name), or None."""
    kind = kind_of(header)
    if kind == "checkpoint":
        return cut_short(header, data)
    return misplaced(header, data) or "holds no UNet or Flux transformer: not a model checkpoint"


def misplaced(header: dict, data: int) -> str | None:
    """Why a file configured as a model's ``source`` cannot be one, where its header says so plainly (a
    file of another kind, or cut short); None for layouts it does not know, which the loader may."""
    kind = kind_of(header)
    if kind in WHERE:
        return f"is {WHERE[kind]}"
    return cut_short(header, data)


def lora_problem(header: dict, data: int) -> str | None:
    """Why a ``.safetensors`` file in a LoRA folder is no LoRA to offer (a sentence after its name), or None."""
    kind = kind_of(header)
    if kind == "lora":
        return cut_short(header, data)
    if kind in WHERE:
        return f"is {WHERE[kind]}"
    if kind == "checkpoint":
        return "is a whole model checkpoint, not a LoRA: put it into a folder of model_folders"
    return "holds no LoRA weights (no lora_up / lora_down or lora_A / lora_B tensors)"


def file_problem(path: str | os.PathLike, check) -> str | None:
    """``check`` (checkpoint_problem or lora_problem) of the file at ``path``, or what makes it unreadable."""
    try:
        return check(*read_header(path))
    except (TypeError, KeyError, IndexError, AttributeError):  # JSON, but not laid out as safetensors says
        return "is not a .safetensors file (its header does not describe tensors)"
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return str(exc)


def cached_problem(path: Path, check) -> str | None:
    """``file_problem``, read once per version of the file (the folders are read again and again)."""
    try:
        stat = os.stat(path)
    except OSError:
        return file_problem(path, check)
    return _cached_problem(str(path), stat.st_mtime_ns, stat.st_size, check)


@functools.lru_cache(maxsize=4096)
def _cached_problem(path: str, mtime_ns: int, size: int, check) -> str | None:
    return file_problem(path, check)


def walk(folder: Path):
    """Every file under ``folder`` as a sorted list of paths, following links to folders as A1111 and
    ComfyUI do (a model folder is often a link to a bigger disk), each real folder once."""
    seen, out = set(), []
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(root) / name for name in files if not name.startswith(".")]  # ._x: macOS litter
    return sorted(out)

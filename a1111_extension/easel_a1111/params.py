"""Tab values -> an Easel ``submit``, and results -> what the tab shows. No gradio here.

Everything a painter can get wrong is caught here with an ``InputError`` whose message is one
sentence the tab shows as it is.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .protocol import MAX_SEED, ImageData

USE_INPUT = "input picture"
OWN_IMAGE = "own image"

# A1111's names for Easel's samplers, so infotext pastes into the WebUI's own fields.
SAMPLER_LABELS = {"dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "euler": "Euler",
                  "euler_a": "Euler a", "ddim": "DDIM", "unipc": "UniPC"}


class InputError(ValueError):
    """Something in the tab is missing or contradictory; the message is for the painter."""


@dataclass
class ControlSpec:
    """One ControlNet unit as the tab shows it."""

    enabled: bool = False
    type: str = "canny"
    source: str = USE_INPUT       # USE_INPUT or OWN_IMAGE
    image: Image.Image | None = None
    preprocess: bool = False
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass
class ReferenceSpec:
    """One reference picture for the IP-Adapter."""

    image: Image.Image | None = None
    weight: float = 1.0
    mode: str = "reference"


@dataclass
class TabValues:
    """Everything the Generate button reads."""

    mode: str = "inpaint"
    picture: Image.Image | None = None
    mask: Image.Image | None = None   # as painted: white strokes (any colour, alpha respected)
    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 1.0
    steps: int = 20
    guidance: float = 7.0
    sampler: str = "dpmpp_2m_karras"
    seed: int = -1                   # -1: the server picks one
    batch: int = 1
    mask_grow: int = 8
    mask_feather: int = 16
    width: int = 512                 # generate only
    height: int = 512
    controls: list[ControlSpec] = field(default_factory=list)
    references: list[ReferenceSpec] = field(default_factory=list)


def png_image(picture: Image.Image, mode: str = "RGBA") -> ImageData:
    """A PIL picture as PNG ImageData (PNG keeps the pixels exact)."""
    buffer = io.BytesIO()
    picture.convert(mode).save(buffer, format="PNG", compress_level=1)
    return ImageData.from_png(buffer.getvalue())


def mask_from_painting(painted: Image.Image | None, size: tuple[int, int]) -> Image.Image | None:
    """The painted strokes as an 8-bit mask (255 = repaint), or None when nothing was painted.

    Strokes count by luminance times alpha, so a transparent layer with coloured strokes (gradio 4)
    and white strokes on black (gradio 3) both work."""
    if painted is None:
        return None
    rgba = np.asarray(painted.convert("RGBA"), dtype=np.uint16)
    luminance = np.asarray(painted.convert("RGB").convert("L"), dtype=np.uint16)
    values = (luminance * rgba[..., 3] + 127) // 255  # opaque modes convert with alpha 255
    if not values.any():
        return None
    mask = Image.fromarray(values.astype(np.uint8), "L")
    # The editor may hand back its canvas at another size than the picture's.
    return mask if mask.size == size else mask.resize(size, Image.BILINEAR)


def build_request(values: TabValues) -> tuple[str, dict]:
    """(mode, keyword arguments for ``Client.submit``), images as ImageData."""
    mode = values.mode
    if mode not in ("inpaint", "img2img", "generate"):
        raise InputError(f"Unknown mode {mode!r}: choose inpaint, img2img or generate.")
    if not values.prompt.strip() and not any(reference.image is not None for reference in values.references):
        raise InputError("Describe what to paint in the prompt.")
    params: dict = {"prompt": values.prompt, "negative_prompt": values.negative_prompt,
                    "steps": int(values.steps), "guidance": float(values.guidance), "sampler": values.sampler,
                    "batch": int(values.batch)}
    seed = int(values.seed) if values.seed is not None else -1
    if seed >= 0:
        if seed + int(values.batch) - 1 > MAX_SEED:
            raise InputError(f"The seed must be at most {MAX_SEED - int(values.batch) + 1} for a batch of "
                             f"{int(values.batch)} (or -1 for a random one).")
        params["seed"] = seed
    if mode == "generate":
        params["width"], params["height"] = int(values.width), int(values.height)
    else:
        if values.picture is None:
            raise InputError(f"{mode.capitalize()} needs a picture: upload one first.")
        if int(values.steps * values.strength) < 1:
            raise InputError(f"Strength {values.strength:g} with {int(values.steps)} steps leaves no step to run: "
                             "raise the strength or the steps.")
        params["image"] = png_image(values.picture)
        params["strength"] = float(values.strength)
    if mode == "inpaint":
        mask = mask_from_painting(values.mask, values.picture.size)
        if mask is None:
            raise InputError("Paint over the part of the picture to change first (inpaint needs a mask).")
        params["mask"] = png_image(mask, "L")
        params["mask_grow"], params["mask_feather"] = int(values.mask_grow), int(values.mask_feather)
    units = [control_unit(number, spec, values) for number, spec in enumerate(values.controls, 1) if spec.enabled]
    if units:
        params["control"] = units
    references = [reference(number, spec) for number, spec in enumerate(values.references, 1)
                  if spec.image is not None]
    if references:
        params["references"] = references
    return mode, params


def control_unit(number: int, spec: ControlSpec, values: TabValues) -> dict:
    """One ``control`` entry; the job's own picture is used by leaving ``image`` out."""
    if not spec.start < spec.end:
        raise InputError(f"Control unit {number}: its start ({spec.start:g}) must come before its end ({spec.end:g}).")
    unit = {"type": spec.type, "scale": float(spec.scale), "start": float(spec.start), "end": float(spec.end),
            "preprocess": "on" if spec.preprocess else "off"}
    if spec.source == USE_INPUT:
        if values.mode == "generate":
            raise InputError(f"Control unit {number} uses the input picture, but generate has none: "
                             "give the unit its own image.")
    elif spec.image is None:
        raise InputError(f"Control unit {number} is on but has no image: add one or use the input picture.")
    else:
        unit["image"] = png_image(spec.image, "RGB")
    return unit


def reference(number: int, spec: ReferenceSpec) -> dict:
    return {"image": png_image(spec.image, "RGB"), "weight": float(spec.weight), "mode": spec.mode}


def decode(image: ImageData) -> Image.Image:
    """A result or preview image as a PIL RGBA picture."""
    if image.format == "rgba8":
        return Image.frombytes("RGBA", (image.width, image.height), image.data)
    return Image.open(io.BytesIO(image.data)).convert("RGBA")


def composite(picture: Image.Image, layer: Image.Image, offset: tuple[int, int]) -> Image.Image:
    """Place an inpaint result layer over the picture. Where the layer is transparent the output is
    the picture's own bytes (integer blend that is exact at alpha 0 and 255)."""
    base = np.array(picture.convert("RGBA"), dtype=np.uint32)
    x, y = offset
    top = np.asarray(layer.convert("RGBA"), dtype=np.uint32)
    region = base[y:y + top.shape[0], x:x + top.shape[1]]
    top = top[:region.shape[0], :region.shape[1]]
    alpha = top[..., 3:4]
    region[..., :3] = (top[..., :3] * alpha + region[..., :3] * (255 - alpha) + 127) // 255
    region[..., 3:4] = np.maximum(region[..., 3:4], alpha)
    return Image.fromarray(base.astype(np.uint8), "RGBA")


def infotext(parameters: dict, seed: int, size: tuple[int, int]) -> str:
    """The parameters a result was made with, in the WebUI's infotext format, so "Send to img2img"
    fills the prompt, steps, seed, size ... fields there."""
    lines = [parameters.get("prompt", "")]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    items = [("Steps", parameters.get("steps")),
             ("Sampler", SAMPLER_LABELS.get(parameters.get("sampler"), parameters.get("sampler"))),
             ("CFG scale", parameters.get("guidance")), ("Seed", seed), ("Size", f"{size[0]}x{size[1]}"),
             ("Model", parameters.get("model")), ("Denoising strength", parameters.get("strength"))]
    if parameters.get("mode") == "inpaint":
        items += [("Mask blur", parameters.get("mask_feather")), ("Easel mask grow", parameters.get("mask_grow"))]
    items.append(("Easel mode", parameters.get("mode")))
    for number, unit in enumerate(parameters.get("control") or [], 1):
        items.append((f"Easel control {number}", _quote(f"{unit['type']}, preprocess {unit['preprocess']}, "
                                                        f"scale {unit['scale']:g}, {unit['start']:g}-{unit['end']:g}")))
    for number, ref in enumerate(parameters.get("references") or [], 1):
        items.append((f"Easel reference {number}", _quote(f"{ref['mode']}, weight {ref['weight']:g}")))
    lines.append(", ".join(f"{key}: {value}" for key, value in items if value is not None))
    return "\n".join(lines)


def _quote(text: str) -> str:
    # The WebUI's infotext parser reads a JSON string where a value holds a comma.
    return json.dumps(text) if "," in text or ":" in text else text

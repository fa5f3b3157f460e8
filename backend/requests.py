"""Turning a validated ``submit`` message into an ``EditRequest`` the engine can run.

Everything a client can get wrong is caught here, before the job is queued: images that do not
decode or are too large, a mask of the wrong size or with nothing in it, limits, strength x steps.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from backend.config import Limits
from backend.imaging import to_array
from shared.images import CHANNELS, ImageData
from shared.messages import MAX_SEED, PREPROCESSORS, ProtocolError


MIN_PREPROCESS_SIDE = 16
# What `preprocess: on` runs for each control type. lineart defaults to the weightless one so it works on
# every server; tile and inpaint take the picture itself, so they have none.
DEFAULT_PREPROCESSOR = {"canny": "canny", "lineart": "lineart_standard", "shuffle": "shuffle",
                        "softedge": "softedge_hed", "scribble": "scribble_hed", "depth": "depth_midas",
                        "normal": "normal_bae", "pose": "openpose", "lineart_anime": "lineart_anime",
                        "mlsd": "mlsd", "segmentation": "segment_anything"}


@dataclass
class ControlUnit:
    """One ControlNet unit, decoded: its image is None when it uses the job's picture."""

    type: str
    image: np.ndarray | None  # H x W x 4 RGBA, any size
    preprocessor: str | None  # None: the image already is a control map
    scale: float
    start: float
    end: float
    resolution: int | None = None


@dataclass
class Reference:
    """One IP-Adapter reference picture."""

    image: np.ndarray  # H x W x 4 RGBA
    weight: float
    mode: str


@dataclass
class EditRequest:
    """One job, decoded and checked: images are numpy arrays, the seed is resolved."""

    job: str
    mode: str
    model: str
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    strength: float
    batch: int
    sampler: str
    width: int | None = None
    height: int | None = None
    image: np.ndarray | None = None  # H x W x 4 RGBA uint8
    mask: np.ndarray | None = None  # H x W uint8, 255 = regenerate
    mask_grow: int = 8
    mask_feather: int = 16
    preview_every: int = 0
    preview_size: int = 256
    output_format: str = "png"
    inline: bool = False
    control: list[ControlUnit] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)

    @property
    def denoising_steps(self) -> int:
        """Steps that actually run: all of them when generating, steps x strength otherwise."""
        if self.mode == "preprocess":
            return 0
        return self.steps if self.mode == "generate" else int(self.steps * self.strength)

    def parameters(self) -> dict:
        """The request as run, for the ``result`` message."""
        if self.mode == "preprocess":
            unit = self.control[0]
            return {"mode": "preprocess", "preprocessor": unit.preprocessor, "resolution": unit.resolution}
        keys = ("mode", "model", "prompt", "negative_prompt", "seed", "steps", "guidance", "strength", "batch",
                "sampler", "width", "height", "mask_grow", "mask_feather")
        out = {key: getattr(self, key) for key in keys}
        if self.mode == "generate":
            del out["strength"]
        out["seeds"] = [self.seed + i for i in range(self.batch)]
        if self.references:
            out["references"] = [{"weight": r.weight, "mode": r.mode} for r in self.references]
        if self.control:
            out["control"] = [{"type": u.type, "preprocess": u.preprocessor or "off", "scale": u.scale,
                               "start": u.start, "end": u.end} for u in self.control]
        return {key: value for key, value in out.items() if value is not None}


def build_request(message: dict, uploads: dict[str, ImageData], limits: Limits, models: list[str],
                  default_model: str | None) -> EditRequest:
    """Check a validated ``submit`` message against the server's state; raise ProtocolError if unfit."""
    mode = message["mode"]
    # A submit consumes the frames it names, accepted or refused, so a retry must upload again.
    images = {role: _resolve(message[role], uploads, role) for role in ("image", "mask") if role in message}
    units = message.get("control", [])
    control_images = [_resolve(unit["image"], uploads, f"control[{i}].image") if "image" in unit else None
                      for i, unit in enumerate(units)]
    references = message.get("references", [])
    faces = {ref["mode"] == "face" for ref in references if ref["weight"] > 0}
    if len(faces) > 1:  # two adapters would need two image encoders and two projections in one pass
        raise ProtocolError("invalid_field", "a job's references are either all `face` or none `face`: the face "
                            "mode uses its own adapter", "references")
    reference_images = [_resolve(ref["image"], uploads, f"references[{i}].image") for i, ref in enumerate(references)]
    model = message.get("model") or default_model
    if model not in models:
        raise ProtocolError("unknown_model", f"no model named {model!r}; available: {', '.join(models) or 'none'}",
                            "model")
    if message["steps"] > limits.max_steps:
        raise ProtocolError("limit_exceeded", f"steps {message['steps']} is over this server's limit of "
                            f"{limits.max_steps}", "steps")
    if message["batch"] > limits.max_batch:
        raise ProtocolError("limit_exceeded", f"batch {message['batch']} is over this server's limit of "
                            f"{limits.max_batch}", "batch")

    wants = {"generate": (), "img2img": ("image",), "inpaint": ("image", "mask")}[mode]
    for role in ("image", "mask"):
        if role in wants and role not in message:
            raise ProtocolError("invalid_field", f"{mode} needs `{role}`", role)
        if role not in wants and role in message:
            hint = " (use inpaint to edit inside a mask)" if role == "mask" else " (use img2img)"
            raise ProtocolError("invalid_field", f"{mode} takes no `{role}`{hint}", role)
    for key in ("width", "height"):
        if mode != "generate" and key in message:
            raise ProtocolError("invalid_field", f"{mode} works at the picture's own size; `{key}` is for generate",
                                key)

    request = EditRequest(
        job=message["job"], mode=mode, model=model, prompt=message["prompt"],
        negative_prompt=message["negative_prompt"],
        seed=message["seed"] if message.get("seed") is not None else random.randint(0, MAX_SEED - limits.max_batch),
        steps=message["steps"], guidance=float(message["guidance"]), strength=float(message["strength"]),
        batch=message["batch"], sampler=message["sampler"], mask_grow=message["mask_grow"],
        mask_feather=message["mask_feather"], preview_every=message["preview_every"],
        preview_size=message["preview_size"], output_format=message["output_format"], inline=message["inline"],
    )
    if request.seed + request.batch - 1 > MAX_SEED:
        raise ProtocolError("invalid_field", f"seed + batch - 1 must stay within {MAX_SEED}", "seed")

    request.control = [_control_unit(unit, image, mode, limits, f"control[{i}]")
                       for i, (unit, image) in enumerate(zip(units, control_images))]
    request.references = [
        Reference(decode_image(image, limits, f"references[{i}].image", "RGBA"), float(ref["weight"]), ref["mode"])
        for i, (ref, image) in enumerate(zip(references, reference_images))]
    if mode == "generate":
        for key in ("width", "height"):
            value = message.get(key)
            if value is not None and value > limits.max_generate_side:
                raise ProtocolError("limit_exceeded", f"{key} {value} is over this server's limit of "
                                    f"{limits.max_generate_side}", key)
            setattr(request, key, value)
        return request

    if request.denoising_steps < 1:
        raise ProtocolError("too_few_steps", f"strength {request.strength} x {request.steps} steps leaves no "
                            "denoising step; raise the strength or the steps", "strength")
    request.image = decode_image(images["image"], limits, "image", "RGBA")
    if mode == "inpaint":
        mask = decode_image(images["mask"], limits, "mask", "L")
        if mask.shape != request.image.shape[:2]:
            raise ProtocolError("size_mismatch", f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                f"{request.image.shape[1]}x{request.image.shape[0]}", "mask")
        if not mask.any():
            raise ProtocolError("empty_mask", "the mask is empty: paint (white) where the picture should change",
                                "mask")
        request.mask = mask
    return request


def build_preprocess_request(message: dict, uploads: dict[str, ImageData], limits: Limits) -> EditRequest:
    """A ``preprocess`` message as a job: one control unit run on one picture, no diffusion."""
    name = message["preprocessor"]
    preprocessor = DEFAULT_PREPROCESSOR.get(name, name)
    if preprocessor not in PREPROCESSORS:
        raise ProtocolError("unknown_preprocessor", f"the {name} control type has no preprocessor: its control "
                            "image is the picture itself", "preprocessor")
    image = decode_image(_resolve(message["image"], uploads, "image"), limits, "image", "RGBA")
    if min(image.shape[:2]) < MIN_PREPROCESS_SIDE:
        raise ProtocolError("invalid_field", f"the picture is {image.shape[1]}x{image.shape[0]}; preprocessors need "
                            f"at least {MIN_PREPROCESS_SIDE} pixels a side", "image")
    unit = ControlUnit(name, None, preprocessor, 1.0, 0.0, 1.0, message.get("resolution"))
    return EditRequest(job=message["job"], mode="preprocess", model=preprocessor, prompt="", negative_prompt="",
                       seed=0, steps=0, guidance=0.0, strength=0.0, batch=1, sampler="euler", image=image,
                       output_format=message["output_format"], inline=message["inline"], control=[unit])


def _control_unit(unit: dict, image: ImageData | None, mode: str, limits: Limits, name: str) -> ControlUnit:
    if image is None and mode == "generate":
        raise ProtocolError("invalid_field", f"`{name}.image` is required when generating (there is no picture "
                            "to take it from)", f"{name}.image")
    if unit["start"] >= unit["end"]:
        raise ProtocolError("invalid_field", f"`{name}.start` ({unit['start']}) must be before `{name}.end` "
                            f"({unit['end']})", f"{name}.end")
    preprocessor = unit["preprocess"]
    if preprocessor == "on":
        preprocessor = DEFAULT_PREPROCESSOR.get(unit["type"])
        if preprocessor is None:
            raise ProtocolError("unknown_preprocessor", f"the {unit['type']} control type has no preprocessor: "
                                "its control image is the picture itself, so send it with preprocess off",
                                f"{name}.preprocess")
    return ControlUnit(unit["type"], decode_image(image, limits, f"{name}.image", "RGBA") if image else None,
                       None if preprocessor == "off" else preprocessor, float(unit["scale"]),
                       float(unit["start"]), float(unit["end"]), unit.get("resolution"))


def _resolve(ref: dict, uploads: dict[str, ImageData], role: str) -> ImageData:
    if "frame" in ref:
        if ref["frame"] not in uploads:
            raise ProtocolError("unknown_image", f"`{role}` names frame {ref['frame']!r}, which was not uploaded "
                                "on this connection (or was already used)", role)
        return uploads.pop(ref["frame"])
    if "data" in ref:
        try:
            return ImageData.from_base64(ref["data"], ref["format"])
        except ProtocolError as exc:
            exc.field = role
            raise
    raise ProtocolError("invalid_field", f"`{role}` needs `frame` or `data`", role)


def decode_image(image: ImageData, limits: Limits, role: str, mode: str) -> np.ndarray:
    """Decode to an RGBA (H x W x 4) or L (H x W) array, refusing oversize pictures before decoding."""
    try:
        if image.format in CHANNELS:
            _check_size(image.width, image.height, limits, role)
            image.check()
            shape = (image.height, image.width, CHANNELS[image.format])
            pixels = np.frombuffer(image.data, np.uint8).reshape(shape)
            pil = Image.fromarray(pixels[..., 0] if image.format == "l8" else pixels,
                                  "L" if image.format == "l8" else "RGBA")
        else:
            pil = Image.open(io.BytesIO(image.data))
            _check_size(pil.width, pil.height, limits, role)
            if image.width and (pil.width, pil.height) != (image.width, image.height):
                raise ProtocolError("bad_image", f"`{role}` is declared {image.width}x{image.height} but the file is "
                                    f"{pil.width}x{pil.height}", role)
            pil.load()
    except ProtocolError as exc:
        exc.field = role
        raise
    except Image.DecompressionBombError as exc:
        raise ProtocolError("limit_exceeded", f"`{role}` is too large to decode safely: {exc}", role) from None
    except UnidentifiedImageError:
        raise ProtocolError("bad_image", f"`{role}` is not a picture this server can read (corrupt, or not a "
                            f"{image.format.upper()} file)", role) from None
    except (OSError, ValueError) as exc:
        raise ProtocolError("bad_image", f"`{role}` could not be decoded: {exc}", role) from None
    return to_array(pil, mode)


def _check_size(width: int, height: int, limits: Limits, role: str) -> None:
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ProtocolError("limit_exceeded", f"`{role}` is {width}x{height}; this server accepts at most "
                            f"{limits.max_side} pixels a side and {limits.max_pixels} pixels in all", role)

"""What to send for a Generate press: mode, context crop and the submit's parameters.

Pure: it works on plain bytes and sizes that the Krita adapter read from the document.
The crop is planned with the same ``shared.geometry`` function the server uses, so the host
sends only the box the server would diffuse anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocol import geometry, images, rules

Box = geometry.Box

DEFAULT_NATIVE = 512  # SD1.5's; used when the server cannot tell a model's native size
MASK_GROW, MASK_FEATHER = 8, 16  # the protocol's submit defaults


class PlanError(ValueError):
    """A request that cannot be made; the message is a sentence for the painter."""


@dataclass
class Settings:
    """The docker's job settings."""

    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 1.0  # 1 = fill from noise; below = refine what is there
    steps: int = 20
    seed: int | None = None  # None: the server picks one
    batch: int = 1
    model: str | None = None
    mask_grow: int = MASK_GROW
    mask_feather: int = MASK_FEATHER
    preview_every: int = 1


@dataclass
class Region:
    """Which part of the canvas a job covers and how.

    ``box`` is the part of the canvas the job edits (the context crop for inpaint, the canvas
    otherwise); ``size`` the size the model works at; ``picture`` the size of the pictures sent
    (image and control maps). Inpaint sends the box as it is, so the result matches the canvas
    pixel for pixel; a whole canvas larger than the model's size is sent already scaled down to it
    (the server would scale it down anyway), and its result is scaled back up to the box.
    """

    mode: str
    box: Box
    size: tuple[int, int]
    picture: tuple[int, int] = (0, 0)

    def __post_init__(self):
        if self.picture == (0, 0):
            self.picture = (self.box.width, self.box.height)

    @property
    def resampled(self) -> bool:
        return self.picture != (self.box.width, self.box.height)


@dataclass
class ControlUnit:
    """A layer used as a ControlNet unit; ``image`` is its RGBA crop (the region's box)."""

    type: str
    image: bytes
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocess: bool = False


@dataclass
class Reference:
    """A layer used as an IP-Adapter reference: RGBA pixels of any size."""

    image: bytes
    width: int
    height: int
    weight: float = 1.0
    mode: str = "reference"


@dataclass
class Job:
    """A submit, ready for ``Client.submit(mode, **params)``."""

    region: Region
    params: dict = field(default_factory=dict)


def selection_mask(data: bytes, width: int, height: int) -> bytes:
    """A Krita selection's bytes (one per pixel, 0 = unselected, 255 = selected) as an 8-bit mask.

    They already follow the protocol's convention (255 = regenerate) and soft values stay soft;
    this checks the size so a short read never shifts the mask.
    """
    if len(data) != width * height:
        raise PlanError(f"the selection has {len(data)} bytes for a {width}x{height} area "
                        f"({width * height} expected)")
    return bytes(data)


def choose_mode(has_selection: bool, strength: float) -> str:
    """Selection -> inpaint; no selection -> img2img below 100%, generate at 100%."""
    if has_selection:
        return "inpaint"
    return "generate" if strength >= 1.0 else "img2img"


def plan_region(width: int, height: int, strength: float, native: int | None,
                selection: tuple[Box, bytes] | None = None, *,
                grow: int = MASK_GROW, feather: int = MASK_FEATHER) -> Region | None:
    """Plan a job on a ``width`` x ``height`` canvas.

    ``selection`` is the selection's bounding box and its mask bytes over that box (or None).
    An empty selection counts as none. Returns the region; the crop around a selection is the
    server's own ``context_crop`` with the margin the feathered mask reaches.
    """
    if width <= 0 or height <= 0:
        raise PlanError("the document is empty")
    native = native or DEFAULT_NATIVE
    bounds = None
    if selection is not None:
        sel_box, sel_bytes = selection
        inner = geometry.mask_bounds(selection_mask(sel_bytes, sel_box.width, sel_box.height),
                                     sel_box.width, sel_box.height)
        if inner is not None:
            bounds = Box(sel_box.x + inner.x, sel_box.y + inner.y, inner.width, inner.height)
            # Parts of a selection may lie outside the canvas; only the canvas can be edited.
            x0, y0 = max(0, bounds.x), max(0, bounds.y)
            x1, y1 = min(width, bounds.x1), min(height, bounds.y1)
            bounds = Box(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None
            if bounds is None:
                raise PlanError("the selection lies outside the canvas")
    mode = choose_mode(bounds is not None, strength)
    if mode == "inpaint":
        plan = geometry.context_crop(bounds, width, height, native,
                                     margin=rules.reach(grow, feather))
        return Region(mode, plan.box, (plan.diffusion_width, plan.diffusion_height))
    plan = geometry.whole_canvas(width, height, native)
    size = (plan.diffusion_width, plan.diffusion_height)
    if mode == "generate" or size[0] * size[1] < width * height:
        return Region(mode, plan.box, size, size)
    return Region(mode, plan.box, size)  # a small canvas: the server scales it up itself


def check_prompt(settings: Settings, references) -> None:
    """A job needs a prompt, or at least a reference to follow."""
    if not settings.prompt.strip() and not references:
        raise PlanError("Type a prompt first: it says what to paint.")


def build_job(region: Region, settings: Settings, image: bytes | None, mask: bytes | None = None,
              controls: list[ControlUnit] = (), references: list[Reference] = ()) -> Job:
    """The submit for ``region``: ``image``, ``mask`` and the control images are RGBA / 8-bit
    bytes of the region's ``picture`` size."""
    width, height = region.picture
    check_prompt(settings, references)
    if region.mode != "generate" and int(settings.steps * settings.strength) < 1:
        raise PlanError(f"{settings.steps} steps at {round(settings.strength * 100)}% strength leave no step "
                        "to run: raise the strength or the steps.")
    params: dict = {
        "prompt": settings.prompt, "negative_prompt": settings.negative_prompt,
        "steps": settings.steps, "batch": settings.batch, "seed": settings.seed,
        "output_format": "rgba8", "preview_every": settings.preview_every,
    }
    if settings.model:
        params["model"] = settings.model
    if region.mode == "generate":
        params["width"], params["height"] = region.size
    else:
        params["strength"] = settings.strength
        params["image"] = _raw(image, width, height, "rgba8", "picture")
    if region.mode == "inpaint":
        params["mask"] = _raw(mask, width, height, "l8", "mask")
        params["mask_grow"], params["mask_feather"] = settings.mask_grow, settings.mask_feather
    params["control"] = [{
        "type": unit.type, "image": _raw(unit.image, width, height, "rgba8", f"{unit.type} control layer"),
        "scale": unit.scale, "start": unit.start, "end": unit.end, "preprocess": "on" if unit.preprocess else "off",
    } for unit in controls]
    params["references"] = [{
        "image": _raw(ref.image, ref.width, ref.height, "rgba8", "reference layer"),
        "weight": ref.weight, "mode": ref.mode,
    } for ref in references]
    for unit in params["control"]:
        if unit["start"] >= unit["end"]:
            raise PlanError(f"The {unit['type']} control starts at {unit['start']:.0%} and ends at "
                            f"{unit['end']:.0%}: its start must come before its end.")
    return Job(region, params)


def _raw(data: bytes | None, width: int, height: int, fmt: str, what: str):
    if data is None:
        raise PlanError(f"the {what} is missing")
    image = images.ImageData(fmt, width, height, bytes(data))
    expected = width * height * images.CHANNELS[fmt]
    if len(image.data) != expected:
        raise PlanError(f"the {what} has {len(image.data)} bytes for {width}x{height} ({expected} expected)")
    return image


def native_size(models_reply: dict | None, model: str | None = None) -> int:
    """The native size of ``model`` (or the default one) from the server's ``models`` reply."""
    if not models_reply:
        return DEFAULT_NATIVE
    name = model or models_reply.get("default")
    for entry in models_reply.get("models", []):
        if entry.get("name") == name:
            return entry.get("native_size") or DEFAULT_NATIVE
    return DEFAULT_NATIVE

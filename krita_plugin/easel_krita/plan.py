"""What to send for a Generate press: mode, context crop and the job (a ``shared.job.Job``).

Pure: it works on plain bytes and sizes that the Krita adapter read from the document.
The crop is planned with the same ``shared.geometry`` function the server uses, so the host
sends only the box the server would diffuse anyway; the job is checked with the same rules
(``Job.check``) the server applies, so a job it would refuse is a sentence before anything is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from . import pixels
from .protocol import capabilities, errors, fields, geometry, images, model_capabilities, rules, vocabulary
from .protocol import job as jobs

Box = geometry.Box
Job, ControlUnit, Reference, Sampling = jobs.Job, jobs.ControlUnit, jobs.Reference, jobs.Sampling
ModelCapabilities = model_capabilities.ModelCapabilities

DEFAULT_NATIVE = 512  # SD1.5's; used when the server cannot tell a model's native size
DEFAULT_MAX_GENERATE_SIDE = capabilities.DEFAULT_MAX_GENERATE_SIDE  # the server's limit when it does not say


class PlanError(ValueError):
    """A request that cannot be made; the message is a sentence for the painter."""


@dataclass
class Settings:
    """The docker's job settings."""

    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 1.0  # 1 = fill from noise; below = refine what is there
    guidance: float | None = None  # None: what suits the model's family and the mode (default_guidance; the
    # server's choice while the family is not known)
    steps: int = 20
    seed: int | None = None  # None: the server picks one
    batch: int = 1
    model: str | None = None
    mask_grow: int = rules.MASK_GROW
    mask_feather: int = rules.MASK_FEATHER
    preview_every: int = 1
    fill: str | None = None  # pre-fill of the selection (vocabulary.FILL_MODES); None: the mode's default
    soft_inpaint: bool = True  # the selection acts per pixel in the diffusion; False: cut at 50%
    remove: bool = False  # take the selection out (fill it with its surroundings) instead of painting it
    expand: tuple[int, int, int, int] = (0, 0, 0, 0)  # grow the canvas: pixels added left, top, right, bottom
    scale: float = 0.0  # upscale: the factor (0: not an upscale)
    upscaler: str | None = None  # upscale: the server's super-resolution model (None: its default)
    refine: float = 0.0  # upscale: strength of the diffusion refine of the upscaled picture (0: none)
    instruct: bool = False  # edit by instruction (the prompt): the selection, else the whole picture
    image_guidance: float | None = rules.IMAGE_GUIDANCE  # instruct: how closely to keep to the picture (None: omit)


@dataclass
class Region:
    """Which part of the canvas a job covers and how.

    ``box`` is the part of the canvas the job edits (the context crop for inpaint, the canvas
    otherwise); ``size`` the size the model works at; ``picture`` the size of the pictures sent
    (image and control maps); ``masked``: a selection's mask goes with the job (inpaint, remove, and
    instruct inside a selection). Inpaint and img2img send the box as it is, so the result matches the
    canvas pixel for pixel (a refine of a canvas larger than the model's area is diffused by the server
    in tiles at native scale, ``size`` then being one tile); a generate of a canvas larger than the
    model's size is made at the model's size and scaled up to the box.
    """

    mode: str
    box: Box
    size: tuple[int, int]
    picture: tuple[int, int] = (0, 0)
    masked: bool = False

    def __post_init__(self):
        self.masked = self.masked or self.mode in MASKED
        if self.picture == (0, 0):
            self.picture = (self.box.width, self.box.height)

    @property
    def resampled(self) -> bool:
        return self.picture != (self.box.width, self.box.height)


def selection_mask(data: bytes, width: int, height: int) -> bytes:
    """A Krita selection's bytes (one per pixel, 0 = unselected, 255 = selected) as an 8-bit mask.

    They already follow the protocol's convention (255 = regenerate) and soft values stay soft;
    this checks the size so a short read never shifts the mask.
    """
    if len(data) != width * height:
        raise PlanError(f"the selection has {len(data)} bytes for a {width}x{height} area "
                        f"({width * height} expected)")
    return bytes(data)


MASKED = ("inpaint", "remove")


def choose_mode(has_selection: bool, strength: float, remove: bool = False, instruct: bool = False) -> str:
    """Selection -> inpaint (or remove); no selection -> img2img below 100%, generate at 100%. An
    instruct edit is instruct either way (inside the selection when there is one)."""
    if remove and not has_selection:
        raise PlanError("Select what to remove first: Remove fills the selection with its surroundings.")
    if instruct and not remove:
        return "instruct"
    if has_selection:
        return "remove" if remove else "inpaint"
    return "generate" if strength >= 1.0 else "img2img"


def plan_region(width: int, height: int, strength: float, native: int | None,
                selection: tuple[Box, bytes] | None = None, *,
                grow: int = rules.MASK_GROW, feather: int = rules.MASK_FEATHER, remove: bool = False,
                instruct: bool = False, max_generate_side: int = DEFAULT_MAX_GENERATE_SIDE) -> Region | None:
    """Plan a job on a ``width`` x ``height`` canvas.

    ``selection`` is the selection's bounding box and its mask bytes over that box (or None).
    An empty selection counts as none, and so does one that selects the whole canvas (Select All) except
    for a removal. Returns the region; the crop around a selection is the
    server's own ``context_crop`` with the margin the feathered mask reaches. ``max_generate_side``: the
    server's longest generated side (a generate of a long, thin canvas is made within it).
    """
    if width <= 0 or height <= 0:
        raise PlanError("The document is empty: it has no canvas to edit.")
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
                raise PlanError("The selection lies outside the canvas: select part of the picture first.")
            if not remove and selects_everything(sel_box, sel_bytes, width, height):
                # Select All is the whole picture, as with no selection: refined in tiles at full size (as
                # an inpaint it was one crop of the whole canvas, diffused at about the model's size and
                # stretched back: a 1400x1000 refine came back from 744x528).
                bounds = None
    mode = choose_mode(bounds is not None, strength, remove, instruct)
    if mode in MASKED or (mode == "instruct" and bounds is not None):  # the server's crop, sent as it is
        plan = geometry.context_crop(bounds, width, height, native,
                                     margin=rules.reach(grow, feather))
        return Region(mode, plan.box, (plan.diffusion_width, plan.diffusion_height), masked=True)
    plan = geometry.whole_canvas(width, height, native)
    size = (plan.diffusion_width, plan.diffusion_height)
    if mode == "instruct":  # the whole picture, in one pass near native size (the server scales it)
        return Region(mode, plan.box, size)
    if mode == "generate":
        if geometry.needs_tiles(width, height, native):  # made at the canvas's size: the server generates it
            size = (geometry.round_to_grid(width), geometry.round_to_grid(height))  # near native, then refines
        size = generate_size(*size, max_generate_side)  # it in tiles at full size, not stretched here
        return Region(mode, plan.box, size, size)
    if geometry.needs_tiles(width, height, native):  # refined at full resolution, in tiles
        return Region(mode, plan.box, (min(width, native), min(height, native)))
    return Region(mode, plan.box, size)  # a small canvas: the server scales it up itself


def check_picture_size(region: Region, max_side: int, max_pixels: int) -> None:
    """Refuse, before a pixel is read, a picture the server would refuse for its size (``max_side`` a side,
    ``max_pixels`` in all) after the whole canvas had been read and sent: a sentence that says what to do."""
    if region.mode in ("generate", "upscale"):  # no picture of this size is sent (plan_upscale checks its own)
        return
    width, height = region.size if region.mode == "expand" else region.picture
    if max(width, height) > max_side:
        limit = f"{max_side} pixels a side"
    elif width * height > max_pixels:
        limit = f"{max_pixels:,} pixels in all"
    else:
        return
    if region.mode == "expand":
        raise PlanError(f"Expanded, the canvas would be {width}x{height}: the server takes pictures up to {limit}. "
                        "Add fewer pixels.")
    if region.masked:
        raise PlanError(f"The selection, with its grown edge and the context around it, spans {width}x{height}: the "
                        f"server takes pictures up to {limit}. Select a smaller part and edit it piece by piece.")
    raise PlanError(f"The canvas is {width}x{height}: the server takes pictures up to {limit}, so it cannot edit the "
                    "whole of it. Select the part to change, or scale the image down (Image > Scale Image To New "
                    "Size…).")


def generate_size(width: int, height: int, limit: int, grid: int = geometry.LATENT_GRID) -> tuple[int, int]:
    """A generate's model size within the server's ``limit`` a side, aspect kept: a long, thin canvas (a
    200x4000 banner is 144x2808 at native area) is made smaller and scaled up to the canvas, as a small
    canvas's picture is, instead of being refused by the server for a size the painter never asked for."""
    side = max(width, height)
    if side <= limit:
        return width, height
    shrink = limit / side
    fit = max(grid, (limit // grid) * grid)
    return tuple(fit if value == side else max(grid, min(fit, geometry.round_to_grid(value * shrink, grid)))
                 for value in (width, height))


def selects_everything(box: Box, data: bytes, width: int, height: int) -> bool:
    """Whether a selection (its bounding ``box`` and bytes) selects every pixel of a ``width`` x ``height``
    canvas fully (Select All; parts outside the canvas do not count)."""
    if box.x > 0 or box.y > 0 or box.x1 < width or box.y1 < height:
        return False
    if (box.x, box.y, box.width, box.height) == (0, 0, width, height):
        return data.count(255) == len(data)
    left, top = -box.x, -box.y
    return all(data[(top + y) * box.width + left:(top + y) * box.width + left + width].count(255) == width
               for y in range(height))


def plan_expand(width: int, height: int, sides: tuple[int, int, int, int]) -> Region:
    """Grow a ``width`` x ``height`` canvas by ``sides`` (left, top, right, bottom): the whole canvas is
    sent, and the result is the new canvas (``size``), placed at its origin."""
    if width <= 0 or height <= 0:
        raise PlanError("The document is empty: it has no canvas to edit.")
    check_expand(sides)
    left, top, right, bottom = sides
    return Region("expand", Box(0, 0, width, height), (width + left + right, height + top + bottom))


def check_expand(sides: tuple[int, int, int, int]) -> None:
    """The pixels an Expand press adds (left, top, right, bottom), checked before anything else: all four at 0
    is not a job of another kind (it ran a generate of the whole canvas, named after the old prompt)."""
    if not any(sides):
        raise PlanError("Set how many pixels to add on at least one side first.")
    if min(sides) < 0 or max(sides) > rules.MAX_EXPAND:
        raise PlanError(f"Expand adds 0 to {rules.MAX_EXPAND} pixels a side.")


def plan_upscale(width: int, height: int, scale: float, max_side: int, max_pixels: int | None = None) -> Region:
    """Upscale a ``width`` x ``height`` canvas ``scale`` times: the whole canvas is sent, and the result
    (``size``) is the new canvas, placed at its origin. Over the server's ``max_side`` or ``max_pixels`` it is
    a sentence before anything is read (the server refused it only once the whole canvas had been sent)."""
    if width <= 0 or height <= 0:
        raise PlanError("The document is empty: it has no canvas to edit.")
    if not rules.UPSCALE_MIN <= scale <= rules.UPSCALE_MAX:
        raise PlanError(f"Upscale by {rules.UPSCALE_MIN:g} to {rules.UPSCALE_MAX:g} times.")
    size = rules.upscale_size(width, height, scale)

    if max(size) > max_side or (max_pixels is not None and size[0] * size[1] > max_pixels):
        limit = f"{max_side} pixels a side" if max(size) > max_side else f"{max_pixels:,} pixels in all"
        largest = rules.largest_scale(width, height, max_side, max_pixels)
        way = "The picture is already as large as the server allows: scale it down first." if largest is None \
            else f"Pick {largest:g}x or less."
        raise PlanError(f"{scale:g} times {width}x{height} is {size[0]}x{size[1]}: the server makes pictures up to "
                        f"{limit}. {way}")
    return Region("upscale", Box(0, 0, width, height), size)


def refine_refusal(steps: int, refine: float) -> str:
    # the number, as the strength's sentence gives it: "raise the steps" left the painter guessing (1% takes 100)
    return (f"{steps} steps at {round(refine * 100)}% refine leave no step to run: raise the refine, or use at "
            f"least {rules.schedule_steps(1, refine)} steps.")


def check_upscale_refine(settings: Settings) -> None:
    """An upscale's refine that would run no step, refused before the whole canvas is read (``Job.check``
    refuses it too, but only once the job has its picture)."""
    if settings.refine > 0 and rules.denoising_steps("upscale", settings.steps, settings.refine) < 1:
        raise PlanError(refine_refusal(settings.steps, settings.refine))


def check_steps(region: Region, settings: Settings) -> None:
    """Steps and strength that would run no denoising step, refused before a pixel is read, in the words
    ``build_job`` uses (it refused them only once the picture had been read, the buttons off meanwhile)."""
    if region.mode == "upscale":
        if region.size == (region.box.width, region.box.height) and not settings.refine:
            # (the server refuses it too, once the whole canvas has been sent)
            raise PlanError("An upscale to the document's own size without a refine changes nothing: pick a "
                            "larger factor, or a refine strength.")
        check_upscale_refine(settings)
        return
    job = outline(region, settings)
    if job.mode in rules.STARTS_FROM_NOISE or job.mode == "expand":  # (an expand runs at strength 1: build_job)
        return
    try:
        rules.check_denoising(job.mode, job.sampling.steps, job.sampling.strength)
    except errors.ProtocolError as exc:
        raise PlanError(refusal(exc, job)) from None


def check_prompt(settings: Settings, references) -> None:
    """A job needs a prompt, or at least a reference to follow (a removal, an expand or an upscale needs
    neither: they continue the picture); an instruct edit needs its instruction."""
    if settings.remove or any(settings.expand) or settings.scale:
        return
    if settings.instruct:
        if not settings.prompt.strip():
            raise PlanError("Type an instruction first: it says what to change (“make it winter”).")
        return
    if not settings.prompt.strip() and not references:
        raise PlanError("Type a prompt first: it says what to paint.")


def check_source_layer(role: str, name: str, where: str | None, size: tuple[int, int] | None,
                       canvas: tuple[int, int], kind: str = "paintlayer") -> None:
    """A control or reference layer the painter picked, before it is read. ``where``: None when it is in no
    open document any more (deleted, or its document closed), "" when it is in this document, else the
    name of the other open document that holds it (of ``size``). A reference may come from another
    document (a photo opened beside the painting); a control must line up with this ``canvas``. ``kind``:
    Krita's node type; a mask (``selectionmask`` ...) holds coverage, not a picture."""
    if kind.endswith("mask"):
        raise PlanError(f"“{name}” is a {kind[:-4]} mask, not a layer: pick a layer as the {role} (a mask holds "
                        "no picture).")
    if where is None:
        raise PlanError(f"The {role} layer “{name}” is gone (deleted, or its document closed): remove it from "
                        f"the {role} list, or pick a layer and add it again.")
    if role == "control" and where and size != canvas:
        raise PlanError(f"The control layer “{name}” is in another document (“{where}”, {size[0]}x{size[1]}) and "
                        f"cannot line up with this {canvas[0]}x{canvas[1]} canvas: use a layer of this document, "
                        "or of one the same size.")


LINE_TYPES = vocabulary.LINE_MAP_TYPES  # maps of white lines on black
PICTURE_TYPES = vocabulary.PICTURE_CONTROL_TYPES  # the picture itself is the control image


def control_picture(rgba: bytes, control_type: str, preprocess: bool) -> bytes:
    """A control layer's pixels (8-bit RGBA) as the opaque control image sent (the server applies the same rule
    to a transparent one, backend.imaging.opaque_control). The model uses RGB, and a layer's transparent
    pixels hold black (or an erased colour): a picture (one to preprocess, or a tile,
    shuffle or inpaint unit) is laid on white paper; a ready line map (canny, lineart, scribble ...) on a
    mostly transparent layer is strokes, so whatever is painted is a line (a sketch in dark lines on an
    empty layer; over black it showed nothing); any other ready map is laid on black, its "nothing here"."""
    if preprocess or control_type in PICTURE_TYPES:
        return pixels.flatten(rgba, 255)
    if control_type in LINE_TYPES and pixels.mostly_transparent(rgba):
        return pixels.strokes(rgba)
    return pixels.flatten(rgba, 0)


default_guidance = rules.default_guidance  # the painter's "auto": the server's own default for the model


def outline(region: Region, settings: Settings, family: str | None = None) -> Job:
    """The job's settings without its pixels (those are added by ``build_job``); enough to check it
    against a model's capabilities before anything is read from the document."""
    instruct = region.mode == "instruct"
    guidance = settings.guidance
    if guidance is None and family is not None:
        # (sent, not left out, for servers older than their own per-family default; a model not known yet
        # gets none, so the server picks its model's rather than SD's 7 for a Flux Fill)
        guidance = default_guidance(family, region.mode)
    job = Job(region.mode, model=settings.model or None, prompt=settings.prompt,
              negative_prompt=settings.negative_prompt, output_format="rgba8",
              preview_every=settings.preview_every,
              sampling=Sampling(steps=settings.steps, seed=settings.seed, batch=settings.batch, guidance=guidance,
                                strength=settings.strength if region.mode not in rules.STARTS_FROM_NOISE else 1.0))
    if instruct:
        job.image_guidance = settings.image_guidance
    if region.masked:
        job.mask_grow, job.mask_feather = settings.mask_grow, settings.mask_feather
    if region.mode in MASKED:
        job.fill, job.soft_inpaint = settings.fill, settings.soft_inpaint
    if region.mode == "upscale":  # whether the model runs at all: only to refine
        job.scale, job.upscaler = settings.scale, settings.upscaler or None
        job.refine = settings.refine or None
    return job


def build_job(region: Region, settings: Settings, image: bytes | None, mask: bytes | None = None,
              controls: Sequence[ControlUnit] = (), references: Sequence[Reference] = (),
              model: tuple[str, ModelCapabilities] | None = None) -> Job:
    """The job for ``region``, checked with the protocol's rules and, when ``model`` (its name and
    capabilities, from ``model_of``) is known, against what that model can do.

    ``image`` and ``mask`` are RGBA / 8-bit bytes of the region's ``picture`` size; each control
    unit's image is an rgba8 ``ImageData`` of that size too, each reference's one of any size.
    Raises ``PlanError`` (a sentence) for a job the server would refuse.
    """
    width, height = region.picture
    check_prompt(settings, references)
    job = outline(region, settings, model[1].family if model else None)
    if region.mode == "generate":
        job.width, job.height = region.size
    else:
        job.image = raw_image(image, width, height, "rgba8", "picture")
    if region.masked:
        job.mask = raw_image(mask, width, height, "l8", "mask")
    if region.mode == "expand":
        job.expand_left, job.expand_top, job.expand_right, job.expand_bottom = settings.expand
        job.fill = settings.fill
        job.sampling.strength = 1.0
    for unit in controls:
        what = f"{unit.type} control layer"
        if (unit.image.width, unit.image.height) != (width, height):
            raise PlanError(f"the {what} is {unit.image.width}x{unit.image.height}, not the picture's {width}x{height}")
        job.control.append(replace(unit, image=_checked(unit.image, what)))
    job.references = [replace(ref, image=_checked(ref.image, "reference layer")) for ref in references]
    check(job, model)
    return job


def check(job: Job, model: tuple[str, ModelCapabilities] | None = None) -> None:
    """``Job.check`` (the server's own rules) and, for a known ``model``, what it can do (the server's
    own ``model_capabilities.refusal``); a refusal as a sentence for the painter."""
    try:
        job.check()
    except errors.ProtocolError as exc:
        raise PlanError(refusal(exc, job)) from None
    if model is not None:
        exc = model_capabilities.refusal(job, *model)
        if exc is not None:
            raise PlanError(model_refusal(exc, job, model[0], model[1]))


def check_model(region: Region, settings: Settings, controls=(), references=(),
                model: tuple[str, ModelCapabilities] | None = None) -> None:
    """Refuse at once, before any pixels are read, what ``model`` cannot do: ``controls`` as (type,
    scale) and ``references`` as (mode, weight) pairs."""
    if model is None:
        return
    job = outline(region, settings, model[1].family)
    job.control = [ControlUnit(kind, None, scale=scale) for kind, scale in controls]
    job.references = [Reference(None, weight, mode) for mode, weight in references]
    exc = model_capabilities.refusal(job, *model)
    if exc is not None:
        raise PlanError(model_refusal(exc, job, model[0], model[1]))


ACTIONS = {"generate": "generate", "img2img": "refine a picture", "inpaint": "inpaint a selection",
           "remove": "remove", "expand": "expand", "upscale": "refine an upscale", "instruct": "edit by instruction"}


def model_refusal(error: errors.ProtocolError, job: Job, name: str, caps: ModelCapabilities) -> str:
    """What a model cannot do, in the docker's words: which model, which setting, and the way out."""
    unit = fields.item_field(error.field)
    where = " in an instruct edit" if job.mode == "instruct" else ""
    if error.code == "unsupported_mode":
        hint = " Pick a model with an instruct component (InstructPix2Pix or Flux Kontext)." \
            if job.mode == "instruct" else " Pick another model."
        return f"The model “{name}” cannot {ACTIONS.get(job.mode, job.mode)}: it serves {', '.join(caps.modes)}.{hint}"
    if unit and unit[0] == "control" and unit[1] < len(job.control):
        return (f"The model “{name}” cannot use a {job.control[unit[1]].type} control layer{where}: take it off the "
                "list (double-click it) or pick another model.")
    if error.field and error.field.startswith("references"):
        return (f"The model “{name}” cannot use reference layers{where}: take them off the list (double-click) "
                "or pick another model.")
    if error.field == "negative_prompt":
        return f"The model “{name}” takes no negative prompt ({caps.family} uses distilled guidance): clear it."
    if error.field == "image_guidance":
        return f"The model “{name}” has no image guidance for instruct edits: it follows the instruction alone."
    lora = next((lora for lora, weight, where in model_capabilities.asked_loras(job)
                 if weight != 0 and where == error.field), None)
    if lora is not None:
        return (f"The model “{name}” takes no LoRAs: take the <lora:{lora}> tag out of the prompt (or give it "
                "weight 0), or pick another model.")
    return error.sentence()


def refusal(error: errors.ProtocolError, job: Job) -> str:
    """A rule's refusal of ``job`` in the docker's words (its settings and layers, not wire fields)."""
    sampling = job.sampling
    if error.code == "too_few_steps" and error.field == "refine":
        return refine_refusal(sampling.steps, job.refine or 0)
    if error.code == "too_few_steps":
        shown = f"{sampling.steps} steps at {round(sampling.strength * 100)}% strength"
        strength = rules.pass_strength(job.mode, sampling.strength)
        need = rules.schedule_steps(1, strength) if strength > 0 else None  # the fewest steps that run one
        if job.mode == "remove":  # it refines the filled selection at a part of the strength: raising it may not do
            return (f"Remove refines the filled selection at {rules.REMOVE_STRENGTH:.0%} of the strength: {shown} "
                    f"leave no step to run. Use at least {need} steps." if need else
                    f"{shown} leave no step to run: raise the strength.")
        return f"{shown} leave no step to run: raise the strength, or use at least {need} steps." if need else \
            f"{shown} leave no step to run: raise the strength."
    unit = fields.item_field(error.field)
    if unit and unit[0] == "control" and unit[1] < len(job.control):
        control = job.control[unit[1]]
        if unit[2] in ("start", "end"):
            return (f"The {control.type} control starts at {control.start:.0%} and ends at {control.end:.0%}: "
                    "its start must come before its end.")
        if unit[2] == "preprocess":
            return (f"The {control.type} control type has no preprocessor: the layer itself is its control image, "
                    "so add it without Preprocess.")
    if error.field == "seed":
        return (f"The seed must be at most {vocabulary.MAX_SEED - sampling.batch + 1} for a batch of "
                f"{sampling.batch}.")
    if error.field == "references":
        return "References are either all “face” or none: the face mode uses an adapter of its own."
    return error.sentence()


def raw_image(data: bytes | None, width: int, height: int, fmt: str, what: str) -> images.ImageData:
    """``data`` as raw ``fmt`` pixels of ``width`` x ``height``; a sentence when it is missing or short."""
    if data is None:
        raise PlanError(f"the {what} is missing")
    return _checked(images.ImageData(fmt, width, height, bytes(data)), what)


def _checked(image: images.ImageData, what: str) -> images.ImageData:
    if image.format in images.CHANNELS:
        expected = image.width * image.height * images.CHANNELS[image.format]
        if len(image.data) != expected:
            raise PlanError(f"the {what} has {len(image.data)} bytes for {image.width}x{image.height} "
                            f"({expected} expected)")
    return image


STRIP_BYTES = 8 << 20  # a strip of pixels Krita reads or writes in ~30 ms on the UI thread (6000 px wide, 8-bit)


def strips(box: Box, bytes_per_pixel: int, budget: int = STRIP_BYTES) -> list[Box]:
    """``box`` cut into full-width bands of at most ``budget`` bytes (at least one row each), top to
    bottom: large reads and writes go one band per event-loop turn, so Krita's UI never waits long."""
    rows = max(1, budget // max(1, box.width * bytes_per_pixel))
    return [Box(box.x, y, box.width, min(rows, box.y1 - y)) for y in range(box.y, box.y1, rows)]


WRITE_STRIP_BYTES = STRIP_BYTES // 2  # writing a pixel costs Krita about twice reading one
# A profile Krita converts (host.Converter) costs the UI thread about 55 ms a megapixel more, read or written
# (6000-px strips, measured): strips of half a megapixel keep a turn near its budget.
MANAGED_STRIP_PIXELS = 300_000
# Krita 5 recomposites the whole canvas inside every scripting call that changes the layer stack and
# the UI thread waits for it: 0.07-0.26 s for a 6000x4000 two-layer canvas here, so about a sixth of
# that at this size, below which two such calls in one event-loop turn stay near a turn's budget.
ALONE_PIXELS = 4_000_000


@dataclass(frozen=True)
class InsertStep:
    """One piece of putting a result in as a layer: ``fill`` writes ``box`` of the layer while it is
    still outside the document, ``add`` puts the filled layer into the document (inside a new Easel group
    when there is none: still one undo step). ``alone``: the piece gets an event-loop turn to itself."""

    kind: str
    box: Box | None = None
    alone: bool = False


def insert_steps(box: Box, bytes_per_pixel: int, canvas_pixels: int,
                 strip_bytes: int = WRITE_STRIP_BYTES) -> list[InsertStep]:
    """How a result covering ``box`` goes into a document of ``canvas_pixels``: the layer is filled in
    strips before it joins the document, so a document closed halfway never holds a half-written layer
    and the painter's Undo takes the whole result away at once; then the one call that changes the layer
    stack, which makes Krita recomposite the whole canvas, gets a turn to itself on a large canvas."""
    steps = [InsertStep("fill", strip) for strip in strips(box, bytes_per_pixel, strip_bytes)]
    steps.append(InsertStep("add", alone=canvas_pixels >= ALONE_PIXELS))
    return steps


def model_of(models_reply: dict | None, model: str | None = None) -> tuple[str, ModelCapabilities] | None:
    """``model`` (or the server's default) and its capabilities from the server's ``models`` reply; None
    when the reply does not list it or says nothing of what it can do (the server then decides)."""
    name = model or (models_reply or {}).get("default")
    for entry in (models_reply or {}).get("models", []):
        if entry.get("name") == name and isinstance(entry.get("capabilities"), dict):
            return name, ModelCapabilities.from_wire(entry.get("family"), entry["capabilities"])
    return None


def native_size(models_reply: dict | None, model: str | None = None) -> int:
    """The native size of ``model`` (or the default one) from the server's ``models`` reply."""
    if not models_reply:
        return DEFAULT_NATIVE
    name = model or models_reply.get("default")
    for entry in models_reply.get("models", []):
        if entry.get("name") == name:
            return entry.get("native_size") or DEFAULT_NATIVE
    return DEFAULT_NATIVE


def cancelled_sentence(reason: str | None) -> str:
    """What the docker says of a cancelled job: why, when the server cancelled it itself (``cancelled.reason``;
    the painter pressed no Cancel, and a bare "Cancelled" read as if they had)."""
    why = errors.cancel_reason(reason)
    return f"Cancelled by the server: {why}; nothing was added." if why else "Cancelled; nothing was added."

"""Tab values -> an Easel job (``shared.job.Job``), what the server offers -> the tab's choices, and
results -> what the tab shows. No gradio here.

Everything a painter can get wrong is caught here with an ``InputError`` whose message is one
sentence the tab shows as it is: what only the tab knows (which picture a unit uses) is checked
here, the rest by ``Job.check``, the rules the server applies.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from .protocol import (
    MAX_SEED,
    MODES,
    SAMPLER_LABELS,
    ControlUnit,
    ImageData,
    Job,
    ProtocolError,
    Reference,
    Sampling,
    eight_bit_grey,
    geometry,
    item_field,
    model_capabilities,
    model_list,
    rules,
)

USE_INPUT = "input picture"
OWN_IMAGE = "own image"

# "Masked content", in the WebUI's words where it has them, -> Easel's pre-fill (None: the mode's default).
MASKED_CONTENT = {"mode's default": None, "original": "none", "fill": "blur", "latent nothing": "neutral",
                  "border": "border", "inpaint (Telea / LaMa)": "inpaint"}
MASKED_MODES = ("inpaint", "remove")
# The Mode radio's choices in the tab's order; instruct edits inside the painted mask when there is one.
TAB_MODES = ("inpaint", "img2img", "generate", "expand", "remove", "upscale", "instruct")

# SAMPLER_LABELS, A1111's names for Easel's samplers: the tab lists these, and infotext pastes both ways.
SAMPLER_NAMES = {label: name for name, label in SAMPLER_LABELS.items()}
DEFAULT_SAMPLER = SAMPLER_LABELS["dpmpp_2m_karras"]


# The protocol's job fields by the names the tab shows them under, for the backend's refusals.
FIELD_LABELS = {"scale": "Upscale by", "refine": "Strength", "strength": "Strength", "steps": "Steps",
                "guidance": "CFG scale", "sampler": "Sampling method", "seed": "Seed", "batch": "Batch",
                "width": "Width", "height": "Height", "image": "Picture", "mask": "the painted mask",
                "prompt": "Prompt", "negative_prompt": "Negative prompt", "image_guidance": "Image guidance",
                "upscaler": "Upscaler", "model": "Model", "fill": "Masked content", "mask_grow": "Mask grow",
                "mask_feather": "Mask feather", "mask_padding": "Only masked padding",
                "soft_inpaint": "Soft inpainting", "expand": "Expand (outpaint)", "expand_left": "Expand left",
                "expand_top": "Expand top", "expand_right": "Expand right", "expand_bottom": "Expand bottom",
                "control": "ControlNet units", "references": "References"}


def field_label(field: str) -> str:
    """Where in the tab a refused job field is: its label, or the protocol's name for one it has none for."""
    item = item_field(field)
    if item is not None:
        return "a ControlNet unit" if item[0] == "control" else "a reference" if item[0] == "references" else field
    return FIELD_LABELS.get(field, field)


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
    guidance: float = 0.0            # the CFG scale; 0 = auto: the model's own (left out of the job)
    sampler: str = DEFAULT_SAMPLER   # an A1111 sampler name (Easel's own names work too)
    seed: int = -1                   # -1: the server picks one
    batch: int = 1
    mask_grow: int = rules.MASK_GROW
    mask_feather: int = rules.MASK_FEATHER
    width: int = 512                 # generate only
    height: int = 512
    controls: list[ControlSpec] = field(default_factory=list)
    references: list[ReferenceSpec] = field(default_factory=list)
    masked_content: str = "mode's default"  # a MASKED_CONTENT label
    soft_inpaint: bool = True
    invert_mask: bool = False
    expand_left: int = 0                # expand only: pixels added on each side
    expand_top: int = 0
    expand_right: int = 0
    expand_bottom: int = 0
    mask_padding: int = 32              # "only masked padding": context kept around the mask
    scale: float = 2.0               # upscale only; Strength below 1 then refines the upscaled picture
    upscaler: str = ""               # upscale only; "" = the server's default
    model: str = ""                  # "" = the server's default
    image_guidance: float = rules.IMAGE_GUIDANCE  # instruct only: how closely the edit keeps to the picture
    # The picked model as the backend listed it (for the server's default too); None: not known, the
    # backend then refuses what the model cannot do
    chosen: model_list.ModelChoice | None = None


@dataclass(frozen=True)
class ModelOffer:
    """What the tab shows for the picked model: the modes, ControlNet types and reference modes it can
    use, and whether the negative prompt and the image guidance apply."""

    modes: tuple[str, ...] = TAB_MODES
    control_types: tuple[str, ...] = ()
    reference_modes: tuple[str, ...] = ()
    negative_prompt: bool = True
    image_guidance: bool = True
    loras: tuple[str, ...] = ()  # the server's LoRAs made for the model's family (or for any)


def model_offer(chosen: model_list.ModelChoice | None, offered) -> ModelOffer:
    """What ``chosen`` can do on a server offering ``offered`` (``capabilities.Offer``); the server's whole
    offer for a model it does not describe."""
    caps = chosen.capabilities if chosen is not None else None
    references = offered.reference_modes if offered.references else ()
    loras = offered.loras_for(chosen.family if chosen is not None else None)
    if caps is not None and not caps.loras:
        loras = ()
    if caps is None:
        return ModelOffer(TAB_MODES, offered.control_types, references, loras=loras)
    steered = set(caps.modes) != {"instruct"}  # instruct takes no ControlNets or references
    # (a plain upscale runs no model, so every model can do it)
    return ModelOffer(tuple(mode for mode in TAB_MODES if mode in caps.modes or mode == "upscale"),
                      tuple(kind for kind in offered.control_types if kind in caps.control_types and steered),
                      tuple(mode for mode in references if mode in caps.reference_modes and steered),
                      caps.negative_prompt, caps.image_guidance, loras)


def guidance_note(chosen: model_list.ModelChoice | None, mode: str) -> str:
    """What the CFG slider's auto (0) means for the picked model and mode: the backend's default for its
    family (``rules.default_guidance``), or that the backend picks one for a model it has not described."""
    family = chosen.family if chosen is not None else None
    if family is None:
        return "0 = auto: the model's own (the backend picks it)"
    # (an upscale at Strength 1 runs no model: the CFG scale is its refine's)
    what = "an upscale's refine (Strength below 1)" if mode == "upscale" else mode
    return f"0 = auto: {rules.default_guidance(family, mode):g}, this model's own for {what}"


IMG2IMG_INPAINT_TABS = (2, 3, 4)  # img2img's Inpaint, Inpaint sketch, Inpaint upload, in the WebUI's order
WEBUI_DENOISING = 0.75  # the WebUI's img2img Denoising strength, unless set


def sent_mode(source: str, img2img_tab: int | None, mode: str, strength: float) -> tuple[str, float]:
    """(Mode, Strength) for a picture "Send to Easel" brings from the WebUI's ``source`` tab (``img2img_tab``:
    the img2img mode tab it was made in): inpaint from img2img's inpaint tabs, img2img from its others (at the
    WebUI's 0.75 when Strength is 1, which would paint a new picture over it); from txt2img the painter's
    mode as ``picture_mode`` says."""
    if source == "img2img" and img2img_tab is not None:
        if img2img_tab in IMG2IMG_INPAINT_TABS:
            return "inpaint", strength
        return "img2img", WEBUI_DENOISING if strength >= 1 else strength
    return picture_mode(mode), strength


def picture_mode(mode: str) -> str:
    """The Mode for a picture sent to the tab from elsewhere: the painter's, but for generate, which would
    ignore the picture: inpaint, the tab's own edit."""
    return "inpaint" if mode == "generate" else mode


def pnginfo_mode(text: str | None, mode: str) -> str | None:
    """The Mode for a picture PNG Info sends with its infotext ``text``: None for an Easel result, whose
    infotext's mode the paste sets; for another picture ``picture_mode``."""
    return None if infotext_value(text, "Easel mode") in TAB_MODES else picture_mode(mode)


def with_lora(prompt: str, name: str, weight: float = 1.0) -> str:
    """``prompt`` with a ``<lora:name:weight>`` tag at its end, as the WebUI's LoRA cards add one; unchanged
    when it already tags that LoRA (the server refuses a LoRA tagged twice; its weight is the painter's to edit)."""
    if re.search(rf"<lora:{re.escape(name)}(?::[^<>]*)?>", prompt, re.IGNORECASE):
        return prompt
    return f"{prompt.rstrip()} <lora:{name}:{weight:g}>".lstrip()


def within_offer(values: TabValues, can: ModelOffer) -> TabValues:
    """``values`` without the ControlNet units, references and negative prompt of a model that takes none:
    their fields are hidden or greyed out then, and what such a field holds (a saved default, a picture
    from before the model changed) must not reach the job."""
    controls = values.controls if can.control_types else [ControlSpec() for _ in values.controls]
    references = values.references if can.reference_modes else [ReferenceSpec() for _ in values.references]
    negative = values.negative_prompt if can.negative_prompt else ""
    return replace(values, controls=controls, references=references, negative_prompt=negative)


def saving_fields(values: TabValues, seeds: list[int], index: int, guidance: float | None = None,
                  sampler: str | None = None) -> dict:
    """What the WebUI's file name patterns read of a job ([seed], [steps], [cfg], [sampler], [denoising],
    [batch_number], [seed_first] ... read its ``p``), for result ``index`` of a job whose pictures have
    ``seeds`` and were made at CFG ``guidance`` (the result's: on auto the tab does not know it) with
    ``sampler`` (the result's, by the WebUI's name: Flux runs Euler whatever is picked); without
    them a pattern's parameters stay in the file name as written ("[steps]")."""
    refines = values.mode not in rules.STARTS_FROM_NOISE and not (values.mode == "upscale" and values.strength >= 1)
    return {"seed": seeds[index], "all_seeds": list(seeds), "prompt": values.prompt,
            "negative_prompt": values.negative_prompt, "steps": int(values.steps),
            "cfg_scale": float(guidance if guidance is not None else values.guidance),
            "sampler_name": sampler or values.sampler,
            "denoising_strength": float(values.strength) if refines else None,
            "styles": [], "batch_size": len(seeds), "batch_index": index, "n_iter": 1, "iteration": 0,
            "user": None}


def easel_sampler(label: str) -> str:
    """Easel's sampler for an A1111 sampler name (Easel's own names pass through); ``InputError`` for
    one Easel does not have."""
    if label in SAMPLER_NAMES:
        return SAMPLER_NAMES[label]
    if label in SAMPLER_LABELS:
        return label
    raise InputError(f"Easel has no {label!r} sampler: choose one of {', '.join(SAMPLER_NAMES)}.")


def sampler_from_infotext(params: dict) -> str | None:
    """The tab's sampler for a pasted infotext's ``Sampler`` (and, WebUI 1.9 and later, ``Schedule type``),
    or None when Easel has no such sampler (the field then keeps its value)."""
    label = str(params.get("Sampler") or "").strip()
    schedule = str(params.get("Schedule type") or "").strip()
    if schedule == "Karras" and not label.endswith(" Karras"):
        label = f"{label} Karras"
    return label if label in SAMPLER_NAMES else None


def seed_from_infotext(text: str | None) -> int | None:
    """The seed an infotext names (its last line: a prompt may say "Seed: 3" too), or None when it names none
    (no result yet)."""
    found = infotext_value(text, "Seed")
    return int(found) if found and found.isdigit() else None


def infotext_value(text: str | None, key: str) -> str | None:
    """What an infotext's parameters line (its last: a prompt may say "Seed: 3" too) gives ``key``, as written
    there; None when it names none."""
    lines = (text or "").strip().split("\n")
    found = re.search(rf"(?:^|, ){re.escape(key)}: ([^,]*)(?:,|$)", lines[-1])
    return found[1] if found else None


def png_image(picture: Image.Image, mode: str = "RGBA") -> ImageData:
    """A PIL picture as PNG ImageData (PNG keeps the pixels exact); a grey one deeper than 8 bits (a depth
    map, a scan) scaled to 8 bits first, as Pillow's own conversion clips it."""
    buffer = io.BytesIO()
    eight_bit_grey(picture).convert(mode).save(buffer, format="PNG", compress_level=1)
    return ImageData.from_png(buffer.getvalue())


def control_png(picture: Image.Image) -> ImageData:
    """A unit's or reference's picture as PNG: RGBA where it has transparency, which the server reads by the
    control's rule (a sketch of dark lines on a clear layer is its strokes; as RGB it was the black stored
    under the transparency), else RGB."""
    clear = "A" in picture.getbands() and picture.getchannel("A").getextrema()[0] < 255
    return png_image(picture, "RGBA" if clear else "RGB")


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


def mask_to_send(result: Image.Image | None, values: TabValues) -> Image.Image | None:
    """The mask painted for ``result`` (white = repaint, as the WebUI's inpaint upload reads it), or
    None when nothing was painted or the result is not the painted picture's size (generate, expand,
    upscale)."""
    if result is None or values.picture is None or result.size != values.picture.size:
        return None
    mask = mask_from_painting(values.mask, values.picture.size)
    if values.invert_mask:
        mask = Image.fromarray(255 - np.asarray(mask if mask is not None else Image.new("L", result.size, 0)), "L")
    return mask if mask is not None and np.asarray(mask).any() else None


def painted_mask(values: TabValues) -> Image.Image | None:
    """The mask to send: the painting (inverted when asked), None when it leaves nothing to change."""
    mask = mask_from_painting(values.mask, values.picture.size)
    if values.invert_mask:
        inverted = Image.fromarray(255 - np.asarray(mask if mask is not None else
                                                    Image.new("L", values.picture.size, 0)), "L")
        mask = inverted if np.asarray(inverted).any() else None
    return mask


def unused_mask_note(values: TabValues) -> str:
    """A sentence for the status line when a mask is painted in a mode that edits the whole picture: the
    job ran without it, which a painter who painted one would not guess ("" otherwise)."""
    whole = {"img2img": "img2img changes the whole picture", "upscale": "upscale enlarges the whole picture"}
    if values.mode not in whole or values.picture is None or values.mask is None \
            or mask_from_painting(values.mask, values.picture.size) is None:
        return ""
    return f"The painted mask was not used: {whole[values.mode]} (inpaint changes only the painted part)."


def build_job(values: TabValues) -> Job:
    """The job the Generate button submits, images as PNG ``ImageData``; ``InputError`` when the tab's
    values make no job, or one the server (or the picked model) would refuse."""
    mode = values.mode
    if mode not in MODES:
        raise InputError(f"Unknown mode {mode!r}: choose {', '.join(TAB_MODES[:-1])} or {TAB_MODES[-1]}.")
    if mode == "upscale":
        return _checked(_upscale_job(values), values, [], [])
    referenced = any(reference.image is not None for reference in values.references)
    if mode == "instruct" and not values.prompt.strip():
        raise InputError("Write the instruction in the prompt (e.g. “make it winter”).")
    if mode not in ("remove", "expand") and not values.prompt.strip() and not referenced:
        raise InputError("Describe what to paint in the prompt.")
    seed = int(values.seed) if values.seed is not None else -1
    job = Job(mode, prompt=values.prompt, negative_prompt=values.negative_prompt, sampling=Sampling(
        steps=int(values.steps), guidance=cfg(values), sampler=easel_sampler(values.sampler),
        batch=int(values.batch), seed=seed if seed >= 0 else None,
        strength=float(values.strength) if mode not in rules.STARTS_FROM_NOISE else 1.0), model=values.model or None)
    if mode == "generate":
        job.width, job.height = int(values.width), int(values.height)
        native = values.chosen.native_size if values.chosen is not None else None
        if values.strength < 1 and native and geometry.needs_tiles(job.width, job.height, native):
            # Above the model's native size the picture is made small, enlarged and refined: Strength is that
            # refine's, as the WebUI's Denoising strength is its hires fix's (at the native size there is none)
            job.refine = float(values.strength)
    elif values.picture is None:
        raise InputError(f"{mode.capitalize()} needs a picture: upload one first.")
    else:
        job.image = png_image(values.picture)
    mask = painted_mask(values) if mode in MASKED_MODES + ("instruct",) else None
    if mode in MASKED_MODES and mask is None:
        what = "keep" if values.invert_mask else "change"
        raise InputError(f"Paint over the part of the picture to {what} first ({mode} needs a mask).")
    if mask is not None:  # instruct without one edits the whole picture
        job.mask = png_image(mask, "L")
        job.mask_grow, job.mask_feather = int(values.mask_grow), int(values.mask_feather)
        job.soft_inpaint = bool(values.soft_inpaint)
        job.mask_padding = int(values.mask_padding)
    if mode == "instruct" and (values.chosen is None or values.chosen.capabilities is None
                               or values.chosen.capabilities.image_guidance):
        # (Flux Kontext has no image guidance: the tab leaves it out rather than refuse the job)
        job.image_guidance = float(values.image_guidance)
    if mode in MASKED_MODES or mode == "expand":
        if values.masked_content not in MASKED_CONTENT:
            raise InputError(f"Unknown masked content {values.masked_content!r}: choose one of "
                             f"{', '.join(MASKED_CONTENT)}.")
        job.fill = MASKED_CONTENT[values.masked_content]
    if mode == "expand":
        job.expand_left, job.expand_top = int(values.expand_left), int(values.expand_top)
        job.expand_right, job.expand_bottom = int(values.expand_right), int(values.expand_bottom)
        if not any(job.expand):
            raise InputError("Expand needs pixels to add: set Expand left, top, right or bottom above 0.")
    numbers = [number for number, spec in enumerate(values.controls, 1) if spec.enabled]
    job.control = [control_unit(number, values.controls[number - 1], values) for number in numbers]
    ref_numbers = [number for number, spec in enumerate(values.references, 1) if spec.image is not None]
    job.references = [reference(values.references[number - 1]) for number in ref_numbers]
    try:
        job.check()
    except ProtocolError as exc:
        raise InputError(refusal(exc, job, numbers)) from None
    return _checked(job, values, numbers, ref_numbers)


def _checked(job: Job, values: TabValues, numbers: list[int], ref_numbers: list[int]) -> Job:
    """``job`` when the picked model can run it (as the server checks before `accepted`), else
    ``InputError`` saying what to change; ``numbers`` / ``ref_numbers``: the tab's numbers of the job's
    control units and references."""
    if job.mode == "instruct":  # no model takes ControlNets or references in instruct (protocol §5.1)
        unit = next((n for n, u in zip(numbers, job.control) if u.scale > 0), None)
        if unit is not None:
            raise InputError(f"Control unit {unit}: instruct edits take no ControlNet units; turn the unit off.")
        ref = next((n for n, r in zip(ref_numbers, job.references) if r.weight > 0), None)
        if ref is not None:
            raise InputError(f"Reference {ref}: instruct edits take no reference pictures; remove the picture.")
    chosen = values.chosen
    if chosen is None or chosen.capabilities is None:
        return job
    error = model_capabilities.refusal(job, chosen.name, chosen.capabilities)
    if error is not None:
        raise InputError(model_refusal(error, job, chosen, numbers, ref_numbers))
    return job


def model_refusal(error: ProtocolError, job: Job, chosen: model_list.ModelChoice, numbers: list[int],
                  ref_numbers: list[int]) -> str:
    """What the picked model cannot do, in the tab's words, with what to change."""
    caps, name = chosen.capabilities, chosen.name
    unit = item_field(error.field)
    if error.field == "mode":
        modes = [mode for mode in TAB_MODES if mode in caps.modes]
        return (f"The model {name} cannot {job.mode}: it does {', '.join(modes) or 'nothing here'}. "
                "Pick another mode or model.")
    if unit and unit[0] == "control" and unit[1] < len(numbers):
        kind = job.control[unit[1]].type
        if error.code == "unknown_control_model":
            return (f"Control unit {numbers[unit[1]]}: the backend has no {kind} ControlNet for "
                    f"{family_name(chosen)} models like {name}; choose another type or turn the unit off.")
        return (f"Control unit {numbers[unit[1]]}: the model {name} takes no ControlNet units; turn the unit "
                "off or pick another model.")
    if (error.field or "").startswith("references"):
        index = unit[1] if unit else next(i for i, r in enumerate(job.references)
                                          if r.weight > 0 and r.mode not in caps.reference_modes)
        number = ref_numbers[index] if index < len(ref_numbers) else index + 1
        if error.code == "unknown_adapter" and caps.reference_modes:
            return (f"Reference {number}: the model {name} takes references as "
                    f"{', '.join(caps.reference_modes)}, not {job.references[index].mode}.")
        return (f"Reference {number}: the model {name} takes no reference pictures; remove the picture or "
                "pick another model.")
    if error.field == "negative_prompt":
        return (f"The model {name} takes no negative prompt ({family_name(chosen)} uses distilled guidance): "
                "clear the Negative prompt or pick another model.")
    lora = next((lora for lora, weight, where in model_capabilities.asked_loras(job)
                 if weight != 0 and where == error.field), None)
    if lora is not None:
        return (f"The model {name} takes no LoRAs: take <lora:{lora}> out of the Prompt (or give it weight 0), "
                "or pick another model.")
    return error.sentence()


def family_name(chosen: model_list.ModelChoice) -> str:
    return model_list.FAMILY_NAMES.get(chosen.family, chosen.family or "its")


def cfg(values: TabValues) -> float | None:
    """The job's guidance: None on auto (0), so the backend uses the model's own for the mode; one fixed
    number ran a Flux Fill inpaint at 7, a quarter of its 30. (A CFG of 0 would run no guidance at all, as
    1 does: nothing is lost.)"""
    return float(values.guidance) or None


def _upscale_job(values: TabValues) -> Job:
    """An upscale: the picture by ``scale`` through the chosen upscaler; a Strength below 1 refines the
    upscaled picture with the prompt (in tiles at the model's scale), 1 leaves it as the upscaler made it."""
    if values.picture is None:
        raise InputError("Upscale needs a picture: upload one first.")
    refine = float(values.strength) if 0 < float(values.strength) < 1 else None
    if refine and not values.prompt.strip():
        raise InputError("Describe the picture in the prompt (the refine paints with it), or set Strength to 1 "
                         "for the upscaler alone.")
    seed = int(values.seed) if values.seed is not None else -1
    job = Job("upscale", prompt=values.prompt, negative_prompt=values.negative_prompt, sampling=Sampling(
        steps=int(values.steps), guidance=cfg(values), sampler=easel_sampler(values.sampler),
        batch=int(values.batch) if refine else 1, seed=seed if seed >= 0 else None),
        image=png_image(values.picture), scale=float(values.scale), upscaler=values.upscaler or None, refine=refine,
        model=values.model or None)
    try:
        job.check()
    except ProtocolError as exc:
        raise InputError(exc.message) from None
    return job


def refusal(error: ProtocolError, job: Job, numbers: list[int]) -> str:
    """A rule's refusal in the tab's words; ``numbers`` are the tab's numbers of the job's control units."""
    sampling = job.sampling
    if error.code == "too_few_steps" and job.mode == "generate":
        return (f"Strength {job.refine:g} with {sampling.steps} steps leaves no step for the refine of a picture "
                "this large (above the model's native size): raise the strength or the steps.")
    if error.code == "too_few_steps":
        removes = f" (remove refines at {rules.REMOVE_STRENGTH:g} × the strength)" if job.mode == "remove" else ""
        way_out = "raise the steps" if error.field == "steps" else "raise the strength or the steps"  # (at 1)
        return (f"Strength {sampling.strength:g} with {sampling.steps} steps leaves no step to run{removes}: "
                f"{way_out}.")
    if error.field == "seed":
        return (f"The seed must be at most {MAX_SEED - sampling.batch + 1} for a batch of {sampling.batch} "
                "(or -1 for a random one).")
    unit = item_field(error.field)
    if unit and unit[0] == "control" and unit[1] < len(numbers):
        number, control = numbers[unit[1]], job.control[unit[1]]
        if unit[2] in ("start", "end"):
            return f"Control unit {number}: its start ({control.start:g}) must come before its end ({control.end:g})."
        if unit[2] == "image":
            return (f"Control unit {number} uses the input picture, but generate has none: "
                    "give the unit its own image.")
        if unit[2] == "preprocess":
            return (f"Control unit {number}: the {control.type} type has no preprocessor, its image is the map "
                    "itself; untick Preprocess.")
    if error.field == "references":
        return "References are either all “face” or none: the face mode uses an adapter of its own."
    return error.sentence()


def control_unit(number: int, spec: ControlSpec, values: TabValues) -> ControlUnit:
    """One control unit; the job's own picture is used by leaving ``image`` out."""
    unit = ControlUnit(spec.type, None, "on" if spec.preprocess else "off", float(spec.scale), float(spec.start),
                       float(spec.end))
    if spec.source == USE_INPUT:
        if values.mode == "generate":
            raise InputError(f"Control unit {number} uses the input picture, but generate has none: "
                             "give the unit its own image.")
    elif spec.image is None:
        raise InputError(f"Control unit {number} is on but has no image: add one or use the input picture.")
    else:
        unit.image = control_png(spec.image)
    return unit


def reference(spec: ReferenceSpec) -> Reference:
    return Reference(control_png(spec.image), float(spec.weight), spec.mode)


def decode(image: ImageData) -> Image.Image:
    """A result or preview image as a PIL RGBA picture."""
    if image.format == "rgba8":
        return Image.frombytes("RGBA", (image.width, image.height), image.data)
    return Image.open(io.BytesIO(image.data)).convert("RGBA")

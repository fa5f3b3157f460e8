"""The job model: what a client asks the server to do, as typed dataclasses.

This is the one definition of a job. Each field carries its wire spec (``Field``), so the tables
that validate ``submit`` and ``preprocess`` messages and generate the JSON Schema are derived from
these classes (``wire_fields``). Hosts build a ``Job``, check it with ``Job.check`` (the same rules
the server applies) and send ``Job.to_message``; the server reads it back with ``Job.from_message``.

Images are whatever the side holding the job uses: ``ImageData`` before upload, the wire reference
(``{"frame": id}`` or inline ``{"data": ...}``) in a message; ``None`` where a field allows it.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from . import prompt_syntax, rules
from .errors import ProtocolError, shown
from .fields import Field, check_fields
from .geometry import DEFAULT_PADDING
from .loras import split_prompt
from .vocabulary import (
    BUILTIN_UPSCALER,
    CONTROL_TYPES,
    DEFAULT_PREPROCESSOR,
    FILL_MODES,
    IMAGE_ID_PATTERN,
    JOB_ID_PATTERN,
    LORA_WEIGHT_RANGE,
    MAX_SEED,
    MODES,
    PREPROCESSORS,
    REFERENCE_MODES,
    RESULT_FORMATS,
    SAMPLERS,
)

IMAGE_REF = Field("object", "An image: `{\"frame\": id}` names a binary frame sent earlier on this connection; "
                  "`{\"data\": base64, \"format\": \"png\"|\"webp\"}` carries it inline.", fields={
                      "frame": Field("string", "Id of an uploaded binary frame.", pattern=IMAGE_ID_PATTERN),
                      "data": Field("string", "Base64 of a PNG or WebP file."),
                      "format": Field("string", "Format of inline data.", default="png", choices=("png", "webp")),
                  })
JOB_ID = Field("string", "Job id: chosen by the client in `submit`, or assigned by the server.", pattern=JOB_ID_PATTERN)

ImageRef = Callable[[Any, str], dict]
"""Turns a host's image (e.g. ``ImageData``) into a wire reference, given its role (uploads it)."""


def wire(spec: Field, default: Any = dataclasses.MISSING, *, factory: Callable | None = None,
         key: str | None = None) -> Any:
    """A dataclass field with its wire spec; ``key`` is its name on the wire when that differs."""
    metadata = {"wire": spec, "key": key}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def wire_fields(cls: type) -> dict[str, Field]:
    """The message table of a job class: one ``Field`` per wire key, its default the dataclass's."""
    table: dict[str, Field] = {}
    for spec in dataclasses.fields(cls):
        if "flatten" in spec.metadata:
            table.update(wire_fields(spec.metadata["flatten"]))
            continue
        if "local" in spec.metadata:
            continue
        value = spec.metadata["wire"]
        if spec.default is not dataclasses.MISSING and spec.default is not None:
            value = dataclasses.replace(value, default=spec.default)
        table[spec.metadata["key"] or spec.name] = value
    return table


@dataclass
class ControlUnit:
    """One ControlNet unit."""

    type: str = wire(Field("string", "What the control image shows.", required=True, choices=CONTROL_TYPES))
    image: Any = wire(Field("object", "The control image (a map, or a picture to preprocess); the job's `image` "
                            "when omitted. Resized to the picture's size, then cropped and resized exactly like it.",
                            fields=IMAGE_REF.fields), None)
    preprocess: str = wire(Field("string", "`off`: the image already is a control map; `on`: run the type's "
                                 "preprocessor; or a preprocessor's name.", choices=("off", "on") + PREPROCESSORS),
                           "off")
    scale: float = wire(Field("number", "Strength of the unit; 0 disables it.", minimum=0, maximum=2), 1.0)
    start: float = wire(Field("number", "Fraction of the schedule where the unit starts.", minimum=0, maximum=1),
                        0.0)
    end: float = wire(Field("number", "Fraction of the schedule where the unit stops.", minimum=0, maximum=1), 1.0)
    resolution: int | None = wire(Field("integer", "Preprocessor working resolution (shorter side); the diffusion "
                                        "size when omitted.", minimum=64, maximum=4096), None)

    @property
    def preprocessor(self) -> str | None:
        """The preprocessor to run, or None when the image already is a map (``on``: the type's default)."""
        if self.preprocess == "off":
            return None
        return DEFAULT_PREPROCESSOR.get(self.type) if self.preprocess == "on" else self.preprocess


@dataclass
class Reference:
    """A reference picture for the IP-Adapter."""

    image: Any = wire(dataclasses.replace(IMAGE_REF, required=True))
    weight: float = wire(Field("number", "How much the reference steers; 0 switches it off.", minimum=0, maximum=2),
                         1.0)
    mode: str = wire(Field("string", "`reference`: everything; `style`: colours and brushwork (up blocks only); "
                           "`composition`: layout (down blocks only); `face`: the face adapter, where configured "
                           "(a job's references are either all `face` or none).", choices=REFERENCE_MODES),
                     "reference")


@dataclass
class Lora:
    """A LoRA applied to the job's model."""

    name: str = wire(Field("string", "A LoRA listed in `welcome` / `models` (`loras`).", required=True,
                           max_length=200))
    weight: float = wire(Field("number", "How strongly it applies; 0 switches it off, below 0 pushes away from it.",
                               minimum=LORA_WEIGHT_RANGE[0], maximum=LORA_WEIGHT_RANGE[1]), 1.0)


@dataclass
class Sampling:
    """How the picture is denoised."""

    steps: int = wire(Field("integer", "Denoising steps at strength 1.", minimum=1), 20)
    guidance: float | None = wire(Field("number", "Classifier-free guidance scale. The model's when omitted: "
                                        f"{rules.GUIDANCE:g} (instruct 7.5); on flux models Flux's distilled "
                                        "guidance, 3.5 (inpaint, expand, remove on the Fill model: 30; instruct "
                                        "on Kontext: 2.5).", minimum=0, maximum=50), None)
    strength: float = wire(Field("number", "1 = paint from noise; below 1 start from the noised image.",
                                 minimum=0, maximum=1), 1.0)
    sampler: str = wire(Field("string", "Scheduler.", choices=SAMPLERS), "dpmpp_2m_karras")
    seed: int | None = wire(Field("integer", "Seed of the first image; image i uses seed + i. Random when omitted "
                                  "or null.", nullable=True, minimum=0, maximum=MAX_SEED,
                                  below="for a random seed leave it out or send null, as the WebUI's -1"), None)
    batch: int = wire(Field("integer", "Images to make, each with its own seed.", minimum=1), 1)
    clip_skip: int | None = wire(Field("integer", "Text encoder layers skipped from the end, as A1111 counts: 1 = the "
                                       "last layer, 2 = the one before it. The model's setting when omitted.",
                                       minimum=1, maximum=rules.MAX_CLIP_SKIP), None)


@dataclass
class Job:
    """A ``submit``: one edit (generate, img2img or inpaint) with its steering."""

    mode: str = wire(Field("string", "What to do.", required=True, choices=MODES))
    id: str | None = wire(JOB_ID, None, key="job")
    model: str | None = wire(Field("string", "Configured model name; the server's default when omitted.",
                                   max_length=200), None)
    prompt: str = wire(Field("string", "What to paint, in A1111's syntax: (emphasis:1.2), [from:to:when] prompt "
                             "editing, [a|b] alternation, BREAK.", max_length=10000), "")
    negative_prompt: str = wire(Field("string", "What to avoid, in the same syntax.", max_length=10000), "")
    sampling: Sampling = field(default_factory=Sampling, metadata={"flatten": Sampling})
    width: int | None = wire(Field("integer", "generate: picture width in pixels; upscale: the target width.",
                                   minimum=8), None)
    height: int | None = wire(Field("integer", "generate: picture height in pixels; upscale: the target height.",
                                    minimum=8), None)
    image: Any = wire(IMAGE_REF, None)
    mask: Any = wire(IMAGE_REF, None)
    mask_grow: int = wire(Field("integer", "inpaint: grow the mask by this many pixels.", minimum=0, maximum=256),
                          rules.MASK_GROW)
    mask_feather: int = wire(Field("integer", "inpaint: soften the grown mask's edge over this many pixels.",
                                   minimum=0, maximum=256), rules.MASK_FEATHER)
    soft_inpaint: bool = wire(Field("boolean", "inpaint, remove: the shaped mask acts per pixel in the denoising "
                                    "(differential diffusion), its feathered edge is a smooth ramp and the repaint's "
                                    "light is matched to the picture along it; expand: the new band's light is "
                                    "matched to the picture (and to the band painted before) where they meet; "
                                    "instruct with a mask: the edge is a smooth ramp and the edit's light is matched "
                                    "along it; false: "
                                    "the mask is cut at 50% for diffusion and feathered as max(grown, blurred), and "
                                    "no light is matched."), True)
    mask_padding: int = wire(Field("integer", "inpaint, remove, instruct with a mask: context pixels kept around the "
                                   "grown and feathered mask in the diffused crop (A1111's \"only masked "
                                   "padding\").", minimum=0,
                                   maximum=1024), DEFAULT_PADDING)
    fill: str | None = wire(Field("string", "inpaint, remove, expand: how masked pixels and new canvas are pre-filled "
                                  "before diffusion: `none` keeps them, `neutral` grey, `blur` the colours around, "
                                  "`border` the nearest edge pixels, `inpaint` the surroundings painted inward "
                                  "(OpenCV's Telea, or the server's LaMa). The mode's default when omitted (inpaint: "
                                  "none, remove: inpaint, expand: border).",
                                  choices=FILL_MODES), None)
    expand_left: int = wire(Field("integer", "expand: pixels added left of the picture.", minimum=0,
                                  maximum=rules.MAX_EXPAND), 0)
    expand_top: int = wire(Field("integer", "expand: pixels added above the picture.", minimum=0,
                                 maximum=rules.MAX_EXPAND), 0)
    expand_right: int = wire(Field("integer", "expand: pixels added right of the picture.", minimum=0,
                                   maximum=rules.MAX_EXPAND), 0)
    expand_bottom: int = wire(Field("integer", "expand: pixels added below the picture.", minimum=0,
                                    maximum=rules.MAX_EXPAND), 0)
    control: list[ControlUnit] = wire(Field("array", "ControlNet units, applied together.", items=Field(
        "object", "One ControlNet unit.", fields=wire_fields(ControlUnit))), factory=list)
    references: list[Reference] = wire(Field("array", "IP-Adapter reference pictures, blended by weight.", items=Field(
        "object", "A reference picture for the IP-Adapter.", fields=wire_fields(Reference))), factory=list)
    loras: list[Lora] = wire(Field("array", "LoRAs applied together (A1111's `<lora:name:weight>` tags in `prompt` "
                                   "work too and are taken out of the prompt; on a name given both ways, this field's "
                                   "weight wins).", items=Field("object", "A LoRA and its weight.",
                                                                fields=wire_fields(Lora))), factory=list)
    preset: str | None = wire(Field("string", "A preset listed in `welcome` / `models` (`presets`): its model, "
                                    "sampler, steps, guidance, LoRAs, prompt template and negative prompt apply "
                                    "wherever this message leaves the field out.", max_length=200), None)
    preview_every: int = wire(Field("integer", "Send a preview every N steps; 0 = none.", minimum=0), 0)
    preview_size: int = wire(Field("integer", "Longest side of previews.", minimum=16, maximum=1024), 256)
    output_format: str = wire(Field("string", "Encoding of result images.", choices=RESULT_FORMATS), "png")
    inline: bool = wire(Field("boolean", "Put results in the `result` message as base64 PNG instead of binary "
                              "frames.", ), False)
    scale: float | None = wire(Field("number", "upscale: the result is this many times the picture's size (2 when "
                                     "neither `scale` nor `width` / `height` is given; `width` and `height` set a "
                                     "target size instead).", minimum=rules.UPSCALE_MIN, maximum=rules.UPSCALE_MAX),
                               None)
    upscaler: str | None = wire(Field("string", f"upscale: a super-resolution model listed in `welcome` / `models` "
                                      f"(`{BUILTIN_UPSCALER}`: plain resampling); the server's default when omitted.",
                                      max_length=200), None)
    image_guidance: float | None = wire(Field("number", "instruct: how closely the edit keeps to the picture "
                                              "(InstructPix2Pix's image guidance scale: 1 = not held to it, higher "
                                              f"= closer; {rules.IMAGE_GUIDANCE:g} when omitted); `guidance` is how "
                                              "strongly it follows the instruction. Models without it (Flux "
                                              "Kontext) refuse it as `unsupported`.", minimum=1, maximum=20,
                                              below="below 1 InstructPix2Pix runs with no guidance at all, the "
                                                    "instruction's too: 0.5 and 0 made the picture guidance 1 "
                                                    "makes; 1 = not held to the picture"), None)
    refine: float | None = wire(Field("number", "upscale: strength of a diffusion refine of the upscaled picture, in "
                                      "tiles at the model's native scale (with `prompt`, `steps`, `control` ...); "
                                      "0 (or omitted) = none. generate above the model's native range: the strength "
                                      f"of the second stage (omitted or 0: {rules.HIRES_REFINE:g}).",
                                      minimum=0, maximum=1), None)
    # The wire fields the caller set (``create``); None: not known, so a field at its default counts as left
    # out. With a preset, a field left out takes the preset's value. (Not a wire field.)
    given: frozenset[str] | None = field(default=None, compare=False, repr=False, metadata={"local": True})

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def create(cls, mode: str, **params: Any) -> "Job":
        """A job from flat keyword arguments, as the wire names them (``steps=8, seed=3, job="a"``);
        control units and references may be dicts. Nothing is checked here: see ``check``."""
        given = frozenset(params) - {"job"}
        sampling_keys = {spec.name for spec in dataclasses.fields(Sampling)}
        sampling = Sampling(**{key: params.pop(key) for key in list(params) if key in sampling_keys})
        if "job" in params:
            params["id"] = params.pop("job")
        for key, kind in (("control", ControlUnit), ("references", Reference), ("loras", Lora)):
            items = params.get(key) or ()
            if isinstance(items, (dict, str, bytes, kind)):  # (iterated, a dict said "`control[0]` ... not str")
                raise TypeError(f"`{key}` must be a list of {kind.__name__}s or dicts, not one "
                                f"{type(items).__name__}: put a single one in a list, {key}=[...]")
            params[key] = [_as(kind, item, f"{key}[{index}]") for index, item in enumerate(items)]
        known = {spec.metadata.get("key") or spec.name for spec in dataclasses.fields(cls)
                 if "local" not in spec.metadata} | {"id"}
        unknown = sorted(set(params) - known)
        if unknown:  # (Python's own message named Job.__init__, and the misspelt name only)
            names = sorted((known | sampling_keys) - {"mode", "sampling", "id"})
            close = difflib.get_close_matches(unknown[0], names, 1)
            raise TypeError(f"no job parameter {unknown[0]!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                                    f"; a job takes {', '.join(names)}"))
        return cls(mode=mode, sampling=sampling, given=given, **params)

    @classmethod
    def from_message(cls, message: dict, *, validate: bool = True) -> "Job":
        """A ``submit`` message as a job; ``validate`` checks it against the wire table first (raising
        ``ProtocolError`` naming the field) and fills the defaults."""
        if validate:
            message = check_fields(message, SUBMIT_FIELDS)
        params = {key: value for key, value in message.items() if key != "type"}
        return cls.create(params.pop("mode"), **params)

    @classmethod
    def from_parameters(cls, parameters: dict, *, image: Any = None, mask: Any = None,
                        control_images: list | tuple = (), reference_images: list | tuple = ()) -> "Job":
        """The job a ``result``'s ``parameters`` describe, to run it again: the same settings and seeds,
        with the pictures given again (``parameters`` carry none). ``control_images[i]`` is unit i's image
        (None or missing: the job's ``image``); ``reference_images[i]`` is reference i's."""
        params = {key: value for key, value in parameters.items() if key not in RESULT_ONLY}
        if params.get("mode") == "upscale" and ("width" in params or "height" in params):
            params.pop("scale", None)  # (derived from the exact target size, and rounded: the size is what ran)
        params["control"] = [dict(unit, **({"image": control_images[index]}
                                           if index < len(control_images) and control_images[index] is not None
                                           else {}))
                             for index, unit in enumerate(params.get("control") or ())]
        if len(reference_images) != len(params.get("references") or ()):
            raise TypeError(f"the parameters list {len(params.get('references') or ())} reference(s); give as many "
                            f"reference_images, not {len(reference_images)}")
        params["references"] = [dict(reference, image=picture)
                                for reference, picture in zip(params.get("references") or (), reference_images)]
        for key, value in (("image", image), ("mask", mask)):
            if value is not None:
                params[key] = value
        return cls.create(params.pop("mode"), **params)

    def to_message(self, image_ref: ImageRef | None = None) -> dict:
        """The ``submit`` message. Images that are not wire references yet go through ``image_ref``
        (e.g. ``Client.upload``); unset fields are left out, so the server's defaults apply."""
        def ref(image: Any, role: str, where: str) -> dict:
            if isinstance(image, dict):
                return image
            if image_ref is None:
                raise TypeError(f"the job's `{where}` is not a wire reference; pass image_ref to upload it")
            return _named(where, image_ref, image, role)

        message: dict = {"type": "submit"}
        for key, value in _wire_items(self):
            if key in ("image", "mask"):
                value = ref(value, key, key)
            message[key] = value
        if self.control:
            message["control"] = [dict(_wire_items(unit), **({"image": ref(unit.image, "control",
                                                                            f"control[{index}].image")}
                                                             if unit.image is not None else {}))
                                  for index, unit in enumerate(self.control)]
        if self.references:
            message["references"] = [dict(_wire_items(reference), image=ref(reference.image, "reference",
                                                                            f"references[{index}].image"))
                                     for index, reference in enumerate(self.references)]
        if self.loras:
            message["loras"] = [dict(_wire_items(lora)) for lora in self.loras]
        if self.preset is not None:  # a field left out takes the preset's value (`--steps 20` ran the preset's 4)
            for key in PRESET_FIELDS:
                left_out = key not in self.given if self.given is not None else \
                    message.get(key) == SUBMIT_FIELDS[key].default
                if key in message and left_out:
                    del message[key]
        return message

    # -- rules ---------------------------------------------------------------------------------

    @property
    def denoising_steps(self) -> int:
        if self.mode == "upscale":
            return rules.denoising_steps(self.mode, self.sampling.steps, self.refine or 0.0)
        return rules.denoising_steps(self.mode, self.sampling.steps, self.sampling.strength)

    def check(self, few_step: bool | None = None) -> None:
        """Apply the rules that need no pixels and no server state; raise ``ProtocolError`` naming the
        field. Hosts call it before sending; the server calls it on every submit. ``few_step``: whether
        the job's preset makes it a few-step job (``rules.denoising_steps``); None (a host, which does
        not know the server's presets): not when no preset is named, else the server decides."""
        wants = {"generate": (), "img2img": ("image",), "inpaint": ("image", "mask")}.get(self.mode)
        wants = wants if wants is not None else {"expand": ("image",), "remove": ("image", "mask"),
                                                    "upscale": ("image",), "instruct": ("image",)}[self.mode]
        optional = ("mask",) if self.mode == "instruct" else ()  # instruct edits inside a mask when given one
        for role in ("image", "mask"):
            present = getattr(self, role) is not None
            if role in wants and not present:
                raise ProtocolError("invalid_field", f"{self.mode} needs `{role}`", role)
            if role not in wants and role not in optional and present:
                hint = " (use inpaint to edit inside a mask)" if role == "mask" else " (use img2img)"
                raise ProtocolError("invalid_field", f"{self.mode} takes no `{role}`{hint}", role)
        for key in ("width", "height"):
            if self.mode not in ("generate", "upscale") and getattr(self, key) is not None:
                raise ProtocolError("invalid_field", f"{self.mode} works at the picture's own size; `{key}` is for "
                                    "generate", key)
        # (silently ignored, `img2img --scale 2` looked like it would enlarge the picture)
        if self.mode != "upscale" and self.scale is not None:
            raise ProtocolError("invalid_field", f"`scale` is for upscale; {self.mode} does not take it", "scale")
        for key in ("upscaler", "refine"):
            if self.mode not in ("upscale", "generate") and getattr(self, key) is not None:
                raise ProtocolError("invalid_field", f"`{key}` is for upscale (and a generate above the model's "
                                    f"native size); {self.mode} does not take it", key)
        if self.mode in ("upscale", "instruct") and self.sampling.strength != 1.0:
            # (silently ignored: an upscale "at strength 0.3" came back unrefined, an instruct ran every step)
            hint = ("its refine's strength is `refine`" if self.mode == "upscale" else
                    "it runs every step, from the picture; `image_guidance` says how closely it keeps to it")
            raise ProtocolError("invalid_field", f"{self.mode} takes no `strength`: {hint}", "strength")
        self._check_toolbox()
        if self.mode == "instruct" and self.preset is None and not split_prompt(self.prompt)[0].strip():
            # (an empty instruction ran every step and handed back the picture, a little changed)
            raise ProtocolError("invalid_field", "instruct needs an instruction in `prompt`: what to change, such "
                                "as \"make it winter\"", "prompt")
        if self.image_guidance is not None and self.mode != "instruct":
            raise ProtocolError("invalid_field", f"`image_guidance` is for instruct; {self.mode} does not take it",
                                "image_guidance")
        faces = {reference.mode == "face" for reference in self.references if reference.weight > 0}
        if len(faces) > 1:  # two adapters would need two image encoders and two projections in one pass
            raise ProtocolError("invalid_field", "a job's references are either all `face` or none `face`: the "
                                "face mode uses its own adapter", "references")
        rules.check_seed_range(self.sampling.seed, self.sampling.batch)
        for key in ("prompt", "negative_prompt"):  # A1111 syntax: brackets must match, weights and steps be numbers
            if prompt_syntax.read(getattr(self, key), key).changes and self.mode == "instruct":
                raise ProtocolError("invalid_field", f"instruct reads `{key}` whole at every step: [from:to:when] "
                                    "prompt editing and [a|b] alternation are for the other modes", key)
        for index, unit in enumerate(self.control):
            name = f"control[{index}]"
            if unit.image is None and self.mode == "generate":
                raise ProtocolError("invalid_field", f"`{name}.image` is required when generating (there is no "
                                    "picture to take it from)", f"{name}.image")
            rules.check_schedule_range(unit.start, unit.end, name)
            if unit.preprocess == "on" and unit.preprocessor is None:
                raise ProtocolError("unknown_preprocessor", f"the {unit.type} control type has no preprocessor: "
                                    "its control image is the picture itself, so send it with preprocess off",
                                    f"{name}.preprocess")
        if self.mode == "upscale":
            self._check_upscale()
        elif self.mode == "generate" and self.refine and (few_step is not None or self.preset is None) and \
                rules.denoising_steps("img2img", self.sampling.steps, self.refine, bool(few_step)) < 1:
            # (refine means nothing else to a generate: one that cannot run a step is a mistake at any size)
            raise ProtocolError("too_few_steps", f"refine {self.refine:g} x {self.sampling.steps} steps leaves no "
                                "denoising step for the second stage of a large generate; raise the refine "
                                "strength or the steps", "refine")
        elif self.mode not in rules.STARTS_FROM_NOISE and (few_step is not None or self.preset is None):
            rules.check_denoising(self.mode, self.sampling.steps, self.sampling.strength, bool(few_step))
        seen: set[str] = set()
        for index, lora in enumerate(self.loras):
            if lora.name in seen:
                raise ProtocolError("invalid_field", f"LoRA {shown(lora.name)} is listed twice; give each LoRA once",
                                    f"loras[{index}].name")
            seen.add(lora.name)

    def _check_upscale(self) -> None:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ProtocolError("invalid_field", "give `scale` or a target `width` / `height`, not both", "scale")
        refine = self.refine or 0.0
        if refine > 0 and rules.denoising_steps(self.mode, self.sampling.steps, refine) < 1:
            raise ProtocolError("too_few_steps", f"`refine` {self.refine:g} with {self.sampling.steps} `steps` leaves "
                                "no denoising step; raise either", "refine")
        elif refine == 0 and self.sampling.batch > 1:  # (without a refine: the same picture every time)
            raise ProtocolError("invalid_field", "an upscale without `refine` makes the same picture every time: "
                                "ask for batch 1, or refine to get variations", "batch")
        if refine == 0:  # (they were listed in the result as if they had steered, a preprocessor as run)
            for key, what in (("control", "control units"), ("references", "reference pictures")):
                if getattr(self, key):
                    raise ProtocolError("invalid_field", f"an upscale without `refine` runs no diffusion, so its "
                                        f"{what} would do nothing: set `refine` above 0 (they steer the refine), or "
                                        "leave them out", key)


    @property
    def expand(self) -> tuple[int, int, int, int]:
        """Pixels an expand adds: (left, top, right, bottom)."""
        return self.expand_left, self.expand_top, self.expand_right, self.expand_bottom

    def _check_toolbox(self) -> None:
        """Expand needs a side to grow and only expand takes sides; fill is for the masked modes."""
        sides = ("expand_left", "expand_top", "expand_right", "expand_bottom")
        if self.mode == "expand" and not any(self.expand):
            raise ProtocolError("invalid_field", "expand needs at least one of `expand_left`, `expand_top`, "
                                "`expand_right`, `expand_bottom` above 0", "expand_left")
        if self.mode != "expand":
            for key in sides:
                if getattr(self, key):
                    raise ProtocolError("invalid_field", f"`{key}` is for expand (use expand to grow the canvas)",
                                        key)
        if self.fill is not None and self.mode not in rules.DEFAULT_FILL:
            # (an instruct edit with a mask has a masked area, but the picture conditions it: nothing is pre-filled)
            what = "pre-fills nothing (the picture itself guides the edit)" if self.mode == "instruct" \
                else "has no masked area to fill"
            raise ProtocolError("invalid_field", f"{self.mode} {what}; `fill` is for "
                                f"{', '.join(rules.DEFAULT_FILL)}", "fill")

    @property
    def fill_mode(self) -> str:
        """The pre-fill that runs: the job's, else its mode's default (``none`` for modes without a mask)."""
        return self.fill or rules.DEFAULT_FILL.get(self.mode, "none")


@dataclass
class PreprocessJob:
    """A ``preprocess``: the control map a preprocessor makes of a picture."""

    image: Any = wire(dataclasses.replace(IMAGE_REF, required=True))
    preprocessor: str = wire(Field("string", "A preprocessor, or a control type (meaning its default "
                                   "preprocessor).", required=True,
                                   choices=PREPROCESSORS + tuple(t for t in CONTROL_TYPES if t not in PREPROCESSORS)))
    id: str | None = wire(JOB_ID, None, key="job")
    resolution: int | None = wire(Field("integer", "Working resolution (shorter side); the picture's own when "
                                        "omitted.", minimum=64, maximum=4096), None)
    output_format: str = wire(Field("string", "Encoding of the map.", choices=RESULT_FORMATS), "png")
    inline: bool = wire(Field("boolean", "Put the map in the `result` message as base64 PNG."), False)

    @classmethod
    def from_message(cls, message: dict, *, validate: bool = True) -> "PreprocessJob":
        if validate:
            message = check_fields(message, PREPROCESS_FIELDS)
        params = {key: value for key, value in message.items() if key != "type"}
        if "job" in params:
            params["id"] = params.pop("job")
        return cls(**params)

    def to_message(self, image_ref: ImageRef | None = None) -> dict:
        message = {"type": "preprocess", **dict(_wire_items(self))}
        if not isinstance(self.image, dict):
            if image_ref is None:
                raise TypeError("the picture is not a wire reference; pass image_ref to upload it")
            message["image"] = _named("image", image_ref, self.image, "image")
        return message

    @property
    def resolved(self) -> str | None:
        """The preprocessor that runs (a control type means its default); None when the type has none."""
        name = DEFAULT_PREPROCESSOR.get(self.preprocessor, self.preprocessor)
        return name if name in PREPROCESSORS else None

    def check(self) -> None:
        if self.resolved is None:
            raise ProtocolError("unknown_preprocessor", f"the {self.preprocessor} control type has no preprocessor: "
                                "its control image is the picture itself", "preprocessor")


def _named(where: str, image_ref: ImageRef, image: Any, role: str) -> dict:
    """``image_ref(image, role)``, its ``TypeError`` (not an image it can send) and ``ProtocolError``
    (an image whose bytes are not what it says) naming the field."""
    try:
        return image_ref(image, role)
    except TypeError as exc:
        raise TypeError(f"`{where}` {exc}") from None
    except ProtocolError as exc:
        exc.field = where
        raise


def _as(cls: type, value: Any, where: str) -> Any:
    """A control unit, reference or LoRA given as the dataclass or as a dict of its fields."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"`{where}` must be a {cls.__name__} or a dict of its fields, not {type(value).__name__}")
    unknown = sorted(set(value) - {spec.name for spec in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"`{where}` has no field {unknown[0]!r}; a {cls.__name__} has "
                        f"{', '.join(spec.name for spec in dataclasses.fields(cls))}")
    missing = [spec.name for spec in dataclasses.fields(cls) if spec.name not in value
               and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING]
    if missing:  # (Python's own message named ControlUnit.__init__ and a "positional argument")
        raise TypeError(f"`{where}` needs `{missing[0]}`")
    return cls(**value)


def _wire_items(obj: Any):
    """(wire key, value) of a job object's set, scalar fields (lists and unset values left out)."""
    for spec in dataclasses.fields(obj):
        value = getattr(obj, spec.name)
        if "flatten" in spec.metadata:
            yield from _wire_items(value)
        elif "local" in spec.metadata:
            continue
        elif value is not None and not isinstance(value, list):
            yield spec.metadata["key"] or spec.name, value


RESULT_ONLY = ("seeds", "encoded_prompt", "masked")
"""Keys of a result's ``parameters`` that no submit takes: the seed of each image (``seed`` + i), the prompt a
preset's template made of ``prompt``, and the flag a host adds for an instruct edit inside a mask
(``shared.infotext``)."""

PRESET_FIELDS = ("model", "sampler", "steps", "guidance", "negative_prompt")
"""The wire fields a preset sets (besides `loras` and the prompt template) where a submit leaves them out."""

SUBMIT_FIELDS: dict[str, Field] = {"type": Field("string", required=True, choices=("submit",)), **wire_fields(Job)}
PREPROCESS_FIELDS: dict[str, Field] = {"type": Field("string", required=True, choices=("preprocess",)),
                                       **wire_fields(PreprocessJob)}

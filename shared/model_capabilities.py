"""What one model can do, as the ``models`` message lists it, and the refusal of a job that asks more.

Pure and standard-library only: the server checks every submit with ``refusal`` before `accepted`;
a host can read ``from_wire`` to offer only what the chosen model supports and check a job the same
way before sending it.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import loras as lora_rules
from . import prompt_syntax
from .errors import ProtocolError, shown
from .vocabulary import REFERENCE_MODES

SD_FAMILIES = ("sd15", "sdxl")
"""Families whose ControlNets and IP-Adapters are configured per server: a gap there is the server's
configuration (``unknown_control_model``, ``unknown_adapter``), not the model's."""


@dataclass(frozen=True)
class ModelCapabilities:
    """The modes, control types and reference (IP-Adapter) modes a model serves on this server (control
    types and references in every mode but instruct)."""

    family: str | None  # None: not known until it loads (nothing but the modes is checked then)
    modes: tuple[str, ...]
    control_types: tuple[str, ...] = ()
    reference_modes: tuple[str, ...] = ()
    negative_prompt: bool = True  # Flux takes one only where true CFG is configured
    image_guidance: bool = True  # instruct's `image_guidance` (InstructPix2Pix has it, Flux Kontext not)
    loras: bool = True  # LoRAs (the `loras` field, `<lora:>` tags) are applied; Flux takes none here yet
    clip_skip: bool = True  # `clip_skip` applies (Flux reads its prompt whole: it has none)

    def to_wire(self) -> dict:
        return {"modes": list(self.modes), "control_types": list(self.control_types),
                "reference_modes": list(self.reference_modes), "negative_prompt": self.negative_prompt,
                "image_guidance": self.image_guidance, "loras": self.loras, "clip_skip": self.clip_skip}

    @classmethod
    def from_wire(cls, family: str | None, value: dict) -> "ModelCapabilities":
        # (`loras` and `clip_skip` are newer: a server without them refuses both on flux, as it says now)
        return cls(family, tuple(value.get("modes", ())), tuple(value.get("control_types", ())),
                   tuple(value.get("reference_modes", ())), bool(value.get("negative_prompt", True)),
                   bool(value.get("image_guidance", True)), bool(value.get("loras", family != "flux")),
                   bool(value.get("clip_skip", family != "flux")))


def refusal(job, model: str, caps: ModelCapabilities) -> ProtocolError | None:
    """Why ``model`` cannot run ``job`` (a ``shared.job.Job``), or None when it can. Switched-off control
    units (scale 0) and references (weight 0) ask nothing of the model."""
    mode = job.mode
    needs_model = not (mode == "upscale" and not job.refine)  # a plain upscale never runs the model
    if needs_model and mode not in caps.modes:
        return ProtocolError("unsupported_mode", f"model {model!r} cannot {mode}: it serves "
                             f"{', '.join(caps.modes) or 'nothing'}", "mode")
    if caps.family is None:
        return None
    steered = caps.family in SD_FAMILIES and mode != "instruct"
    instruct = mode == "instruct"  # neither InstructPix2Pix nor Kontext takes ControlNets or IP-Adapters here
    for index, unit in enumerate(job.control):
        if unit.scale > 0 and (instruct or unit.type not in caps.control_types):
            if steered:
                return ProtocolError("unknown_control_model", f"no {unit.type} ControlNet is configured for "
                                     f"{caps.family} models (model {model!r})", f"control[{index}].type")
            return ProtocolError("unsupported", f"model {model!r} ({caps.family}, {mode}) takes no ControlNet "
                                 "units", f"control[{index}].type")
    for index, reference in enumerate(job.references):
        if reference.weight > 0 and (instruct or reference.mode not in caps.reference_modes):
            if steered:
                kind = "face " if reference.mode == "face" else ""
                return ProtocolError("unknown_adapter", f"no {kind}IP-Adapter is configured for {caps.family} "
                                     f"models (model {model!r}), so references cannot be used", "references")
            return ProtocolError("unsupported", f"model {model!r} ({caps.family}, {mode}) takes no reference "
                                 "pictures (IP-Adapter)", f"references[{index}]")
    if job.negative_prompt and not caps.negative_prompt:
        return ProtocolError("unsupported", f"model {model!r} takes no negative prompt ({caps.family} uses "
                             "distilled guidance; configure `true_cfg` on the model to use one)", "negative_prompt")
    if job.sampling.clip_skip is not None and not caps.clip_skip:  # (it was echoed in the result, and ignored)
        return ProtocolError("unsupported", f"model {model!r} ({caps.family}) has no clip skip: its prompt is read "
                             "whole by CLIP-L and T5 (leave `clip_skip` out)", "clip_skip")
    if caps.family == "flux":
        for key in ("prompt", "negative_prompt"):
            if _changes(getattr(job, key), key):
                return ProtocolError("unsupported", f"model {model!r} (flux) reads its prompt whole: [from:to:when] "
                                     "prompt editing and [a|b] alternation are for sd15 and sdxl models", key)
    if not caps.loras:  # (a preset's LoRAs are the server's to check: hosts do not know them)
        for name, weight, where in asked_loras(job):
            if weight != 0:
                return ProtocolError("unsupported", f"model {model!r} ({caps.family}) takes no LoRAs here yet: LoRA "
                                     f"{shown(name)} would not be applied (leave it out, or give it weight 0)", where)
    if mode == "instruct" and job.image_guidance is not None and not caps.image_guidance:
        return ProtocolError("unsupported", f"model {model!r} has no image guidance for instruct edits (leave "
                             "`image_guidance` out)", "image_guidance")
    return None


def _changes(prompt: str, field: str) -> bool:
    try:
        return prompt_syntax.read(prompt, field).changes
    except ProtocolError:  # (malformed: `Job.check`'s to refuse)
        return False


def asked_loras(job) -> list[tuple[str, float, str]]:
    """The LoRAs ``job`` names itself, in its ``loras`` field and its prompt's tags (a malformed tag is
    ``Job.check``'s to refuse)."""
    try:
        tags = lora_rules.split_prompt(job.prompt)[1]
    except ProtocolError:
        tags = []
    return lora_rules.merge(("loras", [(lora.name, lora.weight) for lora in job.loras]), ("prompt", tags))


def reference_modes(face: bool) -> tuple[str, ...]:
    """The reference modes an IP-Adapter serves: all but `face` unless a face adapter is configured."""
    return tuple(mode for mode in REFERENCE_MODES if mode != "face" or face)

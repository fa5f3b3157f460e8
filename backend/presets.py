"""Presets (styles): named bundles of a job's settings, from the config's ``[presets.NAME]`` tables
and built in for few-step models. A job names one with ``preset``; every field the job's message
sets wins over the preset's.

    [presets.watercolour]
    model = "sd15"
    sampler = "euler_a"
    steps = 30
    guidance = 6.5
    loras = ["watercolor-style:0.8", {name = "paper-texture", weight = 0.4}]
    prompt = "watercolour painting of {prompt}, soft edges"
    negative_prompt = "photo, 3d render"
    few_step = false             # true: steps x strength may go down to 1 step (LCM, TCD, Lightning ...)
    timestep_spacing = "trailing"  # leading | trailing | linspace (the model's own when left out)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shared.errors import ProtocolError, shown
from shared.fields import Field
from shared.job import PRESET_FIELDS, SUBMIT_FIELDS, Job
from shared.vocabulary import LORA_WEIGHT_RANGE, TIMESTEP_SPACINGS


class PresetError(ValueError):
    """A bad ``[presets.*]`` entry; the message names the key (config.py re-raises it as ConfigError)."""


@dataclass(frozen=True)
class Preset:
    """One preset; None / empty values leave the job's own."""

    name: str
    model: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    loras: tuple[tuple[str, float], ...] = ()
    prompt: str = "{prompt}"  # template: {prompt} is the job's prompt
    negative_prompt: str | None = None
    few_step: bool = False
    timestep_spacing: str | None = None
    description: str = ""


BUILTIN_PRESETS = {
    # LCM-distilled models or an LCM LoRA: LCM's own scheduler, 4 steps, almost no guidance.
    "lcm": Preset("lcm", sampler="lcm", steps=4, guidance=1.5, few_step=True,
                  description="LCM models and LCM LoRAs: the LCM scheduler, 4 steps, guidance 1.5"),
    # TCD LoRAs: the TCD scheduler (its stochasticity gamma at diffusers' 0.3), 4 steps, no guidance.
    "tcd": Preset("tcd", sampler="tcd", steps=4, guidance=1.0, few_step=True,
                  description="TCD LoRAs: the TCD scheduler, 4 steps, no guidance"),
    # SDXL-Lightning, Hyper-SD: Euler over "trailing" timesteps (the distilled ones end at t = 999).
    "lightning": Preset("lightning", sampler="euler", steps=4, guidance=1.0, few_step=True,
                        timestep_spacing="trailing",
                        description="Lightning / Hyper-SD models and LoRAs: Euler, trailing timesteps, 4 steps, no "
                                    "guidance"),
}

_KEYS = {f.name for f in dataclasses.fields(Preset)} - {"name"}


def parse_presets(table: dict) -> dict[str, Preset]:
    """The built-in presets, then the config's ``[presets]`` (a configured name replaces a built-in)."""
    if not isinstance(table, dict):
        raise PresetError("[presets] must hold tables: [presets.NAME]")
    presets = dict(BUILTIN_PRESETS)
    for name, entry in table.items():
        where = f"presets.{name}"
        if not isinstance(entry, dict):
            raise PresetError(f"{where} must be a table")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise PresetError(f"{where}.{unknown[0]} is not a preset setting; known: {', '.join(sorted(_KEYS))}")
        values = {}
        for key in PRESET_FIELDS:
            if key in entry:
                values[key] = _wire(SUBMIT_FIELDS[key], entry[key], f"{where}.{key}")
        if "prompt" in entry:
            if not isinstance(entry["prompt"], str) or "{prompt}" not in entry["prompt"]:
                raise PresetError(f"{where}.prompt must be a text holding {{prompt}} (where the job's prompt goes)")
            values["prompt"] = entry["prompt"]
        for key in ("few_step",):
            if key in entry:
                if not isinstance(entry[key], bool):
                    raise PresetError(f"{where}.{key} must be true or false")
                values[key] = entry[key]
        if "timestep_spacing" in entry:
            if entry["timestep_spacing"] not in TIMESTEP_SPACINGS:
                raise PresetError(f"{where}.timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}")
            values["timestep_spacing"] = entry["timestep_spacing"]
        if "description" in entry:
            values["description"] = str(entry["description"])
        if "loras" in entry:
            values["loras"] = _loras(entry["loras"], f"{where}.loras")
        presets[name] = Preset(name, **values)
    return presets


def _wire(spec: Field, value, where: str):
    try:
        return spec.check(value, where)
    except ProtocolError as exc:
        raise PresetError(exc.message.replace("`", "")) from None


def _loras(value, where: str) -> tuple[tuple[str, float], ...]:
    """``["name:0.8", {name = "x", weight = 0.5}]`` as (name, weight) pairs."""
    if not isinstance(value, list):
        raise PresetError(f'{where} must be a list such as ["name:0.8", {{name = "other", weight = 0.5}}]')
    out = []
    for index, item in enumerate(value):
        try:
            if isinstance(item, str):
                name, _, weight = item.partition(":")
                item = {"name": name, **({"weight": float(weight)} if weight else {})}
            if not isinstance(item, dict) or not item.get("name") or set(item) - {"name", "weight"}:
                raise ValueError
            weight = float(item.get("weight", 1.0))
        except (ValueError, TypeError):
            raise PresetError(f'{where}[{index}] must be "NAME[:WEIGHT]" or {{name = "NAME", weight = W}}') from None
        if not LORA_WEIGHT_RANGE[0] <= weight <= LORA_WEIGHT_RANGE[1]:
            raise PresetError(f"{where}[{index}]: the weight must be from {LORA_WEIGHT_RANGE[0]:g} to "
                              f"{LORA_WEIGHT_RANGE[1]:g}, got {weight:g}")
        out.append((str(item["name"]), weight))
    return tuple(out)


def apply_preset(job: Job, given: set[str] | frozenset[str], presets: dict[str, Preset]) -> tuple[Job, Preset | None]:
    """``job`` with its preset's settings where its message (whose keys are ``given``) left them out, and
    the preset's prompt template around its prompt (the preset's LoRAs are merged by the intake, which
    names where each came from). ``unknown_preset`` naming the field for a name not configured."""
    if job.preset is None:
        return job, None
    preset = presets.get(job.preset)
    if preset is None:
        # (models and LoRAs said "did you mean" for a wrong capital; `--preset LCM` was only refused)
        same = [name for name in presets if name.casefold() == job.preset.casefold()]
        hint = f" (did you mean {shown(same[0])}? names are case-sensitive)" if same else ""
        raise ProtocolError("unknown_preset", f"no preset named {shown(job.preset)}{hint}; this server has: "
                            f"{', '.join(sorted(presets)) or 'none'}", "preset")
    sampling = {key: getattr(preset, key) for key in ("sampler", "steps", "guidance")
                if key not in given and getattr(preset, key) is not None}
    changes: dict = {"sampling": dataclasses.replace(job.sampling, **sampling)}
    if "model" not in given and preset.model is not None:
        changes["model"] = preset.model
    if "negative_prompt" not in given and preset.negative_prompt is not None:
        changes["negative_prompt"] = preset.negative_prompt
    changes["prompt"] = preset.prompt.replace("{prompt}", job.prompt)
    return dataclasses.replace(job, **changes), preset


def describe(presets: dict[str, Preset]) -> list[dict]:
    """The presets as hosts see them in ``welcome`` and ``models``."""
    out = []
    for preset in presets.values():
        item = {"name": preset.name, "few_step": preset.few_step}
        for key in ("model", "sampler", "steps", "guidance", "negative_prompt", "timestep_spacing"):
            if getattr(preset, key) is not None:
                item[key] = getattr(preset, key)
        if preset.prompt != "{prompt}":
            item["prompt"] = preset.prompt
        if preset.loras:
            item["loras"] = [{"name": name, "weight": weight} for name, weight in preset.loras]
        if preset.description:
            item["description"] = preset.description
        out.append(item)
    return out

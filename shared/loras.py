"""LoRAs a job asks for: the ``loras`` field and A1111's ``<lora:name:weight>`` prompt tags.

Pure and standard-library only. The tags are taken out of the prompt before it is encoded, and
merged with the field: on a name given both ways the ``loras`` field wins (it is the explicit,
typed request; a tag is usually left over in a pasted prompt), and both win over a preset's LoRAs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import ProtocolError, shown
from .vocabulary import LORA_WEIGHT_RANGE

# <lora:name>, <lora:name:0.8>; A1111 also accepts a second (text encoder) weight, <lora:name:0.8:0.5>,
# which is refused here with a sentence rather than silently dropped.
_TAG = re.compile(r"<lora:([^:<>]*)(?::([^<>]*))?>", re.IGNORECASE)


def split_prompt(prompt: str, field: str = "prompt") -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its ``<lora:...>`` tags (spaces around them closed up), and the tags as
    (name, weight) in order; ProtocolError naming ``field`` for a malformed tag or weight."""
    found: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        name, weight = match[1].strip(), match[2]
        if not name:
            raise ProtocolError("invalid_field", f"`{field}`: {shown(match[0])} names no LoRA; write "
                                "<lora:NAME:WEIGHT>", field)
        value = 1.0
        if weight is not None:
            if ":" in weight or "=" in weight:  # A1111's <lora:x:0.8:0.5>, <lora:x:unet=0.8:te=0.5>
                raise ProtocolError("invalid_field", f"`{field}`: {shown(match[0])} gives separate UNet / text "
                                    "encoder weights, which this server does not take; write one weight for both, "
                                    f"<lora:{name}:WEIGHT>", field)
            try:
                value = float(weight.strip()) + 0.0  # -0 is 0
            except ValueError:
                raise ProtocolError("invalid_field", f"`{field}`: the weight in {shown(match[0])} is not a number; "
                                    "write <lora:NAME:WEIGHT>, e.g. <lora:name:0.8>", field) from None
            if value != value:
                raise ProtocolError("invalid_field", f"`{field}`: the weight in {shown(match[0])} is not a number",
                                    field)
        low, high = LORA_WEIGHT_RANGE
        if not low <= value <= high:
            raise ProtocolError("invalid_field", f"`{field}`: the weight of LoRA {shown(name)} must be from {low:g} "
                                f"to {high:g}, got {value:g}", field)
        if any(seen == name for seen, _ in found):
            # two weights for one LoRA (a pasted prompt plus a tag of one's own): taking either one without
            # a word gave a picture the painter did not ask for
            raise ProtocolError("invalid_field", f"`{field}`: LoRA {shown(name)} is tagged twice; keep one "
                                f"<lora:{name}:WEIGHT> tag", field)
        found.append((name, value))
        return " "

    text = _TAG.sub(take, prompt)
    if found:
        text = re.sub(r"[ \t]{2,}", " ", text).strip()
        text = re.sub(r"\s+([,.;])", r"\1", text)  # "a cat <lora:x>, red" -> "a cat, red"
    return text, found


def missing(what: str, name: str, available, left_out: Mapping[str, str] | None = None,
            family: str | None = None) -> str:
    """The sentence for a ``what`` (LoRA, model) called ``name`` that is not among ``available``: why the
    server left such a file out, or the name it has in other capitals (A1111 on Windows finds
    ``<lora:Detail:1>`` for detail.safetensors), and what it has. With the job model's ``family`` (and
    ``available`` a name -> family mapping), what it has for that family, the others counted."""
    if left_out and name in left_out:
        return f"{what} {shown(name)} cannot be used: {left_out[name]}"
    names = ", ".join(sorted(available)) or "none"
    if family is not None and isinstance(available, Mapping):
        fitting = sorted(other for other, kind in available.items() if kind in (None, family))
        others = len(available) - len(fitting)
        names = f"for {family} models, {', '.join(fitting) or 'none'}" + (
            f" (and {others} for other families)" if others else "")
    # ComfyUI names files with their folder and suffix (styles/ink.safetensors); A1111 by the bare name
    stripped = re.sub(r"\.(safetensors|ckpt|pt)$", "", name.replace("\\", "/"), flags=re.IGNORECASE).casefold()
    bare = stripped.rsplit("/", 1)[-1]
    same = [other for other in available if other.casefold() in (name.casefold(), stripped)] or [
        other for other in available if other.rsplit("/", 1)[-1].casefold() == bare]
    hint = ""
    if len(same) == 1:
        hint = f" (did you mean {shown(same[0])}? names are case-sensitive, without the file's suffix)"
    return f"no {what} named {shown(name)}{hint}; this server has: {names}"


def merge(*sources: tuple[str, list[tuple[str, float]]]) -> list[tuple[str, float, str]]:
    """The job's LoRAs from (field, [(name, weight)]) sources, strongest first: a name takes its weight
    from the first source that gives it. Each comes back as (name, weight, field that gave it); a list
    field (``loras``) is named per item (``loras[1].name``)."""
    out: dict[str, tuple[str, float, str]] = {}
    for field, loras in sources:
        for index, (name, weight) in enumerate(loras):
            where = f"{field}[{index}].name" if field == "loras" else field
            out.setdefault(name, (name, weight, where))
    return list(out.values())


def check(loras: list[tuple[str, float, str]], available: Mapping[str, str | None], family: str | None,
          model: str, left_out: Mapping[str, str] | None = None) -> None:
    """Refuse a LoRA (from ``merge``) the server does not have, or one made for another family than the
    ``model``'s (``family``: None when not known yet). ``available``: name -> the LoRA's family (None:
    not known); ``left_out``: name -> why, for files the server found but cannot use."""
    for name, _, where in loras:
        if name not in available:
            raise ProtocolError("unknown_lora", missing("LoRA", name, available, left_out, family), where)
        made_for = available[name]
        if family is not None and made_for is not None and made_for != family:
            fitting = sorted(other for other, kind in available.items() if kind == family)
            instead = f", or one of the {family} LoRAs: {', '.join(fitting[:5])}{' …' * (len(fitting) > 5)}" \
                if fitting else ""
            raise ProtocolError("wrong_family", f"LoRA {shown(name)} is for {made_for} models, but model "
                                f"{shown(model)} is {family}: pick a model of the {made_for} family for it"
                                f"{instead}", where)

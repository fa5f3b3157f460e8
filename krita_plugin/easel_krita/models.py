"""The model picker's contents, and the settings a document keeps for Easel.

Pure: the server's ``models`` reply and ``welcome.capabilities`` in, labels and tooltips out; a
document's saved settings as bytes (a Krita document annotation) in and out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

FAMILIES = {"sd15": "SD 1.5", "sdxl": "SDXL"}
ANNOTATION = "easel/settings"  # the annotation type a .kra keeps the document's Easel settings under


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model combo."""

    name: str
    label: str
    tooltip: str


def describe(entry: dict, capabilities: dict | None = None, default: str | None = None) -> ModelChoice:
    """A ``models`` entry as the combo shows it: name, family and native size in the label; what it can
    do (inpaint UNet, ControlNet types, reference adapter) in the tooltip."""
    name = entry.get("name", "?")
    family = entry.get("family")
    size = entry.get("native_size")
    facts = [FAMILIES.get(family, family) if family else "family unknown until loaded"]
    if size:
        facts.append(f"{size} px")
    label = f"{name} ({', '.join(facts)})" + (" · default" if name == default else "")
    capabilities = capabilities or {}
    can = ["a dedicated inpaint UNet" if entry.get("inpaint_model")
           else "no inpaint UNet (inpaints with the base UNet)"]
    controls = entry.get("control_types", capabilities.get("control_types"))
    can.append(f"ControlNet: {', '.join(controls)}" if controls else "no ControlNet")
    families = capabilities.get("reference_families")
    if families is not None and family:
        can.append("reference layers (IP-Adapter)" if family in families else "no reference layers (no IP-Adapter)")
    if entry.get("loaded"):
        can.append("loaded")
    return ModelChoice(name, label, f"{name}: " + "; ".join(can) + ".")


def choices(models_reply: dict | None, capabilities: dict | None = None) -> list[ModelChoice]:
    """The combo's entries, in the server's order (its default is marked)."""
    if not models_reply:
        return []
    default = models_reply.get("default")
    return [describe(entry, capabilities, default) for entry in models_reply.get("models", []) if entry.get("name")]


def pick(names: list[str], saved: str | None, current: str | None, default: str | None) -> str | None:
    """Which model the combo shows: the document's saved one while the server has it, else the one
    shown now (a document that saved none keeps the painter's last pick), else the server's default,
    else the first (None when the server lists none)."""
    for name in (saved, current, default):
        if name and name in names:
            return name
    return names[0] if names else None


def read_saved(data: bytes | None) -> dict:
    """A document's saved Easel settings (an empty dict for none, or for bytes that are not ours)."""
    if not data:
        return {}
    try:
        saved = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def write_saved(saved: dict) -> bytes:
    return json.dumps(saved, sort_keys=True).encode("utf-8")

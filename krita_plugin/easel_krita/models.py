"""The model picker's contents, and the settings a document keeps for Easel.

Pure: the server's ``models`` reply and ``welcome.capabilities`` in, labels, tooltips and what the
docker offers with the chosen model out; a document's saved settings as bytes (a Krita document
annotation) in and out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .protocol import capabilities as server_capabilities
from .protocol import model_capabilities, vocabulary

FAMILIES = {"sd15": "SD 1.5", "sdxl": "SDXL", "flux": "Flux"}
ANNOTATION = "easel/settings"  # the annotation type a .kra keeps the document's Easel settings under


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model combo."""

    name: str
    label: str
    tooltip: str


def describe(entry: dict, capabilities: dict | None = None, default: str | None = None) -> ModelChoice:
    """A ``models`` entry as the combo shows it: name, family and native size in the label; what it can
    do (inpaint UNet, instruct edits, its own ControlNet types and reference modes) in the tooltip. An
    entry without ``capabilities`` (an older server) is described from the server-wide lists."""
    name = entry.get("name", "?")
    family = entry.get("family")
    size = entry.get("native_size")
    facts = [FAMILIES.get(family, family) if family else "family unknown until loaded"]
    if size:
        facts.append(f"{size} px")
    label = f"{name} ({', '.join(facts)})" + (" · default" if name == default else "")
    capabilities = capabilities or {}
    own = entry.get("capabilities")
    can = ["a dedicated inpaint UNet" if entry.get("inpaint_model")
           else "no inpaint UNet (inpaints with the base UNet)"]
    if isinstance(own, dict):
        modes = own.get("modes", [])
        if "instruct" in modes:
            can.append("instruct edits" + ("" if own.get("image_guidance", True) else " (no image guidance)"))
        missing = [mode for mode in vocabulary.MODES if mode not in modes and mode not in ("upscale", "instruct")]
        if missing:
            can.append(f"cannot {', '.join(missing)}")
        controls = own.get("control_types", [])
        can.append(f"ControlNet: {', '.join(controls)}" if controls else "no ControlNet")
        references = own.get("reference_modes", [])
        can.append(f"reference layers: {', '.join(references)}" if references else "no reference layers")
        if not own.get("negative_prompt", True):
            can.append("no negative prompt")
        if not own.get("loras", family != "flux"):  # (a server older than `loras` refuses them on flux)
            can.append("no LoRAs")
    else:
        controls = entry.get("control_types", capabilities.get("control_types"))
        can.append(f"ControlNet: {', '.join(controls)}" if controls else "no ControlNet")
        families = capabilities.get("reference_families")
        if families is not None and family:
            can.append("reference layers (IP-Adapter)" if family in families
                       else "no reference layers (no IP-Adapter)")
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


@dataclass(frozen=True)
class Offer:
    """What the docker offers with the chosen model: the control types and reference modes it lists, and
    for each action why it is off ("" while it is on)."""

    control_types: tuple[str, ...]
    reference_modes: tuple[str, ...]
    generate: str = ""  # the Generate button: generate, img2img or inpaint, as the selection and strength say
    remove: str = ""
    expand: str = ""
    instruct: str = ""
    control: str = ""  # adding control layers
    reference: str = ""  # adding reference layers
    negative_prompt: str = ""
    image_guidance: str = ""
    loras: tuple[str, ...] = ()  # the names its prompt's <lora:…> tags may take
    embeddings: tuple[str, ...] = ()  # the textual inversions its prompt may name


def offer(name: str | None, caps, server: server_capabilities.Offer) -> Offer:
    """What to offer with the model ``name`` whose capabilities are ``caps`` (a ``ModelCapabilities``, or
    None when the server does not say): the server's offer narrowed to what the model can do."""
    control = "" if server.control_types else "The server has no ControlNet configured."
    reference = "" if server.references and server.reference_modes else "The server has no IP-Adapter configured."
    if caps is None:
        return Offer(server.control_types, server.reference_modes if not reference else (), control=control,
                     reference=reference, loras=server.loras_for(None), embeddings=server.embeddings_for(None))
    modes = set(caps.modes)
    serves = f"it serves {', '.join(caps.modes) or 'nothing'}"

    def cannot(mode: str, what: str, hint: str = "") -> str:
        return "" if mode in modes else f"The model “{name}” cannot {what}: {serves}.{hint}"

    generate = "" if modes & {"generate", "img2img", "inpaint"} else \
        f"The model “{name}” cannot generate, refine or inpaint: {serves}."
    if caps.family is None:  # not known until it loads: only its modes are known
        controls, references = server.control_types, server.reference_modes
    else:
        # The model's own, within the server's offer (they agree, unless the server's changed since).
        controls = tuple(kind for kind in server_capabilities.ordered(caps.control_types, vocabulary.CONTROL_TYPES)
                         if kind in server.control_types)
        references = tuple(mode for mode in server_capabilities.ordered(caps.reference_modes,
                                                                         vocabulary.REFERENCE_MODES)
                           if mode in server.reference_modes and server.references)
        # An SD family lacks them by the server's configuration; other families (flux) take none here.
        sd = caps.family in model_capabilities.SD_FAMILIES
        family = FAMILIES.get(caps.family, caps.family)
        if not controls:
            control = (f"No ControlNet is configured for {family} models on this server." if sd
                       else f"The model “{name}” ({family}) takes no ControlNet units.")
        if not references:
            reference = (f"No IP-Adapter is configured for {family} models on this server." if sd
                         else f"The model “{name}” ({family}) takes no reference layers (IP-Adapter).")
    negative = "" if caps.negative_prompt else (f"The model “{name}” takes no negative prompt: it uses distilled "
                                                "guidance (the server's `true_cfg` setting adds one).")
    image_guidance = "" if caps.image_guidance and "instruct" in modes else (
        f"The model “{name}” has no image guidance: its instruct edits follow the instruction alone."
        if "instruct" in modes else f"The model “{name}” makes no instruct edits.")
    return Offer(controls, references, generate=generate,
                 remove=cannot("remove", "remove a selection"), expand=cannot("expand", "expand the canvas"),
                 instruct=cannot("instruct", "edit by instruction",
                                 " Pick a model with an instruct component (InstructPix2Pix or Flux Kontext)."),
                 control=control, reference=reference, negative_prompt=negative, image_guidance=image_guidance,
                 loras=server.loras_for(caps.family) if caps.loras else (),
                 embeddings=server.embeddings_for(caps.family) if caps.family != "flux" else ())


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

"""The server's models as a host's model picker lists them: name, family, native size and what each
can do, from the ``models`` reply and ``welcome.capabilities``.

Pure: dicts in, plain values out, shared by the hosts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model_capabilities import ModelCapabilities

FAMILY_NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL", "flux": "Flux"}
MASKED_MODES = ("inpaint", "expand", "remove")
SERVER_DEFAULT = "Server default"  # the picker's first entry: let the server choose
SHORT_LIST = 3  # ControlNet types named one by one up to this many, else counted


@dataclass(frozen=True)
class ModelChoice:
    """One model a painter can pick."""

    name: str
    family: str | None = None
    native_size: int | None = None
    inpaint_model: bool = False     # a dedicated 9-channel inpaint UNet
    references: bool = False        # the server has an IP-Adapter for its family
    default: bool = False           # the server's default model
    capabilities: ModelCapabilities | None = None  # None: a server that does not say per model

    @property
    def label(self) -> str:
        """``demo-xl (SDXL, 1024 px: inpaint UNet, 13 ControlNet types, references)``; the default says so."""
        about = [FAMILY_NAMES.get(self.family, self.family)] if self.family else []
        if self.native_size:
            about.append(f"{self.native_size} px")
        can = self._can() if self.capabilities else [
            what for what, has in (("inpaint UNet", self.inpaint_model), ("references", self.references)) if has]
        text = ", ".join(about) + (": " if about and can else "") + ", ".join(can)
        return f"{self.name}{' (' + text + ')' if text else ''}{', default' if self.default else ''}"

    def _can(self) -> list[str]:
        """What the model's own capabilities say, shortest first: its modes where they are not the usual
        ones, its ControlNet types, its reference modes, a negative prompt it refuses."""
        caps = self.capabilities
        modes = set(caps.modes)
        if modes == {"instruct"}:
            return ["instruct only"]  # neither ControlNets nor references apply to instruct
        if modes <= set(MASKED_MODES):
            can = ["inpaint only"]
        elif modes & set(MASKED_MODES):
            can = [("Fill inpaint" if self.family == "flux" else "inpaint UNet")] if self.inpaint_model else []
        else:
            can = ["no inpaint"]
        if "instruct" in modes:
            can.append("instruct")
        types = caps.control_types
        if types:
            can.append(f"ControlNet ({', '.join(types)})" if len(types) <= SHORT_LIST else
                       f"{len(types)} ControlNet types")
        if caps.reference_modes:
            can.append("references + face" if "face" in caps.reference_modes else "references")
        if not caps.negative_prompt:
            can.append("no negative prompt")
        return can


def model_choices(models_reply: dict | None, capabilities: dict | None = None) -> tuple[ModelChoice, ...]:
    """The server's models in its order; () before a server has answered. What each can do is its
    ``capabilities`` entry; from a server without one, references by ``welcome``'s reference families."""
    if not models_reply:
        return ()
    references = set((capabilities or {}).get("reference_families") or ())
    default = models_reply.get("default")
    return tuple(ModelChoice(
        name=entry["name"], family=entry.get("family"), native_size=entry.get("native_size"),
        inpaint_model=bool(entry.get("inpaint_model")),
        references=bool(entry["capabilities"].get("reference_modes")) if entry.get("capabilities") else
        entry.get("family") in references, default=entry["name"] == default,
        capabilities=ModelCapabilities.from_wire(entry.get("family"), entry["capabilities"])
        if entry.get("capabilities") else None)
        for entry in models_reply.get("models", ()) if entry.get("name"))


def chosen(models_reply: dict | None, name: str | None) -> ModelChoice | None:
    """The model a job naming ``name`` runs on ("" or None: the server's default), or None when the
    server has not listed it."""
    choices = model_choices(models_reply)
    return next((choice for choice in choices if (choice.name == name if name else choice.default)), None)


def picker_labels(models_reply: dict | None, capabilities: dict | None = None) -> dict[str, str]:
    """A picker's entries, label -> model name: first the server's default ("" = let the server
    choose), then every model."""
    choices = model_choices(models_reply, capabilities)
    default = next((choice.name for choice in choices if choice.default), None)
    first = f"{SERVER_DEFAULT} ({default})" if default else SERVER_DEFAULT
    return {first: "", **{choice.label: choice.name for choice in choices}}


def label_for(labels: dict[str, str], name: str | None) -> str:
    """The entry a picker shows for ``name``: its label while it is listed, else the server default's."""
    return next((label for label, listed in labels.items() if listed == (name or "")), next(iter(labels)))


def name_for(labels: dict[str, str], label: str | None) -> str | None:
    """The model a picker entry stands for, by its name where the entry was written from an earlier offer (a
    saved default: a model's description changes with the server's ControlNets, its default's name with the
    default): "" for the server's default, None for a model not listed now."""
    if label in labels:
        return labels[label]
    if not label or label.startswith(SERVER_DEFAULT):
        return ""
    # the longest name that begins the label as a name does ("demo-xl (…" is not "demo"'s)
    named = [name for name in labels.values() if name and (label == name or label.startswith((f"{name} (",
                                                                                               f"{name}, ")))]
    return max(named, key=len, default=None)

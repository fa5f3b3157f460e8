"""The server's models as a host's model picker lists them: name, family, native size and what each
can do, from the ``models`` reply and ``welcome.capabilities``.

Pure: dicts in, plain values out, shared by the hosts.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILY_NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL"}


@dataclass(frozen=True)
class ModelChoice:
    """One model a painter can pick."""

    name: str
    family: str | None = None
    native_size: int | None = None
    inpaint_model: bool = False     # a dedicated 9-channel inpaint UNet
    references: bool = False        # the server has an IP-Adapter for its family
    default: bool = False           # the server's default model

    @property
    def label(self) -> str:
        """``demo-xl (SDXL, 1024 px: inpaint UNet, references)``; the default says so."""
        about = [FAMILY_NAMES.get(self.family, self.family)] if self.family else []
        if self.native_size:
            about.append(f"{self.native_size} px")
        can = [what for what, has in (("inpaint UNet", self.inpaint_model), ("references", self.references)) if has]
        text = ", ".join(about) + (": " if about and can else "") + ", ".join(can)
        return f"{self.name}{' (' + text + ')' if text else ''}{', default' if self.default else ''}"


def model_choices(models_reply: dict | None, capabilities: dict | None = None) -> tuple[ModelChoice, ...]:
    """The server's models in its order; () before a server has answered. (``welcome`` lists the
    ControlNet types of all families together, so a model's own are not known.)"""
    if not models_reply:
        return ()
    references = set((capabilities or {}).get("reference_families") or ())
    default = models_reply.get("default")
    return tuple(ModelChoice(
        name=entry["name"], family=entry.get("family"), native_size=entry.get("native_size"),
        inpaint_model=bool(entry.get("inpaint_model")), references=entry.get("family") in references,
        default=entry["name"] == default)
        for entry in models_reply.get("models", ()) if entry.get("name"))


def picker_labels(models_reply: dict | None, capabilities: dict | None = None) -> dict[str, str]:
    """A picker's entries, label -> model name: first the server's default ("" = let the server
    choose), then every model."""
    choices = model_choices(models_reply, capabilities)
    default = next((choice.name for choice in choices if choice.default), None)
    first = f"Server default ({default})" if default else "Server default"
    return {first: "", **{choice.label: choice.name for choice in choices}}


def label_for(labels: dict[str, str], name: str | None) -> str:
    """The entry a picker shows for ``name``: its label while it is listed, else the server default's."""
    return next((label for label, listed in labels.items() if listed == (name or "")), next(iter(labels)))

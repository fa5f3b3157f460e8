"""What a server offers, read from its ``welcome.capabilities``: the control types and reference
modes a host lists, which control types can be preprocessed there, and the limits its fields follow.

Pure: a dict in, plain values out, shared by the hosts. Before a server has answered (or from one
that says nothing) a host offers the protocol's whole vocabulary with the default limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import vocabulary

# The server's defaults (docs/protocol.md, "Limits"), for a host that has not heard from one yet.
DEFAULT_MAX_STEPS, DEFAULT_MAX_BATCH, DEFAULT_MAX_SIDE, DEFAULT_MAX_GENERATE_SIDE = 150, 8, 8192, 8192
DEFAULT_MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Offer:
    """The choices a server offers a painter."""

    control_types: tuple[str, ...] = vocabulary.CONTROL_TYPES
    reference_modes: tuple[str, ...] = vocabulary.REFERENCE_MODES
    preprocessors: tuple[str, ...] = vocabulary.PREPROCESSORS
    references: bool = True  # some model family has an IP-Adapter
    max_steps: int = DEFAULT_MAX_STEPS
    max_batch: int = DEFAULT_MAX_BATCH
    max_side: int = DEFAULT_MAX_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height of a picture sent
    max_generate_side: int = DEFAULT_MAX_GENERATE_SIDE
    upscalers: tuple[str, ...] = ()  # names for an upscale's `upscaler`; () when the server lists none
    loras: tuple[tuple[str, str | None], ...] = ()  # (name, family or None) for a job's `loras`
    presets: tuple[str, ...] = ()  # names for a job's `preset`
    embeddings: tuple[tuple[str, str], ...] = ()  # (name, family): textual inversions a prompt may name

    def embeddings_for(self, family: str | None) -> tuple[str, ...]:
        """The embeddings a model of ``family`` can use (None: not known yet, all of them; flux: none)."""
        return tuple(name for name, made_for in self.embeddings if family is None or made_for == family)

    def loras_for(self, family: str | None) -> tuple[str, ...]:
        """The LoRAs a model of ``family`` can use: those made for it, and those whose family is not
        known (None: every LoRA). None for flux, which takes no LoRAs yet (the server refuses them)."""
        if family == "flux":
            return ()
        return tuple(name for name, made_for in self.loras if family is None or made_for in (family, None))

    def preprocessor(self, control_type: str) -> str | None:
        """The preprocessor ``preprocess: on`` runs for ``control_type`` on this server, or None when
        the type has none (tile, inpaint: the picture is the map) or the server lacks its weights."""
        name = vocabulary.DEFAULT_PREPROCESSOR.get(control_type)
        return name if name in self.preprocessors else None

    def why_no_preprocessor(self, control_type: str) -> str:
        """A sentence for a control type whose Preprocess box is off (empty when it can preprocess)."""
        name = vocabulary.DEFAULT_PREPROCESSOR.get(control_type)
        if name is None:
            return f"The {control_type} control type has no preprocessor: the layer itself is its control image."
        if name not in self.preprocessors:
            return f"The server cannot run the {name} preprocessor: its annotator weights are not installed there."
        return ""


def offer(capabilities: dict | None) -> Offer:
    """The server's offer from its ``welcome.capabilities``; the full vocabulary when there is none."""
    if not capabilities:
        return Offer()
    limits = capabilities.get("limits") or {}
    return Offer(
        control_types=ordered(capabilities.get("control_types", ()), vocabulary.CONTROL_TYPES),
        reference_modes=ordered(capabilities.get("reference_modes", ()), vocabulary.REFERENCE_MODES),
        preprocessors=tuple(capabilities.get("preprocessors", ())),
        references=bool(capabilities.get("reference_families", ())),
        max_steps=int(limits.get("max_steps", DEFAULT_MAX_STEPS)),
        max_batch=int(limits.get("max_batch", DEFAULT_MAX_BATCH)),
        max_side=int(limits.get("max_side", DEFAULT_MAX_SIDE)),
        max_pixels=int(limits.get("max_pixels", DEFAULT_MAX_PIXELS)),
        max_generate_side=int(limits.get("max_generate_side", DEFAULT_MAX_GENERATE_SIDE)),
        upscalers=tuple(capabilities.get("upscalers", ())),
        loras=tuple((item["name"], item.get("family")) for item in capabilities.get("loras", ())),
        presets=tuple(item["name"] for item in capabilities.get("presets", ())),
        embeddings=tuple((item["name"], item.get("family")) for item in capabilities.get("embeddings", ())),
    )


def ordered(offered, known: tuple[str, ...]) -> tuple[str, ...]:
    """``offered`` in the vocabulary's order (the server sorts its list alphabetically, hosts list
    the common types first); names this copy of the protocol does not know yet come last, as the
    server accepts them."""
    offered = list(dict.fromkeys(offered))
    return tuple(name for name in known if name in offered) + tuple(sorted(set(offered) - set(known)))


def pick(choices: tuple[str, ...], current: str, preferred: str) -> str:
    """Which choice a combo box shows after its list changed: the current one while it is still
    offered, else ``preferred``, else the first ('' when there are none)."""
    for name in (current, preferred):
        if name in choices:
            return name
    return choices[0] if choices else ""

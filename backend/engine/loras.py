"""LoRAs: each loaded once into a model (its UNets and text encoders) through diffusers' PEFT
integration, then switched per job: the job's LoRAs on at their weights, the others off, and every
LoRA off (``disable_lora``) for a job without any, which then runs exactly the no-LoRA numbers
(on a compiled UNet, compiled: ``Speed.lora_stance`` runs it eager only in jobs with LoRAs).

Kohya (``lora_unet_*`` / ``lora_te*_``) and diffusers / PEFT files load alike (diffusers converts
them). A LoRA's family is read from its file's header (metadata, then tensor names and shapes), so a
LoRA made for another family is refused before the job is accepted.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import warnings
from dataclasses import dataclass

from backend.engine.models import LoadedModel, ModelError
from backend.engine.speed import Speed

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# Cross-attention width (the text embedding a UNet attends to) of each family's real models.
_CONTEXT_FAMILY = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
# kohya's ss_base_model_version and the modelspec architecture, as family names.
_METADATA_FAMILY = (("sdxl", "sdxl"), ("stable-diffusion-xl", "sdxl"), ("sd_v1", "sd15"),
                    ("stable-diffusion-v1", "sd15"), ("sd_v2", "sd2"), ("stable-diffusion-v2", "sd2"),
                    ("flux", "flux"), ("sd3", "sd3"), ("stable-diffusion-3", "sd3"))


@dataclass(frozen=True)
class LoraDescription:
    name: str
    family: str | None  # None: not told by the file


def family_of(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> str | None:
    """The model family a LoRA was trained for, from its header: ``sd15``, ``sdxl``, another family's
    name (``sd2``, ``flux`` ...), or None when nothing tells."""
    for key in ("ss_base_model_version", "modelspec.architecture"):
        value = (metadata or {}).get(key, "").lower()
        for word, family in _METADATA_FAMILY:
            if value.startswith(word):
                return family
    keys = list(shapes)
    if any(key.startswith(("lora_te2_", "text_encoder_2.", "te2.")) for key in keys):
        return "sdxl"  # only SDXL has a second text encoder
    for key, shape in shapes.items():  # a cross-attention key projection reads the text embedding
        if re.search(r"attn2[._]to_k", key) and re.search(r"lora_down|lora_A|lora\.down", key) and len(shape) == 2:
            if shape[1] in _CONTEXT_FAMILY:
                return _CONTEXT_FAMILY[shape[1]]
    if any(re.search(r"transformer_blocks[._][1-9]", key) for key in keys):
        return "sdxl"  # SD1.5's attention blocks hold one transformer block each
    if any(key.startswith(("lora_te_", "text_encoder.", "lora_te1_")) for key in keys):
        return "sd15"  # one text encoder, named as SD1.5 trainers name it
    return None


@functools.lru_cache(maxsize=1024)
def _file_family(path: str, mtime_ns: int, size: int) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
            return family_of(shapes, weights.metadata())
    except Exception as exc:  # unreadable: it fails with a sentence when a job loads it
        log.warning("cannot read LoRA %s: %s", path, exc)
        return None


def file_family(path: str) -> str | None:
    """``family_of`` a LoRA file, read once per version of the file."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _file_family(path, stat.st_mtime_ns, stat.st_size)


class Loras:
    """The configured LoRAs (name -> .safetensors file) and their state in the loaded models."""

    def __init__(self, files: dict[str, str], speed: Speed):
        self.files, self.speed = dict(files), speed
        self._tried: set[tuple[int, str]] = set()  # (id(module), LoRA) loads done, even those that added nothing
        self._adapters: dict[str, str] = {}  # LoRA name -> its PEFT adapter name
        self._versions: dict[str, tuple | None] = {}  # LoRA name -> (path, mtime, size) of the file loaded
        self._holders: dict[str, list[tuple[str, object]]] = {}  # adapter -> the (part, module)s it is loaded in
        self._count = itertools.count()

    def names(self) -> list[str]:
        return sorted(self.files)

    def families(self) -> dict[str, str | None]:
        """Every LoRA's family (None where its file does not tell), for the intake's checks."""
        return {name: file_family(path) for name, path in self.files.items()}

    def describe(self) -> list[LoraDescription]:
        return [LoraDescription(name, family) for name, family in sorted(self.families().items())]

    def apply(self, model: LoadedModel, pipe, loras: tuple[tuple[str, float], ...]) -> tuple:
        """Switch ``pipe``'s UNet and text encoders to the job's LoRAs (loading those not loaded yet);
        weight 0 is off. Returns what the prompt's embeddings now depend on (the text encoders'
        active LoRAs), for the prompt cache's key."""
        # in name order: PEFT adds the LoRAs' outputs in the order given, and float sums depend on it
        chosen = sorted((name, float(weight)) for name, weight in loras if weight != 0)
        for name, _ in chosen:
            self._load(model, pipe, name)
        active = [(self.adapter(name), weight) for name, weight in chosen]
        text = []
        for part, module in self._modules(pipe):
            loaded = set(getattr(module, "peft_config", None) or ())
            wanted = [(name, weight) for name, weight in active if name in loaded]
            if part == "unet":  # (even with no LoRA layers left in it: compiled again for a job without)
                self.speed.lora_stance(module, bool(wanted), f"LoRAs are loaded into model {model.name}")
            if not loaded:
                continue
            _switch(part, module, wanted)
            if part != "unet":
                text.append((part, tuple(wanted)))
        return tuple(item for item in text if item[1])

    def adapter(self, name: str) -> str:
        """The PEFT adapter name of a LoRA: its name made a valid module key (PEFT keeps adapters in
        ModuleDicts, whose keys cannot hold a dot, and A1111 file names often do: ``detail_v1.5``)."""
        if name not in self._adapters:
            self._adapters[name] = f"{re.sub(r'[^A-Za-z0-9_]', '_', name)}_{next(self._count)}"
        return self._adapters[name]

    # -- loading ------------------------------------------------------------------------------

    @staticmethod
    def _modules(pipe) -> list[tuple[str, object]]:
        return [(part, getattr(pipe, part)) for part in ("unet", *TEXT_ENCODERS) if getattr(pipe, part, None)]

    def _load(self, model: LoadedModel, pipe, name: str) -> None:
        self._forget_if_replaced(name)
        adapter = self.adapter(name)
        missing = [(part, module) for part, module in self._modules(pipe) if (id(module), adapter) not in self._tried]
        if not missing:
            return
        path = self.files.get(name)
        if path is None:  # its file left the LoRA folder after the job was accepted
            raise ModelError("model_load_failed", f"LoRA {name} is gone from the LoRA folders", "loras")
        cls = type(model.base)
        try:
            from safetensors.torch import load_file

            log.info("loading LoRA %s into model %s (%s) from %s", name, model.name,
                     ", ".join(part for part, _ in missing), path)
            extra = {"unet_config": model.base.unet.config} if model.family == "sdxl" else {}
            # The tensors themselves, not the path: given a path, diffusers guesses a file name (and in offline
            # mode refuses to). Read again for a model's second UNet rather than kept: the layers hold a copy.
            state, alphas, metadata = cls.lora_state_dict(load_file(path), return_lora_metadata=True, **extra)
            with _quiet():
                self._load_into(cls, pipe, model, name, adapter, missing, state, alphas, metadata)
        except Exception as exc:
            raise ModelError("model_load_failed", f"LoRA {name} ({path}) could not be loaded into model "
                             f"{model.name}: {exc}", "loras") from exc

    def _forget_if_replaced(self, name: str) -> None:
        """A LoRA file saved again since it was loaded (a painter retraining it, a new version downloaded
        over the old) loads again under a new adapter name: the layers hold a copy of the old weights,
        which jobs went on using without a word."""
        path = self.files.get(name)  # one look: the server thread replaces the dict when it reads the folders
        if path is None:
            return
        try:
            stat = os.stat(path)
            version = (path, stat.st_mtime_ns, stat.st_size)  # another file of that name: another LoRA
        except OSError:
            version = None  # gone: the load says so
        if self._versions.setdefault(name, version) == version:
            return
        self._versions[name] = version
        old = self._adapters.pop(name, None)
        log.info("LoRA %s: %s changed since it was loaded; loading it again", name, path)
        for part, module in self._holders.pop(old, []):
            _delete(part, module, old)

    def _load_into(self, cls, pipe, model: LoadedModel, name: str, adapter: str, missing: list, state: dict, alphas,
                   metadata) -> None:
        for part, module in missing:
            if part == "unet":
                self.speed.unfuse(module, f"LoRA {name} is loaded into model {model.name}")
                cls.load_lora_into_unet(dict(state), network_alphas=alphas, unet=module, adapter_name=adapter,
                                        metadata=metadata, _pipeline=pipe)
            else:
                cls.load_lora_into_text_encoder(dict(state), network_alphas=alphas, text_encoder=module,
                                                prefix=part, lora_scale=1.0, adapter_name=adapter,
                                                metadata=metadata, _pipeline=pipe)
            self._tried.add((id(module), adapter))
            self._holders.setdefault(adapter, []).append((part, module))


@contextlib.contextmanager
def _quiet():
    """Loading a second adapter makes PEFT warn that a model holds several (what we want), and
    transformers 5 reports a kohya text-encoder LoRA's freshly made layers as "MISSING" before
    diffusers fills them in (checked: they hold the file's weights)."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        transformers_logging.set_verbosity(level)


def _switch(part: str, module, wanted: list[tuple[str, float]]) -> None:
    """One module with exactly ``wanted`` LoRAs on at their weights (none: every LoRA layer bypassed)."""
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    if part == "unet":
        if not wanted:
            module.disable_lora()
            return
        module.enable_lora()
        module.set_adapters([name for name, _ in wanted], [weight for _, weight in wanted])
        return
    if not wanted:
        disable_lora_for_text_encoder(module)
        return
    enable_lora_for_text_encoder(module)
    set_adapters_for_text_encoder([name for name, _ in wanted], module, [weight for _, weight in wanted])


def _delete(part: str, module, adapter: str) -> None:
    """Take ``adapter``'s layers out of one module, where it has any."""
    if adapter not in (getattr(module, "peft_config", None) or {}):
        return
    if part == "unet":
        module.delete_adapters([adapter])
        return
    from diffusers.utils.peft_utils import delete_adapter_layers

    delete_adapter_layers(module, adapter)

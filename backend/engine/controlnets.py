"""ControlNet models: configured per family and control type, loaded on first use, kept in an LRU
within a memory budget (a painter switching between canny, depth and pose keeps the recent ones)."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import torch

from backend.engine.models import ModelError, check_pickle, to_device

log = logging.getLogger(__name__)


class ControlNetCache:
    """Loads ControlNets by (family, type) and drops the least recently used beyond the budget."""

    def __init__(self, sources: dict[str, dict[str, str]], device: torch.device, dtype: torch.dtype,
                 budget_bytes: int, allow_pickle: bool = False, prepare=None):
        self.sources, self.device, self.dtype = sources, device, dtype
        self.prepare = prepare  # called on each freshly loaded ControlNet (the engine's speed switches)
        self.budget_bytes, self.allow_pickle = budget_bytes, allow_pickle
        self._loaded: collections.OrderedDict[tuple[str, str], torch.nn.Module] = collections.OrderedDict()

    def get(self, family: str, kinds: list[str]) -> list:
        """The ControlNets for one job's ``kinds`` on ``family``, in order; ModelError naming the kind
        and the family (field ``type``, ``unit`` its position in ``kinds``) when one is not
        configured. Beyond the budget, the least
        recently used others are dropped, never one this job uses: a job needing more than the
        budget keeps them all rather than reloading one from disk every job."""
        models = []
        for position, kind in enumerate(kinds):
            try:
                models.append(self._get(family, kind))
            except ModelError as exc:
                exc.unit = position
                raise
        self._evict(keep={(family, kind) for kind in kinds})
        return models

    def _get(self, family: str, kind: str):
        key = (family, kind)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        source = self.sources.get(family, {}).get(kind)
        if source is None:
            known = ", ".join(sorted(self.sources.get(family, {}))) or "none"
            raise ModelError("unknown_control_model", f"no {kind} ControlNet is configured for {family} models "
                             f"(configured for {family}: {known})", "type")
        model = self._load(source)
        if self.prepare is not None:
            self.prepare(model)
        self._loaded[key] = model
        return model

    def loaded(self) -> list[tuple[str, str]]:
        return list(self._loaded)

    def _load(self, source: str):
        from diffusers import ControlNetModel

        path = Path(source).expanduser()
        log.info("loading ControlNet from %s", source)
        try:
            check_pickle(source, self.allow_pickle)
            if path.is_file():
                model = ControlNetModel.from_single_file(str(path), dtype=self.dtype)
            else:
                model = ControlNetModel.from_pretrained(str(path) if path.is_dir() else source, dtype=self.dtype,
                                                        use_safetensors=None if self.allow_pickle else True)
        except ModelError as exc:
            exc.field = "type"
            raise
        except Exception as exc:
            hint = " (a single-file ControlNet fetches its configuration from the hub the first time)" \
                if path.is_file() else ""
            raise ModelError("model_load_failed", f"the ControlNet at {source} could not be loaded: {exc}{hint}",
                             "type") from exc
        return to_device(model, self.device)

    def _evict(self, keep: set[tuple[str, str]]) -> None:
        def size(model) -> int:
            return sum(p.numel() * p.element_size() for p in model.parameters())

        droppable = [key for key in self._loaded if key not in keep]  # least recently used first
        while droppable and sum(map(size, self._loaded.values())) > self.budget_bytes:
            key = droppable.pop(0)
            log.info("dropping ControlNet %s/%s to stay within the memory budget", *key)
            del self._loaded[key]

"""IP-Adapter references: loaded into a model once, switched on for jobs with references and off
for jobs without, so a job without references is exactly the no-adapter job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend.config import AdapterSpec
from backend.engine.models import LoadedModel, ModelError, check_pickle

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    """A model's UNet state with and without its adapter, and the adapter's image encoder."""

    plain_processors: dict
    adapter_processors: dict
    projection: object
    image_encoder: object
    feature_extractor: object


class IPAdapters:
    """The configured IP-Adapters, one per family; the worker thread is their only user."""

    def __init__(self, specs: dict[str, AdapterSpec], allow_pickle: bool = False):
        self.specs, self.allow_pickle = specs, allow_pickle
        self._loaded: dict[str, _Loaded] = {}

    def switch_off(self, model: LoadedModel) -> None:
        """Make the model's UNet plain again (if an adapter was ever loaded into it)."""
        state = self._loaded.get(model.name)
        if state is not None and model.base.unet.encoder_hid_proj is not None:
            unet = model.base.unet
            unet.set_attn_processor(dict(state.plain_processors))
            unet.encoder_hid_proj = None
            unet.config.encoder_hid_dim_type = None

    def switch_on(self, model: LoadedModel, pipe, references: list, guided: bool) -> dict:
        """Turn the adapter on in ``pipe`` for these references; returns the pipeline call's kwargs."""
        state = self._loaded.get(model.name) or self._load(model)
        unet = model.base.unet
        unet.set_attn_processor(dict(state.adapter_processors))
        unet.encoder_hid_proj = state.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        pipe.image_encoder, pipe.feature_extractor = state.image_encoder, state.feature_extractor

        weights = np.array([reference.weight for reference in references], dtype=np.float64)
        strongest = references[int(weights.argmax())]
        pipe.set_ip_adapter_scale(block_scales(strongest.mode, float(weights.max())))
        images = [Image.fromarray(np.ascontiguousarray(reference.image[..., :3])) for reference in references]
        return {"ip_adapter_image_embeds": [self._blend(pipe, images, weights, guided)]}

    @staticmethod
    def _blend(pipe, images: list[Image.Image], weights: np.ndarray, guided: bool):
        """Several references become one embedding: their weighted mean, shaped (1, 1, dim), with the
        unconditional one first when classifier-free guidance runs, as the pipelines expect."""
        import torch

        device = pipe.unet.device
        conditional, unconditional = [], []
        for image in images:
            cond, uncond = pipe.encode_image(image, device, 1)
            conditional.append(cond)
            unconditional.append(uncond)
        share = torch.tensor(weights / weights.sum(), dtype=conditional[0].dtype, device=device)
        share = share.view(-1, *([1] * conditional[0].dim()))
        cond = (torch.stack(conditional) * share).sum(0)[None]
        uncond = (torch.stack(unconditional) * share).sum(0)[None]
        return torch.cat([uncond, cond]) if guided else cond

    def _load(self, model: LoadedModel) -> _Loaded:
        spec = self.specs.get(model.family)
        if spec is None:
            raise ModelError("unknown_adapter", f"no IP-Adapter is configured for {model.family} models, so "
                             "references cannot be used with this model", "references")
        check_pickle(spec.weights, self.allow_pickle)
        weights = Path(spec.weights).expanduser()
        unet = model.base.unet
        plain = dict(unet.attn_processors)
        log.info("loading the %s IP-Adapter from %s", model.family, weights)
        try:
            model.base.load_ip_adapter(str(weights.parent), subfolder="", weight_name=weights.name,
                                       image_encoder_folder=str(Path(spec.image_encoder).expanduser().resolve()))
        except Exception as exc:
            raise ModelError("model_load_failed", f"the IP-Adapter {weights} could not be loaded: {exc}",
                             "references") from exc
        state = _Loaded(plain, dict(unet.attn_processors), unet.encoder_hid_proj, model.base.image_encoder,
                        model.base.feature_extractor)
        self._loaded[model.name] = state
        return state


def block_scales(mode: str, scale: float) -> float | dict:
    """The adapter's scale per UNet part: everywhere, only the up blocks (style: colours, texture),
    or only the down blocks (composition: layout) — the InstantStyle split, coarsely."""
    if mode == "style":
        return {"down": 0.0, "mid": 0.0, "up": scale}
    if mode == "composition":
        return {"down": scale, "mid": 0.0, "up": 0.0}
    return scale

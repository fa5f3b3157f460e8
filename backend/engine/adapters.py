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
class _Encoder:
    """A model's adapter image encoder, shared by all its UNets."""

    image_encoder: object
    feature_extractor: object


@dataclass
class _UNetState:
    """One UNet's attention with and without the adapter."""

    plain_processors: dict
    adapter_processors: dict
    projection: object


class IPAdapters:
    """The configured IP-Adapters, one per family; the worker thread is their only user.

    A model may have two UNets (its base one and a dedicated inpaint one): each gets the adapter
    on first use and is switched per job; the image encoder is loaded once per model.
    """

    def __init__(self, specs: dict[str, AdapterSpec], allow_pickle: bool = False):
        self.specs, self.allow_pickle = specs, allow_pickle
        self._encoders: dict[str, _Encoder] = {}
        self._unets: dict[int, _UNetState] = {}

    def switch_off(self, pipe) -> None:
        """Make the job's UNet plain again (if an adapter was ever loaded into it)."""
        state = self._unets.get(id(pipe.unet))
        if state is not None and pipe.unet.encoder_hid_proj is not None:
            _apply(pipe.unet, state.plain_processors, None, None)

    def switch_on(self, model: LoadedModel, pipe, references: list, guided: bool) -> dict:
        """Turn the adapter on in ``pipe`` for these references; returns the pipeline call's kwargs."""
        state = self._unets.get(id(pipe.unet)) or self._load(model, pipe)
        _apply(pipe.unet, state.adapter_processors, state.projection, "ip_image_proj")
        encoder = self._encoders[model.name]
        pipe.image_encoder, pipe.feature_extractor = encoder.image_encoder, encoder.feature_extractor

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

    def _load(self, model: LoadedModel, pipe) -> _UNetState:
        spec = self.specs.get(model.family)
        if spec is None:
            raise ModelError("unknown_adapter", f"no IP-Adapter is configured for {model.family} models, so "
                             "references cannot be used with this model", "references")
        weights = Path(spec.weights).expanduser()
        unet = pipe.unet
        plain = dict(unet.attn_processors)
        encoder = self._encoders.get(model.name)
        log.info("loading the %s IP-Adapter from %s", model.family, weights)
        try:
            check_pickle(spec.weights, self.allow_pickle)
            pipe.load_ip_adapter(str(weights.parent), subfolder="", weight_name=weights.name,
                                 image_encoder_folder=None if encoder else str(Path(spec.image_encoder).expanduser()))
        except Exception as exc:
            _apply(unet, plain, None, None)  # never leave a half-loaded adapter behind
            if isinstance(exc, ModelError):
                exc.field = "references"
                raise
            raise ModelError("model_load_failed", f"the IP-Adapter {weights} could not be loaded: {exc}",
                             "references") from exc
        if encoder is None:
            self._encoders[model.name] = _Encoder(pipe.image_encoder, pipe.feature_extractor)
        state = self._unets[id(unet)] = _UNetState(plain, dict(unet.attn_processors), unet.encoder_hid_proj)
        return state


def _apply(unet, processors: dict, projection, hid_dim_type) -> None:
    """Put a UNet in one state: plain (projection None) or with the adapter."""
    unet.set_attn_processor(dict(processors))
    unet.encoder_hid_proj = projection
    unet.config.encoder_hid_dim_type = hid_dim_type


def block_scales(mode: str, scale: float) -> float | dict:
    """The adapter's scale per UNet part: everywhere, only the up blocks (style: colours, texture),
    or only the down blocks (composition: layout) — the InstantStyle split, coarsely."""
    if mode == "style":
        return {"down": 0.0, "mid": 0.0, "up": scale}
    if mode == "composition":
        return {"down": scale, "mid": 0.0, "up": 0.0}
    return scale

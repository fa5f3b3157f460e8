"""IP-Adapter references: loaded into a model once, switched on for jobs with references and off
for jobs without, so a job without references is exactly the no-adapter job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend.config import AdapterSpec
from backend.engine.conditioning import ContentCache, digest
from backend.engine.models import LoadedModel, ModelError, check_pickle

log = logging.getLogger(__name__)
EMBEDDING_CACHE = 32  # reference embeddings kept (one picture's is at most a few MB)


@dataclass
class _Encoder:
    """An adapter image encoder, shared by all UNets of a model that use it."""

    image_encoder: object
    feature_extractor: object


@dataclass
class _UNetState:
    """One UNet's attention with one adapter loaded."""

    adapter_processors: dict
    projection: object
    hidden_states: bool  # "plus" adapters read the encoder's hidden states, not its image embedding
    encoder: _Encoder
    values: dict  # processor name -> its value projections' weights as loaded (in RAM), see fold_scales


class IPAdapters:
    """The configured IP-Adapters, per family: a general one and optionally a face one.

    A model may have two UNets (its base one and a dedicated inpaint one): each gets an adapter on
    first use and is switched per job; each image encoder is loaded once per model.
    """

    def __init__(self, specs: dict[str, AdapterSpec], allow_pickle: bool = False):
        self.specs, self.allow_pickle = specs, allow_pickle
        self._encoders: dict[tuple[str, str], _Encoder] = {}
        self._plain: dict[int, dict] = {}  # id(unet) -> its attention processors without any adapter
        self._unets: dict[tuple[int, str], _UNetState] = {}
        self.embeddings = ContentCache(EMBEDDING_CACHE)

    def switch_off(self, pipe) -> None:
        """Make the job's UNet plain again (if an adapter was ever loaded into it)."""
        plain = self._plain.get(id(pipe.unet))
        if plain is not None and pipe.unet.encoder_hid_proj is not None:
            _apply(pipe.unet, plain, None, None)

    def switch_on(self, model: LoadedModel, pipe, references: list, guided: bool) -> dict:
        """Turn the adapter on in ``pipe`` for these references; returns the pipeline call's kwargs."""
        kind = "face" if references[0].mode == "face" else "reference"  # one kind per job (checked before)
        state = self._unets.get((id(pipe.unet), kind)) or self._load(model, pipe, kind)
        _apply(pipe.unet, state.adapter_processors, state.projection, "ip_image_proj")
        pipe.image_encoder, pipe.feature_extractor = state.encoder.image_encoder, state.encoder.feature_extractor

        weights = np.array([reference.weight for reference in references], dtype=np.float64)
        strongest = references[int(weights.argmax())]
        pipe.set_ip_adapter_scale(block_scales(strongest.mode, float(weights.max())))
        fold_scales(pipe.unet, state.values)
        images = [np.ascontiguousarray(reference.image[..., :3]) for reference in references]
        return {"ip_adapter_image_embeds": [self._blend(pipe, images, weights, guided, state.hidden_states)]}

    def _blend(self, pipe, images: list[np.ndarray], weights: np.ndarray, guided: bool, hidden_states: bool):
        """Several references become one embedding: their weighted mean, shaped (1, 1, ...), with the
        unconditional one first when classifier-free guidance runs, as the pipelines expect."""
        import torch

        # Pictures go where the encoder's weights are: under model CPU offload a freshly loaded encoder
        # is not hooked yet (the offload hooks are set just before diffusion) and sits in RAM, while
        # the pipeline's execution device is already the GPU. The embeddings then go to the latter.
        encoder = pipe.image_encoder
        hook = getattr(encoder, "_hf_hook", None)
        device = getattr(hook, "execution_device", None) or encoder.device
        conditional, unconditional = [], []
        for image in images:
            # An encoder's embedding depends only on the picture: reused across jobs, seeds and passes.
            def encode(picture: np.ndarray = image):
                return pipe.encode_image(Image.fromarray(picture), device, 1,
                                         output_hidden_states=hidden_states or None)

            cond, uncond = self.embeddings.get((id(encoder), hidden_states, digest(image)), encode)
            conditional.append(cond)
            unconditional.append(uncond)
        share = torch.tensor(weights / weights.sum(), dtype=conditional[0].dtype, device=conditional[0].device)
        share = share.view(-1, *([1] * conditional[0].dim()))
        cond = (torch.stack(conditional) * share).sum(0)[None]
        uncond = (torch.stack(unconditional) * share).sum(0)[None]
        return (torch.cat([uncond, cond]) if guided else cond).to(pipe._execution_device)

    def _load(self, model: LoadedModel, pipe, kind: str) -> _UNetState:
        from diffusers.models.embeddings import ImageProjection

        spec = self.specs.get(model.family)
        if spec is None:
            raise ModelError("unknown_adapter", f"no IP-Adapter is configured for {model.family} models, so "
                             "references cannot be used with this model", "references")
        if kind == "face" and not spec.face:
            raise ModelError("unknown_adapter", f"no face IP-Adapter is configured for {model.family} models: "
                             f"set `face` under [ip_adapters.{model.family}] to use the face mode", "references")
        weights = spec.face if kind == "face" else spec.weights
        source, subfolder, weight_name, encoder_folder = adapter_location(
            weights, spec.face_image_encoder if kind == "face" and spec.face_image_encoder else spec.image_encoder)
        unet = pipe.unet
        plain = self._plain.setdefault(id(unet), dict(unet.attn_processors))
        _apply(unet, plain, None, None)  # load into a plain UNet, whichever adapter was on before
        encoder = self._encoders.get((model.name, encoder_folder))
        log.info("loading the %s %s IP-Adapter from %s", model.family, kind, weights)
        try:
            check_pickle(weights, self.allow_pickle)
            pipe.load_ip_adapter(source, subfolder=subfolder, weight_name=weight_name,
                                 image_encoder_folder=None if encoder else encoder_folder)
        except Exception as exc:
            _apply(unet, plain, None, None)  # never leave a half-loaded adapter behind
            if isinstance(exc, ModelError):
                exc.field = "references"
                raise
            raise ModelError("model_load_failed", f"the IP-Adapter {weights} could not be loaded: {exc}",
                             "references") from exc
        if encoder is None:
            encoder = self._encoders[model.name, encoder_folder] = _Encoder(pipe.image_encoder,
                                                                            pipe.feature_extractor)
        projection = unet.encoder_hid_proj
        hidden_states = not isinstance(projection.image_projection_layers[0], ImageProjection)
        processors = dict(unet.attn_processors)
        values = {name: [linear.weight.detach().to("cpu", copy=True) for linear in processor.to_v_ip]
                  for name, processor in processors.items() if hasattr(processor, "to_v_ip")}
        state = self._unets[id(unet), kind] = _UNetState(processors, projection, hidden_states, encoder, values)
        return state


def adapter_location(weights: str, image_encoder: str) -> tuple[str, str, str, str]:
    """Where ``load_ip_adapter`` finds an adapter: (folder or hub repo, subfolder, file, encoder folder).

    Local files load from their folder, with the encoder's absolute path. On the hub, both are
    ``owner/repo/path`` (``h94/IP-Adapter/models/ip-adapter_sd15.safetensors`` with
    ``h94/IP-Adapter/models/image_encoder``), and diffusers wants the encoder relative to the repo.
    """
    path = Path(weights).expanduser()
    if path.is_absolute() or path.exists():
        return str(path.parent), "", path.name, str(Path(image_encoder).expanduser())
    owner, repo, *rest = weights.split("/")
    encoder = image_encoder.removeprefix(f"{owner}/{repo}/")
    return f"{owner}/{repo}", "/".join(rest[:-1]), rest[-1], encoder


def _apply(unet, processors: dict, projection, hid_dim_type) -> None:
    """Put a UNet in one state: plain (projection None) or with the adapter."""
    # The projection first: a "plus" projection has attention layers of its own, which count among
    # the UNet's processors.
    unet.encoder_hid_proj = projection
    unet.config.encoder_hid_dim_type = hid_dim_type
    unet.set_attn_processor(dict(processors))


def fold_scales(unet, values: dict) -> None:
    """Move each adapter layer's scale into its value projection and set the scale to 1.

    scale * attention(q, k, v) = attention(q, k, scale * v), and the projection has no bias, so the
    pictures are the same. The reason: torch.compile bakes the processors' float scales into the
    UNet's graph, so every new reference weight would recompile it; weights are inputs of the graph.
    Rewritten from the loaded weights on every job, so parking and earlier jobs leave no trace.
    """
    import torch

    with torch.no_grad():
        processors = unet.attn_processors
        for name, loaded_weights in values.items():
            processor = processors[name]
            for scale, linear, loaded in zip(processor.scale, processor.to_v_ip, loaded_weights):
                linear.weight.copy_(loaded).mul_(float(scale))
            processor.scale = [1.0] * len(processor.scale)


def block_scales(mode: str, scale: float) -> float | dict:
    """The adapter's scale per UNet part: everywhere (reference, face), only the up blocks (style:
    colours, texture), or only the down blocks (composition: layout) — the InstantStyle split, coarsely."""
    if mode == "style":
        return {"down": 0.0, "mid": 0.0, "up": scale}
    if mode == "composition":
        return {"down": scale, "mid": 0.0, "up": 0.0}
    return scale

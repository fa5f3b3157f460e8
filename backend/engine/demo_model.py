"""Tiny random-weight diffusers model family for offline demos and tests.

``write_demo_model(root)`` writes, in a few seconds and without any network
access, a family of miniature diffusers model folders that load with the real
diffusers pipeline classes::

    root/sd15/           StableDiffusionPipeline            (4-channel UNet)
    root/sd15-inpaint/   StableDiffusionInpaintPipeline     (9-channel UNet)
    root/sdxl/           StableDiffusionXLPipeline          (4-channel UNet)
    root/sdxl-inpaint/   StableDiffusionXLInpaintPipeline   (9-channel UNet)
    root/taesd/          AutoencoderTiny (latent_channels=4, preview decoder)

The weights are random (seeded, so the same ``seed`` writes the same weights);
the pictures are noise, but every code path of the real pipelines runs: text
encoding, classifier-free guidance, schedulers, VAE encode/decode, masks.
Both families use a latent grid of 8 pixels and a native size of 512 px.

Load them with, e.g.::

    StableDiffusionPipeline.from_pretrained(root / "sd15", safety_checker=None,
                                            requires_safety_checker=False)
    StableDiffusionXLPipeline.from_pretrained(root / "sdxl", add_watermarker=False)
    AutoencoderTiny.from_pretrained(root / "taesd")
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

__all__ = ["write_demo_model", "DEMO_FOLDERS"]

DEMO_FOLDERS = ("sd15", "sd15-inpaint", "sdxl", "sdxl-inpaint", "taesd")

# Standard SD 1.x / SDXL noise schedule.
_SCHEDULER_KWARGS: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
    interpolation_type="linear",
    use_karras_sigmas=False,
)

_TEXT_HIDDEN = 32          # hidden size of every demo text encoder
_TEXT_PROJECTION = 32      # projection_dim (pooled SDXL embedding size)
_TEXT_LAYERS = 4           # enough layers for clip_skip / hidden_states[-2]
_ADD_TIME_EMBED_DIM = 8    # SDXL micro-conditioning embedding per time id


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #
def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE maps bytes to."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _demo_vocab() -> dict[str, int]:
    """Character-level CLIP vocab: every byte char, alone and word-final."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def _make_tokenizer():
    from transformers import CLIPTokenizer

    # transformers 5: CLIPTokenizer is the fast (tokenizers-backed) class and
    # takes the vocab dict / merges list directly, no files needed. Without
    # merges the BPE is character level (one token per character, the last
    # one of each word carrying "</w>"), which is fine for a demo.
    # model_max_length must be set, else pipelines pad to ~1e30.
    return CLIPTokenizer(vocab=_demo_vocab(), merges=[], model_max_length=77)


# --------------------------------------------------------------------------- #
# Modules
# --------------------------------------------------------------------------- #
def _text_config(vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=64,
        projection_dim=_TEXT_PROJECTION,
        num_hidden_layers=_TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def _make_vae(seed: int, scaling_factor: float):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=4,
        sample_size=512,
        scaling_factor=scaling_factor,
    )


def _make_unet(seed: int, *, in_channels: int, xl: bool):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(
        sample_size=64,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        attention_head_dim=8,
    )
    if xl:
        kwargs.update(
            cross_attention_dim=2 * _TEXT_HIDDEN,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=_ADD_TIME_EMBED_DIM,
            # 6 time ids (original size, crop coords, target size) + pooled text
            projection_class_embeddings_input_dim=6 * _ADD_TIME_EMBED_DIM + _TEXT_PROJECTION,
        )
    else:
        kwargs.update(cross_attention_dim=_TEXT_HIDDEN)
    return UNet2DConditionModel(**kwargs)


def _make_taesd(seed: int):
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(
        in_channels=3,
        out_channels=3,
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #
def write_demo_model(root: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    """Write the tiny demo model family under root and return root."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)

    tokenizer = _make_tokenizer()
    vocab_size = len(tokenizer)
    text_cfg = _text_config(vocab_size, tokenizer.bos_token_id, tokenizer.eos_token_id)
    scheduler = EulerDiscreteScheduler(**_SCHEDULER_KWARGS)

    def text_encoder(offset: int):
        torch.manual_seed(seed + offset)
        return CLIPTextModel(text_cfg).eval()

    def text_encoder_2(offset: int):
        torch.manual_seed(seed + offset)
        return CLIPTextModelWithProjection(text_cfg).eval()

    save = dict(safe_serialization=True)

    # ---- SD 1.5 family ---------------------------------------------------- #
    vae15 = _make_vae(seed + 1, 0.18215)
    te15 = text_encoder(2)
    StableDiffusionPipeline(
        vae=vae15,
        text_encoder=te15,
        tokenizer=tokenizer,
        unet=_make_unet(seed + 3, in_channels=4, xl=False),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(root / "sd15", **save)
    StableDiffusionInpaintPipeline(
        vae=vae15,
        text_encoder=te15,
        tokenizer=tokenizer,
        unet=_make_unet(seed + 4, in_channels=9, xl=False),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(root / "sd15-inpaint", **save)

    # ---- SDXL family ------------------------------------------------------ #
    vaexl = _make_vae(seed + 5, 0.13025)
    texl = text_encoder(6)
    texl2 = text_encoder_2(7)
    common_xl = dict(
        vae=vaexl,
        text_encoder=texl,
        text_encoder_2=texl2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    StableDiffusionXLPipeline(
        unet=_make_unet(seed + 8, in_channels=4, xl=True), **common_xl
    ).save_pretrained(root / "sdxl", **save)
    StableDiffusionXLInpaintPipeline(
        unet=_make_unet(seed + 9, in_channels=9, xl=True),
        requires_aesthetics_score=False,
        **common_xl,
    ).save_pretrained(root / "sdxl-inpaint", **save)

    # ---- TAESD preview decoder ------------------------------------------- #
    _make_taesd(seed + 10).save_pretrained(root / "taesd", **save)
    return root

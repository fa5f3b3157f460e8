"""Test helper: write a diffusers SD1.x pipeline folder as an original-format ("LDM") single file.

This is the inverse of diffusers' ``convert_ldm_{unet,vae,clip}_checkpoint``, so the single-file
loading path can be tested offline with the tiny demo model. Key names follow the original
CompVis / A1111 checkpoints (``v1-5-pruned-emaonly.safetensors``):

    model.diffusion_model.*            UNet (input_blocks / middle_block / output_blocks)
    first_stage_model.*                VAE  (encoder.down.N.block.M, decoder.up.N..., mid.attn_1)
    cond_stage_model.transformer.*     CLIP text encoder (transformers 4 layout: text_model.*)

Block names are derived from the component configs, not listed, so any SD1.x-shaped
UNet2DConditionModel / AutoencoderKL converts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer."

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_prefixes(config: dict) -> dict[str, tuple[str, dict]]:
    """diffusers module prefix -> (LDM prefix, renames of the module's own children)."""
    layers = config["layers_per_block"]
    assert isinstance(layers, int), "SD1.x UNets have one layers_per_block for every block"
    out = {"conv_in.": ("input_blocks.0.0.", {}), "time_embedding.linear_1.": ("time_embed.0.", {}),
           "time_embedding.linear_2.": ("time_embed.2.", {}), "conv_norm_out.": ("out.0.", {}),
           "conv_out.": ("out.2.", {}), "mid_block.resnets.0.": ("middle_block.0.", UNET_RESNET),
           "mid_block.attentions.0.": ("middle_block.1.", {}), "mid_block.resnets.1.": ("middle_block.2.", UNET_RESNET)}
    # input_blocks: conv_in, then per level `layers` x (resnet [+ attention]) and a downsampler.
    for level in range(len(config["down_block_types"])):
        first = 1 + level * (layers + 1)
        for j in range(layers):
            out[f"down_blocks.{level}.resnets.{j}."] = (f"input_blocks.{first + j}.0.", UNET_RESNET)
            out[f"down_blocks.{level}.attentions.{j}."] = (f"input_blocks.{first + j}.1.", {})
        out[f"down_blocks.{level}.downsamplers.0.conv."] = (f"input_blocks.{first + layers}.0.op.", {})
    # output_blocks: per level `layers + 1` x (resnet [+ attention]); the last one also upsamples.
    for level, kind in enumerate(config["up_block_types"]):
        first = level * (layers + 1)
        for j in range(layers + 1):
            out[f"up_blocks.{level}.resnets.{j}."] = (f"output_blocks.{first + j}.0.", UNET_RESNET)
            out[f"up_blocks.{level}.attentions.{j}."] = (f"output_blocks.{first + j}.1.", {})
        upsampler = 2 if "CrossAttn" in kind else 1  # after the attention, when there is one
        out[f"up_blocks.{level}.upsamplers.0.conv."] = (f"output_blocks.{first + layers}.{upsampler}.conv.", {})
    return out


def vae_prefixes(config: dict) -> dict[str, tuple[str, dict]]:
    levels = len(config["block_out_channels"])
    out = {"quant_conv.": ("quant_conv.", {}), "post_quant_conv.": ("post_quant_conv.", {})}
    for coder in ("encoder", "decoder"):
        out |= {f"{coder}.conv_in.": (f"{coder}.conv_in.", {}), f"{coder}.conv_out.": (f"{coder}.conv_out.", {}),
                f"{coder}.conv_norm_out.": (f"{coder}.norm_out.", {}),
                f"{coder}.mid_block.attentions.0.": (f"{coder}.mid.attn_1.", VAE_ATTENTION)}
        for k in range(2):
            out[f"{coder}.mid_block.resnets.{k}."] = (f"{coder}.mid.block_{k + 1}.", VAE_RESNET)
    for level in range(levels):
        out[f"encoder.down_blocks.{level}.resnets."] = (f"encoder.down.{level}.block.", VAE_RESNET)
        out[f"encoder.down_blocks.{level}.downsamplers.0."] = (f"encoder.down.{level}.downsample.", {})
        # The original decoder numbers its levels from the lowest resolution up.
        out[f"decoder.up_blocks.{level}.resnets."] = (f"decoder.up.{levels - 1 - level}.block.", VAE_RESNET)
        out[f"decoder.up_blocks.{level}.upsamplers.0."] = (f"decoder.up.{levels - 1 - level}.upsample.", {})
    return out


def rename(key: str, prefixes: dict[str, tuple[str, dict]]) -> str:
    """``key`` under the longest matching module prefix, with that module's child renames."""
    match = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
    if match is None:
        raise KeyError(f"no LDM name for {key}")
    new_prefix, children = prefixes[match]
    rest = key[len(match):]
    # resnets.N. prefixes (VAE) leave the block index in `rest`: rename the part after it.
    index, dot, tail = rest.partition(".") if rest.split(".")[0].isdigit() else ("", "", rest)
    for old, new in children.items():
        if tail.startswith(old + "."):
            tail = new + tail[len(old):]
            break
    return new_prefix + index + dot + tail


def unet_to_ldm(state: dict, config: dict) -> dict:
    prefixes = unet_prefixes(config)
    return {UNET + rename(key, prefixes): value for key, value in state.items()}


def vae_to_ldm(state: dict, config: dict) -> dict:
    prefixes = vae_prefixes(config)
    out = {}
    for key, value in state.items():
        new = rename(key, prefixes)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention uses 1x1 convs
        out[VAE + new] = value
    return out


def clip_to_ldm(state: dict) -> dict:
    """transformers CLIPTextModel keys; transformers >= 5.6 drops the ``text_model.`` level that
    original checkpoints (and diffusers' converter) use, so it is put back."""
    out = {CLIP + (key if key.startswith("text_model.") else "text_model." + key): value
           for key, value in state.items()}
    positions = out[CLIP + "text_model.embeddings.position_embedding.weight"].shape[0]
    # Original checkpoints carry this buffer, which newer transformers no longer save.
    out.setdefault(CLIP + "text_model.embeddings.position_ids", torch.arange(positions)[None])
    return out


def _component(folder: Path, cls):
    return cls.from_pretrained(folder).state_dict(), json.loads((folder / "config.json").read_text())


def write_ldm_checkpoint(pipeline_folder: str | Path, out_file: str | Path) -> Path:
    """Convert a diffusers SD1.x pipeline folder (unet, vae, text_encoder) to one ``.safetensors``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    folder, out_file = Path(pipeline_folder), Path(out_file)
    unet, unet_config = _component(folder / "unet", UNet2DConditionModel)
    vae, vae_config = _component(folder / "vae", AutoencoderKL)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict()
    checkpoint = unet_to_ldm(unet, unet_config) | vae_to_ldm(vae, vae_config) | clip_to_ldm(text)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in checkpoint.items()}, str(out_file))
    return out_file

"""Tiny random-weight diffusers model family for offline demos and tests.

``write_demo_model(root)`` writes, in a few seconds and without any network
access, a family of miniature diffusers model folders that load with the real
diffusers pipeline classes::

    root/sd15/           StableDiffusionPipeline            (4-channel UNet)
    root/sd15-inpaint/   StableDiffusionInpaintPipeline     (9-channel UNet)
    root/sdxl/           StableDiffusionXLPipeline          (4-channel UNet)
    root/sdxl-inpaint/   StableDiffusionXLInpaintPipeline   (9-channel UNet)
    root/taesd/          AutoencoderTiny (latent_channels=4, preview decoder)
    root/controlnet/<family>/<type>/
                         ControlNetModel for family "sd15" / "sdxl" (made from
                         that family's 4-channel UNet), one per CONTROL_TYPES
    root/ip-adapter/<family>/
                         IP-Adapter for family "sd15" / "sdxl" in the original
                         format (ip-adapter.safetensors: image_proj.* and
                         ip_adapter.<n>.to_k_ip / to_v_ip), a "plus" one for the
                         face mode (ip-adapter-plus-face.safetensors: a
                         perceiver resampler over the encoder's hidden states)
                         and their CLIP image encoder (image_encoder/:
                         CLIPVisionModelWithProjection, preprocessor_config.json)

The weights are random (seeded, so the same ``seed`` writes byte-identical
files), with a few layers overwritten so the results behave plausibly:

* the VAEs (and TAESD) are near-linear RGB <-> latent codecs (8x8 average
  pooling / nearest upsampling, ``rgb ~= latents @ LATENT_RGB_FACTORS``), so
  img2img and 4-channel inpainting keep the init image (round trip ~2/255);
* the UNets carry the noisy latents on a skip path to the output, giving a
  crude but sane noise estimate, so sampling does not blow up; the random deep
  path (cross-attention on the random text encoders) is added on top, so
  results depend on prompt, seed and init image;
* the ControlNets (``ControlNetModel.from_unet``) get random, calibrated
  weights in the layers diffusers initialises to zero (conditioning embedding
  output, residual 1x1 convs), so the control image, the conditioning scale and
  the guidance start/end all change the picture; every control type has its own
  seed, so two types give different pictures for the same control image;
* the IP-Adapters' value projections (to_v_ip) are drawn a bit larger than
  PyTorch's default init, so the reference image clearly changes the picture at
  scale 1 (at scale 0 diffusers skips the adapter's attention, so the result is
  exactly the no-adapter one). They fit both UNets of their family (4- and
  9-channel).

Text-to-image pictures are coloured noise; every code path of the real
pipelines runs (tokenizers, CFG, schedulers, VAE encode/decode, masks). Both
families use a latent grid of 8 pixels and a native size of 512 px. The
9-channel inpaint UNets do not reproduce the unmasked area (callers should
composite the result with the original outside the mask).

Load them with, e.g.::

    StableDiffusionPipeline.from_pretrained(root / "sd15", safety_checker=None,
                                            requires_safety_checker=False)
    StableDiffusionXLPipeline.from_pretrained(root / "sdxl", add_watermarker=False)
    AutoencoderTiny.from_pretrained(root / "taesd")
    StableDiffusionControlNetPipeline.from_pipe(  # dtype: else from_pipe casts sd15_pipe to float32
        sd15_pipe, controlnet=ControlNetModel.from_pretrained(root / "controlnet" / "sd15" / "canny"),
        dtype=sd15_pipe.dtype)
    sd15_pipe.load_ip_adapter(str(root / "ip-adapter" / "sd15"), subfolder="",
                              weight_name="ip-adapter.safetensors")  # image_encoder/ is found inside
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any

__all__ = [
    "CONTROLNET_FAMILIES",
    "CONTROL_TYPES",
    "DEMO_FOLDERS",
    "IP_ADAPTER_FAMILIES",
    "IP_ADAPTER_WEIGHTS",
    "demo_controlnets",
    "demo_ip_adapters",
    "demo_models",
    "ensure_demo_model",
    "write_demo_model",
    "write_demo_model_with_config",
]

DEMO_FOLDERS = ("sd15", "sd15-inpaint", "sdxl", "sdxl-inpaint", "taesd", "controlnet", "ip-adapter")

# One demo ControlNet per family and control type: root/controlnet/<family>/<type>/.
CONTROL_TYPES = (
    "canny",
    "lineart",
    "lineart_anime",
    "softedge",
    "depth",
    "normal",
    "pose",
    "scribble",
    "segmentation",
    "mlsd",
    "tile",
    "shuffle",
    "inpaint",
)
CONTROLNET_FAMILIES = ("sd15", "sdxl")

# One demo IP-Adapter per family: root/ip-adapter/<family>/IP_ADAPTER_WEIGHTS plus image_encoder/.
IP_ADAPTER_FAMILIES = ("sd15", "sdxl")
IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"
IP_ADAPTER_FACE_WEIGHTS = "ip-adapter-plus-face.safetensors"  # "plus" layout, for the face mode

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

# Scaled latent -> RGB ([-1, 1]) factors, one row per latent channel. These are
# the well-known SD 1.x "cheap preview" factors; every demo VAE (both families)
# and the demo TAESD are built so that decode(z) ~= z @ LATENT_RGB_FACTORS, so a
# caller's linear latent preview shows the same picture as the real decode.
LATENT_RGB_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)

# Size of the constant channels that keep the VAEs' GroupNorms (1 group) close
# to a fixed linear map; larger = more linear.
_VAE_CONST = 16.0
# How strongly the random residual branches perturb the VAE's linear path.
_VAE_NOISE = 0.02
# UNet: weight of the random (prompt/time dependent) deep path on top of the
# per-channel "normalised input" noise estimate; see _shape_unet.
_UNET_DEEP = 0.5
_UNET_OUT = 0.5
# ControlNet: channels of the (tiny) conditioning embedding, 3 stride-2 convs =
# the 8 px latent grid; std of its output on a reference control image (added
# to the ControlNet's conv_in features, ~unit scale); and the weight scale of
# the residual 1x1 convs (a fraction of PyTorch's default conv init).
_CN_EMBED_CHANNELS = (16, 16, 32, 32)
_CN_EMBED_STD = 1.0
_CN_RESIDUAL = 0.25
# Gain (x 1/sqrt(fan_in)) and bias std of the redrawn conditioning embedding
# convs: enough that the control image's structure survives the silu chain.
_CN_EMBED_GAIN = 1.6
_CN_EMBED_BIAS = 0.1
# IP-Adapter image encoder (a tiny CLIP ViT): input size, patch size, width,
# depth; and the projection_dim (image embedding size) per family, deliberately
# unlike the text sizes, as the real ones (ViT-H 1024 for SD1.5, ViT-bigG 1280
# for SDXL) are. The input is CLIP's standard 224 px, so whatever 224 px
# CLIPImageProcessor a pipeline already holds (a safety checker's, or the one
# SD1.5's unload_ip_adapter leaves behind after a real adapter) feeds it too;
# 56 px patches keep that to 16 tokens.
_IP_IMAGE_SIZE = 224
_IP_PATCH = 56
_IP_HIDDEN = 32
_IP_LAYERS = 2
_IP_PROJECTION = {"sd15": 24, "sdxl": 40}
# Image tokens of diffusers' plain IP-Adapter ImageProjection (fixed by its loader).
_IP_TOKENS = 4
# Gain (x PyTorch's default Linear init) of the adapter's to_v_ip projections:
# how strongly a reference image pulls the cross-attention output.
_IP_VALUE_GAIN = 2.0


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


def _factors():
    """(F, P): F maps scaled latents to RGB (3x4), P = pinv(F) maps RGB back."""
    import torch

    f = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float64).T  # 3 x 4
    return f.float(), torch.linalg.pinv(f).float()  # 3x4, 4x3


def _center_taps(conv, matrix, bias=None) -> None:
    """Make ``conv`` a pure per-pixel linear map: centre tap = matrix."""
    import torch

    w = torch.zeros_like(conv.weight)
    w[:, :, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = matrix
    conv.weight.copy_(w)
    if conv.bias is not None:
        conv.bias.copy_(torch.zeros_like(conv.bias) if bias is None else bias)


def _make_vae(seed: int, scaling_factor: float):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=1,
        sample_size=512,
        scaling_factor=scaling_factor,
        # Mid-block self-attention over 64x64 latents was ~1/4 of the VAE's CPU
        # time and does nothing useful here.
        mid_block_add_attention=False,
        # The tiny VAE cannot overflow in fp16. force_upcast=True would also make
        # the SDXL img2img/inpaint pipelines call vae.to(float32), which in
        # diffusers 0.42 logs a spurious "should be kept in float32: []" warning.
        force_upcast=False,
    ).eval()
    with torch.no_grad():
        _shape_vae(vae, scaling_factor)
    return vae


def _shape_vae(vae, scaling_factor: float) -> None:
    """Turn the random AutoencoderKL into a near-linear RGB <-> latent codec.

    Purely random VAEs do not reconstruct anything, so img2img/inpaint outputs
    would not resemble the init image at all. Here the main path of encoder and
    decoder is a fixed linear map (latent = P @ rgb, 8x8 average pooling;
    rgb = F @ latent, nearest upsampling), and the random weights only survive,
    scaled down, in the residual branches (a little texture).

    Trick: the 8 channels carry [rgb, -rgb, C, -C]. With one GroupNorm group the
    mean is then exactly 0 and the std ~= C/2 (nearly constant), and because
    silu(x) - silu(-x) == x the final norm + silu + conv stays linear.
    """
    import torch

    f, p = _factors()
    c = _VAE_CONST
    eye3 = torch.eye(3)
    rgb_pm = torch.cat([eye3, -eye3, torch.zeros(2, 3)])  # 8 x 3: [rgb, -rgb, 0, 0]
    const_bias = torch.tensor([0, 0, 0, 0, 0, 0, c, -c], dtype=torch.float32)
    diff = torch.cat([eye3, -eye3, torch.zeros(3, 2)], dim=1)  # 3 x 8: x - (-x)

    for coder in (vae.encoder, vae.decoder):
        for module_name, module in coder.named_modules():
            if module_name.endswith("conv2") or module_name.endswith("to_out.0"):
                module.weight.mul_(_VAE_NOISE)
                module.bias.mul_(_VAE_NOISE)

    # Encoder: rgb -> [rgb, -rgb, C, -C] -> 2x2 average pools -> linear latents.
    enc = vae.encoder
    _center_taps(enc.conv_in, rgb_pm, const_bias)
    for block in enc.down_blocks:
        for down in block.downsamplers or []:
            w = torch.zeros_like(down.conv.weight)
            for i in range(w.shape[0]):
                w[i, i, 0:2, 0:2] = 0.25  # padding (0,1,0,1) + stride 2
            down.conv.weight.copy_(w)
            down.conv.bias.zero_()
    # after conv_norm_out the channels are [rgb, -rgb, ...] / (C/2)
    mean = (p / scaling_factor) @ diff * (c / 2)  # 4 x 8
    out = torch.zeros(8, 8)
    out[:4] = mean
    logvar = torch.full((8,), -30.0)  # std ~ 3e-7: sampling == mode
    logvar[:4] = 0.0
    _center_taps(enc.conv_out, out, logvar)
    _center_taps(vae.quant_conv, torch.eye(8))

    # Decoder: raw latents -> [rgb, -rgb, C, -C] -> nearest upsampling -> rgb.
    dec = vae.decoder
    _center_taps(vae.post_quant_conv, torch.eye(4))
    _center_taps(dec.conv_in, rgb_pm @ (f * scaling_factor), const_bias)
    for block in dec.up_blocks:
        for up in block.upsamplers or []:
            _center_taps(up.conv, torch.eye(up.conv.weight.shape[0]))
    _center_taps(dec.conv_out, diff * (c / 2))


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
        # SD-style configs read this as the number of heads: 2 heads of 32 dims
        # keep multi-head attention while staying fast on CPU (8 heads of 8 dims
        # made the UNet ~2x slower on CPU).
        attention_head_dim=2,
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
    unet = UNet2DConditionModel(**kwargs).eval()
    with torch.no_grad():
        _shape_unet(unet)
    return unet


def _shape_unet(unet) -> None:
    """Give the random UNet a sensible noise estimate plus a random deep part.

    A purely random UNet predicts noise that has nothing to do with the actual
    noise, so Euler sampling ends with latents of std ~15 (a fully saturated
    picture) and img2img loses the init image at any strength. Here a skip path
    carries the noisy latents (as [x, -x]) from conv_in straight to the output,
    where the per-channel GroupNorm + silu(x) - silu(-x) == x make the estimate
    eps ~= (x - mean(x)) / std(x): about right at high noise, and a gentle
    shrink at low noise. The random deep path (text cross-attention, time
    embedding, inpaint mask channels) is added on top, so outputs depend on
    prompt, seed, time and conditioning.
    """

    k = unet.config.out_channels  # 4
    n = 2 * k  # channels carrying [x, -x]
    width = unet.config.block_out_channels[0]

    # conv_in: channels 0..7 = [x, -x] of the noisy latents (first 4 inputs);
    # channels 8.. stay random (they also see mask / masked-image latents).
    w = unet.conv_in.weight
    w[:n].zero_()
    for i in range(k):
        w[i, i, 1, 1] = 1.0
        w[k + i, i, 1, 1] = -1.0
    unet.conv_in.bias[:n].zero_()

    # Last up resnet: its shortcut sees cat(h, skip=conv_in output). Route the
    # skip's [x, -x] through unchanged and damp the random residual branch.
    last = unet.up_blocks[-1].resnets[-1]
    sw = last.conv_shortcut.weight  # (width, h_ch + width, 1, 1)
    h_ch = sw.shape[1] - width
    sw[:n].zero_()
    for i in range(n):
        sw[i, h_ch + i, 0, 0] = 1.0
    last.conv_shortcut.bias[:n].zero_()
    last.conv2.weight[:n].mul_(_UNET_DEEP)
    last.conv2.bias[:n].mul_(_UNET_DEEP)

    # conv_norm_out has one group per channel (norm_num_groups == width), so
    # channel i becomes normalised x_i; conv_out then adds the deep channels.
    assert unet.conv_norm_out.num_groups == width
    ow = unet.conv_out.weight
    ow[:, :n].zero_()
    ow[:, n:].mul_(_UNET_OUT)
    for i in range(k):
        ow[i, i, 1, 1] = 1.0
        ow[i, k + i, 1, 1] = -1.0
    unet.conv_out.bias.zero_()


def _make_taesd(seed: int):
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    taesd = AutoencoderTiny(
        in_channels=3,
        out_channels=3,
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).eval()
    with torch.no_grad():
        _shape_taesd(taesd)
    return taesd


def _shape_taesd(taesd) -> None:
    """Make the tiny autoencoder the same linear codec as the demo VAEs.

    Decoder: [relu(F z), relu(-F z)] carried through ReLU blocks whose
    residual convs are zeroed (so they pass non-negative inputs unchanged),
    nearest upsampling, then rgb = relu(F z) - relu(-F z) = F z. Encoder:
    2x2 average pooling of rgb in [0, 1] and latents = P (2 rgb - 1).
    """
    import torch
    from diffusers.models.autoencoders.vae import AutoencoderTinyBlock

    f, p = _factors()
    eye3 = torch.eye(3)

    for coder in (taesd.encoder, taesd.decoder):
        for m in coder.layers:
            if isinstance(m, AutoencoderTinyBlock):
                m.conv[-1].weight.zero_()
                m.conv[-1].bias.zero_()

    dec = list(taesd.decoder.layers)
    convs = [m for m in dec if isinstance(m, torch.nn.Conv2d)]
    _center_taps(convs[0], torch.cat([f, -f, torch.zeros(2, 4)]))
    for conv in convs[1:-1]:  # after each nearest upsample
        _center_taps(conv, torch.eye(8))
    last = torch.zeros(3, 8)
    last[:, 0:3] = 0.5 * eye3
    last[:, 3:6] = -0.5 * eye3
    _center_taps(convs[-1], last, torch.full((3,), 0.5))

    enc = list(taesd.encoder.layers)
    convs = [m for m in enc if isinstance(m, torch.nn.Conv2d)]
    first = torch.zeros(8, 3)
    first[0:3] = eye3
    _center_taps(convs[0], first)
    for conv in convs[1:-1]:  # stride 2, padding 1: taps 1..2 = the 2x2 block
        w = torch.zeros_like(conv.weight)
        for i in range(w.shape[0]):
            w[i, i, 1:3, 1:3] = 0.25
        conv.weight.copy_(w)
    final = torch.zeros(4, 8)
    final[:, 0:3] = 2 * p
    _center_taps(convs[-1], final, -p.sum(dim=1))


def _shape_controlnet(controlnet, seed: int) -> None:
    """Re-draw the layers diffusers zero-initialises, so the ControlNet acts.

    ``ControlNetModel.from_unet`` copies the UNet's conv_in, time embeddings and
    down/mid blocks, and zero-initialises the conditioning embedding's conv_out
    and the residual 1x1 convs: a no-op ControlNet. Here (seeded, so every
    control type differs) the whole conditioning embedding is redrawn, its
    output rescaled to std ``_CN_EMBED_STD`` on a fixed blocky reference control
    image (a plain random init shrinks the signal ~100x over its 8 convs), and
    the residual convs get PyTorch's default init (uniform, bound
    1/sqrt(fan_in)) scaled by ``_CN_RESIDUAL``.
    The UNets' per-channel output norm keeps the extra residuals from blowing
    up the noise estimate.
    """
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    embedding = controlnet.controlnet_cond_embedding
    convs = [embedding.conv_in, *embedding.blocks, embedding.conv_out]
    for conv in convs:
        fan_in = conv.weight[0].numel()
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (_CN_EMBED_GAIN / math.sqrt(fan_in)))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * _CN_EMBED_BIAS)
    # reference control image: 64 px, 8 px blocks of random colour (flat areas + edges); small, as
    # these convs at full size were the bulk of the write time on a busy CPU
    channels = controlnet.config.conditioning_channels
    reference = torch.rand((1, channels, 8, 8), generator=gen).repeat_interleave(8, 2).repeat_interleave(8, 3)
    # rounded, so that float noise of the conv backend does not change the written bytes
    gain = float(f"{_CN_EMBED_STD / embedding(reference).std().item():.3g}")
    embedding.conv_out.weight.mul_(gain)
    embedding.conv_out.bias.mul_(gain)

    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        bound = _CN_RESIDUAL / math.sqrt(conv.weight[0].numel())
        conv.weight.copy_((torch.rand(conv.weight.shape, generator=gen) * 2 - 1) * bound)
        conv.bias.copy_((torch.rand(conv.bias.shape, generator=gen) * 2 - 1) * bound)


def _write_controlnets(root: pathlib.Path, family: str, unet, seed: int) -> None:
    """One ControlNet folder per control type, made from the family's 4-channel UNet.

    The ControlNet is built once (the UNet-copied part is shared) and only its
    shaped layers are redrawn per type, with a seed per (family, type).
    """
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_CN_EMBED_CHANNELS).eval()
    with torch.no_grad(), _one_torch_thread():
        for index, control_type in enumerate(CONTROL_TYPES):
            _shape_controlnet(controlnet, seed + index)
            controlnet.save_pretrained(root / "controlnet" / family / control_type, safe_serialization=True)


def _write_ip_adapter(root: pathlib.Path, family: str, unet, seed: int) -> None:
    """root/ip-adapter/<family>/: a tiny CLIP image encoder and an IP-Adapter for ``unet``'s layout.

    The weights file has the original IP-Adapter layout that diffusers' ``load_ip_adapter``
    converts: ``image_proj.proj`` (image embedding -> _IP_TOKENS tokens of cross_attention_dim)
    and ``image_proj.norm``, and ``ip_adapter.<n>.to_k_ip/to_v_ip.weight`` for the UNet's
    cross-attention layers, numbered n = 1, 3, 5, ... in ``unet.attn_processors`` order (the
    original numbering counted every attention layer; cross-attention ones are the odd ones).
    """
    import math

    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = root / "ip-adapter" / family
    torch.manual_seed(seed)
    encoder_config = CLIPVisionConfig(
        hidden_size=_IP_HIDDEN,
        intermediate_size=2 * _IP_HIDDEN,
        projection_dim=_IP_PROJECTION[family],
        num_hidden_layers=_IP_LAYERS,
        num_attention_heads=2,
        image_size=_IP_IMAGE_SIZE,
        patch_size=_IP_PATCH,
        hidden_act="quick_gelu",
    )
    encoder = CLIPVisionModelWithProjection(encoder_config).eval()
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    # diffusers builds CLIPImageProcessor(size=image_size, crop_size=image_size) itself when the
    # pipeline has no feature extractor; this file lets other code load the same one.
    CLIPImageProcessor(size=_IP_IMAGE_SIZE, crop_size=_IP_IMAGE_SIZE).save_pretrained(folder / "image_encoder")

    gen = torch.Generator().manual_seed(seed)

    def uniform(shape, fan_in: int, gain: float = 1.0):  # PyTorch's default Linear init, times gain
        return (torch.rand(shape, generator=gen) * 2 - 1) * (gain / math.sqrt(fan_in))

    def with_attention(tensors: dict) -> dict:
        key_id = 1
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):  # self-attention: no adapter
                continue
            attn = unet.get_submodule(name.removesuffix(".processor"))
            inner, cross = attn.to_k.out_features, attn.to_k.in_features
            tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = uniform((inner, cross), cross)
            tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = uniform((inner, cross), cross, _IP_VALUE_GAIN)
            key_id += 2
        return {key: value.contiguous() for key, value in tensors.items()}

    embed_dim, context = _IP_PROJECTION[family], unet.config.cross_attention_dim
    plain = {
        "image_proj.proj.weight": uniform((_IP_TOKENS * context, embed_dim), embed_dim),
        "image_proj.proj.bias": uniform((_IP_TOKENS * context,), embed_dim),
        "image_proj.norm.weight": torch.ones(context),
        "image_proj.norm.bias": torch.zeros(context),
    }
    save_file(with_attention(plain), str(folder / IP_ADAPTER_WEIGHTS), metadata={"format": "pt"})

    # The "plus" layout (a perceiver resampler over the encoder's hidden states), as face adapters
    # such as ip-adapter-plus-face use: 4 layers, 64-wide heads, as diffusers' converter expects.
    width, hidden = 64, _IP_HIDDEN
    plus = {
        "image_proj.latents": torch.randn((1, _IP_TOKENS, width), generator=gen) / math.sqrt(width),
        "image_proj.proj_in.weight": uniform((width, hidden), hidden),
        "image_proj.proj_in.bias": uniform((width,), hidden),
        "image_proj.proj_out.weight": uniform((context, width), width),
        "image_proj.proj_out.bias": uniform((context,), width),
        "image_proj.norm_out.weight": torch.ones(context),
        "image_proj.norm_out.bias": torch.zeros(context),
    }
    for layer in range(4):
        prefix = f"image_proj.layers.{layer}"
        for norm in (f"{prefix}.0.norm1", f"{prefix}.0.norm2", f"{prefix}.1.0"):
            plus[f"{norm}.weight"], plus[f"{norm}.bias"] = torch.ones(width), torch.zeros(width)
        plus[f"{prefix}.0.to_q.weight"] = uniform((width, width), width)
        plus[f"{prefix}.0.to_kv.weight"] = uniform((2 * width, width), width)
        plus[f"{prefix}.0.to_out.weight"] = uniform((width, width), width)
        plus[f"{prefix}.1.1.weight"] = uniform((4 * width, width), width)
        plus[f"{prefix}.1.3.weight"] = uniform((width, 4 * width), 4 * width)
    save_file(with_attention(plus), str(folder / IP_ADAPTER_FACE_WEIGHTS), metadata={"format": "pt"})


@contextlib.contextmanager
def _one_torch_thread():
    """Run tiny convolutions on one intra-op thread.

    The calibration convs take ~4 ms per ControlNet on one thread, but OpenMP
    threads spinning on a busy 2-core machine made them ~15x slower.
    """
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #
def write_demo_model(root: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    """Write the tiny demo model family under root and return root."""
    import torch

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # fork_rng: seeding per module must not disturb the caller's global RNG.
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        _write(root, seed)
    return root


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' "Writing model shards" progress bars while saving."""
    from transformers.utils import logging as tf_logging

    was_enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            tf_logging.enable_progress_bar()


def _write(root: pathlib.Path, seed: int) -> None:
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = _make_tokenizer()
    vocab_size = len(tokenizer)
    text_cfg = _text_config(vocab_size, tokenizer.bos_token_id, tokenizer.eos_token_id)
    scheduler = EulerDiscreteScheduler(**_SCHEDULER_KWARGS)

    def text_encoder(offset: int):
        torch.manual_seed(seed * 100 + offset)
        return CLIPTextModel(text_cfg).eval()

    def text_encoder_2(offset: int):
        torch.manual_seed(seed * 100 + offset)
        return CLIPTextModelWithProjection(text_cfg).eval()

    save = dict(safe_serialization=True)

    # ---- SD 1.5 family ---------------------------------------------------- #
    vae15 = _make_vae(seed * 100 + 1, 0.18215)
    te15 = text_encoder(2)
    common_15 = dict(vae=vae15, text_encoder=te15, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                     feature_extractor=None, requires_safety_checker=False)
    unet15 = _make_unet(seed * 100 + 3, in_channels=4, xl=False)
    StableDiffusionPipeline(unet=unet15, **common_15).save_pretrained(root / "sd15", **save)
    StableDiffusionInpaintPipeline(unet=_make_unet(seed * 100 + 4, in_channels=9, xl=False),
                                   **common_15).save_pretrained(root / "sd15-inpaint", **save)

    # ---- SDXL family ------------------------------------------------------ #
    vaexl = _make_vae(seed * 100 + 5, 0.13025)
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
    unetxl = _make_unet(seed * 100 + 8, in_channels=4, xl=True)
    StableDiffusionXLPipeline(unet=unetxl, **common_xl).save_pretrained(root / "sdxl", **save)
    StableDiffusionXLInpaintPipeline(
        unet=_make_unet(seed * 100 + 9, in_channels=9, xl=True),
        requires_aesthetics_score=False,
        **common_xl,
    ).save_pretrained(root / "sdxl-inpaint", **save)

    # ---- TAESD preview decoder ------------------------------------------- #
    taesd_dir = root / "taesd"
    _make_taesd(seed * 100 + 10).save_pretrained(taesd_dir, **save)
    # AutoencoderTiny registers a derived `block_out_channels` entry that its
    # own __init__ does not accept; drop it so loading does not warn.
    cfg_path = taesd_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("block_out_channels", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    # ---- ControlNets: root/controlnet/<family>/<type>/ -------------------- #
    _write_controlnets(root, "sd15", unet15, seed * 100 + 20)
    _write_controlnets(root, "sdxl", unetxl, seed * 100 + 40)

    # ---- IP-Adapters: root/ip-adapter/<family>/ -------------------------- #
    _write_ip_adapter(root, "sd15", unet15, seed * 100 + 60)
    _write_ip_adapter(root, "sdxl", unetxl, seed * 100 + 61)


# -- serving the demo -------------------------------------------------------------------------

def demo_models(root: str | os.PathLike) -> dict:
    """Model entries for a written demo: ``demo`` (SD1.5 + 9-channel inpaint UNet), ``demo-base``
    (SD1.5 inpainting with its 4-channel UNet) and ``demo-xl`` (SDXL + inpaint UNet, TAESD previews)."""
    from backend.config import ModelSpec

    root = pathlib.Path(root)
    return {
        "demo": ModelSpec("demo", str(root / "sd15"), "sd15", inpaint=str(root / "sd15-inpaint")),
        "demo-base": ModelSpec("demo-base", str(root / "sd15"), "sd15"),
        "demo-xl": ModelSpec("demo-xl", str(root / "sdxl"), "sdxl", inpaint=str(root / "sdxl-inpaint"),
                             preview=str(root / "taesd")),
    }


def demo_controlnets(root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """ControlNet folders of a written demo: ``{family: {control type: folder}}`` for the families
    ``sd15`` and ``sdxl`` and every type in ``CONTROL_TYPES``. Each folder loads with
    ``ControlNetModel.from_pretrained`` and fits that family's demo pipelines (4- and 9-channel UNets)."""
    root = pathlib.Path(root)
    return {
        family: {control_type: str(root / "controlnet" / family / control_type) for control_type in CONTROL_TYPES}
        for family in CONTROLNET_FAMILIES
    }


def demo_ip_adapters(root: str | os.PathLike) -> dict[str, str]:
    """IP-Adapter folders of a written demo: ``{family: folder}`` for ``sd15`` and ``sdxl``. Each
    folder holds ``IP_ADAPTER_WEIGHTS`` and its CLIP image encoder in ``image_encoder/``, and fits
    that family's demo pipelines (4- and 9-channel UNets)::

        pipe.load_ip_adapter(folder, subfolder="", weight_name=IP_ADAPTER_WEIGHTS)
    """
    root = pathlib.Path(root)
    return {family: str(root / "ip-adapter" / family) for family in IP_ADAPTER_FAMILIES}


def _demo_adapter_specs(root: str | os.PathLike) -> dict:
    """``demo_ip_adapters`` as backend.config entries: ``{family: AdapterSpec(weights, image_encoder)}``."""
    from backend.config import AdapterSpec

    return {family: AdapterSpec(weights=str(pathlib.Path(folder) / IP_ADAPTER_WEIGHTS),
                                image_encoder=str(pathlib.Path(folder) / "image_encoder"),
                                face=str(pathlib.Path(folder) / IP_ADAPTER_FACE_WEIGHTS))
            for family, folder in demo_ip_adapters(root).items()}


def use_demo(config, root: str | os.PathLike, annotators: str | os.PathLike | None = None):
    """Point ``config`` (a backend.config.Config) at a written demo: its models, ControlNets and
    IP-Adapters, and the demo annotators folder when given (see demo_annotators)."""
    config.models, config.default_model = demo_models(root), "demo"
    config.controlnets = demo_controlnets(root)
    config.ip_adapters = _demo_adapter_specs(root)
    if annotators is not None:
        config.annotators = str(annotators)
    return config


def write_demo_model_with_config(root: str | os.PathLike) -> pathlib.Path:
    """Write the demo model, its annotators (``annotators/``) and an ``easel.toml`` that serves them."""
    from backend.engine.demo_annotators import write_demo_annotators

    root = write_demo_model(root).resolve()
    annotators = write_demo_annotators(root / "annotators")
    lines = ['[server]', 'default_model = "demo"', f'annotators = {json.dumps(str(annotators))}', '']
    for name, spec in demo_models(root).items():
        lines.append(f'[models.{name}]')
        for key in ("source", "family", "inpaint", "preview"):
            if getattr(spec, key):
                lines.append(f'{key} = {json.dumps(getattr(spec, key))}')
        lines.append('')
    for family, types in demo_controlnets(root).items():
        lines.append(f'[controlnets.{family}]')
        lines.extend(f'{kind} = {json.dumps(source)}' for kind, source in types.items())
        lines.append('')
    for family, spec in _demo_adapter_specs(root).items():
        lines.append(f'[ip_adapters.{family}]')
        lines.append(f'weights = {json.dumps(spec.weights)}')
        lines.append(f'image_encoder = {json.dumps(spec.image_encoder)}')
        lines.append(f'face = {json.dumps(spec.face)}')
        lines.append('')
    (root / "easel.toml").write_text("\n".join(lines))
    return root


DEMO_VERSION = "4"
"""Bumped whenever the demo's contents change, so cached copies are rewritten."""


def ensure_demo_model(root: str | os.PathLike | None = None) -> pathlib.Path:
    """The demo model in the user's cache (``$EASEL_HOME`` or ~/.cache/easel), written on first use."""
    return ensure_written(root or cache_folder("demo-model"), DEMO_VERSION, write_demo_model)


def cache_folder(name: str) -> pathlib.Path:
    """``name`` in the user's cache: ``$EASEL_HOME`` or ~/.cache/easel."""
    return pathlib.Path(os.environ.get("EASEL_HOME") or pathlib.Path.home() / ".cache" / "easel") / name


def ensure_written(root: str | os.PathLike, version: str, write) -> pathlib.Path:
    """``root`` as ``write(folder)`` makes it, rewritten unless its version marker says ``version``."""
    import shutil
    import tempfile

    root = pathlib.Path(root)
    marker = root / "easel-demo-version"
    if marker.is_file() and marker.read_text() == version:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f"{root.name}-", dir=root.parent))
    try:
        write(staging)
        (staging / marker.name).write_text(version)
        if root.is_symlink() or root.is_file():
            root.unlink()
        else:
            shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)  # a half-written folder is never picked up
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root

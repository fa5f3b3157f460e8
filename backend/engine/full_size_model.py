"""Full-size SD1.5 and SDXL architectures with random weights, for measuring speed and memory offline.

``write_full_size_model(root)`` writes diffusers folders whose every module has the published
configuration of the real model (so a step costs the same compute and memory as with the real
weights), filled with random numbers and stored as fp16 safetensors::

    root/sd15/            StableDiffusionPipeline: UNet (4 ch, 860 M), VAE, CLIP ViT-L text encoder
    root/sd15-inpaint/    StableDiffusionInpaintPipeline: its own 9-channel UNet; the other
                          components are links to ../sd15/ (one copy on disk)
    root/sdxl/            StableDiffusionXLPipeline: UNet (4 ch, 2.6 B), VAE, CLIP ViT-L + OpenCLIP bigG
    root/sdxl-inpaint/    StableDiffusionXLInpaintPipeline: 9-channel UNet, the rest linked to ../sdxl/
    root/controlnet/<family>/     ControlNetModel in the lllyasviel / diffusers layout
    root/ip-adapter/<family>/     ip-adapter.safetensors (4 image tokens, h94 layout) + image_encoder/
                                  (CLIP ViT-H/14 for sd15, OpenCLIP ViT-bigG/14 for sdxl, as h94 ships)
    root/easel.toml       serves both: ``easel serve --config root/easel.toml``

Pictures are noise. The tokenizers are built offline (character level, padded to CLIP's 49408
ids): prompts are always padded to 77 tokens, so text encoding costs what it does with the real
BPE vocabulary. Disk: about 6 GB for sd15, 18 GB for sdxl.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

FAMILIES = ("sd15", "sdxl")
IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"
CONTROL_TYPES = ("canny", "depth")  # both served by the family's one ControlNet folder (two copies in memory)

# -- the real configurations (diffusers / transformers config.json of the published checkpoints) -------

# stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
# vae/config.json of both (SDXL: sample_size 1024, scaling_factor 0.13025, force_upcast true)
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# openai/clip-vit-large-patch14 text model (SD1.5 text_encoder, SDXL text_encoder)
CLIP_L_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
# laion OpenCLIP ViT-bigG/14 text model (SDXL text_encoder_2)
BIGG_TEXT = dict(CLIP_L_TEXT, hidden_size=1280, intermediate_size=5120, projection_dim=1280, num_hidden_layers=32,
                 num_attention_heads=20, hidden_act="gelu")
# h94/IP-Adapter models/image_encoder (OpenCLIP ViT-H/14) and sdxl_models/image_encoder (ViT-bigG/14)
VIT_H_VISION = dict(hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32,
                    num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
BIGG_VISION = dict(VIT_H_VISION, hidden_size=1664, intermediate_size=8192, projection_dim=1280,
                   num_hidden_layers=48)
# lllyasviel/control_v11p_sd15_* and diffusers/controlnet-*-sdxl-1.0: the UNet's down half plus this
CONTROLNET_EMBEDDING = (16, 32, 96, 256)
# scheduler/scheduler_config.json: SD1.5 ships PNDM, SDXL Euler (Easel picks its sampler per job anyway)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      interpolation_type="linear", prediction_type="epsilon",
                      steps_offset=1, timestep_spacing="leading", use_karras_sigmas=False)

# Parameter counts of the published checkpoints, which the modules above must reproduce.
KNOWN_PARAMETERS = {
    ("sd15", "unet"): 859_520_964,
    ("sd15", "inpaint_unet"): 859_535_364,
    ("sd15", "vae"): 83_653_863,
    ("sd15", "text_encoder"): 123_060_480,
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "text_encoder_2"): 694_659_840,
}


def unet_config(family: str, in_channels: int = 4) -> dict:
    return dict(SD15_UNET if family == "sd15" else SDXL_UNET, in_channels=in_channels)


# -- building ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _default_dtype(dtype):
    """Build modules directly in ``dtype``: an SDXL UNet is 10 GB in float32, 5 GB in float16."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(family: str, part: str, device: str = "cpu"):
    """One random module of ``family`` at full size (``device="meta"`` builds it without memory)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        if part in ("unet", "inpaint_unet"):
            return UNet2DConditionModel(**unet_config(family, 9 if part == "inpaint_unet" else 4))
        if part == "vae":
            return AutoencoderKL(**(SD15_VAE if family == "sd15" else SDXL_VAE))
        if part == "text_encoder":
            return CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))
        if part == "text_encoder_2":
            return CLIPTextModelWithProjection(CLIPTextConfig(**BIGG_TEXT))
        if part == "controlnet":
            return ControlNetModel.from_config(controlnet_config(family))
        if part == "image_encoder":
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            vision = VIT_H_VISION if family == "sd15" else BIGG_VISION
            return CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
    raise ValueError(f"unknown part {part!r}")


def controlnet_config(family: str) -> dict:
    """The family's ControlNet: the UNet's down blocks and mid block, and the conditioning embedding."""
    unet = unet_config(family)
    keep = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "block_out_channels",
            "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups",
            "norm_eps", "cross_attention_dim", "attention_head_dim", "transformer_layers_per_block",
            "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
            "projection_class_embeddings_input_dim")
    config = {key: unet[key] for key in keep if key in unet}
    return dict(config, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING,
                controlnet_conditioning_channel_order="rgb")


def tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIP tokenizer built offline: one token per character, ids padded to CLIP's 49408 so the
    start / end tokens have their real ids (49406, 49407). SDXL's second tokenizer pads with "!"."""
    from transformers import CLIPTokenizer

    byte_chars = _byte_characters()
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += [f"<|unused{i}|>" for i in range(49406 - len(tokens))] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=77,
                         pad_token=pad_token)


def _byte_characters() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) uses for the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


# -- writing ----------------------------------------------------------------------------------------


def write_full_size_model(root: str | os.PathLike, families=FAMILIES, seed: int = 0, log=print) -> pathlib.Path:
    """Write the full-size random families under ``root`` plus an ``easel.toml``; returns root."""
    import torch

    import transformers

    root = pathlib.Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" bars, one per module
    with torch.random.fork_rng(devices=[]), _default_dtype(torch.float16), torch.no_grad():
        torch.manual_seed(seed)
        for family in families:
            _write_family(root, family, log)
    write_config(root, families)
    return root


def _write_family(root: pathlib.Path, family: str, log) -> None:
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    folder, inpaint = root / family, root / f"{family}-inpaint"
    save = dict(safe_serialization=True)
    for part in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if family == "sdxl" else ()):
        log(f"{family}: {part}")
        module = build(family, part)
        module.save_pretrained(folder / part, **save)
        if part == "unet":
            log(f"{family}: controlnet")
            _write_controlnet(root / "controlnet" / family, module)
        del module
    tokenizer().save_pretrained(folder / "tokenizer")
    if family == "sdxl":
        tokenizer(pad_token="!").save_pretrained(folder / "tokenizer_2")
    scheduler = PNDMScheduler(**SD15_SCHEDULER) if family == "sd15" else EulerDiscreteScheduler(**SDXL_SCHEDULER)
    scheduler.save_pretrained(folder / "scheduler")
    index = _model_index(family)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    log(f"{family}: inpaint unet")
    build(family, "inpaint_unet").save_pretrained(inpaint / "unet", **save)
    for name in index:
        if not name.startswith("_") and name != "unet" and (folder / name).is_dir() and not (inpaint / name).exists():
            (inpaint / name).symlink_to(pathlib.Path("..") / family / name)  # one copy of the shared parts
    inpaint_index = dict(index, _class_name=index["_class_name"].replace("Pipeline", "InpaintPipeline"))
    if family == "sdxl":
        inpaint_index["requires_aesthetics_score"] = False
    (inpaint / "model_index.json").write_text(json.dumps(inpaint_index, indent=2) + "\n")

    log(f"{family}: ip-adapter and image encoder")
    _write_ip_adapter(root / "ip-adapter" / family, family)


def _model_index(family: str) -> dict:
    from diffusers import __version__

    clip_text = ["transformers", "CLIPTextModel"]
    index = {"_class_name": "StableDiffusionPipeline" if family == "sd15" else "StableDiffusionXLPipeline",
             "_diffusers_version": __version__, "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": clip_text,
             "tokenizer": ["transformers", "CLIPTokenizer"]}
    if family == "sd15":
        return dict(index, scheduler=["diffusers", "PNDMScheduler"], safety_checker=[None, None],
                    feature_extractor=[None, None], image_encoder=[None, None], requires_safety_checker=False)
    return dict(index, text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                tokenizer_2=["transformers", "CLIPTokenizer"], scheduler=["diffusers", "EulerDiscreteScheduler"],
                feature_extractor=[None, None], image_encoder=[None, None], force_zeros_for_empty_prompt=True,
                add_watermarker=False)


def _write_controlnet(folder: pathlib.Path, unet) -> None:
    """A ControlNet made from the UNet as training starts one (zero convolutions and all: a
    random ControlNet steers nothing, but costs exactly what a trained one costs)."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING)
    controlnet.save_pretrained(folder, safe_serialization=True)


def _write_ip_adapter(folder: pathlib.Path, family: str) -> None:
    """The h94 IP-Adapter layout (what ``load_ip_adapter`` converts): ``image_proj.proj`` /
    ``image_proj.norm`` (image embedding -> 4 tokens) and ``ip_adapter.<n>.to_k_ip / to_v_ip`` for
    each cross-attention layer of the UNet, n = 1, 3, 5, ... in ``attn_processors`` order."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    encoder = build(family, "image_encoder")
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(size=224, crop_size=224).save_pretrained(folder / "image_encoder")
    embed_dim = encoder.config.projection_dim
    del encoder

    unet = build(family, "unet", device="meta")  # only its layout is needed
    context = unet.config.cross_attention_dim

    def linear(rows: int, columns: int):
        return (torch.rand(rows, columns) * 2 - 1) / columns ** 0.5

    tensors = {"image_proj.proj.weight": linear(4 * context, embed_dim),
               "image_proj.proj.bias": torch.zeros(4 * context),
               "image_proj.norm.weight": torch.ones(context), "image_proj.norm.bias": torch.zeros(context)}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):  # self-attention carries no adapter
            continue
        inner = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = linear(inner, context)
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = linear(inner, context)
        key += 2
    save_file({name: value.half().contiguous() for name, value in tensors.items()}, str(folder / IP_ADAPTER_WEIGHTS),
              metadata={"format": "pt"})


def write_config(root: pathlib.Path, families=FAMILIES) -> pathlib.Path:
    """``root/easel.toml``, serving the written families (the first is the default model)."""
    def value(text) -> str:  # a TOML string: JSON's escaping is valid TOML (paths with \ or ")
        return json.dumps(str(text))

    lines = ["[server]", f"default_model = {value(families[0])}", ""]
    for family in families:
        lines += [f"[models.{family}]", f"source = {value(root / family)}", f"family = {value(family)}",
                  f"inpaint = {value(root / (family + '-inpaint'))}", ""]
        lines += [f"[controlnets.{family}]"]
        lines += [f"{kind} = {value(root / 'controlnet' / family)}" for kind in CONTROL_TYPES] + [""]
        adapter = root / "ip-adapter" / family
        lines += [f"[ip_adapters.{family}]", f"weights = {value(adapter / IP_ADAPTER_WEIGHTS)}",
                  f"image_encoder = {value(adapter / 'image_encoder')}", ""]
    path = root / "easel.toml"
    path.write_text("\n".join(lines))
    return path

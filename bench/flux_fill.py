"""bench/gpu.py's flux row: Flux Fill inpaint, Easel end to end versus the plain diffusers call.

The model is a random FLUX.1-Fill-dev architecture built in memory from its real configuration
(transformer 19 + 38 blocks, 3072 wide, 384 input channels; T5-XXL; CLIP-L; the 16-channel VAE):
same compute and memory as the real weights, nothing to download or write. Both sides run the same
module objects: the reference is ``FluxFillPipeline(...)(prompt, image, mask_image, 28 steps,
guidance 30, max_sequence_length 512)``; Easel is ``Client.run("inpaint", ...)`` against a server in
this process whose registry holds that pipeline as a loaded flux model. ``--flux-scale tiny`` builds
the demo's sizes instead, for a dry run on a CPU.

``--flux-quant Q8_0`` (or Q5_0, Q4_0 ...) runs both sides on a GGUF-quantised transformer instead:
the random transformer is written as a ``.gguf`` file of its real sizes (``write_quantised``) and
loaded back the way Easel loads a painter's GGUF file (``backend.engine.flux.load_gguf_transformer``:
diffusers' GGUF layers, the weights kept quantised on the GPU and dequantised as each layer runs).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

PROMPT = "a red door in a white wall, oil painting"
SEED, GUIDANCE = 7, 30.0  # Fill's recommended distilled guidance

FULL = dict(
    transformer=dict(patch_size=1, in_channels=384, out_channels=64, num_layers=19, num_single_layers=38,
                     attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                     pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    t5=dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False),
    clip=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
)
TINY = dict(
    transformer=dict(patch_size=1, in_channels=192, out_channels=64, num_layers=1, num_single_layers=1,
                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                     pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
    t5=dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4),
    clip=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=77, projection_dim=32),
    vae=dict(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=1),
)


def build(scale: str, device: torch.device, dtype: torch.dtype):
    """A random FluxFillPipeline of the real (``full``) or the demo's (``tiny``) sizes, on ``device``."""
    import diffusers
    import transformers

    from backend.fixtures.demo_flux import _t5_tokenizer
    from backend.fixtures.demo_model import _make_tokenizer

    sizes = FULL if scale == "full" else TINY
    clip_tokenizer = _make_tokenizer()  # built offline; tokenizers cost nothing next to the encoders
    t5_tokenizer = _t5_tokenizer()
    t5_tokenizer.model_max_length = 512  # FLUX.1-dev pads its T5 prompt to 512 tokens
    clip = dict(sizes["clip"], vocab_size=max(sizes["clip"]["vocab_size"], len(clip_tokenizer)),
                bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
                pad_token_id=clip_tokenizer.eos_token_id)
    t5 = dict(sizes["t5"], vocab_size=max(sizes["t5"]["vocab_size"], len(t5_tokenizer)), pad_token_id=0,
              eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random init straight in the run dtype: no float32 copy of 12 B parameters
    try:
        with torch.device(device):
            transformer = diffusers.FluxTransformer2DModel(**sizes["transformer"]).eval()
            text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip)).eval()
            text_encoder_2 = transformers.T5EncoderModel(transformers.T5Config(**t5)).eval()
            levels = len(sizes["vae"]["block_out_channels"])
            vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                          down_block_types=("DownEncoderBlock2D",) * levels,
                                          up_block_types=("UpDecoderBlock2D",) * levels, scaling_factor=0.3611,
                                          shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
                                          **sizes["vae"]).eval()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        transformer.proj_out.weight.mul_(0.02)  # random velocities stay finite over 28 steps
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                          max_shift=1.15, base_image_seq_len=256,
                                                          max_image_seq_len=4096)
    pipe = diffusers.FluxFillPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                      tokenizer=clip_tokenizer, text_encoder_2=text_encoder_2,
                                      tokenizer_2=t5_tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_quantised(transformer, path, quant: str, sample_rows: int = 64) -> None:
    """``transformer`` as a GGUF file at its real sizes, every matrix whose rows split into ``quant``'s
    blocks quantised: the gguf package quantises the first ``sample_rows`` rows of it and they repeat
    down the matrix (the same bytes, memory and compute as a file of 12 B individually quantised weights,
    written in seconds rather than the many minutes the package's Python quantiser takes for all of
    them); the other tensors (biases, norm scales) float32, as ``backend.fixtures.demo_flux.write_gguf``
    and city96's files keep them."""
    import gguf

    qtype = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, tensor in transformer.state_dict().items():
        if tensor.ndim == 2 and tensor.shape[-1] % block == 0:
            rows = tensor.shape[0]
            sample = gguf.quants.quantize(tensor[:sample_rows].float().cpu().numpy(), qtype)
            data = np.tile(sample, (-(-rows // len(sample)), 1))[:rows]
            writer.add_tensor(name, np.ascontiguousarray(data), raw_dtype=qtype)
        else:
            writer.add_tensor(name, tensor.float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantise(pipe, quant: str, folder, device: torch.device, dtype: torch.dtype) -> dict:
    """Swap ``pipe``'s transformer for its GGUF-quantised copy (``write_quantised``), loaded by Easel's own
    GGUF loader onto ``device``; the file's size and the seconds writing and loading it took."""
    import gc
    from pathlib import Path

    from backend.engine.flux import load_gguf_transformer

    folder = Path(folder)
    pipe.transformer.save_config(folder / "transformer")  # the architecture, as a model's `config` folder has it
    path = folder / f"flux-fill-{quant}.gguf"
    start = time.perf_counter()
    write_quantised(pipe.transformer, path, quant)
    written = time.perf_counter() - start
    pipe.transformer = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    start = time.perf_counter()
    transformer = load_gguf_transformer(path, str(folder), dtype)
    transformer = transformer.to(device) if device.type != "cpu" else transformer
    pipe.register_modules(transformer=transformer)
    loaded = time.perf_counter() - start
    return {"file_bytes": path.stat().st_size, "write_s": written, "load_s": loaded,
            "weight_bytes": sum(p.numel() * p.element_size() for p in transformer.parameters())}


def reference_call(pipe, image: np.ndarray, mask: np.ndarray, steps: int, sync) -> tuple[float, list[float]]:
    stamps = []

    def on_step(pipe, step, timestep, tensors):
        stamps.append(time.perf_counter())
        return {}

    size = image.shape[0]
    sync()
    start = time.perf_counter()
    pipe(prompt=PROMPT, image=Image.fromarray(image[..., :3]), mask_image=Image.fromarray(mask), height=size,
         width=size, num_inference_steps=steps, guidance_scale=GUIDANCE, max_sequence_length=512,
         generator=torch.Generator("cpu").manual_seed(SEED), callback_on_step_end=on_step)
    sync()
    return time.perf_counter() - start, stamps


def easel_server(pipe, device: torch.device, dtype: torch.dtype):
    """A server whose registry holds ``pipe`` as the loaded flux model ``flux-fill``."""
    from backend.config import Config, ModelSpec
    from backend.engine.engine import Engine
    from backend.engine.flux import FluxModel
    from backend.engine.models import ModelRegistry
    from backend.server import ServerThread

    config = Config(port=0, default_model="flux-fill",
                    models={"flux-fill": ModelSpec("flux-fill", "(built in memory)", "flux")})
    registry = ModelRegistry(config, device, dtype)
    registry._loaded["flux-fill"] = FluxModel("flux-fill", pipe)  # the reference's very modules
    return ServerThread(config, Engine(registry))

"""Quantised Flux on a CPU (issue #16): what a GGUF transformer weighs, measured on real blocks and counted
for the whole model.

Measured: one full-size Flux double-stream block (``FluxTransformerBlock``) and one single-stream block
(``FluxSingleTransformerBlock``) of FLUX.1-dev's real sizes (3072 wide, 24 heads of 128, MLP ratio 4)
with random weights: their bytes in bf16, and after quantising every matrix with the ``gguf`` package
(as ``backend.fixtures.demo_flux.write_gguf`` writes a GGUF file) and loading it back through diffusers'
GGUF layer (``GGUFLinear`` holding ``GGUFParameter``) — the bytes the loaded block holds, and how far the
dequantised weights are from the originals (relative RMS). The ``gguf`` package quantises Q8_0, Q5_0,
Q5_1, Q4_0, Q4_1 in Python; the K-quants (Q6_K, Q5_K, Q4_K, Q3_K, Q2_K: what city96 ships as Q4_K_S and
so on) it only dequantises, so their bytes are counted from ``gguf.GGML_QUANT_SIZES``, not measured.

Measured the same way: torchao's int8 weight-only quantisation (the ``quantize = "int8"`` model setting),
applied to the same blocks by ``torchao.quantization.quantize_``.

Counted: the whole transformer (19 double + 38 single blocks plus the embedders and the output layer, from
a model built on the ``meta`` device: no memory) by the same rule the measurement follows: every 2-D weight
whose rows split into the quant's blocks is quantised, everything else (biases, norm scales) is bf16. The
count of one block is printed beside its measurement, so the rule is checked where it can be.

``--load-check`` writes a Flux transformer of the real width with one block of each kind (random, 0.5 B
parameters) as a Q8_0 GGUF in the original (BFL / ComfyUI, city96) layout and loads it with Easel's loader
(``backend.engine.flux.load_gguf_transformer``: diffusers converts the layout, whose single-block split
assumes the real 3072 width, which is why the demo's tiny GGUFs use diffusers' tensor names instead), then
compares its output with the unquantised model's.

Optionally (``--forward-tokens N``) the seconds one double block's forward pass takes on N image tokens
(plus 512 text tokens) in bf16 and in each measured quant, on this CPU (GGUF layers dequantise on the
fly; on a GPU diffusers can use fused kernels instead, so these seconds say nothing about a GPU).

    python bench/flux_quant.py                      # about a minute on 2 cores, ~4 GB of RAM
    python bench/flux_quant.py --quants Q8_0 --forward-tokens 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for backend.*

DEV = dict(patch_size=1, in_channels=64, out_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
           num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
           axes_dims_rope=(16, 56, 56))
DIM, HEADS, HEAD_DIM = 3072, 24, 128
MEASURABLE = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")  # the gguf package quantises these in Python
COUNTED = ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")  # these it only dequantises


def quant_bytes(shape, quant: str | None, rest_bytes: int = 2) -> int:
    """Bytes of one tensor: quantised (``quant``) when it is a matrix whose rows split into the quant's
    blocks, else ``rest_bytes`` an element (bf16)."""
    import gguf

    count = int(np.prod(shape))
    if quant is None or len(shape) != 2:
        return count * rest_bytes
    if quant == "int8":  # torchao's Int8Tensor: int8 data, a float32 scale and an int8 zero point a row
        return count + shape[0] * 5
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[quant]]
    if shape[-1] % block:
        return count * rest_bytes
    return count // block * size


def counted(module, quant: str | None) -> int:
    return sum(quant_bytes(tuple(p.shape), quant) for p in module.parameters())


def held(module) -> int:
    """Bytes the module's parameters occupy (a GGUF parameter: its quantised blocks; a torchao tensor: the
    tensors inside it)."""
    def nbytes(tensor) -> int:
        if hasattr(tensor, "__tensor_flatten__") and not hasattr(tensor, "quant_type"):
            return sum(nbytes(getattr(tensor, name)) for name in tensor.__tensor_flatten__()[0])
        return tensor.numel() * tensor.element_size()

    return sum(nbytes(p) for p in module.parameters())


def int8(module):
    """A copy of ``module`` quantised by torchao's int8 weight-only config (what ``quantize = "int8"`` and
    diffusers' TorchAoConfig apply to each linear layer); the relative RMS error of the dequantised weights."""
    import copy

    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    out = copy.deepcopy(module)
    quantize_(out, Int8WeightOnlyConfig())
    error, norm = 0.0, 0.0
    for (_, linear), (_, original) in zip(
            [(n, m) for n, m in out.named_modules() if isinstance(m, torch.nn.Linear)],
            [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]):
        want = original.weight.detach().float()
        error += float(((linear.weight.dequantize().float() - want) ** 2).sum())
        norm += float((want ** 2).sum())
    return out, (error / norm) ** 0.5


def blocks(dtype=torch.bfloat16):
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        double = FluxTransformerBlock(dim=DIM, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM).eval()
        single = FluxSingleTransformerBlock(dim=DIM, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM).eval()
    finally:
        torch.set_default_dtype(previous)
    return double, single


def quantise(module, quant: str, compute_dtype=torch.bfloat16):
    """A copy of ``module`` with every quantisable linear weight as diffusers' GGUF layer holds it, the
    weights quantised by the ``gguf`` package; the relative RMS error of the dequantised weights."""
    import copy

    import gguf
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter, dequantize_gguf_tensor

    qtype = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    out = copy.deepcopy(module)
    error, norm = 0.0, 0.0
    for name, linear in list(out.named_modules()):
        if not isinstance(linear, torch.nn.Linear) or linear.in_features % block:
            continue
        weight = linear.weight.detach().float().numpy()
        data = GGUFParameter(torch.from_numpy(gguf.quants.quantize(weight, qtype)), quant_type=qtype)
        back = dequantize_gguf_tensor(data).float().numpy()
        error += float(((back - weight) ** 2).sum())
        norm += float((weight ** 2).sum())
        layer = GGUFLinear(linear.in_features, linear.out_features, linear.bias is not None,
                           compute_dtype=compute_dtype)
        layer.weight = data
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, layer)
    return out, (error / norm) ** 0.5


def forward_seconds(double, tokens: int, runs: int = 2) -> float:
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    torch.manual_seed(1)
    dtype = torch.bfloat16
    hidden = torch.randn(1, tokens, DIM, dtype=dtype)
    context = torch.randn(1, 512, DIM, dtype=dtype)
    temb = torch.randn(1, DIM, dtype=dtype)
    rope = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(torch.zeros(tokens + 512, 3))
    best = float("inf")
    with torch.no_grad():
        for _ in range(runs):
            start = time.perf_counter()
            double(hidden_states=hidden, encoder_hidden_states=context, temb=temb, image_rotary_emb=rope)
            best = min(best, time.perf_counter() - start)
    return best


def original_layout(weights: dict) -> dict:
    """A diffusers Flux transformer's state dict in the original (BFL) tensor names, as city96's GGUFs and
    ComfyUI's files have them: the inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``."""
    out = {}

    def put(name, *parts):
        out[name] = torch.cat([weights.pop(part) for part in parts]) if len(parts) > 1 else weights.pop(parts[0])

    for new, old in (("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                     ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                     ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                     ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                     ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                     ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
                     ("txt_in", "context_embedder"), ("img_in", "x_embedder"), ("final_layer.linear", "proj_out")):
        for kind in ("weight", "bias"):
            put(f"{new}.{kind}", f"{old}.{kind}")
    for kind in ("weight", "bias"):  # diffusers' AdaLayerNormContinuous has scale, shift; the original shift, scale
        scale, shift = weights.pop(f"norm_out.linear.{kind}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale])
    blocks = sorted({int(name.split(".")[1]) for name in weights if name.startswith("transformer_blocks.")})
    for i in blocks:
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            put(f"{b}img_mod.lin.{kind}", f"{d}norm1.linear.{kind}")
            put(f"{b}txt_mod.lin.{kind}", f"{d}norm1_context.linear.{kind}")
            put(f"{b}img_attn.qkv.{kind}", *(f"{d}attn.to_{x}.{kind}" for x in "qkv"))
            put(f"{b}txt_attn.qkv.{kind}", *(f"{d}attn.add_{x}_proj.{kind}" for x in "qkv"))
            put(f"{b}img_attn.proj.{kind}", f"{d}attn.to_out.0.{kind}")
            put(f"{b}txt_attn.proj.{kind}", f"{d}attn.to_add_out.{kind}")
            put(f"{b}img_mlp.0.{kind}", f"{d}ff.net.0.proj.{kind}")
            put(f"{b}img_mlp.2.{kind}", f"{d}ff.net.2.{kind}")
            put(f"{b}txt_mlp.0.{kind}", f"{d}ff_context.net.0.proj.{kind}")
            put(f"{b}txt_mlp.2.{kind}", f"{d}ff_context.net.2.{kind}")
        put(f"{b}img_attn.norm.query_norm.scale", f"{d}attn.norm_q.weight")
        put(f"{b}img_attn.norm.key_norm.scale", f"{d}attn.norm_k.weight")
        put(f"{b}txt_attn.norm.query_norm.scale", f"{d}attn.norm_added_q.weight")
        put(f"{b}txt_attn.norm.key_norm.scale", f"{d}attn.norm_added_k.weight")
    singles = sorted({int(name.split(".")[1]) for name in weights if name.startswith("single_transformer_blocks.")})
    for i in singles:
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            put(f"{b}modulation.lin.{kind}", f"{d}norm.linear.{kind}")
            put(f"{b}linear1.{kind}", *(f"{d}attn.to_{x}.{kind}" for x in "qkv"), f"{d}proj_mlp.{kind}")
            put(f"{b}linear2.{kind}", f"{d}proj_out.{kind}")
        put(f"{b}norm.query_norm.scale", f"{d}attn.norm_q.weight")
        put(f"{b}norm.key_norm.scale", f"{d}attn.norm_k.weight")
    if weights:
        raise ValueError(f"not mapped: {', '.join(sorted(weights)[:5])}")
    return out


def load_check(quant: str = "Q8_0") -> None:
    """A 1 + 1 block Flux transformer of the real width, as an original-layout GGUF, through Easel's loader."""
    import tempfile

    from diffusers import FluxTransformer2DModel

    from backend.engine.flux import load_gguf_transformer
    from backend.fixtures.demo_flux import write_gguf

    torch.manual_seed(0)
    config = dict(DEV, num_layers=1, num_single_layers=1)
    model = FluxTransformer2DModel(**config).to(torch.bfloat16).eval()
    with torch.no_grad():
        model.proj_out.weight.mul_(0.1)
    with tempfile.TemporaryDirectory(prefix="easel-gguf-") as folder:
        model.save_config(Path(folder) / "transformer")
        path = Path(folder) / f"flux-1+1-{quant}.gguf"
        start = time.perf_counter()
        write_gguf(original_layout(dict(model.state_dict())), path, quant)
        written = time.perf_counter() - start
        start = time.perf_counter()
        loaded = load_gguf_transformer(path, folder, torch.bfloat16)
        seconds = time.perf_counter() - start
        size = path.stat().st_size
    from diffusers.quantizers.gguf.utils import GGUFParameter

    quantised = sum(isinstance(p, GGUFParameter) for p in loaded.parameters())
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    torch.manual_seed(1)
    tokens = 64
    inputs = dict(hidden_states=torch.randn(1, tokens, 64, dtype=torch.bfloat16),
                  encoder_hidden_states=torch.randn(1, 32, 4096, dtype=torch.bfloat16),
                  pooled_projections=torch.randn(1, 768, dtype=torch.bfloat16), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([3.5]), img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(32, 3),
                  return_dict=False)
    with torch.no_grad():
        want, got = model(**inputs)[0].float(), loaded(**inputs)[0].float()
    error = float((got - want).norm() / want.norm())
    print(f"load check: 1 + 1 blocks at 3072 wide ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B "
          f"parameters), original layout, {quant}: file {mib(size)} written in {written:.0f} s, loaded by Easel's "
          f"loader in {seconds:.1f} s; {quantised} of {linears} linear weights quantised; "
          f"output relative error {error:.4f} against bf16")


def gib(n: int) -> str:
    return f"{n / 2**30:6.2f} GiB"


def mib(n: int) -> str:
    return f"{n / 2**20:7.1f} MiB"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quants", nargs="*", default=["Q8_0", "Q5_0", "Q4_0"], choices=MEASURABLE)
    parser.add_argument("--forward-tokens", type=int, default=0, help="also time one double block's forward")
    parser.add_argument("--no-int8", dest="int8", action="store_false",
                        help="skip the torchao int8 weight-only row (quantize = \"int8\")")
    parser.add_argument("--load-check", action="store_true",
                        help="only: an original-layout GGUF of a 1 + 1 block full-width Flux through Easel's loader")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.load_check:
        return load_check()
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        whole = FluxTransformer2DModel(**DEV)
    parameters = sum(p.numel() for p in whole.parameters())
    double, single = blocks()
    print(f"FLUX.1-dev transformer: {parameters / 1e9:.2f} B parameters; one double block "
          f"{sum(p.numel() for p in double.parameters()) / 1e6:.1f} M, one single block "
          f"{sum(p.numel() for p in single.parameters()) / 1e6:.1f} M\n")
    print(f"{'format':8s} {'double block':>14s} {'(counted)':>12s} {'single block':>14s} {'(counted)':>12s} "
          f"{'rel. RMS':>9s} {'19 + 38 blocks':>15s} {'whole, counted':>15s}")
    bf16 = (held(double), held(single))
    print(f"{'bf16':8s} {mib(bf16[0]):>14s} {mib(counted(double, None)):>12s} {mib(bf16[1]):>14s} "
          f"{mib(counted(single, None)):>12s} {'0':>9s} {gib(19 * bf16[0] + 38 * bf16[1]):>15s} "
          f"{gib(counted(whole, None)):>15s}")
    timings = {}
    if args.forward_tokens:
        timings["bf16"] = forward_seconds(double, args.forward_tokens)
    for quant in args.quants:
        start = time.perf_counter()
        q_double, e_double = quantise(double, quant)
        q_single, e_single = quantise(single, quant)
        seconds = time.perf_counter() - start
        error = max(e_double, e_single)
        print(f"{quant:8s} {mib(held(q_double)):>14s} {mib(counted(double, quant)):>12s} {mib(held(q_single)):>14s} "
              f"{mib(counted(single, quant)):>12s} {error:9.4f} {gib(19 * held(q_double) + 38 * held(q_single)):>15s} "
              f"{gib(counted(whole, quant)):>15s}"
              f"   (quantised in {seconds:.0f} s)", flush=True)
        if args.forward_tokens:
            timings[quant] = forward_seconds(q_double, args.forward_tokens)
        del q_double, q_single
    if args.int8:
        start = time.perf_counter()
        q_double, e_double = int8(double)
        q_single, e_single = int8(single)
        seconds = time.perf_counter() - start
        print(f"{'int8 ao':8s} {mib(held(q_double)):>14s} {mib(counted(double, 'int8')):>12s} "
              f"{mib(held(q_single)):>14s} {mib(counted(single, 'int8')):>12s} {max(e_double, e_single):9.4f} "
              f"{gib(19 * held(q_double) + 38 * held(q_single)):>15s} {gib(counted(whole, 'int8')):>15s}"
              f"   (quantised in {seconds:.0f} s)", flush=True)
        if args.forward_tokens:
            timings["int8 ao"] = forward_seconds(q_double, args.forward_tokens)
        del q_double, q_single
    for quant in COUNTED:
        print(f"{quant:8s} {'-':>14s} {mib(counted(double, quant)):>12s} {'-':>14s} {mib(counted(single, quant)):>12s} "
              f"{'-':>9s} {gib(19 * counted(double, quant) + 38 * counted(single, quant)):>15s} "
              f"{gib(counted(whole, quant)):>15s}")
    print("\nmeasured: the loaded blocks' parameter bytes (bf16; GGUF-quantised by the gguf package, in diffusers' "
          "GGUFLinear); 19 + 38 blocks: 19 x the double block + 38 x the single block (measured bytes, K-quants "
          "counted); counted: 2-D weights at the quant's block size, the rest bf16, for the whole transformer "
          "(blocks, embedders, output layer)")
    if timings:
        print(f"\none double block forward, {args.forward_tokens} image + 512 text tokens, this CPU "
              f"({torch.get_num_threads()} threads), best of 2:")
        for name, seconds in timings.items():
            print(f"  {name:6s} {seconds:6.2f} s")


if __name__ == "__main__":
    main()

"""Easel end to end versus the plain diffusers call, on full-size SD1.5 / SDXL architectures.

For each family (SD1.5 at 512 x 512, SDXL at 1024 x 1024 unless ``--size`` says otherwise) and
each mode —

  inpaint        inpaint, 20 steps, strength 1
  inpaint+cn     the same with one ControlNet (canny map, scale 1)
  inpaint+2cn+ip the same with two ControlNets (canny, depth) and one IP-Adapter reference
  img2img        img2img, strength 0.5 (10 of the 20 steps run)

— the script times

  (a) reference  the seed texts' call: ``<Pipeline>.from_pretrained(folder, torch_dtype=float16)``
                 (float32 on a CPU, which has no fast half precision), ``.to(device)``, the same
                 sampler (Euler) as Easel, then ``pipe(...)`` with the same prompt, negative
                 prompt, seed, steps, guidance, pictures and scales;
  (b) easel      ``shared.client.Client.run`` against a real server in this process on loopback
                 (submit, upload, queue, engine with its [performance] defaults, result back),

and prints it/s (from the per-step callbacks / progress messages: steps 1..N over their span),
seconds per image, their ratios, and peak GPU memory (``torch.cuda.max_memory_allocated``) of the
reference pipeline of each mode (each loaded alone) and of Easel after its first mode and after
all four modes of the family (one server holding them all). Every case runs once to warm up
(compile happens there), then ``--runs`` times; figures are medians. Reference pipelines run
first, each loaded alone and freed, then Easel runs the modes in the same order.

The models are the random full-size architectures of ``easel demo-model --full-size`` (same
compute and memory as the real weights); ``--model-dir`` reuses a written one, else it is written
there first (about 6 GB for sd15, 18 GB for sdxl).

    python bench/gpu.py --model-dir /data/easel-full                      # on a GPU: both families
    python bench/gpu.py --model-dir /tmp/full --family sd15 --size 128 --steps 4 --runs 2 --device cpu

A ``--size`` below the native size is a dry run: the models' native size is lowered to it so both
sides diffuse at ``--size`` (Easel would otherwise scale a small picture up to the native size).

``--family flux`` is the flux row (``bench/flux_fill.py``): Flux Fill inpaint at 1024 x 1024, 28 steps
(``--flux-steps``), a random full-size architecture built in memory from the real configuration, both
sides on the same modules; ``--flux-scale tiny --size 64 --device cpu`` is its dry run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# overhead.py puts the repository on sys.path for the backend imports below
from overhead import canvas, depth_map, describe_device, edge_map, quiet_libraries  # noqa: E402

# isort: split
import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from backend.config import load_config  # noqa: E402
from backend.engine.engine import Engine  # noqa: E402
from backend.engine.models import ModelRegistry, pick_device  # noqa: E402
from backend.engine.previews import Previewer  # noqa: E402
from backend.fixtures import full_size  # noqa: E402
from backend.server import ServerThread  # noqa: E402
from shared.client import Client, Progress  # noqa: E402
from shared.images import ImageData  # noqa: E402

NATIVE = {"sd15": 512, "sdxl": 1024}
FAMILY_CHOICES = tuple(NATIVE) + ("flux",)
MODES = ("inpaint", "inpaint+cn", "inpaint+2cn+ip", "img2img")
PROMPT, NEGATIVE = "a red door in a white wall, oil painting", "blurry, low quality"
SEED, GUIDANCE, IMG2IMG_STRENGTH = 7, 7.5, 0.5
CONTROLNET_MEMORY_MB = 16384  # room for two SDXL ControlNets (2.5 GB each in half precision)


@dataclasses.dataclass
class Inputs:
    """One family's pictures at the diffusion size."""

    size: int
    image: np.ndarray  # RGBA
    mask: np.ndarray  # L, 255 = repaint
    maps: list[np.ndarray]  # canny-style and depth-style, L
    reference: np.ndarray  # RGBA

    @classmethod
    def make(cls, size: int) -> "Inputs":
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
        return cls(size, canvas(size), mask, [edge_map(size), depth_map(size)], canvas(224, seed=1))


@dataclasses.dataclass
class Figures:
    seconds: list[float] = dataclasses.field(default_factory=list)
    rates: list[float] = dataclasses.field(default_factory=list)  # it/s of each run
    warmup: float = float("nan")
    server_run: list[float] = dataclasses.field(default_factory=list)  # easel: Engine.run as the server timed it
    peak_bytes: int | None = None

    def median(self, values) -> float:
        return statistics.median(values) if values else float("nan")


def step_rate(stamps: list[float]) -> float:
    """Steps per second between the first and the last step's end (the loop, not the set-up)."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")


def rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]))


# -- reference: plain diffusers --------------------------------------------------------------------


def reference_pipeline(root: Path, family: str, mode: str, device: torch.device, dtype: torch.dtype):
    """The seed texts' pipeline for ``mode``: from_pretrained in half precision, moved to the device."""
    d = diffusers
    xl = family == "sdxl"
    folder = root / (family if mode == "img2img" else f"{family}-inpaint")
    extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
    if mode == "img2img":
        cls = d.StableDiffusionXLImg2ImgPipeline if xl else d.StableDiffusionImg2ImgPipeline
    elif mode == "inpaint":
        cls = d.StableDiffusionXLInpaintPipeline if xl else d.StableDiffusionInpaintPipeline
    else:
        cls = d.StableDiffusionXLControlNetInpaintPipeline if xl else d.StableDiffusionControlNetInpaintPipeline
        count = 1 if mode == "inpaint+cn" else 2
        nets = [d.ControlNetModel.from_pretrained(root / "controlnet" / family, torch_dtype=dtype)
                for _ in range(count)]
        extra["controlnet"] = nets[0] if count == 1 else nets
    pipe = cls.from_pretrained(folder, torch_dtype=dtype, **extra)
    if mode.endswith("+ip"):
        adapter = root / "ip-adapter" / family
        pipe.load_ip_adapter(str(adapter), subfolder="", weight_name=full_size.IP_ADAPTER_WEIGHTS)
        pipe.set_ip_adapter_scale(1.0)
    pipe.scheduler = d.EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # Easel's "euler"
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def reference_call(pipe, mode: str, inputs: Inputs, steps: int) -> tuple[float, float]:
    """One plain call; returns (seconds, it/s)."""
    stamps = []

    def on_step(pipe, step, timestep, tensors):
        stamps.append(time.perf_counter())
        return {}

    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE,
                  generator=torch.Generator("cpu").manual_seed(SEED), callback_on_step_end=on_step,
                  image=rgb(inputs.image), height=inputs.size, width=inputs.size)
    if mode == "img2img":
        kwargs.update(strength=IMG2IMG_STRENGTH)
        del kwargs["height"], kwargs["width"]
    else:
        kwargs.update(mask_image=Image.fromarray(inputs.mask), strength=1.0)
    if "+cn" in mode or "+2cn" in mode:
        maps = [Image.fromarray(m).convert("RGB") for m in inputs.maps]
        two = "+2cn" in mode
        kwargs.update(control_image=maps if two else maps[0],
                      controlnet_conditioning_scale=[1.0, 1.0] if two else 1.0)
    if mode.endswith("+ip"):
        kwargs["ip_adapter_image"] = rgb(inputs.reference)
    synchronize(pipe.device)
    start = time.perf_counter()
    pipe(**kwargs)
    synchronize(pipe.device)
    return time.perf_counter() - start, step_rate(stamps)


def measure_reference(root: Path, family: str, mode: str, inputs: Inputs, args, device, dtype) -> Figures:
    figures = Figures()
    reset_peak(device)
    start = time.perf_counter()
    pipe = reference_pipeline(root, family, mode, device, dtype)
    figures.warmup = time.perf_counter() - start + reference_call(pipe, mode, inputs, args.steps)[0]
    for _ in range(args.runs):
        seconds, rate = reference_call(pipe, mode, inputs, args.steps)
        figures.seconds.append(seconds)
        figures.rates.append(rate)
    figures.peak_bytes = peak(device)
    del pipe
    free(device)
    return figures


# -- easel: client -> server -> result -------------------------------------------------------------


def easel_params(family: str, mode: str, inputs: Inputs, steps: int) -> tuple[str, dict]:
    def raw(pixels):
        return ImageData("rgba8" if pixels.ndim == 3 else "l8", pixels.shape[1], pixels.shape[0], pixels.tobytes())

    params = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=raw(inputs.image), seed=SEED, steps=steps,
                  guidance=GUIDANCE, sampler="euler", model=family)
    if mode == "img2img":
        return "img2img", dict(params, strength=IMG2IMG_STRENGTH)
    params.update(mask=raw(inputs.mask), strength=1.0)
    if mode != "inpaint":
        kinds = full_size.CONTROL_TYPES[:1 if mode == "inpaint+cn" else 2]
        params["control"] = [{"type": kind, "image": raw(m), "preprocess": "off", "scale": 1.0}
                             for kind, m in zip(kinds, inputs.maps)]
    if mode.endswith("+ip"):
        params["references"] = [{"image": raw(inputs.reference), "weight": 1.0}]
    return "inpaint", params


def easel_call(client: Client, family: str, mode: str, inputs: Inputs, steps: int):
    """One job through the server; returns (seconds, it/s, the server's Engine.run seconds)."""
    stamps = []

    def on_event(event) -> None:
        if isinstance(event, Progress):
            stamps.append(time.perf_counter())

    kind, params = easel_params(family, mode, inputs, steps)
    start = time.perf_counter()
    result = client.run(kind, on_event=on_event, **params)
    return time.perf_counter() - start, step_rate(stamps), result.timings["run"]


def measure_easel(client, engine, family, mode, inputs, args, device) -> Figures:
    figures = Figures()
    start = time.perf_counter()
    easel_call(client, family, mode, inputs, args.steps)
    figures.warmup = time.perf_counter() - start
    for _ in range(args.runs):
        seconds, rate, run = easel_call(client, family, mode, inputs, args.steps)
        figures.seconds.append(seconds)
        figures.rates.append(rate)
        figures.server_run.append(run)
    figures.peak_bytes = peak(device)  # cumulative: every mode run so far stays loaded
    return figures


def easel_engine(root: Path, family: str, size: int, device, dtype) -> tuple[Engine, object]:
    config = load_config(root / "easel.toml")
    config.port, config.default_model = 0, family
    config.controlnet_memory_mb = CONTROLNET_MEMORY_MB
    config.models = {family: config.models[family]}
    engine = Engine(ModelRegistry(config, device, dtype))
    model = engine.registry.get(family)
    if size != NATIVE[family]:  # dry run: make the context crop and img2img plan at --size
        for unet in (model.base.unet, model.inpaint_unet):
            unet.register_to_config(sample_size=size // 8)
    return engine, config


def preview_cost(engine: Engine, family: str, size: int, device, dtype) -> tuple[float, float]:
    """(seconds to fit the linear preview once, median seconds per 256 px preview)."""
    model = engine.registry.get(family)
    previewer = Previewer(model.base.vae)
    latents = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=dtype)
    start = time.perf_counter()
    previewer(latents, 256)
    fit = time.perf_counter() - start
    times = []
    for _ in range(20):
        start = time.perf_counter()
        previewer(latents, 256)
        times.append(time.perf_counter() - start)
    return fit, statistics.median(times)


def unet_swap_seconds(engine: Engine, family: str, device) -> float | None:
    """Median seconds for one switch between the model's two UNets (park one, bring the other back)."""
    model, residency = engine.registry.get(family), engine.speed.residency
    if residency is None or model.inpaint_unet is None:
        return None
    times = []
    for unet in (model.base.unet, model.inpaint_unet) * 3:
        synchronize(device)
        start = time.perf_counter()
        residency.keep_only(unet, model.unets)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- device helpers --------------------------------------------------------------------------------


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak(device) -> int | None:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gib(value: int | None) -> str:
    return "n/a on cpu" if value is None else f"{value / 2**30:.2f} GiB"


# -- main ------------------------------------------------------------------------------------------


def run_family(root: Path, family: str, args, device, easel_dtype, reference_dtype) -> None:
    size = args.size or NATIVE[family]
    inputs = Inputs.make(size)
    modes = args.mode or MODES
    print(f"\n== {family} {size}x{size}, {args.steps} steps (img2img: {int(args.steps * IMG2IMG_STRENGTH)}), "
          f"1 warm-up + {args.runs} runs, medians ==")
    reference = {}
    for mode in modes:
        reference[mode] = measure_reference(root, family, mode, inputs, args, device, reference_dtype)
        print(f"  reference {mode:15s} done (load + warm-up {reference[mode].warmup:.1f} s)", flush=True)
    free(device)
    reset_peak(device)
    engine, config = easel_engine(root, family, size, device, easel_dtype)
    easel = {}
    with ServerThread(config, engine) as server, Client(server.url, name="bench-gpu") as client:
        for mode in modes:
            easel[mode] = measure_easel(client, engine, family, mode, inputs, args, device)
            print(f"  easel     {mode:15s} done (warm-up {easel[mode].warmup:.1f} s)", flush=True)
    fit, per_preview = preview_cost(engine, family, size, device, easel_dtype)

    print(f"\n{'mode':16s} {'ref it/s':>9s} {'easel it/s':>10s} {'ratio':>6s} {'ref s/img':>10s} "
          f"{'easel s/img':>11s} {'ratio':>6s} {'overhead':>9s} {'ref peak':>11s} {'easel peak':>11s}")
    for mode in modes:
        r, e = reference[mode], easel[mode]
        ref_rate, easel_rate = r.median(r.rates), e.median(e.rates)
        ref_s, easel_s = r.median(r.seconds), e.median(e.seconds)
        overhead = (easel_s - e.median(e.server_run)) / easel_s
        print(f"{mode:16s} {ref_rate:9.2f} {easel_rate:10.2f} {easel_rate / ref_rate:5.2f}x {ref_s:10.2f} "
              f"{easel_s:11.2f} {ref_s / easel_s:5.2f}x {100 * overhead:8.1f}% {gib(r.peak_bytes):>11s} "
              f"{gib(e.peak_bytes):>11s}")
    step = 1 / easel[modes[0]].median(easel[modes[0]].rates)
    largest = max(modes, key=lambda mode: reference[mode].peak_bytes or 0)
    together, alone = easel[modes[-1]].peak_bytes, reference[largest].peak_bytes
    print(f"\nmemory: easel peak after its first mode ({modes[0]}) {gib(easel[modes[0]].peak_bytes)}, with all "
          f"{len(modes)} modes loaded {gib(together)}; the largest reference pipeline ({largest}) alone "
          f"{gib(alone)}" + (f": {together / alone:.2f}x" if together and alone else "")
          + " (easel peaks are cumulative: earlier modes stay loaded)")
    print("overhead: easel wall time outside Engine.run (upload, queue, result transfer) as a share of the job")
    print(f"previews: fitting the linear preview {fit:.2f} s once per model; a 256 px preview "
          f"{1000 * per_preview:.2f} ms = {100 * per_preview / step:.2f}% of an easel {modes[0]} step "
          f"({step:.3f} s)")
    swap = unet_swap_seconds(engine, family, device)
    if swap is not None:
        print(f"unet swap: bringing the parked UNet back (base <-> inpaint, on a mode switch) {swap:.3f} s")
    del engine
    free(device)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="folder of `easel demo-model --full-size` (written there if a family is missing)")
    parser.add_argument("--family", action="append", choices=FAMILY_CHOICES, help="default: sd15 and sdxl")
    parser.add_argument("--flux-steps", type=int, default=28, help="flux row: steps (default 28)")
    parser.add_argument("--flux-scale", choices=("full", "tiny"), default="full",
                        help="flux row: the real architecture's sizes, or the demo's for a dry run")
    parser.add_argument("--mode", action="append", choices=MODES, help="default: all four")
    parser.add_argument("--size", type=int, help="square diffusion size (default: native, 512 / 1024)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case after one warm-up (default 3)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cpu or mps")
    parser.add_argument("--reference-dtype", choices=("fp16", "bf16", "fp32"),
                        help="default fp16 (the seed texts' call); fp32 on a CPU")
    args = parser.parse_args(argv)
    if args.size is not None and (args.size % 64 or args.size < 64):
        parser.error("--size must be a multiple of 64")
    if args.steps * IMG2IMG_STRENGTH < 2 or args.runs < 1:
        parser.error("--steps must be at least 4 (img2img runs half of them; it/s needs two) and --runs >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet_libraries()
    families = tuple(args.family or NATIVE)
    missing = [f for f in families if f in NATIVE and not (args.model_dir / f / "model_index.json").is_file()]
    if missing:
        print(f"writing the full-size {', '.join(missing)} model(s) to {args.model_dir} ...", flush=True)
        full_size.write_full_size_model(args.model_dir, tuple(missing))
    present = tuple(f for f in NATIVE if (args.model_dir / f / "model_index.json").is_file())
    if present and (not (args.model_dir / "easel.toml").is_file() or missing):
        full_size.write_config(args.model_dir.resolve(), present)
    toml = args.model_dir / "easel.toml"  # (the flux row alone needs no files: its model is built in memory)
    device, easel_dtype = pick_device(args.device, load_config(toml if toml.is_file() else None).performance.dtype)
    reference_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.reference_dtype or ("fp32" if device.type == "cpu" else "fp16")]
    settings = ModelRegistry(load_config(toml if toml.is_file() else None), device, easel_dtype).speed.settings
    print(f"device     {describe_device(device)}")
    print(f"versions   torch {torch.__version__}, diffusers {diffusers.__version__}")
    print(f"reference  {str(reference_dtype).removeprefix('torch.')}, diffusers defaults (SDPA), Euler")
    print(f"easel      {str(easel_dtype).removeprefix('torch.')}, sdpa {settings.sdpa}, channels_last "
          f"{settings.channels_last}, compile {settings.compile} {settings.compile_modules if settings.compile else ''}"
          f", prompt_cache {settings.prompt_cache}, vae_tiling_above {settings.vae_tiling_above}, "
          f"cpu_offload {settings.cpu_offload}, park_idle_unet {settings.park_idle_unet}, Euler")
    print(f"job        prompt + negative prompt, guidance {GUIDANCE}, seed {SEED}, inpaint mask = the middle "
          f"half of the square, control maps canny + depth (scale 1, preprocess off), reference 224 px (weight 1)")
    for family in families:
        if family == "flux":
            run_flux(args, device, easel_dtype)
        else:
            run_family(args.model_dir, family, args, device, easel_dtype, reference_dtype)


def run_flux(args, device, dtype) -> None:
    """The flux row: Flux Fill inpaint, the plain FluxFillPipeline call against Easel on the same modules."""
    import flux_fill

    dtype = torch.bfloat16 if device.type == "cuda" else dtype  # Flux runs in bf16 (fp16 overflows)
    pipe = flux_fill.build(args.flux_scale, device, dtype)
    native = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
    size = args.size or 1024
    if size != native:  # dry run: Easel plans at --size too
        pipe.default_sample_size = size // pipe.vae_scale_factor
    inputs = Inputs.make(size)
    steps = args.flux_steps
    parameters = sum(p.numel() for p in pipe.transformer.parameters())
    print(f"\n== flux (Fill) {size}x{size}, {steps} steps, guidance {flux_fill.GUIDANCE}, transformer "
          f"{parameters / 1e9:.2f} B parameters, {str(dtype).removeprefix('torch.')}, 1 warm-up + {args.runs} runs ==")
    reference = Figures()
    reset_peak(device)

    def sync():
        synchronize(device)

    start = time.perf_counter()
    reference.warmup = flux_fill.reference_call(pipe, inputs.image, inputs.mask, steps, sync)[0]
    for _ in range(args.runs):
        seconds, stamps = flux_fill.reference_call(pipe, inputs.image, inputs.mask, steps, sync)
        reference.seconds.append(seconds)
        reference.rates.append(step_rate(stamps))
    reference.peak_bytes = peak(device)
    print(f"  reference done ({time.perf_counter() - start:.1f} s)", flush=True)

    def raw(pixels):
        return ImageData("rgba8" if pixels.ndim == 3 else "l8", pixels.shape[1], pixels.shape[0], pixels.tobytes())

    job = dict(prompt=PROMPT, image=raw(inputs.image), mask=raw(inputs.mask), seed=SEED, steps=steps,
               guidance=flux_fill.GUIDANCE, model="flux-fill")
    easel = Figures()
    reset_peak(device)
    with flux_fill.easel_server(pipe, device, dtype) as server, Client(server.url, name="bench-gpu") as client:
        def call():
            stamps = []
            begin = time.perf_counter()
            result = client.run("inpaint", on_event=lambda e: isinstance(e, Progress) and stamps.append(
                time.perf_counter()), **job)
            return time.perf_counter() - begin, step_rate(stamps), result.timings["run"]

        easel.warmup = call()[0]
        for _ in range(args.runs):
            seconds, rate, run = call()
            easel.seconds.append(seconds)
            easel.rates.append(rate)
            easel.server_run.append(run)
    easel.peak_bytes = peak(device)
    r_rate, e_rate = reference.median(reference.rates), easel.median(easel.rates)
    r_s, e_s = reference.median(reference.seconds), easel.median(easel.seconds)
    print(f"\n{'mode':16s} {'ref it/s':>9s} {'easel it/s':>10s} {'ratio':>6s} {'ref s/img':>10s} "
          f"{'easel s/img':>11s} {'ratio':>6s} {'overhead':>9s} {'ref peak':>11s} {'easel peak':>11s}")
    print(f"{'flux fill':16s} {r_rate:9.2f} {e_rate:10.2f} {e_rate / r_rate:5.2f}x {r_s:10.2f} {e_s:11.2f} "
          f"{r_s / e_s:5.2f}x {100 * (e_s - easel.median(easel.server_run)) / e_s:8.1f}% "
          f"{gib(reference.peak_bytes):>11s} {gib(easel.peak_bytes):>11s}")
    print("(easel diffuses the context crop around the middle-half mask at the native size; the reference the "
          "whole square)")
    del pipe
    free(device)


if __name__ == "__main__":
    main()

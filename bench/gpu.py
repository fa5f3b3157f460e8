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
reference pipeline of each mode (its own allocations: what it adds to the memory in use when it
loads) and of Easel after its first mode and with all the family's modes loaded (one server
holding them all). Every case runs once to warm up (compile happens there; the time dynamo and
Inductor spent compiling in it is reported on its own), then ``--runs`` times; figures are
medians. The modes run one after the other, each as its reference pipeline (loaded, measured,
freed) and then Easel (its server stays up across the modes), so that a time budget
(``--budget-s``) can stop after any mode: modes whose estimated cost (from the modes measured
before, scaled by their step cost) no longer fits are skipped, and say so.

The models are the random full-size architectures of ``easel demo-model --full-size`` (same
compute and memory as the real weights); ``--model-dir`` reuses a written one, else it is written
there first (about 6 GB for sd15, 18 GB for sdxl).

    python bench/gpu.py --model-dir /data/easel-full                      # on a GPU: both families
    python bench/gpu.py --model-dir /tmp/full --family sd15 --size 128 --steps 4 --runs 2 --device cpu

``measure_family`` is the same measurement as a function (``bench/device/run.py`` drives it on the GPU
machine): it returns a ``FamilyRun`` whose ``table()`` is the printed table and ``as_json()`` the figures.

A ``--size`` below the native size is a dry run: the models' native size is lowered to it so both
sides diffuse at ``--size`` (Easel would otherwise scale a small picture up to the native size).

``--family flux`` is the flux row (``bench/flux_fill.py``): Flux Fill inpaint at 1024 x 1024, 28 steps
(``--flux-steps``), a random full-size architecture built in memory from the real configuration, both
sides on the same modules; ``--flux-scale tiny --size 64 --device cpu`` is its dry run. ``--flux-quant
Q8_0`` (Q5_0, Q4_0 ...) runs the row on a GGUF-quantised transformer loaded by Easel's GGUF loader: its
peak memory and seconds against the bf16 row's.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import sys
import time
import traceback
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
from backend.performance import Performance  # noqa: E402
from backend.server import ServerThread  # noqa: E402
from shared.client import Client, Progress  # noqa: E402
from shared.images import ImageData  # noqa: E402

NATIVE = {"sd15": 512, "sdxl": 1024}
FAMILY_CHOICES = tuple(NATIVE) + ("flux",)
MODES = ("inpaint", "inpaint+cn", "inpaint+2cn+ip", "img2img")
PROMPT, NEGATIVE = "a red door in a white wall, oil painting", "blurry, low quality"
SEED, GUIDANCE, IMG2IMG_STRENGTH = 7, 7.5, 0.5
CONTROLNET_MEMORY_MB = 16384  # room for two SDXL ControlNets (2.5 GB each in half precision)
# A mode's cost relative to a plain inpaint, for estimating what still fits in a time budget:
# ControlNets add about their share of a UNet each, img2img runs half the steps.
MODE_WEIGHT = {"inpaint": 1.0, "inpaint+cn": 1.4, "inpaint+2cn+ip": 1.9, "img2img": 0.6}
TAIL_S = 20.0  # kept back from a budget for the previews, the UNet swap and writing the figures
COMPILE = {"auto": {}, "off": {"compile": False}, "whole": {"compile": True, "compile_regional": False},
           "regional": {"compile": True, "compile_regional": True}}


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
    row_s: float = float("nan")  # the whole case: load (reference), warm-up and runs
    compile_s: float = 0.0  # dynamo + Inductor compile time during the case
    leftover_bytes: int | None = None  # reference: still allocated after it was freed (should be 0)

    def median(self, values) -> float:
        return statistics.median(values) if values else float("nan")

    def summary(self) -> dict:
        rate, seconds = self.median(self.rates), self.median(self.seconds)
        return {"it_s": rate, "s_per_image": seconds, "runs_s": list(self.seconds), "warmup_s": self.warmup,
                "first_job_extra_s": self.warmup - seconds, "compile_s": self.compile_s,
                "server_run_s": self.median(self.server_run), "peak_bytes": self.peak_bytes, "case_s": self.row_s,
                "leftover_bytes": self.leftover_bytes}


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


def measure_reference(root: Path, family: str, mode: str, inputs: Inputs, steps: int, runs: int, device,
                      dtype) -> Figures:
    """The plain call's figures; its peak is what it allocates on top of what was in use before
    (Easel's models, which wait idle meanwhile), i.e. its peak had it been loaded alone."""
    figures = Figures()
    free(device)
    baseline = allocated(device)
    reset_peak(device)
    start = time.perf_counter()
    pipe = reference_pipeline(root, family, mode, device, dtype)
    figures.warmup = time.perf_counter() - start + reference_call(pipe, mode, inputs, steps)[0]
    for _ in range(runs):
        seconds, rate = reference_call(pipe, mode, inputs, steps)
        figures.seconds.append(seconds)
        figures.rates.append(rate)
    figures.peak_bytes = None if baseline is None else peak(device) - baseline
    del pipe
    free(device)
    figures.leftover_bytes = None if baseline is None else allocated(device) - baseline
    figures.row_s = time.perf_counter() - start
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


def measure_easel(client, family, mode, inputs, steps: int, runs: int, device) -> Figures:
    """Easel's figures; its peak is the device's during the case (Easel's models alone are
    allocated then: every mode run so far stays loaded, so the latest peak covers them all)."""
    figures = Figures()
    free(device)
    reset_peak(device)
    compiled = compile_seconds()
    start = time.perf_counter()
    easel_call(client, family, mode, inputs, steps)
    figures.warmup = time.perf_counter() - start
    figures.compile_s = compile_seconds() - compiled
    for _ in range(runs):
        seconds, rate, run = easel_call(client, family, mode, inputs, steps)
        figures.seconds.append(seconds)
        figures.rates.append(rate)
        figures.server_run.append(run)
    figures.peak_bytes = peak(device)
    figures.row_s = time.perf_counter() - start
    return figures


def compile_seconds() -> float:
    """Seconds dynamo (tracing) and its backend (Inductor's code generation) have spent compiling
    in this process so far."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def easel_engine(root: Path, family: str, size: int, device, dtype, performance: dict | None = None
                 ) -> tuple[Engine, object]:
    config = load_config(root / "easel.toml")
    config.port, config.default_model = 0, family
    config.controlnet_memory_mb = CONTROLNET_MEMORY_MB
    config.models = {family: config.models[family]}
    config.performance = dataclasses.replace(config.performance, **(performance or {}))
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


def allocated(device) -> int | None:
    return torch.cuda.memory_allocated() if device.type == "cuda" else None


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gib(value: int | None) -> str:
    return "n/a on cpu" if value is None else f"{value / 2**30:.2f} GiB"


# -- a time budget ---------------------------------------------------------------------------------


class Budget:
    """Which modes still fit before ``deadline`` (a ``time.perf_counter`` value; None: no limit).

    A mode is a pair of cases (reference, Easel); each side's cost is estimated from that side's
    cases so far, the dearest one scaled by ``MODE_WEIGHT``. The first case of a side has nothing
    to go by and runs whenever any time is left."""

    def __init__(self, deadline: float | None, tail_s: float = TAIL_S):
        self.deadline, self.tail_s = deadline, tail_s
        self.costs: dict[str, list[tuple[str, float]]] = {"reference": [], "easel": []}

    def record(self, side: str, mode: str, seconds: float) -> None:
        self.costs[side].append((mode, seconds))

    def estimate(self, side: str, mode: str) -> float | None:
        done = self.costs[side]
        return max(seconds * MODE_WEIGHT[mode] / MODE_WEIGHT[m] for m, seconds in done) if done else None

    def left(self, now: float) -> float:
        return math.inf if self.deadline is None else self.deadline - now - self.tail_s

    def skip_reason(self, mode: str, now: float) -> str | None:
        """Why ``mode`` is skipped, or None when it should run."""
        left = self.left(now)
        if left == math.inf:
            return None
        if left <= 0:
            return "skipped: the time budget is spent"
        sides = {side: self.estimate(side, mode) for side in self.costs}
        if any(cost is None for cost in sides.values()):
            return None
        need = sum(sides.values())
        if need > left:
            return (f"skipped: estimated {need:.0f} s (reference {sides['reference']:.0f} s + easel "
                    f"{sides['easel']:.0f} s), {left:.0f} s left in the budget")
        return None


# -- one family ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    mode: str
    reference: Figures | None = None
    easel: Figures | None = None
    skipped: str | None = None

    @property
    def measured(self) -> bool:
        return self.reference is not None and self.easel is not None


@dataclasses.dataclass
class FamilyRun:
    """One family's figures, as measured so far (``measure_family`` hands it out after each mode)."""

    family: str
    size: int
    steps: int
    runs: int
    device: str
    header: list[str]
    rows: list[Row] = dataclasses.field(default_factory=list)
    easel_load_s: float = float("nan")
    preview_fit_s: float | None = None
    preview_s: float | None = None
    unet_swap_s: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    unique_graphs: int = 0  # graphs dynamo compiled in this process

    @property
    def measured(self) -> list[Row]:
        return [row for row in self.rows if row.measured]

    def memory(self) -> dict:
        rows = self.measured
        if not rows or rows[0].easel.peak_bytes is None:
            return {}
        largest = max(rows, key=lambda row: row.reference.peak_bytes)
        together = max(row.easel.peak_bytes for row in rows)
        return {"easel_first_mode": rows[0].mode, "easel_first_mode_bytes": rows[0].easel.peak_bytes,
                "easel_all_modes": [row.mode for row in rows], "easel_all_modes_bytes": together,
                "largest_reference": largest.mode, "largest_reference_bytes": largest.reference.peak_bytes,
                "ratio": together / largest.reference.peak_bytes}

    def targets(self) -> list[dict]:
        """The performance issue's targets against these figures (met: None where not measured, or
        measured off the target's conditions: another size or step count)."""
        native = self.size == NATIVE[self.family] and self.steps == 20
        rows = {row.mode: row for row in self.measured}
        found = []

        def target(name, value, limit, higher_is_better=True):
            met = None if value is None or not native else (value >= limit if higher_is_better else value <= limit)
            found.append({"target": name, "value": value, "limit": limit, "met": met,
                          **({} if native or value is None else {"note": "dry run: not the target's size / steps"})})

        def ratio(row):
            if row is None:
                return None
            return row.easel.median(row.easel.rates) / row.reference.median(row.reference.rates)

        if self.family == "sd15":
            row = rows.get("inpaint+cn")
            target("sd15 inpaint+cn 512, 20 steps: easel it/s / reference it/s >= 1.5", ratio(row), 1.5)
            target("sd15 inpaint+cn 512, 20 steps: easel it/s >= 45",
                   None if row is None else row.easel.median(row.easel.rates), 45.0)
        else:
            target("sdxl inpaint 1024, 20 steps: easel it/s / reference it/s >= 1.4", ratio(rows.get("inpaint")), 1.4)
        overheads = [overhead(row.easel) for row in rows.values()]
        target("server + protocol overhead <= 3 % of the job (worst mode)", max(overheads) if overheads else None,
               0.03, higher_is_better=False)
        memory = self.memory()
        target("all modes loaded <= 1.1 x the largest reference pipeline's peak", memory.get("ratio"), 1.1,
               higher_is_better=False)
        if memory and len(memory["easel_all_modes"]) < len(MODES):
            found[-1]["note"] = f"only {', '.join(memory['easel_all_modes'])} ran"
        return found

    def table(self) -> str:
        lines = list(self.header)
        lines.append(f"\n== {self.family} {self.size}x{self.size}, {self.steps} steps (img2img: "
                     f"{int(self.steps * IMG2IMG_STRENGTH)}), 1 warm-up + {self.runs} runs, medians ==")
        lines.append(f"\n{'mode':16s} {'ref it/s':>9s} {'easel it/s':>10s} {'ratio':>6s} {'ref s/img':>10s} "
                     f"{'easel s/img':>11s} {'ratio':>6s} {'overhead':>9s} {'ref peak':>11s} {'easel peak':>11s} "
                     f"{'1st job+':>9s} {'compile':>8s}")
        for row in self.rows:
            if not row.measured:
                lines.append(f"{row.mode:16s} {row.skipped}")
                continue
            r, e = row.reference, row.easel
            ref_rate, easel_rate = r.median(r.rates), e.median(e.rates)
            ref_s, easel_s = r.median(r.seconds), e.median(e.seconds)
            lines.append(f"{row.mode:16s} {ref_rate:9.2f} {easel_rate:10.2f} {easel_rate / ref_rate:5.2f}x "
                         f"{ref_s:10.2f} {easel_s:11.2f} {ref_s / easel_s:5.2f}x {100 * overhead(e):8.1f}% "
                         f"{gib(r.peak_bytes):>11s} {gib(e.peak_bytes):>11s} {e.warmup - easel_s:8.1f}s "
                         f"{e.compile_s:7.1f}s")
        lines.append("1st job+: Easel's first job of the mode minus its median job (what a painter waits once); "
                     "compile: dynamo + Inductor time inside it")
        rows = self.measured
        memory = self.memory()
        if memory:
            lines.append(f"memory: easel peak after its first mode ({memory['easel_first_mode']}) "
                         f"{gib(memory['easel_first_mode_bytes'])}, with {len(rows)} modes loaded "
                         f"{gib(memory['easel_all_modes_bytes'])}; the largest reference pipeline "
                         f"({memory['largest_reference']}) alone {gib(memory['largest_reference_bytes'])}: "
                         f"{memory['ratio']:.2f}x")
        elif rows:
            lines.append("memory: n/a on cpu")
        lines.append("overhead: easel wall time outside Engine.run (upload, queue, result transfer) as a share "
                     "of the job")
        if self.preview_s is not None and rows:
            step = 1 / rows[0].easel.median(rows[0].easel.rates)
            lines.append(f"previews: fitting the linear preview {self.preview_fit_s:.2f} s once per model; a 256 px "
                         f"preview {1000 * self.preview_s:.2f} ms = {100 * self.preview_s / step:.2f}% of an easel "
                         f"{rows[0].mode} step ({step:.3f} s)")
        if self.unet_swap_s is not None:
            lines.append(f"unet swap: bringing the parked UNet back (base <-> inpaint, on a mode switch) "
                         f"{self.unet_swap_s:.3f} s")
        lines.append(f"easel model load {self.easel_load_s:.1f} s; dynamo compiled {self.unique_graphs} graphs")
        for found in self.targets():
            value = "not measured" if found["value"] is None else f"{found['value']:.3f}"
            verdict = {True: "met", False: "MISSED", None: "-"}[found["met"]]
            lines.append(f"target: {found['target']}: {value} ({verdict})"
                         + (f" [{found['note']}]" if "note" in found else ""))
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict:
        def row(r: Row) -> dict:
            out = {"mode": r.mode, "skipped": r.skipped}
            if r.measured:
                out["reference"], out["easel"] = r.reference.summary(), r.easel.summary()
                out["easel"]["overhead"] = overhead(r.easel)
                out["ratio_it_s"] = out["easel"]["it_s"] / out["reference"]["it_s"]
                out["ratio_s_per_image"] = out["reference"]["s_per_image"] / out["easel"]["s_per_image"]
            return out

        return finite({"family": self.family, "size": self.size, "steps": self.steps, "runs": self.runs,
                       "device": self.device, "header": self.header, "rows": [row(r) for r in self.rows],
                       "memory": self.memory(), "easel_load_s": self.easel_load_s,
                       "preview_fit_s": self.preview_fit_s, "preview_s": self.preview_s,
                       "unet_swap_s": self.unet_swap_s, "unique_graphs": self.unique_graphs,
                       "targets": self.targets(), "notes": self.notes})


def overhead(easel: Figures) -> float:
    seconds = easel.median(easel.seconds)
    return (seconds - easel.median(easel.server_run)) / seconds


def finite(value):
    """``value`` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def header(device, easel_dtype, reference_dtype, settings: Performance) -> list[str]:
    from backend.engine import speed

    compiled = (f"compile {'regional' if settings.compile_regional else 'whole'} {settings.compile_modules} "
                f"mode {settings.compile_mode} backend {speed.COMPILE_BACKEND}") if settings.compile else "compile off"
    return [f"device     {describe_device(device)}",
            f"versions   torch {torch.__version__}, diffusers {diffusers.__version__}",
            f"reference  {str(reference_dtype).removeprefix('torch.')}, diffusers defaults (SDPA), Euler",
            f"easel      {str(easel_dtype).removeprefix('torch.')}, sdpa {settings.sdpa}, channels_last "
            f"{settings.channels_last}, {compiled}, prompt_cache {settings.prompt_cache}, vae_tiling_above "
            f"{settings.vae_tiling_above}, cpu_offload {settings.cpu_offload}, park_idle_unet "
            f"{settings.park_idle_unet}, Euler",
            f"job        prompt + negative prompt, guidance {GUIDANCE}, seed {SEED}, inpaint mask = the middle "
            f"half of the square, control maps canny + depth (scale 1, preprocess off), reference 224 px (weight 1)"]


def easel_settings(root: Path, device, performance: dict | None) -> Performance:
    return dataclasses.replace(load_config(root / "easel.toml").performance, **(performance or {})).resolve(device.type)


def measure_mode(root, family, mode, inputs, client, budget: Budget, steps, runs, device, reference_dtype,
                 load_peak: int | None, log) -> Row:
    """One mode: the reference case, then Easel's (whose peak covers ``load_peak``, the model's
    loading, when this is its first case)."""
    reference = measure_reference(root, family, mode, inputs, steps, runs, device, reference_dtype)
    budget.record("reference", mode, reference.row_s)
    log(f"  reference {mode:15s} done (load + warm-up {reference.warmup:.1f} s, case {reference.row_s:.1f} s)")
    easel = measure_easel(client, family, mode, inputs, steps, runs, device)
    if load_peak is not None:
        easel.peak_bytes = max(easel.peak_bytes, load_peak)
    budget.record("easel", mode, easel.row_s)
    log(f"  easel     {mode:15s} done (warm-up {easel.warmup:.1f} s, compile {easel.compile_s:.1f} s, "
        f"case {easel.row_s:.1f} s)")
    return Row(mode, reference, easel)


def measure_family(root: Path, family: str, *, device, easel_dtype, reference_dtype, size: int | None = None,
                   steps: int = 20, runs: int = 3, modes=MODES, performance: dict | None = None,
                   deadline: float | None = None, on_row=None, log=print) -> FamilyRun:
    """Reference and Easel figures for each of ``modes`` in turn (skipping those that no longer fit
    before ``deadline``); ``on_row(run)`` after each mode, so figures survive a later kill."""
    from torch._dynamo.utils import counters

    size = size or NATIVE[family]
    inputs = Inputs.make(size)
    settings = easel_settings(root, device, performance)
    run = FamilyRun(family, size, steps, runs, describe_device(device),
                    header(device, easel_dtype, reference_dtype, settings))
    budget = Budget(deadline)
    free(device)
    reset_peak(device)
    start = time.perf_counter()
    engine, config = easel_engine(root, family, size, device, easel_dtype, performance)
    run.easel_load_s = time.perf_counter() - start
    load_peak = peak(device)
    if on_row:
        on_row(run)  # the set-up's figures, before any mode
    with ServerThread(config, engine) as server, Client(server.url, name="bench-gpu") as client:
        for mode in modes:
            reason = budget.skip_reason(mode, time.perf_counter())
            if reason:
                run.rows.append(Row(mode, skipped=reason))
                log(f"  {mode:15s} {reason}")
            else:
                started = time.perf_counter()
                try:
                    row = measure_mode(root, family, mode, inputs, client, budget, steps, runs, device,
                                       reference_dtype, load_peak if not run.measured else None, log)
                except Exception as error:  # one mode's failure (out of memory, say) must not cost the others
                    traceback.print_exc()
                    summary = (str(error).strip().splitlines() or [""])[0][:300]
                    row = Row(mode, skipped=f"failed after {time.perf_counter() - started:.0f} s: "
                                            f"{type(error).__name__}: {summary}")
                    log(f"  {mode:15s} {row.skipped}")
                    free(device)
                run.rows.append(row)
            run.unique_graphs = counters["stats"]["unique_graphs"]
            if on_row:
                on_row(run)
    if run.measured and budget.left(time.perf_counter()) > -budget.tail_s / 2:
        run.preview_fit_s, run.preview_s = preview_cost(engine, family, size, device, easel_dtype)
        run.unet_swap_s = unet_swap_seconds(engine, family, device)
    elif run.measured:
        run.notes.append("previews and the UNet swap were not measured: the time budget was spent")
    del engine
    free(device)
    return run


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="folder of `easel demo-model --full-size` (written there if a family is missing)")
    parser.add_argument("--family", action="append", choices=FAMILY_CHOICES, help="default: sd15 and sdxl")
    parser.add_argument("--flux-steps", type=int, default=28, help="flux row: steps (default 28)")
    parser.add_argument("--flux-scale", choices=("full", "tiny"), default="full",
                        help="flux row: the real architecture's sizes, or the demo's for a dry run")
    parser.add_argument("--flux-quant", choices=("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"),
                        help="flux row: a GGUF-quantised transformer (written, then loaded as Easel loads .gguf)")
    parser.add_argument("--mode", action="append", choices=MODES, help="default: all four")
    parser.add_argument("--size", type=int, help="square diffusion size (default: native, 512 / 1024)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case after one warm-up (default 3)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cpu or mps")
    parser.add_argument("--reference-dtype", choices=("fp16", "bf16", "fp32"),
                        help="default fp16 (the seed texts' call); fp32 on a CPU")
    parser.add_argument("--compile", choices=tuple(COMPILE), default="auto",
                        help="Easel's torch.compile: the config's (auto), whole modules, regional (the repeated "
                             "transformer blocks only: a fraction of the compile time) or off")
    parser.add_argument("--budget-s", type=float, help="skip the modes that no longer fit in this many seconds")
    args = parser.parse_args(argv)
    if args.size is not None and (args.size % 64 or args.size < 64):
        parser.error("--size must be a multiple of 64")
    if args.steps * IMG2IMG_STRENGTH < 2 or args.runs < 1:
        parser.error("--steps must be at least 4 (img2img runs half of them; it/s needs two) and --runs >= 1")
    return args


def devices(model_dir: Path, device: str, reference_dtype: str | None):
    """(device, Easel's dtype from the model folder's config, the reference's dtype)."""
    toml = model_dir / "easel.toml"  # (the flux row alone needs no files: its model is built in memory)
    device, easel_dtype = pick_device(device, load_config(toml if toml.is_file() else None).performance.dtype)
    reference = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        reference_dtype or ("fp32" if device.type == "cpu" else "fp16")]
    return device, easel_dtype, reference


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    quiet_libraries()
    families = tuple(args.family or NATIVE)
    missing = [f for f in families if f in NATIVE and not (args.model_dir / f / "model_index.json").is_file()]
    if missing:
        print(f"writing the full-size {', '.join(missing)} model(s) to {args.model_dir} ...", flush=True)
        full_size.write_full_size_model(args.model_dir, tuple(missing))
    present = tuple(f for f in NATIVE if (args.model_dir / f / "model_index.json").is_file())
    if present and (not (args.model_dir / "easel.toml").is_file() or missing):
        full_size.write_config(args.model_dir.resolve(), present)

    device, easel_dtype, reference_dtype = devices(args.model_dir, args.device, args.reference_dtype)
    deadline = None if args.budget_s is None else started + args.budget_s
    for family in families:
        if family == "flux":
            run_flux(args, device, easel_dtype)
            continue
        run = measure_family(args.model_dir, family, device=device, easel_dtype=easel_dtype,
                             reference_dtype=reference_dtype, size=args.size, steps=args.steps, runs=args.runs,
                             modes=args.mode or MODES, performance=COMPILE[args.compile], deadline=deadline)
        print(run.table(), flush=True)


def run_flux(args, device, dtype) -> dict:
    """The flux row: Flux Fill inpaint, the plain FluxFillPipeline call against Easel on the same modules;
    prints its table and returns its figures."""
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
    weights = f"{str(dtype).removeprefix('torch.')}"
    quant = {}
    if args.flux_quant:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="easel-gguf-") as folder:
            quant = flux_fill.quantise(pipe, args.flux_quant, folder, device, dtype)
        weights = (f"GGUF {args.flux_quant} ({gib(quant['weight_bytes'])} of transformer weights, file "
                   f"{gib(quant['file_bytes'])} written in {quant['write_s']:.0f} s, loaded in "
                   f"{quant['load_s']:.1f} s), computing in {weights}")
    print(f"\n== flux (Fill) {size}x{size}, {steps} steps, guidance {flux_fill.GUIDANCE}, transformer "
          f"{parameters / 1e9:.2f} B parameters, {weights}, 1 warm-up + {args.runs} runs ==")
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
    return {"row": f"flux fill {args.flux_quant or 'bf16'}", "weights": weights, "quant": quant, "size": size,
            "steps": steps, "parameters": parameters, "reference": reference.summary(), "easel": easel.summary()}


if __name__ == "__main__":
    main()

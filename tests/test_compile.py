"""torch.compile through the engine on the CPU, with the real Inductor backend (C++ kernels built with
the system compiler) on the demo model.

Compiling the demo UNet takes about a minute on a 2-core CPU the first time (almost all of it g++
building ~37 kernels); Inductor's on-disk cache (/tmp/torchinductor_$USER) brings later runs down
to ~10 s. On a GPU Inductor emits Triton kernels instead: these tests show the size-bucket dispatch,
the absence of recompiles and the eager fallback, not anything about Triton or CUDA.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from test_performance import engine_with, generate, run


def profiled(engine, request):
    """The job's pixels, and how many times it ran torch.compile'd code: the profiler marks each
    entry into compiled code as a "Torch-Compiled Region"."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        pixels = run(engine, request)
    return pixels, sum(event.name.startswith("Torch-Compiled Region") for event in profile.events())


def sized(width, height):
    return dataclasses.replace(generate(), width=width, height=height)


def close(pixels, reference):
    """Inductor reorders float32 sums (UNet outputs differ by ~1e-6): at most a rounding step apart."""
    return np.abs(pixels.astype(int) - reference.astype(int)).max() <= 1


def test_a_size_bucket_compiles_once_and_other_sizes_stay_eager(demo_config, engine):
    compiled = engine_with(demo_config, compile=True, compile_modules=["unet"], compile_sizes=[(64, 64)])
    frames = counters["frames"]["total"]

    first, calls = profiled(compiled, generate(size=64))
    assert counters["frames"]["total"] > frames  # compiled on the bucket's first job ...
    assert calls == 2  # ... and every step's UNet call (guidance batched into one) ran the compiled code
    assert close(first, run(engine, generate(size=64)))

    frames = counters["frames"]["total"]
    other_job = dict(prompt="a blue door", seed=4, size=64)
    second, calls = profiled(compiled, generate(**other_job))
    assert counters["frames"]["total"] == frames and calls == 2  # same bucket: no recompile
    assert close(second, run(engine, generate(**other_job)))

    for width, height in ((128, 128), (64, 128)):  # not buckets: eager, nothing traced, the eager pixels
        outside, calls = profiled(compiled, sized(width, height))
        assert counters["frames"]["total"] == frames and calls == 0
        np.testing.assert_array_equal(outside, run(engine, sized(width, height)))


def test_compiled_unet_under_cpu_offload_hooks(demo_config, engine):
    """Offload (forced on: on the CPU the hooks move nothing) re-hooks the shared modules before
    and after every job; the compiled UNet must still compile once, not once per job."""
    compiled = engine_with(demo_config, compile=True, compile_modules=["unet"], compile_sizes=[(64, 64)])
    compiled.speed.settings.cpu_offload = True
    first, _ = profiled(compiled, generate(size=64))
    assert close(first, run(engine, generate(size=64)))
    frames = counters["frames"]["total"]
    for seed in (4, 5):
        pixels, calls = profiled(compiled, generate(seed=seed, size=64))
        assert calls > 0 and counters["frames"]["total"] == frames
        assert close(pixels, run(engine, generate(seed=seed, size=64)))
    assert hasattr(compiled.registry.get("demo-base").base.unet, "_hf_hook")


def test_a_failed_compilation_runs_the_job_eager_and_says_so_once(demo_config, engine, monkeypatch, caplog):
    """A painter's machine without a working C++ compiler (Inductor's CPU backend builds its kernels
    with one; Triton needs one on a GPU): the real Inductor fails on the VAE decoder (the quickest
    module to trace), and the job still gets the eager picture, with one warning of ours and one
    traceback of dynamo's instead of one per frame it tries."""
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)  # as torch ships it: only Speed turns it on
    compiled = engine_with(demo_config, compile=True, compile_modules=["vae_decode"], compile_sizes=[(64, 64)])
    # No compiler, and no cached build of an earlier run that would hide its absence.
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, "/nonexistent/c++"))
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    dynamo_log = logging.getLogger("torch._dynamo.convert_frame")
    dynamo_log.addHandler(caplog.handler)  # torch's loggers may not propagate to pytest's
    try:
        with caplog.at_level(logging.WARNING, logger="backend.engine.speed"):
            first = run(compiled, generate(size=64))
            again = run(compiled, generate(size=64))
    finally:
        dynamo_log.removeHandler(caplog.handler)
        torch._dynamo.reset()  # dynamo keeps skipping the code it failed on; later tests compile afresh
    reference = run(engine, generate(size=64))
    np.testing.assert_array_equal(first, reference)
    np.testing.assert_array_equal(again, reference)
    warnings = [record.getMessage() for record in caplog.records if record.name == "backend.engine.speed"]
    assert len(warnings) == 1 and "running eager" in warnings[0] and "C++ compiler" in warnings[0], warnings
    tracebacks = {id(record) for record in caplog.records if record.name == dynamo_log.name and record.exc_info}
    assert len(tracebacks) == 1


@pytest.fixture(autouse=True)
def _dynamo_settings():
    """Speed changes dynamo's process-wide recompile limits and error suppression: undo that after each test."""
    config = torch._dynamo.config
    saved = config.recompile_limit, config.accumulated_recompile_limit, config.suppress_errors
    yield
    config.recompile_limit, config.accumulated_recompile_limit, config.suppress_errors = saved


def test_new_slider_values_rerun_the_compiled_graphs_without_recompiling(demo_config, engine, monkeypatch):
    """A painter moves the ControlNet strength and the reference weight between jobs. Compiled graphs
    bake Python floats in as constants, so Easel hands both to the graphs as tensor data (the
    ControlNet scale as a tensor, the adapter weight folded into the value projections): after the
    first job of a kind, new values recompile nothing and still steer the picture as they should.
    Dynamo decides what recompiles before any code generation, so the "eager" backend (same tracing,
    no kernels) keeps this quick."""
    from backend.engine import speed
    from backend.engine.job import Control, Reference

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    compiled = engine_with(demo_config, compile=True, compile_modules=["unet", "controlnet"],
                           compile_sizes=[(64, 64)])
    edges = np.zeros((64, 64, 4), np.uint8)
    edges[:, 32:] = 255
    style = np.full((96, 96, 4), 180, np.uint8)

    def steered(scale, weight, end=1.0):
        return dataclasses.replace(generate(size=64), model="demo",
                                   control=[Control("canny", edges, None, scale, 0.0, end)],
                                   references=[Reference(style, weight, "reference")])

    run(compiled, steered(1.0, 1.0))  # the first job compiles
    frames = counters["frames"]["total"]
    pictures = {}
    for scale, weight, end in ((0.5, 1.0, 1.0), (0.7, 0.6, 1.0), (0.9, 0.8, 0.5), (0.5, 1.0, 1.0)):
        pictures[scale, weight, end] = run(compiled, steered(scale, weight, end))
        np.testing.assert_array_equal(pictures[scale, weight, end], run(engine, steered(scale, weight, end)))
    assert counters["frames"]["total"] == frames
    assert len({picture.tobytes() for picture in pictures.values()}) == 3  # each new value changed the picture


def test_regional_compilation_compiles_the_transformer_blocks_only(demo_config, engine, monkeypatch):
    """compile_regional: each of the UNet's transformer blocks runs compiled and the rest of the UNet
    eager (a fraction of the compile time on a GPU); the VAE decoder, which has no such blocks, is
    compiled whole. Same picture as without compiling ("eager" backend: dynamo's tracing, no kernels)."""
    from backend.engine import speed

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    compiled = engine_with(demo_config, compile=True, compile_regional=True, compile_modules=["unet", "vae_decode"],
                           compile_sizes=[(64, 64)])
    pixels, calls = profiled(compiled, generate(size=64))
    unet = compiled.registry.get("demo-base").base.unet
    blocks = speed.repeated_blocks(unet)
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    assert unet._compiled_call_impl is None and speed.repeated_blocks(compiled.registry.get("demo-base").base.vae) == []
    assert calls == 2 * len(blocks) + 1  # every block at each of the 2 steps, and the decoder once
    np.testing.assert_array_equal(pixels, run(engine, generate(size=64)))

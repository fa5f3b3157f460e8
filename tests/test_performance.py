"""The [performance] switches: parsed with clear errors, and each one still runs a correct job on the CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from accelerate.hooks import CpuOffload

from backend.config import Config, ConfigError, load_config
from backend.engine.engine import Engine
from backend.engine.job import Control, EditJob, Reference
from backend.engine.models import ModelRegistry, pick_device
from backend.performance import Performance
from conftest import picture, rect_mask


def write_config(tmp_path, body: str):
    path = tmp_path / "easel.toml"
    path.write_text(body)
    return path


def test_performance_section_is_read(tmp_path):
    config = load_config(write_config(tmp_path, """
[performance]
dtype = "BF16"
sdpa = false
channels_last = true
compile = "auto"
compile_modules = ["unet"]
compile_sizes = ["768x512", 1024]
compile_mode = "max-autotune"
compile_regional = true
prompt_cache = 0
vae_tiling_above = 1000000
cpu_offload = true
"""))
    perf = config.performance
    assert (perf.dtype, perf.sdpa, perf.channels_last, perf.compile) == ("bf16", False, True, "auto")
    assert perf.compile_modules == ["unet"] and perf.compile_sizes == [(768, 512), (1024, 1024)]
    assert perf.compile_regional is True
    assert (perf.compile_mode, perf.prompt_cache, perf.vae_tiling_above, perf.cpu_offload) == \
        ("max-autotune", 0, 1000000, True)
    assert load_config(write_config(tmp_path, "")).performance == Performance()


@pytest.mark.parametrize("line, named", [
    ('dtype = "fp8"', "performance.dtype"),
    ("sdpa = 1", "performance.sdpa"),
    ('channels_last = "yes"', "performance.channels_last"),
    ('compile_modules = ["unet", "text_encoder"]', "performance.compile_modules"),
    ('compile_sizes = ["512x500"]', "performance.compile_sizes"),
    ('compile_sizes = ["big"]', "performance.compile_sizes"),
    ('compile_mode = "fast"', "performance.compile_mode"),
    ('compile_regional = "yes"', "performance.compile_regional"),
    ("prompt_cache = -1", "performance.prompt_cache"),
    ('vae_tiling_above = "4M"', "performance.vae_tiling_above"),
    ("turbo = true", "performance.turbo"),
])
def test_bad_performance_values_name_the_key(tmp_path, line, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(write_config(tmp_path, f"[performance]\n{line}\n"))


def test_auto_switches_turn_on_only_on_cuda():
    on_cpu, on_cuda = Performance().resolve("cpu"), Performance(cpu_offload=True).resolve("cuda")
    assert (on_cpu.channels_last, on_cpu.compile, on_cpu.prompt_cache) == (False, False, 32)
    assert (on_cuda.channels_last, on_cuda.compile, on_cuda.cpu_offload) == (True, True, True)
    assert Performance(cpu_offload=True).resolve("cpu").cpu_offload is False  # needs a GPU to offload to
    assert pick_device("cpu") == (torch.device("cpu"), torch.float32)
    assert pick_device("cpu", "bf16")[1] is torch.bfloat16 and pick_device("cpu", "fp16")[1] is torch.float16


# -- jobs ------------------------------------------------------------------------------------------


class Steps:
    """A reporter that keeps quiet and counts progress calls."""

    def __init__(self):
        self.steps = 0

    def started(self, steps, passes): pass

    def progress(self, step, total, preview): self.steps += 1

    def is_cancelled(self): return False


def engine_with(demo_config: Config, **settings) -> Engine:
    config = dataclasses.replace(demo_config, performance=dataclasses.replace(Performance(), **settings))
    device, dtype = pick_device("cpu", config.performance.dtype)
    return Engine(ModelRegistry(config, device, dtype))


def generate(prompt: str = "a red door", seed: int = 3, size: int = 64) -> EditJob:
    """A small text-to-image job (diffused at ``size``, unlike img2img, which scales up to 512)."""
    return EditJob(mode="generate", model="demo-base", prompt=prompt, negative_prompt="blurry",
                       seed=seed, steps=2, guidance=5.0, strength=1.0, batch=1, sampler="euler",
                       width=size, height=size)


def run(engine: Engine, request: EditJob) -> np.ndarray:
    reporter = Steps()
    pixels = engine.run(request, reporter).layers[0].pixels
    assert reporter.steps == request.denoising_steps
    return pixels


def test_sdpa_is_diffusers_default_attention(engine):
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = engine.registry.get("demo-base").base.unet
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}


def test_prompt_cache_skips_the_text_encoder_and_changes_no_pixel(demo_config, monkeypatch):
    cached, uncached = engine_with(demo_config), engine_with(demo_config, prompt_cache=0)
    encoder = cached.registry.get("demo-base").base.text_encoder
    calls = []
    original = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))

    first = run(cached, generate())
    encoded_once = len(calls)
    again = run(cached, generate(seed=4))  # same words, another seed: no text encoding
    assert encoded_once == 2 and len(calls) == 2  # prompt + negative prompt, once
    run(cached, generate(prompt="a blue door"))
    assert len(calls) == 4 and len(cached.prompts) == 2

    np.testing.assert_array_equal(first, run(uncached, generate()))
    np.testing.assert_array_equal(again, run(uncached, generate(seed=4)))


def test_channels_last_and_classic_attention_match_the_default(demo_config, engine):
    default = run(engine, generate())
    for settings in ({"channels_last": True}, {"sdpa": False}):
        other = engine_with(demo_config, **settings)
        pixels = run(other, generate())
        assert np.abs(pixels.astype(int) - default.astype(int)).max() <= 2, settings
    unet = other.registry.get("demo-base").base.unet
    assert "AttnProcessor2_0" not in {type(p).__name__ for p in unet.attn_processors.values()}


def test_half_precision_runs_a_job_on_the_cpu(demo_config, engine):
    default = run(engine, generate())
    half = engine_with(demo_config, dtype="bf16")
    pixels = run(half, generate())
    assert half.registry.get("demo-base").base.unet.dtype is torch.bfloat16
    # bf16 keeps ~3 significant digits: close to the float32 picture, not equal to it
    assert np.abs(pixels.astype(int) - default.astype(int)).mean() < 8


def test_vae_tiling_above_the_threshold(demo_config, monkeypatch):
    tiled = engine_with(demo_config, vae_tiling_above=64 * 64)
    vae = tiled.registry.get("demo-base").base.vae
    # 64 px tiles instead of the VAE's 512, so a 128 px job is split (and the test stays quick)
    monkeypatch.setattr(vae, "tile_sample_min_size", 64)
    monkeypatch.setattr(vae, "tile_latent_min_size", 8)
    calls = []
    original = vae.tiled_decode
    monkeypatch.setattr(vae, "tiled_decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    run(tiled, generate(size=64))  # at the threshold: one plain decode
    assert calls == [] and not vae.use_tiling
    pixels = run(tiled, generate(size=128))  # above it
    assert calls and pixels.shape == (128, 128, 4) and pixels[..., :3].std() > 1
    run(tiled, generate(size=64))
    assert not vae.use_tiling  # switched back off for the small job


def test_compile_leaves_sizes_outside_its_buckets_eager(demo_config, engine):
    """Compiling on a CPU takes minutes, so this checks the dispatch: a job whose size is not a
    compile bucket runs the modules eagerly (nothing traced, same pixels), so an odd crop size
    never triggers a recompile on the painter's time."""
    from torch._dynamo.utils import counters

    compiled = engine_with(demo_config, compile=True, compile_sizes=[(1024, 1024)])
    traced = counters["frames"]["total"]
    np.testing.assert_array_equal(run(compiled, generate()), run(engine, generate()))
    assert counters["frames"]["total"] == traced
    assert compiled.speed.compile_sizes(512) == {(1024, 1024)}
    assert engine_with(demo_config, compile=True).speed.compile_sizes(512) == {(512, 512)}  # default: native


def test_cpu_offload_hooks_change_no_pixel_in_any_mode(demo_config, engine):
    """Offload needs a GPU, so ``Performance.resolve`` switches it off here; the test switches it back on.

    On the CPU the hooks move nothing (the execution device and the parking place are both the CPU),
    so this says nothing about weights travelling, inputs landing on the GPU, or memory saved. What it
    shows: jobs of every mode (generate, img2img, inpaint on the dedicated inpaint UNet, inpaint with a
    ControlNet unit, img2img and inpaint with an IP-Adapter reference) run with diffusers' offload hooks
    on the modules their pipelines share, switching modes back and forth, with the no-offload pixels.
    """
    image = np.asarray(picture(128, 128).convert("RGBA"))
    mask = np.asarray(rect_mask((128, 128), (32, 32, 96, 96)))
    edges = np.zeros((128, 128, 4), np.uint8)
    edges[:, :64] = 255
    canny = Control("canny", edges, None, 1.0, 0.0, 1.0)
    grey = Reference(np.full((96, 96, 4), 200, np.uint8), 1.0, "reference")

    def job(mode, control, references):
        return EditJob(mode=mode, model="demo", prompt="a house", negative_prompt="", seed=3, steps=3,
                       guidance=5.0, strength=0.7, batch=1, sampler="euler", control=tuple(control),
                       references=tuple(references), **({"width": 64, "height": 64} if mode == "generate" else
                                                        {"image": image}),
                       **({"mask": mask} if mode == "inpaint" else {}))

    offloaded = engine_with(demo_config)
    offloaded.speed.settings.cpu_offload = True
    # mode, ControlNet units, references: each mode comes back after others have re-hooked the shared modules
    for mode, control, references in [("generate", [], []), ("inpaint", [canny], []), ("img2img", [], [grey]),
                                      ("inpaint", [], []), ("inpaint", [canny], [grey]), ("img2img", [], []),
                                      ("generate", [], []), ("img2img", [], [grey]), ("inpaint", [canny], [])]:
        np.testing.assert_array_equal(run(offloaded, job(mode, control, references)),
                                      run(engine, job(mode, control, references)),
                                      err_msg=f"{mode}, {len(control)} unit(s), {len(references)} reference(s)")

    model = offloaded.registry.get("demo")
    shared = {"unet": model.base.unet, "inpaint unet": model.inpaint_unet, "vae": model.base.vae,
              "text encoder": model.base.text_encoder, "controlnet": offloaded.controlnets.get("sd15", ["canny"])[0],
              "image encoder": model.pipeline("img2img").image_encoder}
    unhooked = [name for name, module in shared.items()
                if not isinstance(getattr(module, "_hf_hook", None), CpuOffload)]
    assert unhooked == []

"""The ``[performance]`` config section: how the engine trades memory, start-up time and precision
for speed. Parsing only (no torch here), so the config loads fast and bad values fail early.

    [performance]
    dtype = "auto"            # auto | fp16 | bf16 | fp32  (auto: bf16 on CUDA with bf16, else fp16; fp32 on CPU)
    sdpa = true               # PyTorch's fused attention (diffusers' default on torch 2); false: the classic kernel
    channels_last = "auto"    # auto | true | false   (auto: on CUDA only)
    compile = "auto"          # auto | true | false   torch.compile (auto: on CUDA only)
    compile_modules = ["unet", "controlnet", "vae_decode"]
    compile_sizes = ["512x512", "1024x1024"]   # diffusion sizes that run compiled; others run eager
    compile_mode = "default"  # torch.compile: default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    compile_regional = false  # true: compile only the repeated transformer blocks (a fraction of the compile time)
    prompt_cache = 32         # prompt embeddings kept per server (entries); 0 turns the cache off
    vae_tiling_above = 4194304  # decode in tiles above this many pixels (2048 x 2048); 0: never
    cpu_offload = false       # keep models in RAM and move each to the GPU while it runs (small-VRAM GPUs)
    park_idle_unet = "auto"   # auto | true | false   a model's idle UNet (base or inpaint) waits in RAM (auto: on CUDA)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

DTYPES = ("auto", "fp16", "bf16", "fp32")
COMPILABLE = ("unet", "controlnet", "vae_decode")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class PerformanceError(ValueError):
    """A bad ``[performance]`` value; the message names the key. (config.py re-raises it as ConfigError.)"""


@dataclass
class Performance:
    """Engine speed settings; "auto" values are resolved against the device by ``resolve``."""

    dtype: str = "auto"
    sdpa: bool = True
    channels_last: str | bool = "auto"
    compile: str | bool = "auto"
    compile_modules: list[str] = field(default_factory=lambda: list(COMPILABLE))
    # Empty: each model's native square size (512x512 for SD1.5, 1024x1024 for SDXL).
    compile_sizes: list[tuple[int, int]] = field(default_factory=list)
    compile_mode: str = "default"
    compile_regional: bool = False
    prompt_cache: int = 32
    vae_tiling_above: int = 2048 * 2048
    cpu_offload: bool = False
    park_idle_unet: str | bool = "auto"

    def resolve(self, device_type: str) -> "Performance":
        """A copy with every "auto" switch decided for ``device_type`` ("cuda", "mps", "cpu").

        channels_last and compile pay on CUDA (published figures, tensor cores, Triton kernels); on
        a CPU they cost compile minutes or change nothing measurable, so "auto" leaves them off there.
        Parking the idle UNet pays wherever the GPU has its own memory; CPU offload, which moves
        every model on its own, replaces it.
        """
        on_cuda = device_type == "cuda"
        offload = self.cpu_offload and on_cuda
        park = on_cuda if self.park_idle_unet == "auto" else self.park_idle_unet
        return Performance(**{**self.__dict__,
                              "channels_last": on_cuda if self.channels_last == "auto" else self.channels_last,
                              "compile": on_cuda if self.compile == "auto" else self.compile,
                              "cpu_offload": offload,
                              "park_idle_unet": park and not offload})


def parse_performance(table: dict) -> Performance:
    """``Performance`` from the TOML table; PerformanceError naming the key for anything off."""
    if not isinstance(table, dict):
        raise PerformanceError("[performance] must be a table")
    known = {f.name for f in fields(Performance)}
    for key in table:
        if key not in known:
            raise PerformanceError(f"performance.{key} is not a setting; known: {', '.join(sorted(known))}")
    settings = Performance()
    for key, value in table.items():
        setattr(settings, key, _CHECKS[key](f"performance.{key}", value))
    return settings


def _choice(options):
    def check(key, value):
        if not isinstance(value, str) or value.lower() not in options:
            raise PerformanceError(f"{key} must be one of {', '.join(map(repr, options))} (got {value!r})")
        return value.lower()
    return check


def _switch(key, value):
    if isinstance(value, bool) or value == "auto":
        return value
    raise PerformanceError(f'{key} must be true, false or "auto" (got {value!r})')


def _flag(key, value):
    if isinstance(value, bool):
        return value
    raise PerformanceError(f"{key} must be true or false (got {value!r})")


def _count(key, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PerformanceError(f"{key} must be a whole number, 0 or more (got {value!r})")
    return value


def _modules(key, value):
    if not isinstance(value, list) or any(item not in COMPILABLE for item in value):
        raise PerformanceError(f"{key} must be a list of {', '.join(COMPILABLE)} (got {value!r})")
    return list(value)


def _sizes(key, value):
    """Sizes as "WxH" strings or single numbers (squares), each a multiple of 8 pixels."""
    if not isinstance(value, list):
        raise PerformanceError(f'{key} must be a list of sizes such as ["512x512", "768x512"] (got {value!r})')
    sizes = []
    for item in value:
        try:
            if isinstance(item, bool):
                raise ValueError
            width, height = (item, item) if isinstance(item, int) else map(int, item.lower().split("x"))
        except (ValueError, AttributeError):
            raise PerformanceError(f'{key}: {item!r} is not a size; write "WIDTHxHEIGHT" or one number') from None
        if width <= 0 or height <= 0 or width % 8 or height % 8:
            raise PerformanceError(f"{key}: {item!r} must be positive multiples of 8 pixels")
        sizes.append((width, height))
    return sizes


_CHECKS = {
    "dtype": _choice(DTYPES),
    "sdpa": _flag,
    "channels_last": _switch,
    "compile": _switch,
    "compile_modules": _modules,
    "compile_sizes": _sizes,
    "compile_mode": _choice(COMPILE_MODES),
    "compile_regional": _flag,
    "prompt_cache": _count,
    "vae_tiling_above": _count,
    "cpu_offload": _flag,
    "park_idle_unet": _switch,
}

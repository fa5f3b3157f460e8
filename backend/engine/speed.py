"""Engine optimisations from the ``[performance]`` config, applied to loaded models and per job.

Load time (``prepare_model`` / ``prepare_controlnet``): attention kernel (SDPA or classic),
channels_last memory layout, ``torch.compile`` of the UNet, ControlNet and VAE decoder, whole or
(``compile_regional``) only their repeated transformer blocks (eager where compiling fails). Per
job (``job``): which pipelines run compiled (only the configured diffusion sizes, so compiled
shapes stay static and an odd crop size never triggers a recompile), VAE tiling above a pixel
count, model CPU offload for small-VRAM GPUs, and (``lora_stance``, from loras.py) a compiled
UNet eager while LoRAs are on. Between jobs (``keep_only``): only the job's UNet
of a model with two stays on the GPU (``residency.py``). Half precision is the registry's dtype
(``pick_device``).

Everything here is a switch: with all of them off the pipelines are exactly diffusers' defaults.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from backend.engine.residency import Residency
from backend.performance import Performance

log = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"  # tests that count recompilations swap in "eager" (same tracing, no code generation)


class Speed:
    """The resolved performance settings for one device, and the code that applies them."""

    def __init__(self, settings: Performance, device: torch.device):
        self.device = device
        self.settings = settings.resolve(device.type)
        if settings.cpu_offload and not self.settings.cpu_offload:
            log.warning("performance.cpu_offload needs a CUDA GPU; running on %s without it", device)
        if self.settings.compile:
            # A painter's machine may lack what Inductor builds with (a C++ compiler on the CPU, Triton's
            # toolchain on a GPU): run eager then, rather than fail every job.
            torch._dynamo.config.suppress_errors = True
            _CompileFailures.install()
        self.residency = Residency(device) if self.settings.park_idle_unet else None

    @property
    def offload(self) -> bool:
        return self.settings.cpu_offload

    @property
    def load_device(self) -> torch.device:
        """Where model weights live between jobs: RAM when offloading, else the device."""
        return torch.device("cpu") if self.offload else self.device

    # -- load time ------------------------------------------------------------------------------

    def prepare_model(self, base, inpaint_unet=None) -> None:
        """Apply the load-time switches to a model's UNet(s) and VAE (in place)."""
        for unet in (base.unet, inpaint_unet):
            if unet is not None:
                self._module(unet, "unet")
        self._module(base.vae, "vae_decode")

    def prepare_controlnet(self, controlnet) -> None:
        self._module(controlnet, "controlnet")

    def _module(self, module, role: str) -> None:
        settings = self.settings
        if not settings.sdpa:
            from diffusers.models.attention_processor import AttnProcessor

            module.set_attn_processor(AttnProcessor())  # the pre-torch-2 kernel: reference / debugging only
        if settings.channels_last:
            module.to(memory_format=torch.channels_last)
        if settings.compile and role in settings.compile_modules:
            options = {"mode": None if settings.compile_mode == "default" else settings.compile_mode,
                       "dynamic": False, "backend": COMPILE_BACKEND}
            blocks = repeated_blocks(module.decoder if role == "vae_decode" else module) \
                if settings.compile_regional else []
            if blocks:
                # Regional: each transformer block is compiled in place, and blocks of the same shape
                # share one graph, so the first job compiles a few small graphs instead of the whole
                # network; what runs between the blocks (convolutions, the ControlNet scale) stays eager.
                for block in blocks:
                    block.compile(**options)
            elif role == "controlnet":
                module.forward = _scale_as_tensor(torch.compile(module.forward, **options))
            else:
                # In place (nn.Module.compile): the module keeps its class, config and attention
                # processors, so from_pipe sharing and IP-Adapter switching see the same object.
                (module.decoder if role == "vae_decode" else module).compile(**options)
            # Dynamo's recompile limit is per code object, and every diffusers UNet and ControlNet
            # enters through the same one (diffusers' forward wrapper): give each compiled module
            # its own 8 graphs per size bucket (guidance on/off x ControlNet residuals x IP-Adapter).
            config = torch._dynamo.config
            config.recompile_limit += 8 * max(1, len(settings.compile_sizes))
            config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, config.recompile_limit)

    def lora_stance(self, unet, loras_on: bool, reason: str) -> None:
        """Run a UNet's compiled code (the whole UNet, or its blocks under compile_regional) eager while
        LoRAs are on, and compiled again while they are all off, saying why the first time. (PEFT sets
        the LoRA weights per job as Python floats, which torch.compile would bake into the graph,
        recompiling for every new slider value; LoRAs turned off (``disable_lora``) are a Python bool,
        so a LoRA-free job traces the plain UNet's graph.) The compiled callables wait on their modules."""
        if not self.settings.compile:
            return
        switched = False
        for module in unet.modules():
            kept = getattr(module, "_easel_compiled", None)
            if loras_on and module._compiled_call_impl is not None:
                switched |= kept is None
                # what nn.Module.compile() set, kept; None: back to the plain forward
                module._easel_compiled, module._compiled_call_impl = module._compiled_call_impl, None
            elif not loras_on and kept is not None:
                module._compiled_call_impl = kept
        if switched:
            log.warning("%s: its UNet runs eager (uncompiled) in jobs with LoRAs, since torch.compile would "
                        "recompile it for every LoRA weight; jobs without LoRAs run it compiled, and its "
                        "ControlNets and VAE stay compiled", reason)

    def unfuse(self, module, reason: str) -> None:
        """Give a UNet whose attention runs on fused QKV projections its separate ones back, saying why:
        LoRAs wrap ``to_q`` / ``to_k`` / ``to_v``, which fused attention never calls."""
        if any("Fused" in type(processor).__name__ for processor in module.attn_processors.values()):
            module.unfuse_qkv_projections()
            log.warning("%s: its UNet's fused QKV projections are turned off (LoRAs act on the separate ones)",
                        reason)

    @property
    def parks_idle_unet(self) -> bool:
        return self.residency is not None

    def park(self, unet) -> None:
        """Send a (freshly loaded and prepared) second UNet to wait in RAM, when parking is on."""
        if self.residency is not None:
            self.residency.park(unet)

    def keep_only(self, unet, unets) -> None:
        """Before a job: its ``unet`` on the GPU, the model's other UNets parked (when parking is on)."""
        if self.residency is not None:
            self.residency.keep_only(unet, unets)

    # -- per job --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def job(self, pipe, size: tuple[int, int], native_size: int):
        """Around one pipeline call at diffusion ``size``: compiled or eager, tiled VAE or not,
        offload hooks in place."""
        settings = self.settings
        if settings.vae_tiling_above and size[0] * size[1] > settings.vae_tiling_above:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        if self.offload:
            # Hooks live on the (shared) modules; whichever pipeline hooked them last may not be
            # this one, so hook this one's modules before every call (cheap: no weights move).
            pipe.enable_model_cpu_offload(device=self.device)
        eager = settings.compile and tuple(size) not in self.compile_sizes(native_size)
        with torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext():
            yield

    def compile_sizes(self, native_size: int) -> set[tuple[int, int]]:
        return set(self.settings.compile_sizes) or {(native_size, native_size)}


REPEATED_BLOCKS = ("BasicTransformerBlock",)  # the UNet's and ControlNet's transformer blocks


def repeated_blocks(module) -> list:
    """The submodules regional compilation compiles: the module's own ``_repeated_blocks`` classes
    (diffusers' list for regional compilation), else the transformer blocks; [] when it has none
    (the VAE decoder), which is then compiled whole."""
    names = set(getattr(module, "_repeated_blocks", None) or REPEATED_BLOCKS)
    return [sub for sub in module.modules() if type(sub).__name__ in names]


def _scale_as_tensor(forward):
    """A compiled ControlNet forward that takes its ``conditioning_scale`` as a tensor.

    Pipelines pass the scale as a Python float (the unit's scale, or 0 outside its start / end), and
    torch.compile bakes floats into the graph as constants: every new slider value would recompile
    the ControlNet. A tensor is an input of the graph, so a new value just runs it.
    """
    def call(sample, *args, conditioning_scale=1.0, **kwargs):
        if not isinstance(conditioning_scale, torch.Tensor):
            conditioning_scale = torch.full((), float(conditioning_scale), device=sample.device)
        return forward(sample, *args, conditioning_scale=conditioning_scale, **kwargs)

    return call


class _CompileFailures(logging.Filter):
    """On dynamo's logger: it logs each frame it gives up on with a full traceback (one failure
    cascades into dozens of frames of a UNet). Let each distinct error through once, with one line
    of ours saying what it means for the painter."""

    _installed = None

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    @classmethod
    def install(cls) -> None:
        if cls._installed is None:
            cls._installed = cls()
            logging.getLogger("torch._dynamo.convert_frame").addFilter(cls._installed)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.exc_info or record.exc_info[1] is None:
            return True  # not a suppressed compile error
        error = record.exc_info[1]
        summary = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if summary in self.seen:
            return False
        self.seen.add(summary)
        log.warning("torch.compile failed (%s); running eager instead: same pictures, slower. Set "
                    "performance.compile = false to skip compiling.", summary)
        return True

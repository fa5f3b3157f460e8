"""Engine optimisations from the ``[performance]`` config, applied to loaded models and per job.

Load time (``prepare_model`` / ``prepare_controlnet``): attention kernel (SDPA or classic),
channels_last memory layout, ``torch.compile`` of the UNet, ControlNet and VAE decoder. Per job
(``job``): which pipelines run compiled (only the configured diffusion sizes, so compiled shapes
stay static and an odd crop size never triggers a recompile), VAE tiling above a pixel count, and
model CPU offload for small-VRAM GPUs. Between jobs (``keep_only``): only the job's UNet of a model
with two stays on the GPU (``residency.py``). Half precision is the registry's dtype (``pick_device``).

Everything here is a switch: with all of them off the pipelines are exactly diffusers' defaults.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from backend.engine.residency import Residency
from backend.performance import Performance

log = logging.getLogger(__name__)


class Speed:
    """The resolved performance settings for one device, and the code that applies them."""

    def __init__(self, settings: Performance, device: torch.device):
        self.device = device
        self.settings = settings.resolve(device.type)
        if settings.cpu_offload and not self.settings.cpu_offload:
            log.warning("performance.cpu_offload needs a CUDA GPU; running on %s without it", device)
        if self.settings.compile:
            # One graph per (size bucket x guidance on/off x ControlNet residuals or not): keep them all.
            buckets = max(1, len(self.settings.compile_sizes))
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8 * buckets)
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
            target = module.decoder if role == "vae_decode" else module
            # In place (nn.Module.compile): the module keeps its class, config and attention
            # processors, so from_pipe sharing and IP-Adapter switching see the same object.
            target.compile(mode=None if settings.compile_mode == "default" else settings.compile_mode,
                           dynamic=False)

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

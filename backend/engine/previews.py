"""Cheap previews of the latents while a job runs.

Without a configured TAESD, a linear map from latent channels to RGB is fitted once per VAE by
encoding a few flat colours, so any VAE (including the random demo one) gets a usable preview
at the cost of one small matrix product per preview.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import torch
from PIL import Image

_PALETTE = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))  # 27 flat colours in [-1, 1]


@torch.no_grad()
def fit_latent_to_rgb(vae) -> torch.Tensor:
    """A (channels + 1) x 3 matrix taking a pipeline latent (and 1) to RGB in [-1, 1]."""
    # fp16 SDXL VAEs overflow: fit on a float copy, on the VAE's own device (a full-size VAE took
    # ~17 s on a busy 2-core CPU; on a GPU this is milliseconds)
    encoder = copy.deepcopy(vae).to(torch.float32)
    images = _PALETTE[:, :, None, None].expand(-1, -1, 64, 64).contiguous().to(encoder.device)
    latents = encoder.encode(images).latent_dist.mean.mean(dim=(2, 3)).cpu()
    del encoder
    latents = latents * vae.config.scaling_factor
    design = torch.cat([latents, torch.ones(len(latents), 1)], dim=1)
    return torch.linalg.lstsq(design, _PALETTE).solution


class Previewer:
    """Turns a batch of latents into a small RGB picture."""

    def __init__(self, vae, decoder=None):
        self.vae, self.decoder = vae, decoder
        self._matrix: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, max_size: int) -> Image.Image:
        latent = latents[:1]
        if self.decoder is not None:
            # The decoder paints 8 pixels per latent: a 512-px job decoded 512 x 512 (40-50 MiB of
            # activations with the demo TAESD on a CPU, every step) only to be shrunk to a 256-px
            # preview. Averaging the latent down first decodes at about the size asked for.
            shrink = max(latent.shape[-2:]) * 8 // max_size
            if shrink >= 2:
                height, width = latent.shape[-2:]
                latent = torch.nn.functional.interpolate(latent, size=(-(-height // shrink), -(-width // shrink)),
                                                         mode="area")
            rgb = self.decoder.decode(latent.to(self.decoder.dtype)).sample[0]
        else:
            if self._matrix is None:
                self._matrix = fit_latent_to_rgb(self.vae)
            flat = latent[0].float().cpu().permute(1, 2, 0)
            rgb = (flat @ self._matrix[:-1] + self._matrix[-1]).permute(2, 0, 1)
        pixels = ((rgb.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(np.ascontiguousarray(pixels))
        image.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
        if max(image.size) < max_size:  # latent previews are 1/8 size: show them at the asked size
            scale = max_size / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BILINEAR)
        return image

"""What the engine runs: jobs decoded for it (pixels as arrays, the seed resolved, names checked).

The server's intake builds these from protocol jobs; the engine never sees a message, an upload
or a wire field name, and never changes a job (what it decided comes back in its result).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared import rules
from shared.geometry import DEFAULT_PADDING


@dataclass(frozen=True, eq=False)
class Control:
    """One ControlNet unit: ``image`` None means the job's own picture."""

    type: str
    image: np.ndarray | None  # H x W x 4 RGBA, any size
    preprocessor: str | None  # None: the image already is a control map
    scale: float
    start: float
    end: float
    resolution: int | None = None


@dataclass(frozen=True, eq=False)
class Reference:
    """One IP-Adapter reference picture."""

    image: np.ndarray  # H x W x 4 RGBA
    weight: float
    mode: str


@dataclass(frozen=True, eq=False)
class EditJob:
    """A generate, img2img, inpaint, expand, remove or upscale job; image i of the batch uses seed + i."""

    mode: str
    model: str
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    strength: float
    batch: int
    sampler: str
    width: int | None = None  # generate only; the model's native size when None
    height: int | None = None
    image: np.ndarray | None = None  # H x W x 4 RGBA uint8
    mask: np.ndarray | None = None  # H x W uint8, 255 = regenerate
    mask_grow: int = rules.MASK_GROW
    mask_feather: int = rules.MASK_FEATHER
    preview_every: int = 0
    preview_size: int = 256
    control: tuple[Control, ...] = ()
    references: tuple[Reference, ...] = ()
    fill: str = "none"  # pre-fill of masked pixels (shared.vocabulary.FILL_MODES), resolved for the mode
    soft: bool = True  # differential diffusion and a smooth feather ramp; False: 50% threshold, max(grown, blur)
    padding: int = DEFAULT_PADDING  # inpaint, remove: context kept around the mask (beyond its reach)
    expand: tuple[int, int, int, int] = (0, 0, 0, 0)  # expand: (left, top, right, bottom) added; ``image`` is
    # then the new canvas, transparent in the new band, with the submitted picture at (left, top)
    image_guidance: float | None = 1.5  # instruct: how closely the edit keeps to the picture (None: no such scale)
    clip_skip: int | None = None  # A1111's count (1 = last layer); None: the model's setting
    upscaler: str | None = None  # upscale: the super-resolution model (None: the server's default); the
    # target size is ``width`` x ``height`` and ``strength`` the refine strength (0: none)
    loras: tuple[tuple[str, float], ...] = ()  # (name, weight), the prompt's <lora:> tags already merged in
    preset: str | None = None  # the preset the job named (already applied to its fields)
    few_step: bool = False  # its preset says the model denoises in a few steps: at least 1 step runs
    timestep_spacing: str | None = None  # the scheduler's; None: the model's own
    # img2img: a strong one of a large picture is remade whole first (passes.plan_passes); False for the refine
    # stage of a large generate or an upscale, which refines its own picture at the strength asked
    recompose: bool = True

    @property
    def denoising_steps(self) -> int:
        """Steps that run per image and pass."""
        return rules.denoising_steps(self.mode, self.steps, self.strength, self.few_step)


@dataclass(frozen=True, eq=False)
class PreprocessJob:
    """The control map of a whole picture, at its size."""

    preprocessor: str
    image: np.ndarray  # H x W x 4 RGBA
    resolution: int | None = None

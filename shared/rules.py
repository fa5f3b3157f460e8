"""The editing rules every side applies the same way: hosts check with them before sending, the
server checks with them on arrival, and the engine plans with them.

Pure and standard-library only, like the rest of the protocol package.
"""

from __future__ import annotations

from .errors import ProtocolError
from .vocabulary import MAX_SEED

MASK_GROW = 8
"""Pixels an inpaint mask is grown by, unless the job says otherwise."""

MASK_FEATHER = 16
"""Pixels the grown mask's edge is softened over, unless the job says otherwise."""


def denoising_steps(mode: str, steps: int, strength: float) -> int:
    """Steps that actually run per image: all of them when generating, steps x strength otherwise
    (the schedule starts part-way, from the noised picture)."""
    return steps if mode == "generate" else int(steps * strength)


def check_denoising(mode: str, steps: int, strength: float) -> None:
    """Refuse a job whose strength and steps leave no denoising step (``too_few_steps``)."""
    if denoising_steps(mode, steps, strength) < 1:
        raise ProtocolError("too_few_steps", f"strength {strength:g} x {steps} steps leaves no denoising step; "
                            "raise the strength or the steps", "strength")


def check_schedule_range(start: float, end: float, name: str) -> None:
    """A control unit acts from ``start`` to ``end`` of the schedule: the start must come first."""
    if start >= end:
        raise ProtocolError("invalid_field", f"`{name}.start` ({start:g}) must be before `{name}.end` ({end:g})",
                            f"{name}.end")


def check_seed_range(seed: int | None, batch: int) -> None:
    """Image i of a batch uses seed + i, so the last one must still be a valid seed."""
    if seed is not None and seed + batch - 1 > MAX_SEED:
        raise ProtocolError("invalid_field", f"seed + batch - 1 must stay within {MAX_SEED} (seed at most "
                            f"{MAX_SEED - batch + 1} for a batch of {batch})", "seed")


def seed_range(seed: int, batch: int) -> list[int]:
    """The seeds of a batch's images, in order."""
    return [seed + index for index in range(batch)]


def reach(grow: int, feather: int) -> int:
    """How far beyond its bounds a mask reaches once it is grown and feathered.

    Feathering is a Gaussian blur with sigma = feather / 2, which fades out by 3 sigma. Crops
    are planned with this margin so the soft edge always lies inside them.
    """
    return grow + feather * 3 // 2 + 1


def blend(top: int, below: int, alpha: int) -> int:
    """One 8-bit channel of ``top`` over ``below`` at 8-bit ``alpha``: exact at alpha 0 and 255.

    The rule of the one composite (``shared.compose``); written out here so hosts without numpy
    blend the same way.
    """
    return (top * alpha + below * (255 - alpha) + 127) // 255

"""The editing rules every side applies the same way: hosts check with them before sending, the
server checks with them on arrival, and the engine plans with them.

Pure and standard-library only, like the rest of the protocol package.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .errors import ProtocolError, shown
from .vocabulary import MAX_SEED

MASK_GROW = 8
"""Pixels an inpaint mask is grown by, unless the job says otherwise."""

MASK_FEATHER = 16
"""Pixels the grown mask's edge is softened over, unless the job says otherwise."""


DEFAULT_FILL = {"inpaint": "none", "expand": "border", "remove": "inpaint"}
"""The pre-fill of each masked mode when the job names none: inpaint keeps the pixels under the mask,
expand edge-extends the new canvas, remove fills the selection from its surroundings."""

NEW_CANVAS_FILL = "border"
"""How transparent input pixels (and an expanded canvas's new band) are filled before diffusion."""

REMOVE_STRENGTH = 0.4
"""remove refines its pre-filled selection with a low-strength pass: ``strength`` x this."""

MAX_EXPAND = 4096
"""Most pixels an expand adds on one side."""

MAX_CLIP_SKIP = 12
"""Clip skip runs from 1 (the text encoder's last layer, as A1111 counts) to 12 (the first of SD1.5's 12)."""


def pass_strength(mode: str, strength: float) -> float:
    """The strength a mode's diffusion passes run at (remove scales it down to a refining pass)."""
    return strength * REMOVE_STRENGTH if mode == "remove" else strength


def expanded_size(width: int, height: int, left: int, top: int, right: int, bottom: int) -> tuple[int, int]:
    """The canvas an expand makes of a ``width`` x ``height`` picture: the picture sits at (left, top)."""
    return width + left + right, height + top + bottom


def aspect_sides(width: int, height: int, aspect_width: int, aspect_height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) an expand adds to bring a ``width`` x ``height`` picture to the
    aspect ratio ``aspect_width`` : ``aspect_height``, split evenly between the two sides that grow
    (the odd pixel goes right or bottom). (0, 0, 0, 0) when the picture already has that aspect."""
    if min(width, height, aspect_width, aspect_height) <= 0:
        raise ValueError("sizes and aspect must be positive")
    if width * aspect_height < height * aspect_width:  # too narrow: grow the width
        extra = -(-height * aspect_width // aspect_height) - width
        return extra // 2, 0, extra - extra // 2, 0
    extra = -(-width * aspect_height // aspect_width) - height
    return 0, extra // 2, 0, extra - extra // 2


STARTS_FROM_NOISE = ("generate", "instruct")
"""Modes that run every step: generate, and instruct (the picture conditions the model, it is not noised)."""

IMAGE_GUIDANCE = 1.5
"""instruct: how closely the edit keeps to the picture when the job does not say (InstructPix2Pix's default)."""

GUIDANCE = 7.0
"""Classifier-free guidance of an SD job that does not say."""


def default_guidance(family: str | None, mode: str) -> float:
    """The guidance a job gets when it leaves ``guidance`` out: Flux's distilled guidance (3.5 for dev, 30
    for its Fill model's masked modes, 2.5 for Kontext), InstructPix2Pix's 7.5, else 7. (One number for
    every family ran Flux Fill at 7, a quarter of what it is trained for, and dev at twice its 3.5.)"""
    if family == "flux":
        return {"inpaint": 30.0, "remove": 30.0, "expand": 30.0, "instruct": 2.5}.get(mode, 3.5)
    return 7.5 if mode == "instruct" else GUIDANCE


def denoising_steps(mode: str, steps: int, strength: float, few_step: bool = False) -> int:
    """Steps that actually run per image: all of them when generating, steps x strength otherwise
    (the schedule starts part-way, from the noised picture). ``few_step`` (a preset for LCM, TCD,
    Lightning ... models, which denoise in 1-8 steps): at least 1 whenever the strength is above 0."""
    strength = pass_strength(mode, strength)
    if mode in STARTS_FROM_NOISE:
        return steps
    made = int(steps * strength)
    return max(made, 1) if few_step and strength > 0 else made


def schedule_steps(steps: int, strength: float) -> int:
    """The schedule length that makes a few-step job's ``steps`` x ``strength`` run 1 step when it
    would run none: the pipelines denoise int(schedule x strength) steps of it."""
    if strength <= 0 or int(steps * strength) >= 1:
        return steps
    # From 1 / strength rather than counting up to it: a client's strength of 1e-300 counted for ever, on the
    # thread that took the job in (or, for a few-step preset, on the GPU worker's, stopping every client's jobs).
    schedule = max(steps, math.ceil(1 / Fraction(strength)) - 1)  # exact: 1 / 5e-324 is no float
    if schedule > 2 ** 53:  # past a float's integers the float product below means nothing
        return schedule
    while int(schedule * strength) < 1:  # (the pipelines' float product may round either way of 1)
        schedule += 1
    return schedule


def check_denoising(mode: str, steps: int, strength: float, few_step: bool = False) -> None:
    """Refuse a job whose strength and steps leave no denoising step (``too_few_steps``)."""
    if denoising_steps(mode, steps, strength, few_step) < 1:
        advice = _step_advice(mode, steps, strength)
        # at strength 1 only more steps help: the field to change is then steps (remove at its default
        # strength, told "--strength: ... use at least 3 steps", named an option the user never typed)
        field = "steps" if strength >= 1 else "strength"
        if mode == "remove":  # (its pass runs at strength x 0.4: "strength 1 x 2 steps" read as 2 steps)
            raise ProtocolError("too_few_steps", f"remove refines at strength x {REMOVE_STRENGTH:g}, and "
                                f"{strength:g} x {REMOVE_STRENGTH:g} x {steps} steps leaves no denoising step; "
                                f"{advice}", field)
        raise ProtocolError("too_few_steps", f"strength {strength:g} x {steps} steps leaves no denoising step; "
                            f"{advice}", field)


SCHEDULE_MOST = {"lcm": 50, "tcd": 50}
"""Samplers that draw their schedule from a fixed number of training steps (diffusers' LCM and TCD schedulers,
``original_inference_steps``): a schedule longer than that fails in the scheduler."""


def check_schedule_length(sampler: str, schedule: int, field: str = "steps") -> None:
    """Refuse a schedule longer than ``sampler`` can draw (it failed as an `internal` error once running)."""
    most = SCHEDULE_MOST.get(sampler)
    if most is not None and schedule > most:
        raise ProtocolError("invalid_field", f"the {sampler} sampler runs at most {most} steps (its schedule is drawn "
                            f"from {most} training steps), not {schedule}; ask for fewer steps", field)


FEWEST_STEPS_SHOWN = 10_000
"""Above this many steps, advice to take more steps is no advice: the strength is what is too low."""


def _step_advice(mode: str, steps: int, strength: float) -> str:
    """What makes a job that runs no step run one: the fewest steps that do at this strength, and a higher
    strength only where there is one (remove at strength 1 was told to "raise the strength")."""
    if pass_strength(mode, strength) <= 0:
        return "raise the strength"
    fewest = schedule_steps(steps, pass_strength(mode, strength))
    if fewest > FEWEST_STEPS_SHOWN:  # (a strength of 1e-300 was told to use 10^300 steps)
        return "raise the strength"
    return f"use at least {fewest} steps" + (", or a higher strength" if strength < 1 else "")


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


UPSCALE_MIN, UPSCALE_MAX = 1.0, 8.0
"""The range of an upscale's ``scale``."""

UPSCALE_DEFAULT = 2.0

HIRES_REFINE = 0.5
"""The strength of the second stage of a generate above the model's native range, unless ``refine`` says."""

RECOMPOSE_STRENGTH = 0.7
"""An img2img of a picture too large for one pass, above this strength, is remade whole near native size
first (then upscaled and refined in tiles at ``HIRES_REFINE``): tiles at such a strength would each paint
a picture of their own, with no composition across them."""


def upscale_size(width: int, height: int, scale: float | None = None, target_width: int | None = None,
                 target_height: int | None = None) -> tuple[int, int]:
    """The size an upscale makes of a ``width`` x ``height`` picture: the target size when given (one side
    alone keeps the aspect), else ``scale`` times the picture (UPSCALE_DEFAULT when None), rounded."""
    if target_width and target_height:
        return target_width, target_height
    # exact fractions: a float quotient of a huge target printed garbled digits in the refusal that names it
    if target_width:
        return target_width, max(1, round(Fraction(height * target_width, width)))
    if target_height:
        return max(1, round(Fraction(width * target_height, height))), target_height
    factor = UPSCALE_DEFAULT if scale is None else scale
    return max(1, round(width * factor)), max(1, round(height * factor))


def upscale_field(target_width: int | None, target_height: int | None) -> str:
    """The field an upscale's size was asked with, which its refusals name."""
    return "scale" if target_width is None and target_height is None else ("width" if target_width else "height")


def check_limit(key: str, value: int, limit: int) -> None:
    """Refuse a job's ``key`` (steps, batch, a generate's width or height) over a server's ``limit``."""
    if value > limit:
        raise ProtocolError("limit_exceeded", f"{key} {shown(value)} is over this server's limit of {limit}", key)


def check_generate_side(width: int | None, height: int | None, max_generate_side: int) -> None:
    """Refuse a generate's ``width`` / ``height`` over a server's ``max_generate_side`` (``limit_exceeded``)."""
    for key, value in (("width", width), ("height", height)):
        if value is not None:
            check_limit(key, value, max_generate_side)


def check_picture_size(width: int, height: int, max_side: int, max_pixels: int, role: str) -> None:
    """Refuse a picture sent as ``role`` over a server's ``max_side`` / ``max_pixels``, saying the largest size
    of its shape that fits."""
    if max(width, height) > max_side or width * height > max_pixels:
        scale = min(max_side / max(width, height), (max_pixels / (width * height)) ** 0.5)
        fit = f"{max(1, int(width * scale + 1e-6))}x{max(1, int(height * scale + 1e-6))}"
        raise ProtocolError("limit_exceeded", f"`{role}` is {width}x{height}; this server accepts at most "
                            f"{max_side} pixels a side and {max_pixels} pixels in all: scale it "
                            f"down (to {fit} at most, keeping its shape) or crop it first", role)


def check_expanded_size(width: int, height: int, sides: tuple[int, int, int, int], max_side: int,
                        max_pixels: int) -> tuple[int, int]:
    """The canvas an expand makes of a ``width`` x ``height`` picture, refused when over a server's limits
    (naming the side that grows it past them)."""
    left, top, _, bottom = sides
    new_width, new_height = expanded_size(width, height, *sides)
    if max(new_width, new_height) > max_side or new_width * new_height > max_pixels:
        if new_width > max_side or not (top or bottom):
            key = "expand_left" if left else "expand_right"
        else:
            key = "expand_top" if top else "expand_bottom"
        raise ProtocolError("limit_exceeded", f"the expanded canvas would be {new_width}x{new_height}; this server "
                            f"accepts at most {max_side} pixels a side and {max_pixels} pixels in all", key)
    return new_width, new_height


def check_message_size(size: int, max_message_bytes: int) -> None:
    """Refuse a websocket message (a JSON text or an upload's binary frame) of ``size`` bytes over a server's
    ``max_message_bytes``."""
    if size > max_message_bytes:
        raise ProtocolError("frame_too_large", f"message of {size} bytes is over this server's limit of "
                            f"{max_message_bytes}")


def check_upscale_limits(width: int, height: int, scale: float | None, target_width: int | None,
                         target_height: int | None, max_side: int, max_pixels: int) -> tuple[int, int]:
    """The size an upscale makes of a ``width`` x ``height`` picture, refused (``limit_exceeded``, naming the
    field asked with) when over a server's ``max_side`` / ``max_pixels``: the server's rule, which a host that
    has the limits from ``welcome`` applies before uploading the picture."""
    target = upscale_size(width, height, scale, target_width, target_height)
    field = upscale_field(target_width, target_height)
    if max(target) > max_side or target[0] * target[1] > max_pixels:
        largest = largest_upscale(width, height, max_side, max_pixels, field)
        raise ProtocolError("limit_exceeded", f"upscaling the {width}x{height} picture to {target[0]}x{target[1]} "
                            f"is over this server's limit of {max_side} pixels a side and {max_pixels} pixels in "
                            f"all; {largest}", field)
    return target


def largest_scale(width: int, height: int, max_side: int, max_pixels: int | None = None) -> float | None:
    """The largest upscale factor (to two decimals, at least UPSCALE_MIN, not capped at UPSCALE_MAX) whose
    result fits a server's ``max_side`` and ``max_pixels`` (None: no pixel limit); None when none grows the
    picture."""
    def fits(size: tuple[int, int]) -> bool:
        return max(size) <= max_side and (max_pixels is None or size[0] * size[1] <= max_pixels)

    bound = max_side / max(width, height)
    if max_pixels is not None:
        bound = min(bound, math.sqrt(max_pixels / (width * height)))
    scale = math.floor(100 * bound) / 100
    while scale >= UPSCALE_MIN and not fits(upscale_size(width, height, scale)):
        scale = round(scale - 0.01, 2)
    if scale < UPSCALE_MIN or upscale_size(width, height, scale) == (width, height):
        return None
    return scale


def largest_upscale(width: int, height: int, max_side: int, max_pixels: int, field: str) -> str:
    """What to ask for instead of an upscale over the limits: the largest scale that fits (a 6000x200
    panorama's --scale 2 was refused without a word on what would do)."""
    scale = largest_scale(width, height, max_side, max_pixels)
    if scale is None:
        return "the picture is already as large as this server allows: scale it down first, or upscale a crop"
    if field != "scale":  # a target size asked for: say the size (a --scale is capped, a --width is not)
        size = upscale_size(width, height, scale)
        return f"the most it can grow to, keeping its shape, is {size[0]}x{size[1]}"
    scale = min(scale, UPSCALE_MAX)
    size = upscale_size(width, height, scale)
    return f"the most it can grow to, keeping its shape, is {size[0]}x{size[1]} (`scale` {scale:g})"


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


def blend_over(top: int, top_alpha: int, below: int, below_alpha: int) -> tuple[int, int]:
    """One 8-bit channel of ``top`` (alpha ``top_alpha``) over ``below`` (alpha ``below_alpha``):
    (colour, alpha) of Porter-Duff "over" on straight (unpremultiplied) colour, rounded to integers.

    Exact where the top is transparent (the picture keeps its bytes and alpha) or opaque (the top's
    bytes land); where the picture is transparent its hidden colour never shows through.
    """
    if top_alpha == 0:
        return below, below_alpha
    if below_alpha == 255:
        return blend(top, below, top_alpha), 255
    weight_below = below_alpha * (255 - top_alpha)  # the picture's share, x 255
    alpha255 = top_alpha * 255 + weight_below
    colour = (top * top_alpha * 255 + below * weight_below + alpha255 // 2) // alpha255
    return colour, (alpha255 + 127) // 255

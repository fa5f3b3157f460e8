"""Where a result goes on the canvas and how it becomes a layer.

Pure. The server answers with an image and an ``offset`` relative to what was sent; the host
sent only the context crop, so the layer goes at crop offset + result offset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .plan import Region


@dataclass
class Placement:
    """A result layer's top-left corner and size on the canvas; ``scale`` when the server's
    picture must be resized to fit (a ``generate`` whose model size differs from the canvas)."""

    x: int
    y: int
    width: int
    height: int
    scale: bool = False


def place(region: Region, offset: tuple[int, int], width: int, height: int) -> Placement:
    """Place a ``width`` x ``height`` result that the server put at ``offset`` within the crop."""
    box = region.box
    if region.mode in ("expand", "upscale"):  # the new canvas, at its origin (the document is resized first)
        return Placement(offset[0], offset[1], width, height)
    if region.masked:  # inpaint, remove, instruct in a selection: never resampled, outside the mask it is the
        # canvas byte for byte
        return Placement(box.x + offset[0], box.y + offset[1], width, height)
    # generate, img2img and instruct answer a picture of the size asked for or sent; it covers the whole box.
    return Placement(box.x, box.y, box.width, box.height, (width, height) != (box.width, box.height))


_LORA_TAG = re.compile(r"<lora:[^<>]*>", re.IGNORECASE)


def layer_name(prompt: str, seed: int, limit: int = 40, model: str | None = None, empty: str = "no prompt",
               frame: int | None = None) -> str:
    """A result layer's name: the prompt (shortened, without its ``<lora:…>`` tags, which would fill the
    name) and the seed that reproduces it, and the model when it is not the server's default (``model``
    None). ``empty``: the name for a job with no prompt (a removal, an expand). ``frame``: in an animation,
    the frame the job read: the layer itself is a still one over every frame, so its name says where it
    belongs."""
    text = " ".join(_LORA_TAG.sub(" ", prompt).split()).strip(" ,") or empty
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "…"
    extra = "".join(f", {part}" for part in (model, None if frame is None else f"frame {frame}") if part)
    return f"{text} [{seed}{extra}]"


def upscale_label(prompt: str, scale: float, refine: float) -> str:
    """What an upscale's layer is named after (``layer_name`` adds the seed): the prompt only when a refine
    used it; a plain upscale ignores the prompt, and a layer named after a prompt left in the box from an
    earlier job ("a castle") hid what it was."""
    return prompt if refine > 0 and prompt.strip() else f"upscaled {scale:g}x"


def band_only(rgba: bytes, width: int, left: int, top: int, old_width: int, old_height: int) -> bytes:
    """An expand's new canvas (RGBA, ``width`` wide) with alpha 0 over the old canvas at (left, top)."""
    out = bytearray(rgba)
    for row in range(top, top + old_height):
        start = (row * width + left) * 4
        out[start + 3:start + old_width * 4:4] = bytes(old_width)
    return bytes(out)


def misfit(now: tuple[int, int], read: tuple[int, int], made: tuple[int, int] | None = None) -> str | None:
    """Why a result cannot go into its document any more, or None when it can.

    The result was placed on a canvas of size ``read`` (the size when the job read the document); the
    painter may have cropped, resized or scaled the document since, and then the layer would land off
    the picture it was made from. ``made``: the canvas an expand or upscale makes of it (the document may
    be that size already, grown or scaled by an earlier result of the same batch). Only the size is
    known, so a canvas grown on the right or bottom is refused too: the painter can Undo and apply again.
    """
    if now == read or (made is not None and now == made):
        return None
    return (f"The document is {now[0]}x{now[1]} now and was {read[0]}x{read[1]} when this job read it: the result "
            "would not line up with the picture. Undo the resize or crop and press Apply as layer again.")

"""A request checked against the limits a server's ``welcome`` gives, before its pictures are uploaded: a
6000x4000 photo asked x 4 was uploaded for 30-60 s only to be refused. Every check is the server's own
rule (``shared.rules``), so the refusal is the one the server would have sent; what a host cannot know
exactly (the steps a preset sets, a WebP's size without a declared one) is left to the server.

Pure and standard-library only.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import rules
from .errors import ProtocolError
from .images import ImageData, png_size
from .job import Job, PreprocessJob


def picture_size(image: object) -> tuple[int, int] | None:
    """The size the server checks a picture by: a PNG's header, else the size it declares; None when
    that is not known here (a wire reference, a WebP without a size, bytes that are no PNG)."""
    if not isinstance(image, ImageData):
        return None
    if image.format == "png":
        try:
            return png_size(image.data)
        except ProtocolError:  # (not a picture at all: the server says what it is)
            return None
    # A raw frame is its declared size; the server refuses a WebP whose declared size is not the file's.
    return (image.width, image.height) if image.width and image.height else None


def check_request(request: Job | PreprocessJob, limits: Mapping[str, int]) -> None:
    """Refuse (``ProtocolError``, as the server would) a job or preprocess request over ``limits``,
    ``welcome.capabilities.limits``; a limit the server does not give is not checked."""
    if isinstance(request, PreprocessJob):
        _check_picture(request.image, "image", limits)
        return
    job = request
    # With a preset, a field left out of the message takes the preset's value: those steps are the server's to check
    sent = job.to_message(lambda image, role: {"frame": "unsent"})
    for key, value in (("steps", sent.get("steps")), ("batch", job.sampling.batch)):
        if value is not None and f"max_{key}" in limits:
            rules.check_limit(key, value, limits[f"max_{key}"])
    if job.mode != "upscale" and "max_generate_side" in limits:
        rules.check_generate_side(job.width, job.height, limits["max_generate_side"])
    for index, unit in enumerate(job.control):
        _check_picture(unit.image, f"control[{index}].image", limits)
    for index, reference in enumerate(job.references):
        _check_picture(reference.image, f"references[{index}].image", limits)
    size = _check_picture(job.image, "image", limits)
    _check_picture(job.mask, "mask", limits)
    if size is None or not {"max_side", "max_pixels"} <= limits.keys():
        return
    if job.mode == "expand":
        rules.check_expanded_size(*size, job.expand, limits["max_side"], limits["max_pixels"])
    elif job.mode == "upscale":
        rules.check_upscale_limits(*size, job.scale, job.width, job.height, limits["max_side"], limits["max_pixels"])


def _check_picture(image: object, role: str, limits: Mapping[str, int]) -> tuple[int, int] | None:
    """The picture's size (None when not known here), refused when over the server's side and pixel limits."""
    size = picture_size(image)
    if size is not None and {"max_side", "max_pixels"} <= limits.keys():
        rules.check_picture_size(*size, limits["max_side"], limits["max_pixels"], role)
    return size

"""Control-map preprocessors from controlnet_aux (run on the worker thread, never the event loop)."""

from __future__ import annotations

import functools

from PIL import Image


@functools.lru_cache(maxsize=None)
def _detector(name: str):
    import controlnet_aux  # heavy import: only when a job asks for a preprocessor

    return {
        "canny": controlnet_aux.CannyDetector,
        "lineart_standard": controlnet_aux.LineartStandardDetector,
        "shuffle": controlnet_aux.ContentShuffleDetector,
    }[name]()


def preprocess(name: str, picture: Image.Image, resolution: int | None = None, seed: int = 0) -> Image.Image:
    """The control map ``name`` makes of ``picture``, the same size as the picture.

    ``resolution`` is the working size of the shorter side (the picture's own when None).
    """
    resolution = resolution or min(picture.size)
    kwargs = {"detect_resolution": resolution}
    if name != "lineart_standard":  # the one detector without an output-size argument
        kwargs["image_resolution"] = resolution
    if name == "shuffle":
        import numpy as np

        np.random.seed(seed)  # ContentShuffleDetector draws from numpy's global generator
    result = _detector(name)(picture.convert("RGB"), **kwargs)
    return result.convert("RGB").resize(picture.size, Image.Resampling.BILINEAR)

"""The one composite: an RGBA result layer painted over the picture it was made from.

Integer arithmetic (``shared.rules.blend``), so where the layer's alpha is 0 the picture keeps its
own bytes and where it is 255 the layer's bytes land exactly. The backend's ``easel run --out``,
``easel demo`` and the A1111 tab all composite through this function; Krita composites layers
itself. Needs numpy (imported on use: the protocol package itself is standard library only).
"""

from __future__ import annotations

from typing import Any


def composite(base: Any, layer: Any, offset: tuple[int, int]) -> Any:
    """``layer`` (H x W x 4 uint8) over ``base`` (RGB or RGBA uint8) at ``offset``, as a new array.

    Colour is the layer blended over the picture by the layer's alpha; an RGBA picture's alpha
    becomes the union of both ("over"). Parts of the layer beyond the picture are ignored.
    """
    import numpy as np

    out = np.array(base, dtype=np.uint8, copy=True)
    x, y = offset
    region = out[y:y + layer.shape[0], x:x + layer.shape[1]]
    top = np.asarray(layer, dtype=np.uint32)[:region.shape[0], :region.shape[1]]
    alpha = top[..., 3:4]
    below = region[..., :3].astype(np.uint32)
    region[..., :3] = ((top[..., :3] * alpha + below * (255 - alpha) + 127) // 255).astype(np.uint8)
    if out.shape[2] == 4:
        under = region[..., 3:4].astype(np.uint32)
        region[..., 3:4] = ((alpha * 255 + under * (255 - alpha) + 127) // 255).astype(np.uint8)
    return out

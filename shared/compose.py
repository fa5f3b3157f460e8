"""The one composite: an RGBA result layer painted over the picture it was made from.

Integer arithmetic (``shared.rules.blend`` and ``blend_over``), so where the layer's alpha is 0 the
picture keeps its own bytes (and alpha) and where it is 255 the layer's bytes land exactly. Over an
RGBA picture it is Porter-Duff "over" on straight colour: the colour hidden under the picture's
transparent pixels never shows through a soft edge. The backend's ``easel run --out``, ``easel demo``
and the A1111 tab all composite through this function; Krita composites layers itself. Needs numpy
(imported on use: the protocol package itself is standard library only).
"""

from __future__ import annotations

from typing import Any

BAND = 1 << 18
"""Pixels composited at a time (whole rows): the integer temporaries of a whole 4096 x 3072 picture took
800 MB; a band's take about 30 MB."""


def composite(base: Any, layer: Any, offset: tuple[int, int]) -> Any:
    """``layer`` (H x W x 4 uint8) over ``base`` (RGB or RGBA uint8) at ``offset``, as a new array.

    Colour is the layer blended over the picture by the layer's alpha (weighted by the picture's own
    alpha when it has one); an RGBA picture's alpha becomes the union of both ("over"). Parts of the
    layer beyond the picture are ignored.
    """
    import numpy as np

    out = np.array(base, dtype=np.uint8, copy=True)
    x, y = offset
    region = out[y:y + layer.shape[0], x:x + layer.shape[1]]
    layer = np.asarray(layer)
    rows = max(1, BAND // max(1, region.shape[1]))
    for row in range(0, region.shape[0], rows):
        band = region[row:row + rows]
        _over(band, layer[row:row + band.shape[0], :band.shape[1]])
    return out


def _over(region: Any, layer: Any) -> None:
    """``layer`` over ``region`` (a view into the picture), in place."""
    import numpy as np

    top = layer.astype(np.uint32)
    alpha = top[..., 3:4]
    below = region[..., :3].astype(np.uint32)
    blended = (top[..., :3] * alpha + below * (255 - alpha) + 127) // 255
    if region.shape[2] == 4:
        under = region[..., 3:4].astype(np.uint32)
        weight = under * (255 - alpha)  # the picture's share of the colour, x 255
        total = alpha * 255 + weight  # the result's alpha, x 255
        over = (top[..., :3] * alpha * 255 + below * weight + total // 2) // np.maximum(total, 1)
        seen = (alpha > 0) & (under < 255)  # elsewhere "over" is the plain blend (and exact at alpha 0)
        blended = np.where(seen, over, blended)
        region[..., 3:4] = ((total + 127) // 255).astype(np.uint8)
    region[..., :3] = blended.astype(np.uint8)

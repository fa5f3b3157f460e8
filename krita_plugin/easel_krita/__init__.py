"""Easel for Krita: a docker for selection-based generative fill, refine, control and references.

Krita imports this package (``X-KDE-Library=easel_krita`` in ``easel.desktop``). The packaged
plugin carries ``websockets`` in ``_vendor/`` (Krita's Python cannot pip install) and a copy of
the protocol package in ``shared/``. Outside Krita (unit tests) importing the package registers
nothing, so the pure modules stay importable anywhere.
"""

from __future__ import annotations

import os
import sys

_VENDOR = os.path.join(os.path.dirname(__file__), "_vendor")
if os.path.isdir(_VENDOR) and _VENDOR not in sys.path:
    # First on the path: a system websockets (Debian's is too old for websockets.sync) must not win.
    sys.path.insert(0, _VENDOR)

try:
    from krita import Krita  # noqa: F401
except ImportError:  # plain Python: the pure modules are usable, nothing to register
    Krita = None

if Krita is not None:
    from .extension import register

    register()

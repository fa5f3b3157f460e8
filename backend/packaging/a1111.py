"""``easel package a1111``: the WebUI extension folder, with the protocol package bundled.

The result is ``OUT/easel`` (a folder to copy or symlink into the WebUI's ``extensions/``): the
repository's ``a1111_extension/`` plus ``shared/`` copied in as ``easel_shared`` (the WebUI has a
``modules.shared`` of its own; see ``easel_a1111/protocol.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import shared

from . import SOURCES, copy_package

NAME = "easel"
BUNDLED = "easel_shared"


def build(out: Path) -> Path:
    target = out / NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(SOURCES["a1111"], target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    copy_package(shared, target, BUNDLED)
    return target

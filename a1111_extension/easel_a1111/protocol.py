"""The Easel protocol package, imported as ``easel_shared``.

The packaged extension bundles a copy of the repository's ``shared/`` as ``easel_shared`` (the WebUI
has a ``modules.shared`` of its own, and a top-level ``shared`` is too easy to confuse). Run from a
repository checkout (a symlink into ``extensions/`` during development) there is no copy, so the
repository's ``shared/`` is loaded under that same name; its relative imports make that work.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

NAME = "easel_shared"


def _load() -> None:
    if NAME in sys.modules:
        return
    extension = Path(__file__).resolve().parents[1]
    for package in (extension / NAME, extension.parent / "shared"):
        if (package / "client.py").is_file():
            spec = importlib.util.spec_from_file_location(NAME, package / "__init__.py",
                                                          submodule_search_locations=[str(package)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[NAME] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[NAME]
                raise
            return
    raise ImportError(f"the Easel protocol package is missing: expected {extension / NAME} "
                      "(build the extension with `easel package a1111`)")


_load()

from easel_shared import capabilities, compose, geometry, model_capabilities, model_list, rules  # noqa: E402
from easel_shared.client import (  # noqa: E402
    QUEUE_EVERY,
    Accepted,
    Cancelled,
    Client,
    EaselError,
    Progress,
    Queued,
    Result,
    ResultImage,
    Started,
)
from easel_shared.errors import ProtocolError, cancel_reason  # noqa: E402
from easel_shared.fields import item_field  # noqa: E402
from easel_shared.images import ImageData, eight_bit_grey  # noqa: E402
from easel_shared.infotext import SAMPLER_LABELS, infotext  # noqa: E402
from easel_shared.job import ControlUnit, Job, Reference, Sampling  # noqa: E402
from easel_shared.messages import CONTROL_TYPES, DEFAULT_URL, MAX_SEED, MODES, PREPROCESSORS, REFERENCE_MODES, SAMPLERS  # noqa: E402

__all__ = ["Accepted", "CONTROL_TYPES", "Cancelled", "Client", "ControlUnit", "DEFAULT_URL", "EaselError", "ImageData",
           "Job", "MAX_SEED", "MODES", "PREPROCESSORS", "Progress", "ProtocolError", "QUEUE_EVERY", "Queued",
           "REFERENCE_MODES", "Reference",
           "Result", "ResultImage", "SAMPLERS", "SAMPLER_LABELS", "Sampling", "Started", "cancel_reason",
           "capabilities", "compose", "eight_bit_grey", "geometry", "infotext", "item_field", "model_capabilities",
           "model_list", "rules"]

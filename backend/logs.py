"""What the command line prints as it works: Easel's own log at INFO, other libraries' only when they warn,
and none of the notices that libraries print about each other's versions at import time."""

from __future__ import annotations

import logging
import warnings

OWN_LOGGERS = ("easel", "backend", "shared")

# Notices raised while importing torch, diffusers, controlnet_aux and timm together: about the libraries'
# versions and deprecations among themselves, nothing a painter can act on (a new user took them for faults).
_IMPORT_NOTICES = (
    r"`torch\.jit\.script` is deprecated",
    r"The module 'mediapipe' is not installed",  # controlnet_aux's face detector, which Easel does not use
    r"Importing from timm\.",
    r"Overwriting tiny_vit_",
    r"Mapping deprecated model name",
)
_QUIET_LOGGERS = {
    "torch.utils._pytree": logging.ERROR,  # torchao registering enums the way torch now deprecates
    "diffusers.quantizers.torchao.torchao_quantizer": logging.ERROR,  # torchao too new for this diffusers
}


def configure() -> None:
    """Log Easel's INFO lines and everyone's warnings to stderr, without the import-time notices above."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for message in _IMPORT_NOTICES:
        warnings.filterwarnings("ignore", message=message)

"""The protocol package: the copy bundled into the plugin, or the repository's in a checkout.

A packaged plugin carries ``shared/`` inside this package (``easel_krita.shared``) so that it
never collides with another plugin's top-level ``shared``; a repository checkout imports the
original. The client module needs ``websockets`` and is imported lazily by the worker.
"""

from __future__ import annotations

import importlib
from pathlib import Path

_BUNDLED = (Path(__file__).parent / "shared").is_dir()
_ROOT = f"{__package__}.shared" if _BUNDLED else "shared"

errors = importlib.import_module(f"{_ROOT}.errors")
capabilities = importlib.import_module(f"{_ROOT}.capabilities")
fields = importlib.import_module(f"{_ROOT}.fields")
geometry = importlib.import_module(f"{_ROOT}.geometry")
images = importlib.import_module(f"{_ROOT}.images")
job = importlib.import_module(f"{_ROOT}.job")
messages = importlib.import_module(f"{_ROOT}.messages")
model_capabilities = importlib.import_module(f"{_ROOT}.model_capabilities")
prompt_syntax = importlib.import_module(f"{_ROOT}.prompt_syntax")
rules = importlib.import_module(f"{_ROOT}.rules")
vocabulary = importlib.import_module(f"{_ROOT}.vocabulary")


def client_module():
    """``shared.client`` (imports websockets, so only the worker needs it)."""
    return importlib.import_module(f"{_ROOT}.client")

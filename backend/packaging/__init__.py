"""Build installable host adapters: a Krita plugin zip and an A1111 extension folder.

Each host has a module here with ``build(out: Path) -> Path``; both bundle the protocol package
(``shared/``) because neither host can import it from the backend's environment.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = {"krita": REPO / "krita_plugin", "a1111": REPO / "a1111_extension"}  # each host's adapter source
HOSTS = tuple(SOURCES)
_NAMES = {"krita": "Krita plugin", "a1111": "WebUI extension"}


class NotACheckout(Exception):
    """The adapters' sources are not beside this installation (a ``pip install .`` copies only the server)."""


def build(host: str, out: Path) -> Path:
    """Build the adapter for ``host`` under ``out`` and return what was written."""
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; expected one of {', '.join(HOSTS)}")
    if not SOURCES[host].is_dir():
        raise NotACheckout(f"the {_NAMES[host]} is built from a checkout of Easel, and this one is installed "
                           f"without it (no {SOURCES[host]}): install from the checkout with `pip install -e .` "
                           "and run `easel package` there")
    out.mkdir(parents=True, exist_ok=True)
    return importlib.import_module(f"{__name__}.{host}").build(out)


def copy_package(module, dest: Path, name: str | None = None) -> Path:
    """Copy an imported package's source files (no caches) to ``dest/<name>`` (its own name by default)."""
    source = Path(module.__file__).parent
    target = dest / (name or source.name)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True)
    return target

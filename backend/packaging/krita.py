"""Build the Krita plugin zip: ``easel-krita-<version>.zip``.

Laid out the way Krita's Tools > Scripts > Import Python Plugin from File expects: the
``.desktop`` file, the ``easel_krita`` package and ``easel_krita.action`` at the top. Krita's
importer copies only the package folder, so everything the plugin needs lives inside it: the
protocol package as ``easel_krita/shared`` and ``websockets`` under ``easel_krita/_vendor``
(pure Python: its optional C speed-up is left out, it would be built for another Python).
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from importlib import metadata
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import websockets

import shared

from . import REPO, SOURCES, copy_package

PLUGIN = SOURCES["krita"]
PACKAGE = "easel_krita"
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd", "*.c")


def plugin_version() -> str:
    try:
        return version("easel-bridge")
    except PackageNotFoundError:  # a checkout that was not pip-installed
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _licence(distribution: str) -> str | None:
    """The licence text shipped with an installed distribution, to travel with its copy."""
    try:
        files = metadata.files(distribution) or []
    except PackageNotFoundError:
        return None
    for file in files:
        if file.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
            return file.read_text()
    return None


def build(out: Path) -> Path:
    """Write ``out/easel-krita-<version>.zip`` and return its path."""
    target = out / f"easel-krita-{plugin_version()}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        shutil.copy2(PLUGIN / "easel.desktop", stage / "easel.desktop")
        shutil.copy2(PLUGIN / f"{PACKAGE}.action", stage / f"{PACKAGE}.action")
        package = stage / PACKAGE
        shutil.copytree(PLUGIN / PACKAGE, package, ignore=_SKIP)
        copy_package(shared, package)
        vendor = package / "_vendor"
        shutil.copytree(Path(websockets.__file__).parent, vendor / "websockets", ignore=_SKIP)
        (vendor / "README").write_text(
            f"websockets {websockets.version.version}, bundled because Krita's Python cannot pip install.\n")
        licence = _licence("websockets")
        if licence:
            (vendor / "websockets-LICENSE").write_text(licence)
        tmp_zip = target.with_suffix(".tmp")
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as archive:
            # Directory entries too: Krita's importer finds the package by its "easel_krita/" entry.
            for path in sorted(stage.rglob("*")):
                archive.write(path, path.relative_to(stage).as_posix())
        tmp_zip.replace(target)
    return target

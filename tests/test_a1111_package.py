"""``easel package a1111``: a self-contained extension folder that the WebUI can load when copied
into ``extensions/``, and its ``install.py`` run through the WebUI's installer helpers."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backend.cli import main

REPO = Path(__file__).resolve().parents[1]
WEBUI_PYTHON = Path(os.environ.get("EASEL_WEBUI_PYTHON", REPO / ".venv-webui" / "bin" / "python"))
STUB = REPO / "tests" / "webui_stub"

# What the WebUI does at start-up, in its own environment: load the script by path, then build
# the settings and the tabs from the registered callbacks.
LOAD = """
import importlib.util, sys
sys.path.insert(0, {stub!r})
from modules import script_callbacks, shared
spec = importlib.util.spec_from_file_location("easel_tab", {script!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
script_callbacks.ui_settings_callback()
tabs = script_callbacks.ui_tabs_callback()
print([(type(blocks).__name__, title, elem_id) for blocks, title, elem_id in tabs])
print(shared.opts.easel_url, repr(shared.opts.easel_token), shared.opts.data_labels["easel_url"].section)
print(sys.modules["easel_shared"].__file__)
"""


def webui_python() -> Path:
    if not WEBUI_PYTHON.exists():
        pytest.fail(f"no WebUI-like Python at {WEBUI_PYTHON}: run `bash .ci/run` or see README (Tests)")
    return WEBUI_PYTHON


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    assert main(["package", "a1111", "--out", str(out)]) == 0
    return out / "easel"


def test_package_bundles_the_protocol_as_easel_shared(packaged):
    assert (packaged / "install.py").is_file() and (packaged / "scripts" / "easel_tab.py").is_file()
    bundled = packaged / "easel_shared"
    sources = sorted(path.name for path in (REPO / "shared").glob("*.py"))
    assert sorted(path.name for path in bundled.glob("*.py")) == sources
    assert all(filecmp.cmp(REPO / "shared" / name, bundled / name, shallow=False) for name in sources)
    assert not list(packaged.rglob("__pycache__"))


def test_copied_into_extensions_it_registers_its_tab_and_settings(packaged, tmp_path):
    # A copy far from the repository: the bundled protocol must be what it imports.
    copy = shutil.copytree(packaged, tmp_path / "extensions" / "easel")
    code = LOAD.format(stub=str(STUB), script=str(copy / "scripts" / "easel_tab.py"))
    run = subprocess.run([str(webui_python()), "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    tabs, settings, protocol = run.stdout.strip().splitlines()[-3:]
    assert tabs == "[('Blocks', 'Easel', 'easel')]"
    assert settings == "ws://127.0.0.1:8760/ '' ('easel', 'Easel')"
    assert Path(protocol).resolve() == (copy / "easel_shared" / "__init__.py").resolve()


@pytest.mark.parametrize("missing, expected", [
    ("", []),
    ("websockets", ['install "websockets>=11,<12"\twebsockets for the Easel tab']),
])
def test_install_py_uses_the_webuis_pip_helper(packaged, tmp_path, missing, expected):
    log = tmp_path / "pip.log"
    log.touch()
    run = subprocess.run([str(webui_python()), str(packaged / "install.py")], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(STUB), "EASEL_STUB_PIP_LOG": str(log),
                                          "EASEL_STUB_MISSING": missing})
    assert run.returncode == 0, run.stderr
    assert log.read_text().splitlines() == expected

"""The real WebUIs for the host tests: where their source is, their Python environments, and starting
one (``tests/webui_real.py``) with the packaged extension in its ``extensions/``.

The source of AUTOMATIC1111 WebUI 1.8.0 and Forge is a test fixture kept outside the repository
(AGPL; see its README): ``$EASEL_WEBUI_SOURCE``, else ``<repo>/../shared/webui``, else
``/work/shared/webui``. Without it the tests that need it skip, saying where to put it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from backend.packaging import build

REPO = Path(__file__).resolve().parents[1]
A1111, FORGE = "a1111-1.8.0", "forge-dfdcbab6"
SETUP = {
    A1111: ("run `bash .ci/run`, or set up the WebUI's environment: `python3 -m venv .venv-webui && "
            ".venv-webui/bin/pip install -r tests/webui-requirements.txt` and `apt-get install chromium`"),
    FORGE: ("run `bash .ci/run`, or set up Forge's environment: `python3 -m venv .venv-forge && "
            ".venv-forge/bin/pip install -r tests/forge-requirements.txt` and `apt-get install chromium`"),
}
PYTHON = {
    A1111: Path(os.environ.get("EASEL_WEBUI_PYTHON", REPO / ".venv-webui" / "bin" / "python")),
    FORGE: Path(os.environ.get("EASEL_FORGE_PYTHON", REPO / ".venv-forge" / "bin" / "python")),
}
HARNESS = REPO / "tests" / "webui_real.py"


def webui_source(name: str) -> Path:
    """The unmodified source of WebUI ``name`` (A1111 or FORGE); the test skips without it."""
    roots = [os.environ.get("EASEL_WEBUI_SOURCE"), REPO.parent / "shared" / "webui", "/work/shared/webui"]
    for root in filter(None, roots):
        if (Path(root) / name / "modules" / "scripts.py").is_file():
            return Path(root) / name
    pytest.skip(f"no WebUI source for {name}: put the unmodified AUTOMATIC1111 WebUI 1.8.0 and Forge (dfdcbab6) "
                f"sources in {REPO.parent / 'shared' / 'webui'} as {A1111}/ and {FORGE}/ "
                "(or set EASEL_WEBUI_SOURCE to the folder holding them)")


def host_python(name: str) -> Path:
    if not PYTHON[name].exists():
        pytest.fail(f"no Python for {name} at {PYTHON[name]}: {SETUP[name]}")
    return PYTHON[name]


def webui_folder(root: Path, settings: dict | None = None, ui_defaults: dict | None = None) -> Path:
    """A WebUI data folder: the packaged extension copied into ``extensions/``, ``config.json`` (saved
    settings) and ``ui-config.json`` (saved UI defaults) when given."""
    root.mkdir(parents=True, exist_ok=True)
    build("a1111", root / "extensions")
    if settings is not None:
        (root / "config.json").write_text(json.dumps(settings))
    if ui_defaults is not None:
        (root / "ui-config.json").write_text(json.dumps(ui_defaults))
    return root


def run_webui(name: str, root: Path, mode: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``webui_real.py`` in ``mode`` (``--dump-ui``, ``--run-installer``), to its end."""
    return subprocess.run([str(host_python(name)), str(HARNESS), str(webui_source(name)), str(root), mode],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": "", **(env or {})})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(name: str, root: Path):
    """The WebUI ``name`` serving the data folder ``root``; yields its URL and log file."""
    python, source = host_python(name), webui_source(name)
    port = free_port()
    log = open(root / "webui.log", "w+")
    process = subprocess.Popen([str(python), str(HARNESS), str(source), str(root), str(port)], stdout=log,
                               stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": ""})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the WebUI {name} did not start:\n{log.read()[-3000:]}")
                time.sleep(0.5)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()

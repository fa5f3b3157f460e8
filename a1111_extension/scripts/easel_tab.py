"""WebUI entry point: registers the Easel tab and its settings.

The WebUI loads this file by path and puts the extension's folder on ``sys.path`` only while it
runs, so the ``easel_a1111`` package is loaded here by its path and kept in ``sys.modules``: later
imports (the tab is built after every script has loaded) find it there, not on ``sys.path``.
"""

import importlib.util
import sys
from pathlib import Path

PACKAGE = "easel_a1111"


def _package():
    if PACKAGE not in sys.modules:
        folder = Path(__file__).resolve().parents[1] / PACKAGE
        spec = importlib.util.spec_from_file_location(PACKAGE, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
    return sys.modules[PACKAGE]


_package()
from modules import script_callbacks  # noqa: E402

from easel_a1111 import webui  # noqa: E402 - found in sys.modules, whatever sys.path holds

# Registered from this file: the WebUI names callbacks after the file that registers them (its
# callback order settings, error reports, and removing a script's callbacks when it reloads).
for event, callback in webui.CALLBACKS:
    getattr(script_callbacks, event)(callback)

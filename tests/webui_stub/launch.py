"""The WebUI's ``launch`` helpers that ``install.py`` scripts call (same signatures).

``run_pip`` records its command (one line each) in the file named by EASEL_STUB_PIP_LOG instead of
running pip; EASEL_STUB_MISSING names packages ``is_installed`` should call missing.
"""

import importlib.metadata
import os


def is_installed(package):
    if package in os.environ.get("EASEL_STUB_MISSING", "").split(","):
        return False
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def run_pip(command, desc=None, live=False):
    with open(os.environ["EASEL_STUB_PIP_LOG"], "a", encoding="utf8") as log:
        log.write(f"{command}\t{desc}\n")

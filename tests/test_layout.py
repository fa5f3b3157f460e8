"""The house rules of the layout: data flows one way, and each part imports only what it may."""

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports(folder: str) -> dict[str, set[str]]:
    """Every module imported by each Python file under ``folder`` (absolute names; relative as '.x')."""
    found = {}
    for path in (REPO / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add("." * node.level + (node.module or ""))
        found[str(path.relative_to(REPO))] = names
    return found


def test_the_engine_never_reaches_back_up():
    for path, names in imports("backend/engine").items():
        for name in names:
            assert not name.startswith(("backend.server", "backend.intake", "backend.requests", "backend.jobs",
                                        "backend.cli", "backend.fixtures")), f"{path} imports {name}"


def test_the_protocol_package_is_standard_library_and_relative():
    for path, names in imports("shared").items():
        for name in names:
            top = name.split(".")[0]
            assert name.startswith(".") or top in sys.stdlib_module_names or top in ("websockets", "numpy"), \
                f"{path} imports {name}"

"""The house rules of the layout: data flows one way, and each part imports only what it may."""

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports(folder: str, top_level: bool = False) -> dict[str, set[str]]:
    """Every module imported by each Python file under ``folder`` (absolute names; relative as '.x');
    ``top_level``: only the imports made when the module is imported (not those inside functions)."""
    found = {}
    for path in (REPO / folder).rglob("*.py"):
        names = set()
        tree = ast.parse(path.read_text())
        for node in (tree.body if top_level else ast.walk(tree)):
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
    everywhere = imports("shared")
    at_top = imports("shared", top_level=True)
    for path, names in everywhere.items():
        for name in names:
            top = name.split(".")[0]
            # Pillow only inside the client's optional picture helpers (ImageData.to_pil ...), which hosts
            # without it (Krita's Python) never call
            allowed = ("websockets", "numpy") + (("PIL",) if name not in at_top[path] else ())
            assert name.startswith(".") or top in sys.stdlib_module_names or top in allowed, \
                f"{path} imports {name}"

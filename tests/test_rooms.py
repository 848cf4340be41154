"""The house plan's import rules (../shared/DESIGN.md, "Rooms"), checked on the source: a model or a datamodule
is usable from a notebook with nothing but Lightning — it imports neither Hydra, MLflow nor labbook, and it
changes no global state (no matplotlib backend switch, no pyplot)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NEVER = {"lightning_modules": ("hydra", "mlflow", "labbook", "datamodules", "matplotlib.pyplot"),
         "datamodules": ("hydra", "mlflow", "labbook", "lightning_modules", "matplotlib.pyplot")}


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for room in NEVER
                                        for p in (REPO / room).glob("*.py")))
def test_a_room_imports_only_what_the_plan_allows(path: str) -> None:
    source = (REPO / path).read_text()
    tree = ast.parse(source)
    forbidden = NEVER[path.split("/")[0]]
    bad = sorted(n for n in imported(tree) if any(n == f or n.startswith(f + ".") for f in forbidden))
    assert not bad, f"{path} imports {bad}"
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "use" and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib"]
    assert not calls, f"{path} switches matplotlib's backend (line {calls[0].lineno})"

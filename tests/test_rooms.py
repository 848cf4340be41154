"""The house plan's import rules (docs/architecture.md, "Rooms"), checked on the source.

import-linter holds the contracts of ``[tool.importlinter]`` in pyproject.toml — labbook's rooms import
downward only (cli → train → sweep → run → {store, config} → leaves), no module imports in a circle (imports
inside functions counted), MLflow only in the run and store rooms, Hydra's plugin only through the sweep and
store rooms — and a model or a datamodule is usable from a notebook with nothing but Lightning: it imports
neither Hydra, MLflow nor labbook, and it changes no global state (no matplotlib backend switch, no pyplot)."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_the_import_contracts_hold() -> None:
    """``lint-imports`` (import-linter) on the whole tree: every contract in pyproject.toml KEPT."""
    out = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    kept = [line for line in out.stdout.splitlines() if line.startswith("Contracts:")]
    assert kept and "0 broken" in kept[0], out.stdout[-3000:]


def test_the_contracts_can_fail(tmp_path: Path) -> None:
    """The check is not vacuous: a store module importing the run room (a layer above it) breaks the layers
    contract, and a leaf importing MLflow breaks the MLflow one."""
    import shutil

    tree = tmp_path / "tree"
    for part in ("labbook", "lightning_modules", "datamodules", "hydra_plugins/labbook_optuna_sweeper",
                 "hydra_plugins/labbook_slurm"):
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
    (tree / "labbook" / "store" / "uri.py").open("a").write("\n\ndef _up() -> None:\n    import labbook.run.recorder\n")
    (tree / "labbook" / "timing.py").open("a").write("\n\ndef _ml() -> None:\n    import mlflow\n")
    out = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tree,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0
    assert "labbook.store.uri -> labbook.run.recorder" in out.stdout, out.stdout[-3000:]
    assert "labbook.timing -> mlflow" in out.stdout, out.stdout[-3000:]


def test_no_function_in_labbook_is_longer_than_80_lines() -> None:
    """A function a reader can hold in view: none of labbook's is longer than 80 lines (docstring included)."""
    long = []
    for path in sorted((REPO / "labbook").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                if node.end_lineno - first + 1 > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - first + 1} lines)")
    assert not long, long

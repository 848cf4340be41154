"""Shared fixtures: a fresh MLflow store per test and a way to drive the real `labbook` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LABBOOK = str(Path(sys.executable).parent / "labbook")
BOOK_DATES = REPO.parent / "shared" / "datasets" / "dlfs2" / "date.txt"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tracking URI for an empty SQLite store that only this test uses."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def labbook(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed `labbook` console script as a user would, capturing its output."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONWARNINGS": "ignore", **(env or {})})
    return subprocess.run([LABBOOK, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          input=stdin if stdin is not None else "")


def runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []

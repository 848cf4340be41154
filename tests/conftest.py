"""Shared fixtures: a fresh MLflow store per test and a way to drive the real `labbook` command."""

from __future__ import annotations

import os
import signal
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
    """Run the installed `labbook` console script as a user would, capturing its output.

    It runs in a session of its own, so that on a timeout every process it started is killed with it.
    """
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONWARNINGS": "ignore", **(env or {})})
    command = [LABBOOK, *args]
    with subprocess.Popen(command, cwd=cwd, env=full_env, text=True, start_new_session=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(stdin if stdin is not None else "", timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(command, timeout, out, err) from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []

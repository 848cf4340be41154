"""Shared fixtures: a fresh MLflow store per test, a way to drive the real `labbook` command, and the checks
that keep the suite honest (it tests this checkout; every process it starts dies with its test)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
LABBOOK = str(Path(sys.executable).parent / "labbook")
BOOK_DATES = Path(os.environ.get("LABBOOK_BOOK_DATES") or REPO.parent / "shared" / "datasets" / "dlfs2" / "date.txt")
# CI sets this: there the book's file must be present, and its absence fails the claims it backs.
REQUIRE_BOOK = bool(os.environ.get("LABBOOK_REQUIRE_BOOK"))
_unchecked: list[str] = []


def run_process(command: Sequence[str], *, timeout: float, cwd: Path | str | None = None, env: dict | None = None,
                stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` in a process group of its own and capture its output.

    On a timeout, and on anything else that ends the wait (pytest-timeout, Ctrl-C), the whole group is
    SIGKILLed: DDP workers a `labbook` or a helper script started never outlive the test.
    """
    with subprocess.Popen(list(command), cwd=cwd, env=env, text=True, start_new_session=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(stdin if stdin is not None else "", timeout=timeout)
        except BaseException as exc:
            kill_group(proc.pid)
            out, err = proc.communicate()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise subprocess.TimeoutExpired(command, timeout, out, err) from None
            raise
    return subprocess.CompletedProcess(list(command), proc.returncode, out, err)


def kill_group(pid: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Ctrl-C to a long-running `labbook` (ui, server) and wait for it; its process group goes in any case."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc.pid)


def labbook(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the `labbook` console script of this test's environment as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONWARNINGS": "ignore", **(env or {})})
    return run_process([LABBOOK, *args], timeout=timeout, cwd=cwd, env=full_env, stdin=stdin)


def labbook_interrupted(*args: str, cwd: Path, ready: Callable[[], bool], then: Callable[[subprocess.Popen], None],
                        timeout: float = 150) -> subprocess.CompletedProcess:
    """Start `labbook ARGS`, wait until ``ready()`` (polled; the command must still be running), do ``then(proc)``
    (send it a signal, kill one of its workers), and wait for it to exit. Nothing it started outlives this."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([LABBOOK, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.3)
        then(proc)
        out, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc.pid)
    return subprocess.CompletedProcess([LABBOOK, *args], proc.returncode, out, err)


def python_script(script: Path | str, *args: str, cwd: Path | str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a helper script with this test's interpreter (DDP helpers: Lightning re-launches the script)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return run_process([sys.executable, str(script), *args], timeout=timeout, cwd=cwd, env=env)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tracking URI for an empty SQLite store that only this test uses."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def store_has(db: Path, query: str) -> bool:
    """Whether ``query`` finds a row in the SQLite store ``db`` (False while the store is not there yet)."""
    return store_row(db, query) is not None


def store_row(db: Path, query: str) -> tuple | None:
    """The first row ``query`` finds in the SQLite store ``db`` (None while the store is not there yet).

    Read with sqlite3, read-only: an MlflowClient opened while `labbook` is still creating the store
    would run MLflow's table creation a second time, concurrently ("table ... already exists").
    """
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute(query).fetchone()
    except sqlite3.Error:  # tables not created yet, or the writer holds the lock
        return None


def training_logged(db: Path) -> bool:
    """Whether a run in the SQLite store ``db`` has logged a ``train/`` metric yet."""
    return store_has(db, "SELECT 1 FROM metrics WHERE key LIKE 'train/%' LIMIT 1")


@pytest.fixture
def start_training(tmp_path: Path, store: str):
    """Start `labbook train ARGS` in the background (into ``store``, which sets MLFLOW_TRACKING_URI); returns
    once its first run has logged a training metric. Whatever the test's outcome, no process it started
    outlives it.
    """
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.Popen([LABBOOK, "train", *args, "debug=quiet"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        started.append(proc)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if training_logged(tmp_path / "mlflow.db"):
                return proc
            time.sleep(0.5)
        proc.kill()
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"the run never started logging: {err[-2000:]}")

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the session: rank 0 and any worker it started


def runs(uri: str, parents: bool = False) -> list:
    """The store's runs; a sweep's parent run only with ``parents=True`` (tests count the jobs' runs)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = client.search_experiments()
    found = client.search_runs([e.experiment_id for e in exps]) if exps else []
    return [r for r in found if parents or r.data.tags.get("sweep.role") != "parent"]


def logged_models(uri: str, run_id: str) -> list:
    """The run's MLflow logged models, read with MLflow's own client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    return client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")


def model_checkpoint(uri: str, run_id: str, into: Path) -> Path:
    """The best checkpoint a finished run's logged model holds (the run keeps only its last.ckpt): exactly one
    such model."""
    import mlflow.artifacts

    [model] = [m for m in logged_models(uri, run_id) if m.tags.get("labbook.checkpoint") == "best"]
    return Path(mlflow.artifacts.download_artifacts(f"{model.artifact_location}/artifacts/best.ckpt",
                                                    dst_path=str(into), tracking_uri=uri))


@pytest.fixture(scope="session")
def book_dates() -> Path:
    """The book's own date.txt (../shared); without it, the claims it backs are reported as NOT CHECKED."""
    if not BOOK_DATES.is_file():
        message = (f"NOT CHECKED: the book's date.txt is not at {BOOK_DATES} (set LABBOOK_BOOK_DATES=PATH); "
                   "what the README claims about it (the generator's likeness to it, the date models' accuracy "
                   "on the book's file and split) is unverified")
        if REQUIRE_BOOK:
            pytest.fail(message + " and LABBOOK_REQUIRE_BOOK is set", pytrace=False)
        _unchecked.append(message)
        pytest.skip(message)
    return BOOK_DATES


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's hook signature
    for message in dict.fromkeys(_unchecked):
        terminalreporter.write_sep("!", message, red=True, bold=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run when the `labbook` command or `import labbook` would test another checkout.

    End-to-end tests run the console script beside ``sys.executable``, helper scripts run with that
    interpreter, and in-process tests import from this checkout: all three must be the same code.
    """
    import labbook

    where = {"import labbook (in pytest)": Path(labbook.__file__).resolve().parents[1]}
    try:
        out = subprocess.run([LABBOOK, "--version"], capture_output=True, text=True, timeout=120, cwd="/")
        where[f"{LABBOOK} --version"] = Path(out.stdout.split(" from ", 1)[1].strip()) if " from " in out.stdout else None
    except OSError as exc:
        where[f"{LABBOOK} ({exc.strerror})"] = None
    out = subprocess.run([sys.executable, "-c", "import labbook; print(labbook.__file__)"], capture_output=True,
                         text=True, timeout=120, cwd="/")
    where[f"{sys.executable} -c 'import labbook'"] = Path(out.stdout.strip()).resolve().parents[1] if out.stdout.strip() else None
    wrong = {k: v for k, v in where.items() if v != REPO}
    if wrong:
        lines = "; ".join(f"{k} -> {v or 'not found'}" for k, v in wrong.items())
        pytest.exit(f"the tests live in {REPO} but would run other code: {lines}. "
                    f"Install this checkout (python3 dev.py setup, or pip install -e {REPO}).", returncode=3)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A real two-node Slurm cluster for the module's tests (:class:`tests.slurm_cluster.LocalSlurm`), stopped
    after them; each module its own, so that two modules' clusters run side by side."""
    from tests.slurm_cluster import LocalSlurm, available

    why = available()
    if why:
        pytest.fail(f"a Slurm cluster cannot start here: {why}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()

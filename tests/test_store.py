"""The tracking store: one resolution order for every command, created once, safe when commands collide."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labbook.store.uri import resolve_tracking_uri
from tests.conftest import LABBOOK, kill_group, labbook, runs
from tests.test_train_e2e import QUIET, only_run

TINY = ("experiment=polynomial", "trainer.max_epochs=3", QUIET)


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(cwd=tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(cwd=tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///runs.db", cwd=tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db?timeout=5", cwd=tmp_path) == "sqlite:////abs/x.db?timeout=5"
    assert resolve_tracking_uri("runs.db", cwd=tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs.db"


def test_logger_tracking_uri_is_the_only_store_touched_and_predict_reaches_it(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = labbook("train", *TINY, "logger.tracking_uri=sqlite:///elsewhere.db", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists(), "a stray ./mlflow.db was created"
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    run = only_run(uri)
    assert run.info.status == "FINISHED" and run.data.params["logger.tracking_uri"] == "sqlite:///elsewhere.db"
    assert out.stdout.strip().splitlines()[-1] == f"open the UI: labbook ui --tracking-uri {uri}"

    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    missing = labbook("predict", run.info.run_id, "0.5", cwd=elsewhere)
    assert missing.returncode == 1 and "--tracking-uri" in missing.stderr
    answers = set()
    for flag in (["--tracking-uri", uri], [f"--tracking-uri={tmp_path / 'elsewhere.db'}"]):
        found = labbook("predict", *flag, run.info.run_id, "0.5", cwd=elsewhere)
        assert found.returncode == 0, found.stderr
        answers.add(float(found.stdout))
    assert len(answers) == 1  # the same run, however the store is named
    assert not (elsewhere / "mlflow.db").exists()


def test_a_sweep_set_up_by_config_uses_and_prepares_its_own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hydra.mode=MULTIRUN (what a preset sets) instead of -m: the store is still resolved from the config."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = labbook("train", "hydra.mode=MULTIRUN", *TINY, "seed=1,2", "logger.tracking_uri=sweep.db", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(r.data.params["seed"] for r in runs(f"sqlite:///{tmp_path / 'sweep.db'}")) == ["1", "2"]
    assert not (tmp_path / "mlflow.db").exists()


def test_four_commands_at_once_on_a_store_that_does_not_exist(tmp_path: Path) -> None:
    """`&` in a shell or a scheduler's job array: creation is serialised, nothing fails, the store is whole."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([LABBOOK, "train", *TINY, f"seed={seed}"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
             for seed in range(4)]
    try:
        errors = [p.communicate(timeout=600)[1] for p in procs]
        results = [(p.returncode, err) for p, err in zip(procs, errors)]
    finally:
        for p in procs:
            kill_group(p.pid)
    assert all(code == 0 for code, _ in results), [err[-1500:] for code, err in results if code]
    found = runs(uri)
    assert sorted(r.data.params["seed"] for r in found) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" and "test/loss" in r.data.metrics for r in found)


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_an_unreachable_tracking_server_is_one_line_within_seconds(tmp_path: Path, server: str) -> None:
    """A wrong port (nothing listens) or a server that accepts and never answers: one line naming the URI,
    in seconds, where MLflow's client alone retried for about four minutes."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if server == "silent":
            silent.listen(8)  # the kernel accepts connections; nobody reads them
        port = silent.getsockname()[1]
        if server == "refused":
            silent.close()
        uri = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        out = labbook("train", "experiment=gmm_iris", QUIET, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        took = time.monotonic() - started
    assert out.returncode == 1 and took < 20, (took, out.stderr[-2000:])
    assert out.stderr.strip().splitlines() == [
        f"labbook: error: tracking server {uri} cannot be reached "
        f"({'[Errno 111] Connection refused' if server == 'refused' else 'timed out'}); is it running? (check the "
        "URI in logger.tracking_uri / MLFLOW_TRACKING_URI)"]


def test_a_locked_sqlite_store_is_waited_for_and_other_errors_are_not() -> None:
    """SQLite answers "database is locked" at once, without MLflow's 20 s wait, when two writers would
    deadlock; a run's client repeats the call (MLflow rolled it back) instead of failing the run."""
    from mlflow.exceptions import MlflowException

    from labbook.store.patience import PatientClient

    class Store:  # the one behaviour under test: a call that is refused twice, then answered
        calls = 0

        def set_tag(self, run_id: str, key: str, value: str) -> str:
            self.calls += 1
            if self.calls <= 2:
                raise MlflowException("(sqlite3.OperationalError) database is locked")
            return f"{run_id}:{key}={value}"

        def get_run(self, run_id: str) -> None:
            raise MlflowException(f"Run '{run_id}' not found")

    store = Store()
    client = PatientClient(store, "sqlite:////tmp/x.db", patience_s=5)
    assert client.set_tag("r", "k", "v") == "r:k=v" and store.calls == 3
    with pytest.raises(MlflowException, match="not found"):
        client.get_run("r")  # a refusal is not waited for
    with pytest.raises(MlflowException, match="database is locked"):
        PatientClient(Store(), "sqlite:////tmp/x.db", patience_s=0).set_tag("r", "k", "v")  # past its patience


def _schema(db: Path) -> list[tuple]:
    import sqlite3

    # Each statement's lines sorted: MLflow's own migrations order a table's constraints differently from one
    # process to the next (set iteration), so two stores it creates itself differ in that order only.
    with sqlite3.connect(db) as con:
        tables = [(kind, name, sorted((sql or "").replace(",", "").splitlines()))
                  for kind, name, sql in con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")]
        return tables + con.execute("SELECT version_num FROM alembic_version").fetchall()


def test_a_new_store_is_a_copy_of_the_blank_one_and_the_same_as_mlflows_own(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A new SQLite store is copied from a blank one made once (MLflow's migrations took ~1.6 s a store); it has
    exactly the schema MLflow gives a store it creates itself, and its Default experiment names its own folder."""
    from mlflow.tracking import MlflowClient

    from labbook.store.prepare import blank_store, prepare_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    theirs = tmp_path / "theirs" / "mlflow.db"
    theirs.parent.mkdir()
    MlflowClient(f"sqlite:///{theirs}").search_experiments()  # MLflow's own migrations
    blanks = list((tmp_path / "cache" / "labbook").glob("blank-store-*.db"))
    assert blanks == []
    for name in ("a", "b"):
        prepare_store(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        (blank,) = (tmp_path / "cache" / "labbook").glob("blank-store-*.db")
        assert blank == blank_store()
    stamp = blank.stat().st_mtime_ns
    prepare_store(f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}")
    assert blank.stat().st_mtime_ns == stamp  # made once, then only copied
    for name in ("a", "b", "c"):
        mine = tmp_path / name / "mlflow.db"
        assert _schema(mine) == _schema(theirs)
        client = MlflowClient(f"sqlite:///{mine}")
        (default,) = client.search_experiments()
        assert default.experiment_id == "0" and default.name == "Default"
        run = client.create_run("0")
        client.log_metric(run.info.run_id, "m", 1.5)
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    assert not list(tmp_path.glob("*/.mlflow.db.*.tmp"))


def test_an_unwritable_cache_leaves_the_store_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from labbook.store.prepare import blank_store, prepare_store

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert blank_store() is None
    prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [e.name for e in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()] == ["Default"]

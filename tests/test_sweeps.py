"""Sweeps through the real `labbook train -m`: one parent run, named children, the summary, every launcher,
interruption and sweep.resume, many jobs at once on a fresh store. Everything is read back with MlflowClient."""

from __future__ import annotations

import csv
import io
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import labbook, labbook_interrupted, runs, store_has
from tests.test_train_e2e import QUIET, artifacts

GMM = ("experiment=gmm_blobs", "trainer.max_epochs=3", "datamodule.n_samples=600")


def parent_and_children(uri: str):  # noqa: ANN201
    (parent,) = [r for r in runs(uri, parents=True) if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs(uri)), "every job's run is a child of the sweep"
    return parent, sorted(children, key=lambda r: int(r.data.tags["sweep.job"]))


def a_job_running(db: Path) -> bool:
    """Whether a sweep's child run is RUNNING in the SQLite store ``db`` (read as conftest.store_has does)."""
    return store_has(db, "SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.status = 'RUNNING' "
                         "AND t.key = 'sweep.role' AND t.value = 'child' AND EXISTS (SELECT 1 FROM params p "
                         "WHERE p.run_uuid = r.run_uuid) LIMIT 1")  # past its start: its config is recorded


def differing_params(children) -> set[str]:  # noqa: ANN001
    keys = set().union(*(c.data.params for c in children))
    return {k for k in keys if len({c.data.params.get(k) for c in children}) > 1}


def summary_rows(uri: str, parent_id: str, into: Path) -> list[dict[str, str]]:
    path = MlflowClient(uri).download_artifacts(parent_id, "sweep/summary.csv", str(into))
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def test_a_sweep_is_one_parent_with_named_children_and_a_summary(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", *GMM, "model.covariance_type=full,diag,spherical", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    parent, children = parent_and_children(store)
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert parent.data.params == {"model.covariance_type": "full,diag,spherical"}  # the sweep space
    assert parent.data.tags["sweep.swept"] == "model.covariance_type"
    assert parent.data.tags["mlflow.runName"] == "sweep(covariance_type)"
    assert parent.data.tags["command"].startswith("labbook train -m experiment=gmm_blobs")
    names = [c.data.tags["mlflow.runName"] for c in children]
    assert names == ["covariance_type=full", "covariance_type=diag", "covariance_type=spherical"]
    assert all(c.info.status == "FINISHED" and c.info.experiment_id == parent.info.experiment_id for c in children)
    # Run-local values are tags: the params that differ between the jobs are exactly the swept one.
    assert differing_params(children) == {"model.covariance_type"}
    assert all("paths.output_dir" in c.data.tags and "paths.output_dir" not in c.data.params for c in children)
    assert "model.covariance_type=diag" in children[1].data.tags["sweep.overrides"].split()

    # The objective is the model's validation monitor, never a test metric; the best child is its best.
    assert {c.data.tags["objective"] for c in children} == {"val/log_likelihood"}
    scores = {c.info.run_id: float(c.data.tags["checkpoint.best_score"]) for c in children}
    best = max(scores, key=scores.get)
    assert parent.data.tags["sweep.best_run_id"] == best and parent.data.tags["sweep.objective"] == "val/log_likelihood"
    assert parent.data.metrics["val/log_likelihood"] == pytest.approx(scores[best], rel=1e-5)
    rows = summary_rows(store, parent.info.run_id, tmp_path / "s")
    assert [r["covariance_type"] for r in rows] == ["full", "diag", "spherical"]
    assert [r["run"] for r in rows if r["best"] == "*"] == [best]
    assert all(r["status"] == "FINISHED" and r["test/log_likelihood"] for r in rows)
    stored = artifacts(MlflowClient(store), parent.info.run_id)
    assert {"sweep/space.yaml", "sweep/summary.csv", "sweep/summary.txt", "plots/objective.png"} <= stored
    # The terminal shows the same table, the best run marked.
    table = out.stdout[out.stdout.index("sweep: 3 configurations"):].splitlines()
    assert table[0].endswith(f"best: {rows[[r['run'] for r in rows].index(best)]['name']} (run {best})")
    assert [line.split()[0] for line in table[2:5]].count("*") == 1


def test_a_preset_multirun_and_a_failed_job_make_a_failed_parent(tmp_path: Path, store: str) -> None:
    """hydra.mode=MULTIRUN (what a preset sets) is a sweep too; a job whose config is refused before it can
    open a run still counts: the parent is FAILED and says how many jobs failed and which."""
    # n_features=5 composes (an integer, in bounds) and is refused in its job: the data decides it (2 here)
    out = labbook("train", "hydra.mode=MULTIRUN", *GMM, "model.n_features=2,5", QUIET, cwd=tmp_path)
    assert out.returncode == 1
    parent, children = parent_and_children(store)
    assert [c.info.status for c in children] == ["FINISHED"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["sweep.failed"] == "1" and parent.data.tags["sweep.failed_jobs"] == "1"
    assert parent.data.tags["error"] == "SweepFailed: 1 of 2 jobs did not finish: job 1 (FAILED)"
    rows = summary_rows(store, parent.info.run_id, tmp_path / "s")
    assert [(r["name"], r["status"]) for r in rows] == [("n_features=2", "FINISHED"), ("n_features=5", "FAILED")]
    lines = out.stderr.strip().splitlines()
    assert any(line.startswith("labbook: error: job 1 (") and "model.n_features=5 is not allowed: the data decides"
               in line for line in lines)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (("model.n_components=3,0",), "model.n_components=0 is not allowed: expected an integer ≥ 1"),
    (("model.n_components=range(0,3)",), "model.n_components=0 is not allowed: expected an integer ≥ 1"),
    (("model.tol=1e-3,abc",), "model.tol='abc' is not allowed: Value 'abc' of type 'str' could not be converted"),
    (("model.covariance_type=full,bogus",), "model.covariance_type='bogus' is not allowed: expected one of 'full'"),
    (("hydra/sweeper=optuna", "model.tol=interval(-1, 1)"), "model.tol=-1.0 is not allowed: expected a number ≥ 0"),
], ids=["choice", "range", "type", "literal", "interval"])
def test_a_sweep_value_no_job_could_take_is_refused_before_any_run(tmp_path: Path, store: str, args: tuple,
                                                                   message: str) -> None:
    """Each swept value is checked against the constructor's type hint (type, Literal, bounds) before the
    parent run is opened: one line, no run, no job trained."""
    out = labbook("train", "-m", *GMM, *args, QUIET, cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"labbook: error: {message}"), out.stderr[-2000:]
    assert not runs(store)


def test_a_test_metric_is_refused_as_the_objective(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", *GMM, "model.covariance_type=full,diag", "optimized_metric=test/log_likelihood",
                  QUIET, cwd=tmp_path)
    assert out.returncode == 1 and "optimized_metric='test/log_likelihood' is not allowed" in out.stderr
    assert not runs(store)  # refused before any job trained


@pytest.mark.parametrize("launcher", [("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer=ddp_cpu"),
                                      ("hydra/launcher=submitit_local",)], ids=["joblib-ddp_cpu", "submitit_local"])
def test_jobs_in_other_processes_are_children_of_the_sweep(tmp_path: Path, store: str, launcher: tuple) -> None:
    out = labbook("train", "-m", *GMM, "model.covariance_type=full,diag", *launcher, QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    parent, children = parent_and_children(store)  # DDP ranks opened no runs and re-ran no sweep
    assert parent.info.status == "FINISHED" and [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert parent.data.tags["sweep.launcher"].split(".")[-1] == ("JoblibLauncher" if "joblib" in launcher[0]
                                                                  else "LocalLauncher")
    assert differing_params(children) == {"model.covariance_type"}


def test_an_interrupted_sweep_is_killed_then_resumed_to_each_configuration_finished_once(
        tmp_path: Path, store: str) -> None:
    sweep = ("train", "-m", "experiment=gmm_blobs", "model.tol=0", "datamodule.n_samples=100000",
             "trainer.max_epochs=40", "model.covariance_type=full,diag,tied,spherical",
             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", QUIET)
    stopped = labbook_interrupted(*sweep, cwd=tmp_path, ready=lambda: a_job_running(tmp_path / "mlflow.db"),
                                  then=lambda proc: proc.send_signal(signal.SIGTERM))
    err = stopped.stderr
    assert stopped.returncode == 143, err[-3000:]
    parent, children = parent_and_children(store)
    assert parent.info.status == "KILLED" and parent.data.tags["error"] == "interrupted by SIGTERM"
    assert "KILLED" in {c.info.status for c in children} and "RUNNING" not in {c.info.status for c in children}
    assert err.strip().splitlines()[-1].startswith("labbook: SIGTERM received; sweep run ")

    out = labbook(*sweep, "sweep.resume=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed, children = parent_and_children(store)
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["sweep.rounds"] == "2"
    finished = [c.data.params["model.covariance_type"] for c in children if c.info.status == "FINISHED"]
    assert sorted(finished) == ["diag", "full", "spherical", "tied"]  # each configuration exactly once
    reused = [line for line in out.stderr.splitlines() if "already FINISHED as run" in line]
    assert len(reused) == len([c for c in children if c.info.status == "FINISHED"]) - len(
        [c for c in children if c.info.start_time > parent.info.end_time])
    # sweep.resume is not a param. (A job the signal reached while it was opening its run has none to compare.)
    assert differing_params([c for c in children if c.data.params]) == {"model.covariance_type"}


@pytest.mark.parametrize("failing", [False, True], ids=["all-finish", "one-fails"])
def test_eight_jobs_four_at_a_time_on_a_fresh_store(tmp_path: Path, failing: bool) -> None:
    """A store that does not exist yet, eight jobs, four processes writing at once: nothing lost. With
    n_components=500 > the 210 training rows of 300, one job is refused before it opens a run (one line, no run
    of its own); the others finish, and the sweep counts the refused job as failed."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    values = "1,2,3,4,5,6,7," + ("500" if failing else "8")
    out = labbook("train", "-m", "experiment=gmm_blobs", "trainer.max_epochs=4", "model.tol=0",
                  "datamodule.n_samples=300", f"model.n_components={values}", "hydra/launcher=joblib",
                  "hydra.launcher.n_jobs=4", QUIET, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == (1 if failing else 0), out.stderr[-3000:]
    parent, children = parent_and_children(uri)
    assert len(children) == (7 if failing else 8)
    assert "500" not in {c.data.params["model.n_components"] for c in children}
    client = MlflowClient(uri)
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "train/log_likelihood")
        assert sorted(m.step for m in history) == sorted({m.step for m in history}) and len(history) == 4
    if failing:
        assert parent.info.status == "FAILED" and parent.data.tags["sweep.failed"] == "1"
        assert parent.data.tags["sweep.failed_jobs"] == "7"
        rows = summary_rows(uri, parent.info.run_id, tmp_path / "s")
        assert len(rows) == 8 and [r["status"] for r in rows if r["name"] == "n_components=500"] == ["FAILED"]
        assert any(line.startswith("labbook: error: job 7 (") and "n_components=500 needs at least 500 training "
                   "rows" in line and "210 training rows" in line for line in out.stderr.splitlines()), out.stderr
    else:
        assert parent.info.status == "FINISHED" and parent.data.tags["sweep.failed"] == "0"

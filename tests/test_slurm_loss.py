"""Slurm for real, when things go wrong (issue 22): a job cancelled with `scancel` ends its run KILLED while the
sweep goes on; a job whose node is lost leaves its run to `labbook reap` and `resume=`, or, requeued by Slurm,
continues it. A module of its own, so that its cluster and test_slurm.py's run side by side."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import labbook, runs, store_has
from tests.slurm_cluster import LocalSlurm
from tests.test_lifecycle import histories
from tests.test_slurm import QUIET, labbook_on_slurm
from tests.test_sweeps import parent_and_children


def training_runs(store: str) -> list:
    """The runs that are RUNNING and have logged a training step (none before the store has one: MLflow's
    client would create the store's tables a second time while the sweep creates them)."""
    if not store_has(Path(store.removeprefix("sqlite:///")), "SELECT 1 FROM metrics WHERE key = 'train/loss'"):
        return []
    return [r for r in runs(store) if r.info.status == "RUNNING" and "train/loss" in r.data.metrics]


def test_a_cancelled_job_ends_its_run_killed_and_the_sweep_goes_on(slurm: LocalSlurm, tmp_path: Path,
                                                                   store: str) -> None:
    cancelled: list[str] = []

    def cancel_one_once_both_train() -> None:
        training = training_runs(store) if not cancelled else []
        if len(training) == 2:
            cancelled.append(training[0].data.tags["slurm.job_id"])
            subprocess.run(["scancel", cancelled[0]], env=slurm.env(), check=True)  # SIGTERM to its processes

    out = labbook_on_slurm("train", "-m", "experiment=lstm_sunspots", "datamodule.batch_size=4",
                           "trainer.max_epochs=200,201", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                           QUIET, slurm=slurm, cwd=tmp_path, during=cancel_one_once_both_train)
    assert cancelled, out.stderr[-3000:]
    assert out.returncode == 1, out.stderr[-3000:]
    parent, children = parent_and_children(store)
    (killed,) = [r for r in children if r.data.tags["slurm.job_id"] == cancelled[0]]
    (other,) = [r for r in children if r is not killed]
    # The cancelled job stopped at a batch boundary (scancel's SIGTERM) and ended its run KILLED; the other
    # job went on to the end; the parent counts the one that did not finish.
    assert killed.info.status == "KILLED" and other.info.status == "FINISHED"
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.failed"] == "1"
    assert slurm.accounted(cancelled[0]) == "CANCELLED"
    said = [line for line in out.stderr.splitlines() if "did not finish" in line]
    assert said == ["labbook: error: 1 job(s) of the sweep did not finish"], out.stderr[-3000:]
    assert f"Slurm job {cancelled[0]} ended CANCELLED without a result" in out.stderr, out.stderr
    assert not slurm.jobs() and not slurm.job_processes(), "no job, and no process of one, is left"


def test_a_job_on_a_lost_node_leaves_its_run_to_reap_by_heartbeat_and_resume(slurm: LocalSlurm, tmp_path: Path,
                                                                              store: str) -> None:
    lstm = ("experiment=lstm_sunspots", "datamodule.batch_size=4", "trainer.max_epochs=160")
    lost: dict[str, str] = {}

    def lose_its_node_once_training() -> None:  # the machine is gone: its slurmd and the job's processes
        training = training_runs(store) if not lost else []
        if training:
            tags = training[0].data.tags
            lost.update(run=training[0].info.run_id, job=tags["slurm.job_id"], node=tags["slurm.nodelist"])
            assert slurm.lose_node(lost["node"]), "no job process found on the node"

    try:
        # --no-requeue: the job is not started again elsewhere (by default Slurm requeues it, and the
        # requeued job continues the same run: test_a_job_on_a_lost_node_is_requeued_and_continues_its_run).
        out = labbook_on_slurm("train", "-m", *lstm, "logger.heartbeat_s=1", "hydra/launcher=slurm",
                               "hydra.launcher.partition=debug", "+hydra.launcher.additional_parameters.no_requeue=true",
                               QUIET, slurm=slurm, cwd=tmp_path, during=lose_its_node_once_training)
    finally:
        if lost:
            slurm.restore_node(lost["node"])
    assert lost, "the job never trained"
    # Slurm marked the node DOWN after SlurmdTimeout and the job NODE_FAIL; submitit saw it in sacct, and the
    # launching command ended, the job counted as not finished.
    assert out.returncode == 1, out.stderr[-3000:]
    assert slurm.accounted(lost["job"]) == "NODE_FAIL"
    assert f"Slurm job {lost['job']} ended NODE_FAIL without a result" in out.stderr, out.stderr[-3000:]
    parent, (run,) = parent_and_children(store)
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.failed"] == "1"
    assert run.info.status == "RUNNING", "nobody could say the run ended: its machine was lost"
    # On a real cluster the node is another machine, and only the run's heartbeat tells that its owner is
    # gone. Here the node is this machine, where reap would fail the run at once by its owner's pid (gone):
    # the run's owner is set to the node it ran on, as it would be there, so that reap goes by the heartbeat.
    client = MlflowClient(store)
    client.set_tag(run.info.run_id, "owner.host", lost["node"])
    reap = labbook("reap", "--stale-after", "3600", cwd=tmp_path)
    assert reap.returncode == 0 and client.get_run(run.info.run_id).info.status == "RUNNING", reap.stderr
    time.sleep(2)  # no heartbeat since the node was lost (heartbeat_s=1)
    reap = labbook("reap", "--stale-after", "2", cwd=tmp_path)
    assert reap.returncode == 0, reap.stderr
    reaped = client.get_run(run.info.run_id)
    assert reaped.info.status == "FAILED" and f"no heartbeat from {lost['node']}" in reaped.data.tags["reaped"]
    # resume= continues it (here, not on Slurm) from its newest checkpoint, to the end.
    out = labbook("train", f"resume={run.info.run_id}", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumes"] == "1"
    steps = [s for s, _ in histories(store, run.info.run_id, ("val/loss",))["val/loss"]]
    assert sorted(set(steps)) == steps and len(steps) == 160
    assert not slurm.jobs() and not slurm.job_processes(), "no job, and no process of one, is left"


def test_a_job_on_a_lost_node_is_requeued_and_continues_its_run(slurm: LocalSlurm, tmp_path: Path,
                                                                store: str) -> None:
    lost: dict[str, str] = {}

    def lose_its_node_once_training() -> None:
        training = training_runs(store) if not lost else []
        if training:
            tags = training[0].data.tags
            lost.update(run=training[0].info.run_id, job=tags["slurm.job_id"], node=tags["slurm.nodelist"])
            assert slurm.lose_node(lost["node"]), "no job process found on the node"

    try:  # Slurm requeues a job whose node failed (JobRequeue=1, its default); it starts again on the other node
        out = labbook_on_slurm("train", "-m", "experiment=lstm_sunspots", "datamodule.batch_size=4",
                               "trainer.max_epochs=160", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                               QUIET, slurm=slurm, cwd=tmp_path, during=lose_its_node_once_training)
    finally:
        if lost:
            slurm.restore_node(lost["node"])
    assert lost, out.stderr[-3000:]
    assert out.returncode == 0, out.stderr[-3000:]
    parent, (run,) = parent_and_children(store)
    tags = run.data.tags
    # Its next allocation found the run the lost one left RUNNING, failed it (an earlier allocation of the
    # same job is over) and continued it from its newest checkpoint, elsewhere.
    assert run.info.run_id == lost["run"] and run.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert tags["slurm.requeues"] == "1" == tags["resumes"] and tags["slurm.nodelist"] != lost["node"]
    steps = [s for s, _ in histories(store, run.info.run_id, ("val/loss",))["val/loss"]]
    assert sorted(set(steps)) == steps and len(steps) == 160
    assert not slurm.jobs() and not slurm.job_processes(), "no job, and no process of one, is left"

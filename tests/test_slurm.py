"""Slurm for real (issue 22, groundwork): a two-node cluster on this machine, and labbook's jobs on it through
Hydra's submitit launcher."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

from mlflow.tracking import MlflowClient

from tests.conftest import LABBOOK, kill_group, labbook, runs, store_has, store_row
from tests.slurm_cluster import LocalSlurm
from tests.test_lifecycle import histories
from tests.test_sweeps import parent_and_children

QUIET = "debug=quiet"
SLURM = ("hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=10")


def test_a_sweep_of_two_jobs_of_two_tasks_and_a_job_on_two_nodes(slurm: LocalSlurm, tmp_path: Path,
                                                                   store: str) -> None:
    reference = f"sqlite:///{tmp_path / 'one.db'}"  # one process, no Slurm
    out = labbook("train", "experiment=gmm_iris", QUIET, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": reference})
    assert out.returncode == 0, out.stderr[-3000:]
    (one_process,) = runs(reference)

    # Two jobs, each on one node with two tasks: DDP over the job's two Slurm tasks, one run per job.
    out = labbook("train", "-m", "experiment=gmm_iris", "model.covariance_type=full,diag", "trainer=ddp_cpu",
                  "trainer.devices=2", "hydra.launcher.tasks_per_node=2", *SLURM, QUIET, cwd=tmp_path,
                  env=slurm.env())
    assert out.returncode == 0, out.stderr[-3000:]
    children = runs(store)
    assert sorted(r.data.params["model.covariance_type"] for r in children) == ["diag", "full"]
    assert all(r.info.status == "FINISHED" for r in children)
    # Each run names the job squeue showed: an array of two, task i on its own node.
    array_jobs = {r.data.tags["slurm.job_id"].split("_")[0] for r in children}
    assert len(array_jobs) == 1 and array_jobs.pop().isdigit()
    assert sorted(r.data.tags["slurm.array_task_id"] for r in children) == ["0", "1"]
    assert all(r.data.tags["slurm.job_id"].endswith("_" + r.data.tags["slurm.array_task_id"]) for r in children)
    assert {r.data.tags["slurm.nodelist"] for r in children} <= {"n1", "n2"}
    assert all(r.data.tags["slurm.requeues"] == "0" for r in children)
    two_tasks = next(r for r in children if r.data.params["model.covariance_type"] == "full")
    assert two_tasks.data.params["trainer.devices"] == "2"

    # One job on two nodes, one task each: one run (global rank 0's).
    out = labbook("train", "-m", "experiment=gmm_iris", "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2",
                  *SLURM, "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1", "logger.experiment_name=nodes",
                  QUIET, cwd=tmp_path, env=slurm.env())
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(store)
    (two_nodes,) = [r for r in client.search_runs([client.get_experiment_by_name("nodes").experiment_id])
                    if r.data.tags.get("sweep.role") != "parent"]
    assert two_nodes.info.status == "FINISHED" and two_nodes.data.tags["slurm.nodelist"] == "n[1-2]"
    # The same fit as one process, over two tasks of a node and over two nodes.
    for key in ("val/log_likelihood", "test/log_likelihood"):
        for run in (two_tasks, two_nodes):
            assert abs(run.data.metrics[key] - one_process.data.metrics[key]) < 1e-9, key
    assert not slurm.jobs() and not slurm.job_processes(), "no job, and no process of one, is left"


def labbook_on_slurm(*args: str, slurm: LocalSlurm, cwd: Path, during: Callable[[], None] = lambda: None,
                     timeout: float = 400) -> subprocess.CompletedProcess:
    """`labbook ARGS` against the cluster, calling ``during()`` about twice a second until it exits."""
    proc = subprocess.Popen([LABBOOK, *args], cwd=cwd, env={**slurm.env(), "PYTHONWARNINGS": "ignore"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the command did not end"
            during()
            time.sleep(0.5)
        out, err = proc.communicate()
    finally:
        kill_group(proc.pid)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


# 480 epochs of 100 batches: ~60 s of training here, longer than a job limited to a minute can run. Slurm warns
# it 40 s before the limit, at its next scheduling tick (within ~30 s), so while it trains.
LONG_LSTM = ("experiment=lstm_sunspots", "datamodule.batch_size=4", "trainer.max_epochs=480")
KEYS = ("train/loss", "val/loss", "test/rmse")


def test_a_job_past_its_time_limit_is_requeued_and_continues_the_same_run(slurm: LocalSlurm, tmp_path: Path,
                                                                          store: str) -> None:
    requeued: set[str] = set()

    def extend_once_stopped() -> None:
        # Once an allocation stopped the run (KILLED, its checkpoint stored), the job's next allocation may run
        # long enough to finish: two allocations in all. (A warning that came before the run even opened is
        # submitit's alone: that allocation requeues without a run, and the next one is warned again.)
        if store_has(tmp_path / "mlflow.db", "SELECT 1 FROM runs WHERE status = 'KILLED'"):
            requeued.update(slurm.extend_requeued(5))

    out = labbook_on_slurm("train", "-m", *LONG_LSTM, "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                           "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=40", QUIET, slurm=slurm,
                           cwd=tmp_path, during=extend_once_stopped)
    assert out.returncode == 0, out.stderr[-3000:]
    assert requeued, "the job was never requeued"
    parent, children = parent_and_children(store)
    (run,) = children  # one child for the one configuration, however often its job came back
    tags = run.data.tags
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert tags["resumes"] == "1" and int(tags["slurm.requeues"]) >= 1  # continued once, after the stop
    assert "error" not in tags
    # Every allocation after the first continued from the checkpoint the one before it stored: the history is
    # the one of a run that never stopped, bit for bit (no step repeated or missing).
    straight = f"sqlite:///{tmp_path / 'straight.db'}"
    plain = labbook("train", *LONG_LSTM, QUIET, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": straight})
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert histories(store, run.info.run_id, KEYS) == histories(straight, runs(straight)[0].info.run_id, KEYS)
    assert len(histories(store, run.info.run_id, ("val/loss",))["val/loss"]) == 480
    assert not slurm.jobs() and not slurm.job_processes(), "no job, and no process of one, is left"


# The Slurm job of a run that is training (read-only: the store may still be being created).
TRAINING_JOB = ("SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.status = 'RUNNING' AND "
                "t.key = 'slurm.job_id' AND EXISTS (SELECT 1 FROM metrics m WHERE m.run_uuid = r.run_uuid AND "
                "m.key = 'train/loss')")


def test_a_preempted_job_continues_the_same_run_and_says_one_line_per_epoch(slurm: LocalSlurm, tmp_path: Path,
                                                                            store: str) -> None:
    # A job of two tasks (DDP over Slurm's ranks): both continue from the checkpoint rank 0 stored.
    lstm = ("experiment=lstm_sunspots", "datamodule.batch_size=4", "trainer.max_epochs=100", "trainer=ddp_cpu",
            "trainer.devices=2", "hydra.launcher.tasks_per_node=2")
    preempted: list[str] = []

    def preempt_once_training() -> None:  # what a preemption does: `scontrol requeue` of the running job
        if preempted:
            return
        training = store_row(tmp_path / "mlflow.db", TRAINING_JOB)
        if training:
            preempted.append(training[0])
            subprocess.run(["scontrol", "requeue", preempted[0]], env=slurm.env(), check=True)

    out = labbook_on_slurm("train", "-m", *lstm, "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                           slurm=slurm, cwd=tmp_path, during=preempt_once_training)
    assert out.returncode == 0, out.stderr[-3000:]
    assert preempted
    parent, (run,) = parent_and_children(store)
    tags = run.data.tags
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED" and "error" not in tags
    assert tags["slurm.job_id"] == preempted[0] and tags["slurm.requeues"] == "1" == tags["resumes"]
    steps = [s for s, _ in histories(store, run.info.run_id, ("val/loss",))["val/loss"]]
    assert len(steps) == 100 == len(set(steps))  # each epoch's validation once, none lost to the preemption
    # The job's output (its last allocation's): one line per epoch, no progress bar.
    (log,) = (tmp_path / "logs").rglob("*_0_log.out")
    text = log.read_text()
    assert "\r" not in text and "run id: " + run.info.run_id in text
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert epochs and epochs[-1].startswith("epoch 100/100 ") and len(epochs) == 100 - int(epochs[0].split()[1].split("/")[0]) + 1
    assert not slurm.jobs() and not slurm.job_processes(), "no job, and no process of one, is left"

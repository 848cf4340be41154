"""Slurm for real (issue 22, groundwork): a two-node cluster on this machine, and labbook's jobs on it through
Hydra's submitit launcher."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import labbook, runs
from tests.slurm_cluster import LocalSlurm, available

QUIET = "debug=quiet"
SLURM = ("hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=10")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    why = available()
    if why:
        pytest.fail(f"a Slurm cluster cannot start here: {why}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def test_a_sweep_of_two_jobs_and_a_job_on_two_nodes(slurm: LocalSlurm, tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", "experiment=gmm_iris", "model.covariance_type=full,diag", *SLURM, QUIET,
                  cwd=tmp_path, env=slurm.env())
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
    one_process = next(r for r in children if r.data.params["model.covariance_type"] == "full")

    # One job on two nodes, one task each: one run (global rank 0's), the same fit as one process.
    out = labbook("train", "-m", "experiment=gmm_iris", "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2",
                  *SLURM, "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1", "logger.experiment_name=nodes",
                  QUIET, cwd=tmp_path, env=slurm.env())
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(store)
    (two_nodes,) = [r for r in client.search_runs([client.get_experiment_by_name("nodes").experiment_id])
                    if r.data.tags.get("sweep.role") != "parent"]
    assert two_nodes.info.status == "FINISHED" and two_nodes.data.tags["slurm.nodelist"] == "n[1-2]"
    for key in ("val/log_likelihood", "test/log_likelihood"):
        assert abs(two_nodes.data.metrics[key] - one_process.data.metrics[key]) < 1e-9, key

"""A multi-node job started with torchrun: two agents ("nodes") on loopback with the c10d rendezvous, one
worker each, make one run, recorded by global rank 0 alone, equal to the same training in one process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import LABBOOK, kill_group, labbook, runs, store_row
from tests.test_train_e2e import QUIET, only_run

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
GMM = ("experiment=gmm_iris",)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_launch(rdzv_id: str) -> None:
    """SIGKILL every process of the torchrun launch ``rdzv_id``: its agents start their workers in sessions of
    their own, which killing an agent's process group does not reach."""
    for proc in Path("/proc").iterdir():
        try:
            if f"TORCHELASTIC_RUN_ID={rdzv_id}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def torchrun_agents(cwd: Path, nodes: int, *overrides: str, timeout: float = 300) -> list[tuple[int, str]]:
    """Start ``nodes`` torchrun agents at once, as on ``nodes`` machines, each running one `labbook train`
    worker; wait for all of them. Returns each agent's exit code and output. Every process they started
    (agents, workers) is killed whatever happens."""
    port = free_port()
    command = [TORCHRUN, f"--nnodes={nodes}", "--nproc-per-node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=labbook-test-{port}", "--no-python",
               LABBOOK, "train", *overrides, f"trainer.num_nodes={nodes}", QUIET]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    agents: list[subprocess.Popen] = []
    try:
        for _ in range(nodes):
            agents.append(subprocess.Popen(command, cwd=cwd, env=env, text=True, start_new_session=True,
                                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        outputs = [agent.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for agent in agents]
        return [(agent.returncode, out) for agent, out in zip(agents, outputs)]
    finally:
        for agent in agents:
            kill_group(agent.pid)  # the agent and its worker: nothing outlives the test
        kill_launch(f"labbook-test-{port}")


def test_two_torchrun_nodes_make_one_run_equal_to_one_process(tmp_path: Path, store: str) -> None:
    ended = torchrun_agents(tmp_path, 2, *GMM, "trainer=ddp_cpu", "trainer.devices=1")
    assert [code for code, _ in ended] == [0, 0], "\n".join(out[-3000:] for _, out in ended)
    run = only_run(store)  # one run for the two nodes
    assert run.info.status == "FINISHED"
    # Recorded by global rank 0: the run's owner is one of the two workers, and only one worker printed it.
    said = [out for _, out in ended if f"run id: {run.info.run_id}" in out]
    assert len(said) == 1 and "GLOBAL_RANK: 0" in said[0], [out[-2000:] for _, out in ended]
    assert run.data.params["trainer.num_nodes"] == "2" and run.data.params["trainer.devices"] == "1"

    one = f"sqlite:///{tmp_path / 'one.db'}"
    out = labbook("train", *GMM, QUIET, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": one})
    assert out.returncode == 0, out.stderr[-3000:]
    single = only_run(one)
    for key in ("val/log_likelihood", "test/log_likelihood"):
        assert run.data.metrics[key] == pytest.approx(single.data.metrics[key], abs=1e-9, rel=0), key
    assert len(runs(store)) == 1


# A run that has stored its third epoch's validation (and with it, a last checkpoint) and is still training.
TRAINING = ("SELECT r.run_uuid FROM runs r WHERE r.status = 'RUNNING' AND (SELECT count(*) FROM metrics m WHERE "
            "m.run_uuid = r.run_uuid AND m.key = 'val/loss') >= 3")


def test_a_restarted_torchrun_launch_continues_its_run(tmp_path: Path, store: str) -> None:
    """An agent with --max-restarts=1 whose worker is SIGKILLed: both agents restart their workers, and the
    new attempt's rank 0 continues the run from its newest checkpoint (the other rank loads the same one)."""
    port = free_port()
    lstm = ("experiment=lstm_sunspots", "datamodule.batch_size=4", "trainer.max_epochs=40", "trainer=ddp_cpu",
            "trainer.devices=1", "trainer.num_nodes=2")
    command = [TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--max-restarts=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=restart-{port}", "--no-python", LABBOOK, "train",
               *lstm, QUIET]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    # torch's agents otherwise hand the restarted workers the dead attempt's addresses (pytorch#135712).
    env.update({"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    agents = [subprocess.Popen(command, cwd=tmp_path, env=env, text=True, start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
              for _ in range(2)]
    try:
        deadline = time.monotonic() + 240
        while (row := store_row(tmp_path / "mlflow.db", TRAINING)) is None:
            assert time.monotonic() < deadline and all(a.poll() is None for a in agents), "never trained"
            time.sleep(0.3)
        first = row[0]
        owner = int(MlflowClient(store).get_run(first).data.tags["owner.pid"])
        os.kill(owner, signal.SIGKILL)  # rank 0's worker dies mid-training, its run left RUNNING
        outputs = [a.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for a in agents]
    finally:
        for agent in agents:
            kill_group(agent.pid)
        kill_launch(f"restart-{port}")
    assert [a.returncode for a in agents] == [0, 0], "\n".join(out[-3000:] for out in outputs)
    (run,) = runs(store)  # the restart continued the run: no second one
    tags = run.data.tags
    assert run.info.run_id == first and run.info.status == "FINISHED" and tags["resumes"] == "1"
    assert tags["torchrun.job"] == f"restart-{port}@127.0.0.1:{port}"
    steps = [m.step for m in MlflowClient(store).get_metric_history(first, "val/loss")]
    assert len(steps) == 40 == len(set(steps))  # every epoch's validation once: none lost, none repeated

"""A run's life through the real `labbook` command: resume, checkpoints in the store while training,
SIGKILLed runs reaped, bad resumes refused; every test reads the store back with MlflowClient."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import labbook, runs
from tests.test_train_e2e import LONG_GMM, QUIET, artifacts, only_run

LSTM = ("experiment=lstm_sunspots",)


def train(cwd: Path, *overrides: str, env: dict | None = None) -> None:
    out = labbook("train", *overrides, QUIET, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-3000:]


def histories(uri: str, run_id: str, keys: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(uri)
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in keys}


def stored_yaml(uri: str, run_id: str, name: str, into: Path) -> object:
    return yaml.safe_load(Path(MlflowClient(uri).download_artifacts(run_id, name, str(into))).read_text())


def test_resume_continues_the_same_run_as_if_it_had_never_stopped(tmp_path: Path, store: str) -> None:
    train(tmp_path, *LSTM, "trainer.max_epochs=4")
    first = only_run(store)
    shutil.rmtree(tmp_path / "logs")  # from the store alone, as on another machine
    out = labbook("train", f"resume={first.info.run_id}", "trainer.max_epochs=7", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert out.stdout.strip().splitlines()[-3] == f"run id: {run.info.run_id}"
    assert run.data.params["trainer.max_epochs"] == "4"  # params are never re-logged with a new value
    assert run.data.tags["resumes"] == "1"
    record = stored_yaml(store, run.info.run_id, "config/resume-1.yaml", tmp_path / "r")
    assert record["changes"] == {"trainer.max_epochs": {"from": 4, "to": 7}}
    assert record["from_checkpoint"] == {"epochs": 4, "batches": 0, "world_size": 1, "global_step": 52}
    assert stored_yaml(store, run.info.run_id, "config/overrides.yaml", tmp_path / "o") == \
        ["experiment=lstm_sunspots", "trainer.max_epochs=4", "debug=quiet", "trainer.max_epochs=7", "debug=quiet"]
    config = stored_yaml(store, run.info.run_id, "config/config.yaml", tmp_path / "c")
    assert config["trainer"]["max_epochs"] == 7 and config["ckpt_path"] is None

    # The same 7 epochs without stopping: identical metric histories, no epoch repeated or missing.
    other = f"sqlite:///{tmp_path / 'straight.db'}"
    train(tmp_path, *LSTM, "trainer.max_epochs=7", env={"MLFLOW_TRACKING_URI": other})
    keys = ("val/loss", "val/rmse", "train/loss", "test/rmse")
    resumed, straight = histories(store, run.info.run_id, keys), histories(other, only_run(other).info.run_id, keys)
    assert [s for s, _ in resumed["val/loss"]] == [13 * e - 1 for e in range(1, 8)]
    assert resumed["val/loss"] == straight["val/loss"] and resumed["train/loss"] == straight["train/loss"]
    assert resumed["val/rmse"] == straight["val/rmse"]
    assert resumed["test/rmse"][-1][1] == straight["test/rmse"][-1][1]


def test_resume_under_ddp_cpu_continues_one_run(tmp_path: Path, store: str) -> None:
    train(tmp_path, *LSTM, "trainer=ddp_cpu", "trainer.max_epochs=2")
    run_id = only_run(store).info.run_id
    train(tmp_path, f"resume={run_id}", "trainer=ddp_cpu", "trainer.max_epochs=4")
    run = only_run(store)  # two processes, still one run
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [s for s, _ in histories(store, run_id, ("val/loss",))["val/loss"]]
    assert len(steps) == 4 and steps == sorted(set(steps))


@pytest.mark.parametrize("monitor,first,then", [
    ("val/log_likelihood", ("experiment=gmm_blobs", "model.tol=0", "datamodule.n_samples=3000", "trainer.max_epochs=3"), "trainer.max_epochs=5"),
    ("val/exact_match", ("experiment=seq2seq_dates", "model.one_cycle=false", "model.hidden_size=32", "datamodule.n_samples=1200", "datamodule.n_test=200",
      "datamodule.batch_size=32", "trainer.max_epochs=1"), "trainer.max_epochs=2"),
    ("val/exact_match", ("experiment=transformer_dates", "model.one_cycle=false", "datamodule.n_samples=1200", "datamodule.n_test=200", "datamodule.batch_size=32",
      "trainer.max_epochs=1"), "trainer.max_epochs=2"),
], ids=["gmm", "seq2seq", "transformer"])
def test_every_model_family_resumes(tmp_path: Path, store: str, monitor: str, first: tuple[str, ...], then: str) -> None:
    train(tmp_path, *first)
    run_id = only_run(store).info.run_id
    before = len(histories(store, run_id, (monitor,))[monitor])
    train(tmp_path, f"resume={run_id}", then)
    run = only_run(store)
    steps = histories(store, run_id, (monitor,))[monitor]
    assert run.info.status == "FINISHED" and len(steps) == int(then.split("=")[1]) > before
    assert [s for s, _ in steps] == sorted({s for s, _ in steps}), steps  # no step twice


def test_bad_resumes_are_one_line_and_leave_the_runs_as_they_were(tmp_path: Path, store: str) -> None:
    train(tmp_path, "experiment=polynomial", "trainer.max_epochs=2", "logger.log_checkpoints=false")
    train(tmp_path, "experiment=polynomial", "trainer.max_epochs=2")
    train(tmp_path, "experiment=transformer_dates", "datamodule.n_samples=400", "datamodule.n_test=50",
          "trainer.max_epochs=1", "test=false")
    no_ckpt, good, one_cycle = (r.info.run_id for r in sorted(runs(store), key=lambda r: r.info.start_time))
    before = {r.info.run_id: (r.info.status, r.info.end_time, r.data.tags) for r in runs(store)}
    cases = [
        (["resume=0123456789abcdef0123456789abcdef", "model.nope=1"], ["not found in the store", "0123456789abcdef"]),
        ([f"resume={good}", "logger.tracking_uri=sqlite:///other.db"], ["other.db"]),
        ([f"resume={no_ckpt}"], ["no checkpoints/last.ckpt", "logger.log_checkpoints=false"]),
        ([f"resume={good}", "model.optimizer.lr=0.5"], ["model.optimizer.lr cannot change on a resume", "trainer.*"]),
        ([f"resume={good}", "experiment=gmm_blobs"], ["experiment cannot change on a resume"]),
        ([f"resume={good}", "seed=3"], ["seed cannot change on a resume"]),
        ([f"resume={one_cycle}", "trainer.max_epochs=2"], ["trainer.max_epochs cannot grow (1 -> 2)", "model.one_cycle=true"]),
    ]
    for args, words in cases:
        out = labbook("train", *args, QUIET, cwd=tmp_path)
        assert out.returncode == 1, (args, out.stderr[-2000:])
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("labbook: error: resume=") and "Traceback" not in out.stderr, last
        for word in words:
            assert word in last, (word, last)
    after = {r.info.run_id: (r.info.status, r.info.end_time, r.data.tags) for r in runs(store)}
    assert after == before


def stored_position(client: MlflowClient, run_id: str, into: Path):  # noqa: ANN201
    """Where the run's stored last.ckpt stands (labbook.train.resume.Position)."""
    import torch

    from labbook.train.resume import checkpoint_position

    path = client.download_artifacts(run_id, "checkpoints/last.ckpt", str(into))
    return checkpoint_position(torch.load(path, map_location="cpu", weights_only=True))


def epochs_needed(position) -> int:  # noqa: ANN001
    """The fewest trainer.max_epochs a resume from ``position`` accepts: an interrupted epoch is finished."""
    return position.epochs + (1 if position.batches else 0)


def _wait_for(predicate, timeout: float = 120.0) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


def test_checkpoints_reach_the_store_while_training_and_sigterm_then_resume_finishes(start_training, store: str,
                                                                                     tmp_path: Path) -> None:
    proc = start_training(*LONG_GMM, "trainer.max_epochs=100000", "logger.heartbeat_s=1")
    run_id = only_run(store).info.run_id
    client = MlflowClient(store)
    _wait_for(lambda: "checkpoints/last.ckpt" in artifacts(client, run_id))
    assert client.get_run(run_id).info.status == "RUNNING"  # stored while it trains, not only at the end
    tags = client.get_run(run_id).data.tags
    assert tags["owner.pid"] == str(proc.pid) and tags["owner.host"] == os.uname().nodename
    first_beat = int(tags["heartbeat"])
    _wait_for(lambda: int(client.get_run(run_id).data.tags["heartbeat"]) > first_beat, timeout=30)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143 and client.get_run(run_id).info.status == "KILLED"
    # The local checkpoints go (once the process has stopped writing them): the resumes below must take theirs
    # from the store.
    shutil.rmtree(tmp_path / "logs")
    position = stored_position(client, run_id, tmp_path / "ckpt")
    assert position.batches > 0  # stopped between two batches of an epoch, not at the last epoch's end
    done = epochs_needed(position)
    short = labbook("train", f"resume={run_id}", f"trainer.max_epochs={done - 1}", QUIET, cwd=tmp_path)
    assert short.returncode == 1, short.stderr
    assert f"the run has already trained {position.describe()} (its last checkpoint); give trainer.max_epochs=" \
           f"{done} or more" in short.stderr, short.stderr
    out = labbook("train", f"resume={run_id}", f"trainer.max_epochs={done + 2}", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags and run.data.tags["resumes"] == "1"


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_a_signal_stops_between_two_batches_and_the_resumed_run_matches_one_that_never_stopped(
        start_training, store: str, tmp_path: Path, trainer: str) -> None:
    # 100 batches an epoch: a signal lands mid-epoch. The checkpoint then holds the model, the optimizer and
    # learning-rate schedule, the loader's place in the epoch and the epoch's loss sum so far (under DDP
    # summed over both processes); the resumed run must continue as if nothing had happened.
    lstm = (*LSTM, "datamodule.batch_size=4", f"trainer={trainer}", "trainer.max_epochs=40")
    proc = start_training(*lstm, "logger.flush_every_s=0.2")
    run_id = only_run(store).info.run_id
    proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.monotonic() - stopped_at < 10
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "KILLED"
    position = stored_position(client, run_id, tmp_path / "ckpt")
    assert 0 < position.batches and position.world_size == (2 if trainer == "ddp_cpu" else 1)
    shutil.rmtree(tmp_path / "logs")
    train(tmp_path, f"resume={run_id}")
    assert client.get_run(run_id).info.status == "FINISHED"

    other = f"sqlite:///{tmp_path / 'straight.db'}"
    train(tmp_path, *lstm, env={"MLFLOW_TRACKING_URI": other})
    keys = ("train/loss", "val/loss", "test/rmse")
    resumed, straight = histories(store, run_id, keys), histories(other, only_run(other).info.run_id, keys)
    assert len(resumed["val/loss"]) == 40 and [s for s, _ in resumed["val/loss"]] == [s for s, _ in straight["val/loss"]]
    if trainer == "cpu":
        assert resumed == straight  # bit for bit
    else:
        # The interrupted epoch's loss sum is re-associated across processes (rank 0 resumes from both ranks'
        # partial sums, the other from 0): both runs sum the same positive step losses (loss·rows) in float32, at
        # most n of them (the epoch's batches, a partial last one per rank), then divide, weight and divide back
        # (MeanMetric) and sum the 2 ranks: each within γ_{n+5} of the exact sum relative, so within 2γ_{n+5} of
        # each other. Everything else runs the same arithmetic on the same weights.
        import math

        from labbook.datamodules.series import SunspotsDataModule

        dm = SunspotsDataModule(window=20, batch_size=4)  # the preset's window and this test's batch size
        dm.setup("fit")
        n, u = math.ceil(len(dm.train_set) / 4) + 2, 2.0**-24
        rel = 2 * (n + 5) * u / (1 - (n + 5) * u)  # 6.8e-6
        for key in keys:
            assert [v for _, v in resumed[key]] == pytest.approx([v for _, v in straight[key]], rel=rel, abs=0), key


def test_reap_fails_a_sigkilled_run_and_spares_a_live_one(start_training, store: str, tmp_path: Path) -> None:
    live = start_training(*LONG_GMM, "trainer.max_epochs=100000", "seed=1")
    victim = start_training(*LONG_GMM, "trainer.max_epochs=100000", "seed=2")
    client = MlflowClient(store)
    # A run is opened first and its parameters written just after: wait for both runs' seeds, not for the runs.
    _wait_for(lambda: sorted(r.data.params.get("seed", "") for r in runs(store)) == ["1", "2"])
    by_seed = {r.data.params["seed"]: r.info.run_id for r in runs(store)}
    _wait_for(lambda: "checkpoints/last.ckpt" in artifacts(client, by_seed["2"]))
    os.killpg(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    assert client.get_run(by_seed["2"]).info.status == "RUNNING"  # nobody was left to say otherwise
    out = labbook("reap", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{by_seed['2']} FAILED: its process {victim.pid} on {os.uname().nodename} "
                                       "no longer exists"]
    dead = client.get_run(by_seed["2"])
    assert dead.info.status == "FAILED" and dead.data.tags["reaped"].startswith("reaped: its process")
    assert dead.data.tags["reaped.at"][:4] == time.strftime("%Y")
    assert client.get_run(by_seed["1"]).info.status == "RUNNING" and live.poll() is None
    # The reaped run resumes to FINISHED from the checkpoint it had stored while it trained.
    done = epochs_needed(stored_position(client, by_seed["2"], tmp_path / "ckpt"))
    out = labbook("train", f"resume={by_seed['2']}", f"trainer.max_epochs={done + 2}", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert client.get_run(by_seed["2"]).info.status == "FINISHED"
    assert "reaped" not in client.get_run(by_seed["2"]).data.tags


def test_reap_uses_heartbeats_for_runs_of_other_hosts(tmp_path: Path, store: str) -> None:
    client = MlflowClient(store)
    exp = client.create_experiment("elsewhere")
    now = int(time.time())
    stale = client.create_run(exp, tags={"owner.host": "node-17", "owner.pid": "4242", "heartbeat": str(now - 900)})
    fresh = client.create_run(exp, tags={"owner.host": "node-18", "owner.pid": "4242", "heartbeat": str(now - 5)})
    foreign = client.create_run(exp, tags={"note": "a notebook's run, no owner tags"})
    out = labbook("reap", "--stale-after", "300", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert client.get_run(stale.info.run_id).info.status == "FAILED"
    assert "no heartbeat from node-17 since" in client.get_run(stale.info.run_id).data.tags["reaped"]
    assert client.get_run(fresh.info.run_id).info.status == "RUNNING"
    assert client.get_run(foreign.info.run_id).info.status == "RUNNING"  # not labbook's to judge
    bad = labbook("reap", "--stale-after", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--stale-after=0 is not allowed" in bad.stderr


def test_the_read_side_finds_runs_by_experiment_tags_parent_and_status(tmp_path: Path, store: str) -> None:
    from labbook.errors import UserError
    from labbook.store.prepare import prepare_store
    from labbook.store.read import open_reader, search_runs

    prepare_store(store)
    client = MlflowClient(store)
    exp = client.create_experiment("sweep")
    parent = client.create_run(exp, tags={"kind": "parent"})
    children = [client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id, "job": str(i)}) for i in range(3)]
    client.set_terminated(children[0].info.run_id, status="FINISHED")
    assert {r.run_id for r in search_runs(store, parent_run_id=parent.info.run_id)} == \
        {c.info.run_id for c in children}
    assert [r.run_id for r in search_runs(store, "sweep", tags={"job": "2"})] == [children[2].info.run_id]
    assert [r.run_id for r in search_runs(store, "sweep", status="FINISHED")] == [children[0].info.run_id]
    with pytest.raises(UserError, match="experiment 'nope' not found"):
        search_runs(store, "nope")
    reader = open_reader(store)
    found = reader.find_run(children[1].info.run_id)
    assert found.status == "RUNNING" and found.tags["job"] == "1" and reader.metric_history(found, "x") == []
    with pytest.raises(UserError, match="has no checkpoints/best.ckpt or checkpoints/last.ckpt"):
        reader.checkpoint(found, ["checkpoints/best.ckpt", "checkpoints/last.ckpt"], tmp_path)
    with pytest.raises(UserError, match="not found in the store"):
        reader.find_run("0" * 32)


@pytest.mark.parametrize("typed, composed, expected", [
    ("3744e1", 37440.0, "3744e1"),  # a short id Hydra reads as a float (CI, stop 25: "run '37440.0' not found")
    ("001234", 1234, "001234"),  # as an int
    ("'3744e1'", "3744e1", "3744e1"),  # quoted: as typed, less the quotes
    ("ab12cd", "ab12cd", "ab12cd"),
])
def test_resume_takes_the_run_id_as_typed_not_as_hydra_read_it(typed: str, composed: object, expected: str) -> None:
    from omegaconf import OmegaConf

    from labbook.cli.train import _resume_id

    hc = OmegaConf.create({"overrides": {"task": [f"resume={typed}", "trainer.max_epochs=3"]}})
    assert _resume_id(OmegaConf.create({"resume": composed}), hc) == expected
    assert _resume_id(OmegaConf.create({"resume": None}), OmegaConf.create({"overrides": {"task": []}})) is None

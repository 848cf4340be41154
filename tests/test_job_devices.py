"""A parallel sweep's jobs on one machine each get their own GPUs (labbook.sweep.devices): checked on CPU with a
stated device list, CUDA_VISIBLE_DEVICES of the launching command, which a CPU run ignores."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from labbook.errors import UserError
from labbook.sweep import devices
from tests.conftest import labbook, runs
from tests.test_train_e2e import QUIET

IRIS = ("experiment=gmm_iris", "trainer.max_epochs=2", "trainer.accelerator=cpu", QUIET)
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def overlapping(children: list) -> list[tuple]:
    """The pairs of runs that were RUNNING at the same time (by the store's start and end times)."""
    return [(a, b) for a, b in itertools.combinations(children, 2)
            if a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time]


# ------------------------------------------------------------------------------------------- units
def test_the_pool_is_cut_in_order_into_disjoint_slots() -> None:
    assert devices.slots(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
    assert devices.slots(["0", "1", "2", "3", "4"], 2) == ["0,1", "2,3"]  # the fifth is left over
    assert devices.slots(["3", "1"], 1) == ["3", "1"]
    assert devices.slots(["0"], 2) == []
    assert devices.split(4, 2) == 2 and devices.split(5, 2) == 2
    assert devices.split(2, 4) == 1 and devices.split(0, 2) == 1


def test_a_device_list_is_read_as_cuda_reads_it_and_a_bad_one_refused() -> None:
    assert devices.parse_devices("0, 1,2") == ["0", "1", "2"]
    assert devices.parse_devices("GPU-8f2a,MIG-1c") == ["GPU-8f2a", "MIG-1c"]
    assert devices.parse_devices("") == [] and devices.parse_devices("-1") == []
    for bad, said in (("0,,1", "'' is not a device"), ("0,gpu1", "'gpu1' is not a device"), ("1,1", "twice")):
        with pytest.raises(UserError, match=said):
            devices.parse_devices(bad)


def test_the_share_of_a_job_comes_from_the_launchers_settings() -> None:
    four = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert devices.sweep_environment({"_target_": JOBLIB, "n_jobs": 2}, four) == {
        devices.ENV_POOL: "0,1,2,3", devices.ENV_PER_JOB: "2"}
    assert devices.sweep_environment({"_target_": JOBLIB, "n_jobs": 3}, four)[devices.ENV_PER_JOB] == "1"
    local = {"_target_": SUBMITIT_LOCAL, "tasks_per_node": 1}
    assert devices.sweep_environment({**local, "gpus_per_node": 2}, four)[devices.ENV_PER_JOB] == "2"
    assert devices.sweep_environment({**local, "gpus_per_node": None}, four) == {}  # submitit: no GPU for them
    assert devices.sweep_environment({**local, "gpus_per_node": 1, "tasks_per_node": 2}, four) == {}
    with pytest.raises(UserError, match=r"hydra.launcher.gpus_per_node=5: more than the 4 device"):
        devices.sweep_environment({**local, "gpus_per_node": 5}, four)
    assert devices.sweep_environment({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
                                     four) == {}  # one job at a time, in this process
    assert devices.sweep_environment({"_target_": JOBLIB, "n_jobs": 2}, {"CUDA_VISIBLE_DEVICES": ""}) == {}


def test_a_job_takes_a_free_slot_and_a_process_keeps_its_first_jobs(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401 - a process that imported torch: CUDA may have read the devices an earlier job had

    monkeypatch.setenv(devices.ENV_POOL, "0,1,2,3")
    monkeypatch.setenv(devices.ENV_PER_JOB, "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_given", None)
    stop = tmp_path / "stopping"
    with devices.job_devices(tmp_path, "job 0", stop) as first:
        monkeypatch.setattr(devices, "_given", None)  # as another process would
        with devices.job_devices(tmp_path, "job 1", stop) as second:
            assert (first, second) == ("0,1", "2,3") and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
            monkeypatch.setattr(devices, "_given", None)
            stop.touch()  # every slot is taken: a third job waits, until its sweep is stopping
            with devices.job_devices(tmp_path, "job 2", stop) as third:
                assert third is None
            stop.unlink()
    monkeypatch.setattr(devices, "_given", "2,3")  # this process's last job had 2,3: it keeps them, 0,1 free or not
    with devices.job_devices(tmp_path, "job 3", stop) as fourth:
        assert fourth == "2,3"
    monkeypatch.setattr(devices, "_given", "5")  # devices of no slot: the job refuses to share
    with pytest.raises(UserError, match=r"job 4: CUDA was initialised in this process \(seeing 5\)"):
        with devices.job_devices(tmp_path, "job 4", stop):
            pass


# ---------------------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("launcher, stated, swept, slices", [
    (("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"), "0,1,2,3", "full,diag,tied,spherical", {"0,1", "2,3"}),
    (("hydra/launcher=submitit_local", "hydra.launcher.gpus_per_node=1"), "4,5,6", "full,diag,tied", {"4", "5", "6"}),
], ids=["joblib", "submitit_local"])
def test_parallel_jobs_never_share_a_device(tmp_path: Path, store: str, launcher: tuple, stated: str, swept: str,
                                            slices: set) -> None:
    out = labbook("train", "-m", *IRIS, f"model.covariance_type={swept}", *launcher, cwd=tmp_path,
                  env={"CUDA_VISIBLE_DEVICES": stated})
    assert out.returncode == 0, out.stderr[-3000:]
    children = runs(store)
    assert len(children) == len(swept.split(",")) and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["cuda.visible_devices"] for c in children} <= slices  # slices of the stated list
    together = overlapping(children)
    assert together, "no two jobs ran at once: nothing was checked"
    assert all(a.data.tags["cuda.visible_devices"] != b.data.tags["cuda.visible_devices"] for a, b in together)
    (parent,) = [r for r in runs(store, parents=True) if r.data.tags.get("sweep.role") == "parent"]
    assert parent.data.tags["cuda.visible_devices"] == stated  # the launching process: the whole pool


def test_more_parallel_jobs_than_devices_take_turns(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", *IRIS, "model.covariance_type=full,diag", "hydra/launcher=joblib",
                  "hydra.launcher.n_jobs=2", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": "7"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "at most 1 train at once" in out.stderr
    children = runs(store)
    assert [c.data.tags["cuda.visible_devices"] for c in children] == ["7", "7"] and not overlapping(children)


def test_a_bad_device_list_stops_the_sweep_in_one_line(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", *IRIS, "model.covariance_type=full,diag", "hydra/launcher=joblib",
                  "hydra.launcher.n_jobs=2", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": "0,,1"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "labbook: error: CUDA_VISIBLE_DEVICES='0,,1': '' is not a device; expected a comma-separated list of GPU "
        "indices or GPU-/MIG- UUIDs, such as 0,1,2,3")
    assert not runs(store)

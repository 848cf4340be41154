"""`labbook train` end to end, as a user runs it; every test reads the store back with MlflowClient."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import labbook, model_checkpoint, runs

QUIET = "debug=quiet"


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def npz(client: MlflowClient, run_id: str, name: str, tmp: Path) -> dict[str, np.ndarray]:
    local = client.download_artifacts(run_id, name, str(tmp))
    with np.load(local) as data:
        return {k: data[k] for k in data.files}


def only_run(uri: str):
    found = runs(uri)
    assert len(found) == 1, [r.info.run_id for r in found]
    return found[0]


def test_gmm_on_blobs_records_everything(tmp_path: Path, store: str) -> None:
    # The run is started in a project of the user's, a git repository with a committed file and a new model
    # file not yet added: its git state is the project's, labbook's own is recorded apart.
    project = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, capture_output=True, text=True).stdout.strip()  # noqa: E731
    project("init", "-q")
    (tmp_path / "README.md").write_text("a project\n")
    project("add", "README.md")
    project("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    (tmp_path / "new_model.py").write_text("class NewModel:\n    pass\n")  # untracked: counted, and in the patch
    out = labbook("train", "experiment=gmm_blobs", "trainer.max_epochs=8", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    client = MlflowClient(store)
    tail = out.stdout.strip().splitlines()[-3:]
    assert tail[0] == f"run id: {run.info.run_id}"
    assert tail[1].startswith("test/log_likelihood: ")
    assert tail[2] == "open the UI: labbook ui"  # the store labbook ui finds here (MLFLOW_TRACKING_URI)
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "gmm_blobs" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    params = run.data.params
    assert params["model.n_components"] == "4" and params["model.covariance_type"] == "full"
    assert params["trainer.max_epochs"] == "8" and params["datamodule._target_"].endswith("BlobsDataModule")
    history = [m.value for m in client.get_metric_history(run.info.run_id, "train/log_likelihood")]
    assert 2 <= len(history) <= 8
    assert all(b >= a - 1e-6 for a, b in zip(history, history[1:])), history  # EM never decreases it
    for key in ("val/log_likelihood", "test/log_likelihood", "train/bic", "train/aic", "test/accuracy", "test/ari"):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/ari"] > 0.6  # overlapping blobs; chance level is 0
    stored = artifacts(client, run.info.run_id)
    assert {"config/config.yaml", "config/overrides.yaml", "checkpoints/last.ckpt",
            "plots/components.png", "parameters.npz"} <= stored, stored
    tags = run.data.tags
    repo = Path(__file__).resolve().parents[1]
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True).stdout.strip()  # noqa: E731
    assert tags["git.commit"] == project("rev-parse", "HEAD") and tags["git.dirty"] == "true"
    assert tags["labbook.installed_from"] == str(repo) and tags["labbook.git.commit"] == git("rev-parse", "HEAD")
    assert tags["command"] == "labbook train experiment=gmm_blobs trainer.max_epochs=8 debug=quiet"
    assert tags["host"] and tags["mlflow.user"]
    patch = Path(client.download_artifacts(run.info.run_id, "git/diff.patch", str(tmp_path / "got"))).read_text()
    assert "+++ b/new_model.py" in patch and "+class NewModel:" in patch  # the new file, so the run can be rebuilt
    assert "mlflow.db" not in patch and "mlartifacts" not in patch  # labbook's own files are no code
    import yaml

    config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config/config.yaml", str(tmp_path))).read_text())
    assert config["model"]["n_components"] == 4 and "${" not in str(config)
    overrides = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config/overrides.yaml", str(tmp_path))).read_text())
    assert overrides == ["experiment=gmm_blobs", "trainer.max_epochs=8", "debug=quiet"]
    fitted = npz(client, run.info.run_id, "parameters.npz", tmp_path)
    assert fitted["means"].shape == (4, 2) and abs(fitted["weights"].sum() - 1) < 1e-6


def test_gmm_on_iris_classifies(tmp_path: Path, store: str) -> None:
    out = labbook("train", "experiment=gmm_iris", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] > 0.8, run.data.metrics
    assert MlflowClient(store).get_experiment(run.info.experiment_id).name == "gmm_iris"


def test_gmm_on_a_csv_without_preset(tmp_path: Path, store: str) -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])
    labels = rng.integers(0, 3, 600)
    x = centers[labels] + rng.normal(size=(600, 3))
    csv = tmp_path / "points.csv"
    csv.write_text("a,b,c,kind\n" + "\n".join(f"{p[0]:.5f},{p[1]:.5f},{p[2]:.5f},k{l}" for p, l in zip(x, labels)))
    out = labbook("train", "datamodule=tabular", f"datamodule.path={csv}", "datamodule.label_column=kind",
                  "model.n_components=3", "trainer.max_epochs=30", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    assert run.info.status == "FINISHED"
    assert MlflowClient(store).get_experiment(run.info.experiment_id).name == "gmm-tabular"
    assert run.data.params["datamodule.path"] == str(csv)
    assert run.data.metrics["test/accuracy"] > 0.95
    # The CSV is standardised (the tabular preset's default), and the likelihoods are those of its rows as written:
    # scikit-learn's score of the test rows, for the mixture of the checkpoint that was tested, in the CSV's units.
    from sklearn.mixture import GaussianMixture
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    from labbook.lightning_modules.gmm import GaussianMixtureEM

    client = MlflowClient(store)
    model = GaussianMixtureEM.load_from_checkpoint(
        model_checkpoint(store, run.info.run_id, tmp_path), map_location="cpu")
    assert model.hparams.feature_std is not None
    rows = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    test_rows = rows[np.random.default_rng(0).permutation(600)[480:]]  # seed 0; 420 train, 60 val, 120 test
    g = GaussianMixture(3)
    params = model.parameters_in_data_units()
    g.weights_, g.means_, g.covariances_ = params["weights"], params["means"], params["covariances"]
    g.precisions_cholesky_ = _compute_precision_cholesky(g.covariances_, "full")
    # The model saw the rows standardised and rounded to float32: the mean log-likelihood may differ by the mean of
    # the rows' bounds on what that rounding moves (derived in _standardising_rounding), BIC (−2n·mean + …) by 2n times.
    from tests.test_gmm import _standardising_rounding

    bound = float(_standardising_rounding(g, test_rows, model.hparams.feature_mean, model.hparams.feature_std).mean())
    assert abs(run.data.metrics["test/log_likelihood"] - g.score(test_rows)) <= bound
    assert abs(run.data.metrics["test/bic"] - g.bic(test_rows)) <= 2 * len(test_rows) * bound
    assert f"test/log_likelihood: {g.score(test_rows):.6g}" in out.stdout
    fitted = npz(client, run.info.run_id, "parameters.npz", tmp_path)
    np.testing.assert_allclose(fitted["means_data_units"], params["means"], rtol=1e-12)
    np.testing.assert_allclose(fitted["feature_std"], rows[np.random.default_rng(0).permutation(600)[:420]].std(0),
                               rtol=1e-6)


def test_default_store_is_mlflow_db_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = labbook("train", "experiment=gmm_blobs", "trainer.max_epochs=2", "datamodule.n_samples=2000", QUIET,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists()
    assert only_run(f"sqlite:///{tmp_path / 'mlflow.db'}").info.status == "FINISHED"


def test_long_values_become_truncated_params_not_crashes(tmp_path: Path, store: str) -> None:
    long = "x" * 7000
    out = labbook("train", "experiment=gmm_blobs", "trainer.max_epochs=2", "datamodule.n_samples=2000",
                  f"+logger.tags.note={long}", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    assert run.info.status == "FINISHED"
    assert run.data.params["logger.tags.note"].endswith("full value in config/config.yaml]")
    assert len(run.data.params["logger.tags.note"]) == 6000


def test_exception_during_training_marks_failed_with_message(tmp_path: Path, store: str) -> None:
    out = labbook("train", "experiment=gmm_blobs", f"ckpt_path={tmp_path / 'missing.ckpt'}", QUIET, cwd=tmp_path)
    assert out.returncode == 1
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert "missing.ckpt" in run.data.tags["error"]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("labbook: error:") and run.info.run_id in last and "Traceback" not in out.stderr


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...); None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def labbook_workers(pid: int) -> list[int]:
    """The living `labbook` processes whose parent is ``pid``: the DDP worker ranks it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) and int(stat[1]) == pid:
            try:
                if b"labbook" in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


LONG_GMM = ("experiment=gmm_blobs", "model.tol=0", "datamodule.n_samples=200000")


@pytest.mark.parametrize("signum,trainer", [(signal.SIGTERM, "cpu"), (signal.SIGINT, "cpu"), (signal.SIGTERM, "ddp_cpu"),
                                            (signal.SIGINT, "ddp_cpu")],
                         ids=["SIGTERM", "SIGINT", "SIGTERM-ddp_cpu", "SIGINT-ddp_cpu"])
def test_signal_marks_killed(start_training, store: str, tmp_path: Path, signum: int, trainer: str) -> None:
    proc = start_training(*LONG_GMM, "trainer.max_epochs=100000", f"trainer={trainer}")
    workers = labbook_workers(proc.pid)
    assert len(workers) == (1 if trainer == "ddp_cpu" else 0)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    run = only_run(store)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == f"interrupted by {signal.Signals(signum).name}"
    assert "marked KILLED" in err.strip().splitlines()[-1]
    assert not [w for w in workers if alive(w)]
    # The state reached (the last completed epoch) is in the store, and a resume finishes the same run.
    client = MlflowClient(store)
    assert "checkpoints/last.ckpt" in artifacts(client, run.info.run_id)
    if signum == signal.SIGINT and trainer == "ddp_cpu":
        import torch

        ckpt = client.download_artifacts(run.info.run_id, "checkpoints/last.ckpt", str(tmp_path / "ckpt"))
        done = int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) + 1
        out = labbook("train", f"resume={run.info.run_id}", f"trainer.max_epochs={done + 2}", "trainer=ddp_cpu",
                      QUIET, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        resumed = only_run(store)
        assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"


def test_a_dead_worker_fails_its_run_and_the_sweep_goes_on(start_training, store: str) -> None:
    """Lightning would SIGKILL the whole sweep here, leaving the run RUNNING and the next job's workers orphaned."""
    proc = start_training("-m", *LONG_GMM, "trainer=ddp_cpu", "trainer.max_epochs=100000,2")
    (worker,) = labbook_workers(proc.pid)
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    first, second = sorted(runs(store), key=lambda r: r.info.start_time)
    assert first.info.status == "FAILED", first.data.tags.get("error")
    message = f"DDP worker rank 1 (pid {worker}) was killed by SIGKILL"
    assert message in first.data.tags["error"]
    assert second.info.status == "FINISHED" and second.data.params["trainer.max_epochs"] == "2"
    last = err.strip().splitlines()[-1]
    assert last.startswith("labbook: error:") and message in last and "Traceback" not in err


def test_workers_die_with_rank_zero(start_training) -> None:
    proc = start_training(*LONG_GMM, "trainer=ddp_cpu", "trainer.max_epochs=100000")
    (worker,) = labbook_workers(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)  # returns once no process holds the output pipes: no orphan is left waiting
    deadline = time.time() + 10
    while alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(worker)


def test_ddp_cpu_matches_one_process_with_one_run(tmp_path: Path) -> None:
    fitted = {}
    for trainer in ("cpu", "ddp_cpu"):
        uri = f"sqlite:///{tmp_path / trainer}.db"
        out = labbook("train", "experiment=gmm_blobs", f"trainer={trainer}", "trainer.max_epochs=6", "model.tol=0",
                      "datamodule.n_samples=10001", QUIET, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        assert out.returncode == 0, out.stderr[-3000:]
        run = only_run(uri)  # exactly one run, though two processes trained
        assert run.info.status == "FINISHED"
        fitted[trainer] = (npz(MlflowClient(uri), run.info.run_id, "parameters.npz", tmp_path / trainer),
                           run.data.metrics)
    (one, m1), (two, m2) = fitted["cpu"], fitted["ddp_cpu"]
    for key in ("weights", "means", "covariances"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-6, atol=1e-6, err_msg=key)
    assert abs(m1["train/log_likelihood"] - m2["train/log_likelihood"]) < 1e-6


def test_multirun_sweep_under_ddp_records_one_run_per_job(tmp_path: Path, store: str) -> None:
    """A sweep of 2-process jobs: worker ranks must neither re-run the sweep nor create runs."""
    out = labbook("train", "-m", "experiment=gmm_blobs", "trainer=ddp_cpu", "model.covariance_type=full,diag",
                  "trainer.max_epochs=3",
                  "datamodule.n_samples=3000", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = runs(store)
    assert out.stdout.count("run id: ") == 2
    assert sorted(r.data.params["model.covariance_type"] for r in found) == ["diag", "full"]
    assert all(r.info.status == "FINISHED" for r in found)

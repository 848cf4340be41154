"""README features driven through the real `labbook` command, each read back from the store (or the disk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import labbook, logged_models, model_checkpoint, runs
from tests.test_train_e2e import QUIET, artifacts, only_run

FAST_LSTM = ("experiment=lstm_sunspots", "trainer.max_epochs=12")


def train(tmp_path: Path, *overrides: str, env: dict | None = None) -> None:
    """`labbook train OVERRIDES` (with debug=quiet unless another debug preset is chosen) must succeed."""
    debug = [] if any(o.startswith("debug=") for o in overrides) else [QUIET]
    out = labbook("train", *overrides, *debug, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def download(client: MlflowClient, run_id: str, name: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, name, str(into)))


def test_cfg_job_prints_the_config_and_trains_nothing(tmp_path: Path, store: str) -> None:
    out = labbook("train", "experiment=gmm_iris", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = yaml.safe_load(out.stdout)
    assert printed["model"]["n_components"] == 3 and printed["logger"]["experiment_name"] == "gmm_iris"
    assert "run id:" not in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no store, no artifacts, no logs/"


def test_early_stopping_stops_when_the_monitor_stalls(tmp_path: Path, store: str) -> None:
    patience = 2
    train(tmp_path, "experiment=lstm_sunspots", "callbacks=early_stopping",
          f"callbacks.early_stopping.patience={patience}", "trainer.max_epochs=60")
    run = only_run(store)
    assert run.info.status == "FINISHED"
    val = history(MlflowClient(store), run.info.run_id, "val/loss")  # the LSTM's monitor, mode min
    assert len(val) < 60, "never stopped early"
    best = int(np.argmin(val))
    # It stopped exactly `patience` validations after the last improvement.
    assert len(val) - 1 - best == patience, val


def test_early_stopping_on_a_metric_the_model_never_logs_fails_clearly(tmp_path: Path, store: str) -> None:
    out = labbook("train", *FAST_LSTM, "callbacks=early_stopping", "callbacks.early_stopping.monitor=val/nope",
                  QUIET, cwd=tmp_path)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("labbook: error:") and "val/nope" in last and "val/loss" in last, last
    assert "Traceback" not in out.stderr
    run = only_run(store)
    assert run.info.status == "FAILED" and run.info.run_id in last


def test_early_stopping_without_any_monitor_is_a_config_error() -> None:
    """A model that names no monitor (any plain LightningModule) and no callbacks.early_stopping.monitor."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from labbook.config import schemas
    from labbook.config.groups import CONF_DIR
    from labbook.errors import ConfigValueError
    from labbook.train.callbacks import build_callbacks

    schemas.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["callbacks=early_stopping", "paths.checkpoint_dir=/tmp/x"])
    with pytest.raises(ConfigValueError) as err:
        build_callbacks(cfg, pl.LightningModule())
    assert err.value.key == "callbacks.early_stopping.monitor" and "names no metric" in str(err.value)


def test_debug_fast_runs_four_batches_for_two_epochs(tmp_path: Path, store: str) -> None:
    train(tmp_path, "experiment=seq2seq_dates", "debug=fast", "model.hidden_size=32")
    run = only_run(store)
    client = MlflowClient(store)
    assert run.info.status == "FINISHED" and "test/exact_match" in run.data.metrics
    assert len(history(client, run.info.run_id, "val/exact_match")) == 2
    last = torch.load(download(client, run.info.run_id, "checkpoints/last.ckpt", tmp_path / "dl"), weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 8)  # 2 epochs × limit_train_batches=4


def test_experiment_run_name_and_tags_reach_the_run(tmp_path: Path, store: str) -> None:
    train(tmp_path, "experiment=polynomial", "trainer.max_epochs=3", "logger.experiment_name=cubic-study",
          "logger.run_name=first try", "+logger.tags.team=vision", "+logger.tags.ticket=LB-7")
    run = only_run(store)
    assert MlflowClient(store).get_experiment(run.info.experiment_id).name == "cubic-study"
    assert run.info.run_name == "first try"
    assert run.data.tags["team"] == "vision" and run.data.tags["ticket"] == "LB-7"


def test_artifacts_land_beside_the_sqlite_store(tmp_path: Path) -> None:
    where, cwd = tmp_path / "team" / "store", tmp_path / "work"
    cwd.mkdir()
    uri = f"sqlite:///{where / 'runs.db'}"
    train(cwd, "experiment=polynomial", "trainer.max_epochs=3", env={"MLFLOW_TRACKING_URI": uri})
    run = only_run(uri)
    assert run.info.artifact_uri.startswith((where / "mlartifacts").as_uri() + "/polynomial/"), run.info.artifact_uri
    on_disk = {p.relative_to(where / "mlartifacts").as_posix() for p in (where / "mlartifacts").rglob("*") if p.is_file()}
    exp_id = run.info.experiment_id
    assert f"polynomial/{run.info.run_id}/artifacts/config/config.yaml" in on_disk, (exp_id, sorted(on_disk)[:5])
    assert f"polynomial/{run.info.run_id}/artifacts/checkpoints/last.ckpt" in on_disk
    [model] = logged_models(uri, run.info.run_id)  # the best checkpoint, in the run's model beside the store
    assert f"polynomial/models/{model.model_id}/artifacts/artifacts/best.ckpt" in on_disk
    assert not (cwd / "mlartifacts").exists() and not (cwd / "mlruns").exists() and not (cwd / "mlflow.db").exists()


def lstm_answers(ckpt: Path, windows: list[str]) -> list[str]:
    """What the LSTM in ``ckpt`` forecasts for ``windows``, computed in this process."""
    from labbook.datamodules.series import SunspotsDataModule
    from labbook.lightning_modules.lstm import LSTMForecaster

    model = LSTMForecaster.load_from_checkpoint(str(ckpt), map_location="cpu")
    dm = SunspotsDataModule(window=20, batch_size=16)
    return dm.format_outputs(model.predict(dm.parse_inputs(windows)))


def test_best_checkpoint_is_best_by_the_monitor_and_predict_falls_back_to_last(tmp_path: Path, store: str) -> None:
    train(tmp_path, *FAST_LSTM)
    run = only_run(store)
    client = MlflowClient(store)
    val = history(client, run.info.run_id, "val/loss")
    best_epoch = int(np.argmin(val))
    assert best_epoch < len(val) - 1, f"val/loss fell every epoch {val}: best and last coincide, nothing is tested"
    best = torch.load(model_checkpoint(store, run.info.run_id, tmp_path / "b"), weights_only=True)
    last = torch.load(download(client, run.info.run_id, "checkpoints/last.ckpt", tmp_path / "l"), weights_only=True)
    assert best["epoch"] == best_epoch and last["epoch"] == len(val) - 1
    assert run.data.tags["checkpoint.monitor"] == "val/loss"
    assert float(run.data.tags["checkpoint.best_score"]) == pytest.approx(min(val), rel=1e-5)

    import statsmodels.api as sm

    series = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    windows = [",".join(f"{v:g}" for v in series[i:i + 20]) for i in (0, 150, 289)]
    out = labbook("predict", run.info.run_id, *windows, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == lstm_answers(tmp_path / "b" / "best.ckpt", windows)

    # The run's model holds the best checkpoint (its step: the best epoch), the run only its last one.
    [model] = logged_models(store, run.info.run_id)
    assert [o.step for o in client.get_run(run.info.run_id).outputs.model_outputs] == [best_epoch]
    assert "checkpoints/best.ckpt" not in artifacts(client, run.info.run_id)
    # Without a model or best.ckpt, predict answers with last.ckpt (a different epoch: different answers).
    client.delete_logged_model(model.model_id)
    fallback = labbook("predict", run.info.run_id, *windows, cwd=tmp_path)
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.splitlines() == lstm_answers(tmp_path / "l" / "last.ckpt", windows)
    assert fallback.stdout != out.stdout

    wrong = labbook("predict", run.info.run_id, "1,2,3", cwd=tmp_path)
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert "expected 20 comma-separated values, got 3" in wrong.stderr and "Traceback" not in wrong.stderr


def test_gmm_predict_gives_each_rows_component(tmp_path: Path, store: str) -> None:
    from labbook.datamodules.tabular import IrisDataModule
    from labbook.lightning_modules.gmm import GaussianMixtureEM

    train(tmp_path, "experiment=gmm_iris")
    run = only_run(store)
    rows = ["5.1,3.5,1.4,0.2", "7.0,3.2,4.7,1.4", "6.3,3.3,6.0,2.5", "4.9,3.0,1.4,0.2"]
    out = labbook("predict", run.info.run_id, *rows, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ckpt = model_checkpoint(store, run.info.run_id, tmp_path / "dl")
    model = GaussianMixtureEM.load_from_checkpoint(str(ckpt))
    expected = [str(int(c)) for c in model.predict(IrisDataModule().parse_inputs(rows)).tolist()]
    assert out.stdout.splitlines() == expected
    # three species, three components: setosa, versicolor and virginica rows land in three different ones
    assert len(set(expected[:3])) == 3 and expected[0] == expected[3]
    bad = labbook("predict", run.info.run_id, "5.1,3.5,1.4", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "line 1: expected 4 comma-separated values, got 3" in bad.stderr and "Traceback" not in bad.stderr


def test_a_sweep_with_a_failing_job_names_it_and_finishes_the_others(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", "experiment=polynomial", "trainer.max_epochs=3",
                  "ckpt_path=null,missing.ckpt", "seed=1,2", QUIET, cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    found = runs(store)
    assert len(found) == 4 and not [r for r in found if r.info.status == "RUNNING"]
    failed = [r for r in found if r.info.status == "FAILED"]
    assert sorted(r.data.params["seed"] for r in failed) == ["1", "2"]
    assert all(r.data.params["ckpt_path"] == "missing.ckpt" for r in failed)
    assert sorted(r.data.params["seed"] for r in found if r.info.status == "FINISHED") == ["1", "2"]
    job_lines = [line for line in out.stderr.splitlines() if line.startswith("labbook: error: job ")]
    assert len(job_lines) == 2 and all("ckpt_path=missing.ckpt" in line for line in job_lines), job_lines
    assert out.stderr.strip().splitlines()[-1].startswith("labbook: error: 2 jobs failed; the first: ")
    assert "Traceback" not in out.stderr


def test_a_run_records_its_versions_and_packages(tmp_path: Path, store: str) -> None:
    import platform
    from importlib.metadata import version

    train(tmp_path, "experiment=polynomial", "trainer.max_epochs=2")
    run = only_run(store)
    tags = run.data.tags
    assert tags["versions.python"] == platform.python_version()
    for package in ("torch", "pytorch-lightning", "hydra-core", "mlflow", "numpy", "labbook"):
        assert tags[f"versions.{package}"] == version(package), package
    packages = download(MlflowClient(store), run.info.run_id, "environment/packages.txt", tmp_path / "dl").read_text()
    lines = packages.splitlines()
    names = [line.split("==")[0] for line in lines]
    assert names == sorted(names) and f"torch=={version('torch')}" in lines and f"mlflow=={version('mlflow')}" in lines


@pytest.mark.parametrize("preset", ["gmm_blobs", "lstm_sunspots"])
def test_same_config_and_seed_give_identical_metric_histories(tmp_path: Path, preset: str) -> None:
    overrides = [f"experiment={preset}", "trainer.max_epochs=6", "seed=3"]
    histories = []
    for attempt in ("a", "b"):
        uri = f"sqlite:///{tmp_path / attempt}.db"
        train(tmp_path, *overrides, env={"MLFLOW_TRACKING_URI": uri})
        run = only_run(uri)
        client = MlflowClient(uri)
        histories.append({key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                                  key=lambda m: (m.step, m.timestamp))]
                          for key in run.data.metrics})
    assert histories[0] == histories[1]
    assert sum(len(h) for h in histories[0].values()) > 10

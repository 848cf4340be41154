"""The sequence models through `labbook train` (2 DDP processes where it matters) and `labbook predict`."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from labbook.datamodules.dates import DatesDataModule
from labbook.lightning_modules.seq2seq import AttentionSeq2Seq
from tests.conftest import labbook, model_checkpoint
from tests.test_train_e2e import artifacts, only_run

QUIET = "debug=quiet"
TINY_DATES = ["datamodule.n_samples=1200", "datamodule.n_test=200", "datamodule.batch_size=32", "trainer.max_epochs=1"]


def _train(tmp_path: Path, *overrides: str) -> tuple[str, object]:
    out = labbook("train", *overrides, QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, out


def test_seq2seq_ddp_then_predict_round_trip(tmp_path: Path, store: str) -> None:
    _train(tmp_path, "experiment=seq2seq_dates", "trainer=ddp_cpu", "model.hidden_size=32", *TINY_DATES)
    run = only_run(store)  # two processes, one run
    assert run.info.status == "FINISHED"
    client = MlflowClient(store)
    assert client.get_experiment(run.info.experiment_id).name == "dates"
    for key in ("train/loss_epoch", "val/loss", "val/exact_match", "val/token_accuracy", "test/exact_match", "test/token_accuracy"):
        assert key in run.data.metrics, key
    assert {"checkpoints/last.ckpt", "plots/attention_0.png"} <= artifacts(client, run.info.run_id)

    # A 1-epoch toy model answers wrongly, but predict must give exactly what its best checkpoint gives
    # (the answers' quality is tested on the full presets, test_dates_quality.py).
    questions = ["September 27, 1994", "2/10/93", "TUESDAY, SEPTEMBER 25, 1984"]
    out = labbook("predict", run.info.run_id, *questions, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    answers = out.stdout.splitlines()
    model = AttentionSeq2Seq.load_from_checkpoint(
        model_checkpoint(store, run.info.run_id, tmp_path))
    dates = DatesDataModule()
    assert answers == dates.format_outputs(model.predict(dates.parse_inputs(questions)))
    piped = labbook("predict", run.info.run_id, cwd=tmp_path, stdin="\n".join(questions) + "\n")
    assert piped.returncode == 0 and piped.stdout.splitlines() == answers

    bad = labbook("predict", run.info.run_id, "May 5, 2001 ©", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("labbook: error: input:") and "©" in bad.stderr and "Traceback" not in bad.stderr
    missing = labbook("predict", "0123456789abcdef0123456789abcdef", "1/1/01", cwd=tmp_path)
    assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr


def test_predict_needs_a_checkpoint(tmp_path: Path, store: str) -> None:
    # Without stored checkpoints the run's model still answers; without a model either, nothing can.
    _train(tmp_path, "experiment=polynomial", "trainer.max_epochs=3", "logger.log_checkpoints=false")
    assert labbook("predict", only_run(store).info.run_id, "0.5", cwd=tmp_path).returncode == 0
    MlflowClient(store).delete_run(only_run(store).info.run_id)
    _train(tmp_path, "experiment=polynomial", "trainer.max_epochs=3", "logger.log_checkpoints=false",
           "logger.log_model=none")
    run = only_run(store)
    out = labbook("predict", run.info.run_id, "0.5", cwd=tmp_path)
    assert out.returncode == 1 and "has no checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_polynomial_reaches_the_least_squares_cubic(tmp_path: Path, store: str) -> None:
    _train(tmp_path, "experiment=polynomial")
    run = only_run(store)
    assert abs(run.data.metrics["coef/b"] - 0.857) < 2e-3 and abs(run.data.metrics["coef/d"] + 0.0933) < 2e-3
    out = labbook("predict", run.info.run_id, "0", "1.5707963", cwd=tmp_path)
    zero, top = (float(v) for v in out.stdout.split())
    assert abs(zero) < 0.05 and abs(top - 1) < 0.1


def test_transformer_ddp_records_cross_attention(tmp_path: Path, store: str) -> None:
    _train(tmp_path, "experiment=transformer_dates", "trainer=ddp_cpu", *TINY_DATES)
    run = only_run(store)
    assert run.info.status == "FINISHED" and "test/exact_match" in run.data.metrics
    assert "plots/attention_0.png" in artifacts(MlflowClient(store), run.info.run_id)


# The README's table: (test/rmse_persistence, the largest test/rmse the README's figures allow).
LSTM_FIGURES = {"lstm_sunspots": (29.3, 15.5), "lstm_sine": (0.152, 0.115)}


@pytest.mark.parametrize("preset,trainer", [("lstm_sunspots", "cpu"), ("lstm_sine", "cpu"), ("lstm_sunspots", "ddp_cpu")])
def test_lstm_presets_beat_persistence_by_the_readme_margin(tmp_path: Path, store: str, preset: str, trainer: str) -> None:
    _train(tmp_path, f"experiment={preset}", f"trainer={trainer}")
    run = only_run(store)  # under ddp_cpu too: two processes, one run
    m = run.data.metrics
    persistence, worst = LSTM_FIGURES[preset]
    assert run.info.status == "FINISHED"
    assert m["test/rmse_persistence"] == pytest.approx(persistence, abs=5e-4 if preset == "lstm_sine" else 0.05)
    # README: sunspots 14.6 (seeds 0-4: 14.1-15.1) vs 29.3; sine 0.106 vs 0.152
    assert m["test/rmse"] <= worst, m
    assert m["test/rmse"] <= (0.6 if preset == "lstm_sunspots" else 0.75) * m["test/rmse_persistence"], m
    assert {"plots/forecast.png", "forecast_arrays.npz"} <= artifacts(MlflowClient(store), run.info.run_id)


def test_polynomial_under_ddp_is_one_run(tmp_path: Path, store: str) -> None:
    _train(tmp_path, "experiment=polynomial", "trainer=ddp_cpu", "trainer.max_epochs=20")
    run = only_run(store)
    assert run.info.status == "FINISHED" and "test/loss" in run.data.metrics

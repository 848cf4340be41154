"""The sequence models through `labbook train` (2 DDP processes where it matters) and `labbook predict`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import labbook
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
    assert 0.0 <= run.data.metrics["test/exact_match"] <= 1.0
    assert {"checkpoints/best.ckpt", "plots/attention_0.png"} <= artifacts(client, run.info.run_id)

    questions = ["September 27, 1994", "2/10/93", "TUESDAY, SEPTEMBER 25, 1984"]
    out = labbook("predict", run.info.run_id, *questions, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    answers = out.stdout.splitlines()
    assert len(answers) == 3 and all(re.fullmatch(r"[0-9-]{10}|.{0,10}", a) for a in answers), answers
    piped = labbook("predict", run.info.run_id, cwd=tmp_path, stdin="\n".join(questions) + "\n")
    assert piped.returncode == 0 and piped.stdout.splitlines() == answers

    bad = labbook("predict", run.info.run_id, "May 5, 2001 ©", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("labbook: error: input:") and "©" in bad.stderr and "Traceback" not in bad.stderr
    missing = labbook("predict", "0123456789abcdef0123456789abcdef", "1/1/01", cwd=tmp_path)
    assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr


def test_predict_needs_a_checkpoint(tmp_path: Path, store: str) -> None:
    _train(tmp_path, "experiment=polynomial", "trainer.max_epochs=3", "logger.log_checkpoints=false")
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


def test_lstm_ddp_on_sunspots_beats_persistence(tmp_path: Path, store: str) -> None:
    _train(tmp_path, "experiment=lstm_sunspots", "trainer=ddp_cpu")
    run = only_run(store)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert m["test/rmse"] < m["test/rmse_persistence"], m
    assert {"plots/forecast.png", "forecast_arrays.npz"} <= artifacts(MlflowClient(store), run.info.run_id)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["seq2seq_dates", "transformer_dates"])
def test_date_presets_reach_the_books_accuracy(tmp_path: Path, store: str, preset: str) -> None:
    """The quality goal: ≥ 99.9% exact match on the 5,000 generated test questions after the preset's epochs."""
    _train(tmp_path, f"experiment={preset}")
    run = only_run(store)
    assert run.data.metrics["test/exact_match"] >= 0.999, run.data.metrics


def test_polynomial_under_ddp_is_one_run(tmp_path: Path, store: str) -> None:
    _train(tmp_path, "experiment=polynomial", "trainer=ddp_cpu", "trainer.max_epochs=20")
    run = only_run(store)
    assert run.info.status == "FINISHED" and "test/loss" in run.data.metrics

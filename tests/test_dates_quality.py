"""The date models' README figures, end to end: each full preset trained by `labbook train` reaches ≥ 99.9%
test exact match, on the generated split and on the book's own file and split, and `labbook predict`
answers held-back questions exactly as the run's best checkpoint does in this process.

The four trainings take about five minutes together on 2 cores; each runs once per session and the tests
below share it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from labbook.datamodules.dates import generate_dates
from labbook.lightning_modules.seq2seq import AttentionSeq2Seq
from labbook.lightning_modules.transformer import Transformer
from tests.conftest import labbook, logged_models, model_checkpoint
from tests.test_train_e2e import QUIET, artifacts, only_run

PRESETS = {"seq2seq_dates": AttentionSeq2Seq, "transformer_dates": Transformer}
_trained: dict[tuple[str, ...], tuple[str, object]] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dates")


def trained(workdir: Path, preset: str, *overrides: str) -> tuple[str, object]:
    """(store URI, run) of ``labbook train experiment=PRESET OVERRIDES``, trained once per session."""
    key = (preset, *overrides)
    if key not in _trained:
        where = workdir / f"run{len(_trained)}"
        where.mkdir()
        uri = f"sqlite:///{where / 'mlflow.db'}"
        out = labbook("train", f"experiment={preset}", *overrides, QUIET, cwd=where, timeout=840,
                      env={"MLFLOW_TRACKING_URI": uri})
        assert out.returncode == 0, out.stderr[-3000:]
        _trained[key] = (uri, only_run(uri))
    return _trained[key]


def check_quality(uri: str, run: object) -> None:
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    assert MlflowClient(uri).get_experiment(run.info.experiment_id).name == "dates"
    assert metrics["test/exact_match"] >= 0.999, metrics
    assert metrics["test/token_accuracy"] >= metrics["test/exact_match"]
    assert {"checkpoints/last.ckpt", "plots/attention_0.png"} <= artifacts(MlflowClient(uri), run.info.run_id)
    assert len(logged_models(uri, run.info.run_id)) == 1


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_reaches_the_readme_exact_match(workdir: Path, preset: str) -> None:
    check_quality(*trained(workdir, preset))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_on_the_books_file_and_split(workdir: Path, preset: str, book_dates: Path) -> None:
    uri, run = trained(workdir, preset, f"datamodule.path={book_dates}", "datamodule.split=book")
    assert run.data.params["datamodule.split"] == "book" and run.data.params["datamodule.path"] == str(book_dates)
    check_quality(uri, run)


def held_back_questions(stored_config: dict, n: int = 24) -> tuple[list[str], list[str]]:
    """Questions the run never saw (not among its generated data), with their true ISO answers."""
    data = stored_config["datamodule"]
    seen = set(generate_dates(data["n_samples"], data["seed"])[0])
    pairs = [(q, a) for q, a in zip(*generate_dates(2000, seed=2026)) if q not in seen][:n]
    pairs += [("September 27, 1994", "1994-09-27"), ("2/10/93", "1993-02-10"),
              ("TUESDAY, SEPTEMBER 25, 1984", "1984-09-25"), ("jan 1, 1970", "1970-01-01")]
    return [q for q, _ in pairs], [a for _, a in pairs]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_predict_answers_held_back_questions_exactly(workdir: Path, preset: str) -> None:
    uri, run = trained(workdir, preset)
    client = MlflowClient(uri)
    into = workdir / f"predict-{preset}"
    config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config/config.yaml", str(into))).read_text())
    questions, answers = held_back_questions(config)

    out = labbook("predict", run.info.run_id, *questions, cwd=workdir, env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == answers  # string for string

    # The same answers from the stored best checkpoint, loaded here.
    ckpt = model_checkpoint(uri, run.info.run_id, into)
    model = PRESETS[preset].load_from_checkpoint(ckpt, map_location="cpu")
    datamodule = instantiate(config["datamodule"])
    with torch.no_grad():
        assert datamodule.format_outputs(model.predict(datamodule.parse_inputs(questions))) == answers

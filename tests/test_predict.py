"""A stored run answers `labbook predict` from its checkpoint alone: what it learnt of the data (a CSV's
standardisation, a series' scaler) is the checkpoint's datamodule state, so the training data need not be there."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from tests.conftest import labbook, model_checkpoint
from tests.test_train_e2e import QUIET, only_run


def _checkpoint(run, name: str = "best.ckpt") -> dict:
    """The run's stored checkpoint (the best: in its MLflow model), read as `resume` reads it (weights_only:
    plain values only)."""
    import tempfile

    if name == "best.ckpt":
        from mlflow.tracking import MlflowClient

        store = MlflowClient().tracking_uri
        with tempfile.TemporaryDirectory() as tmp:
            return torch.load(model_checkpoint(store, run.info.run_id, Path(tmp)), map_location="cpu", weights_only=True)
    return torch.load(Path(urlparse(run.info.artifact_uri).path) / "checkpoints" / name, map_location="cpu",
                      weights_only=True)


def _answers(run_id: str, lines: list[str]) -> list[str]:
    """What ``labbook predict`` answers, computed in this process (a `labbook` process costs seconds)."""
    import labbook as api
    from labbook.config.rebuild import answer

    model, datamodule = api.load(run_id)
    return answer(model, datamodule, lines)


def test_a_model_trained_on_a_csv_answers_after_the_csv_is_gone(tmp_path: Path, store: str) -> None:
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])
    points = centres[rng.integers(0, 3, 300)] * [1.0, 10.0, 100.0] + rng.normal(size=(300, 3)) * [1.0, 10.0, 100.0]
    csv = tmp_path / "points.csv"
    csv.write_text("width,height,depth\n" + "\n".join(",".join(f"{v:.4f}" for v in p) for p in points) + "\n")
    out = labbook("train", "datamodule=tabular", f"datamodule.path={csv}", "model.n_components=3",
                  "trainer.max_epochs=2", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)

    # The checkpoint holds the datamodule's state, under its class's name, as Lightning stores it.
    state = _checkpoint(run)["CSVDataModule"]
    train = points[np.random.default_rng(0).permutation(300)[:210]]  # seed 0: 210 training rows (70/10/20)
    assert state["n_features"] == 3 and state["input_columns"] == ["width", "height", "depth"]
    np.testing.assert_allclose(state["feature_mean"], train.mean(0), rtol=1e-4)  # the file's 4 decimals
    np.testing.assert_allclose(state["feature_std"], train.std(0), rtol=1e-4)
    assert _checkpoint(run, "last.ckpt")["CSVDataModule"] == state

    rows = ["0,0,0", "6,60,0", "0,60,600", "0.5,-3,20"]
    expected = _answers(run.info.run_id, rows)  # while the CSV is there
    assert len(set(expected[:3])) == 3, expected  # three centres, three components
    csv.rename(tmp_path / "moved.csv")
    after = labbook("predict", run.info.run_id, *rows, cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines() == expected


def test_a_forecaster_answers_without_its_series(tmp_path: Path, store: str) -> None:
    out = labbook("train", "experiment=lstm_sunspots", "trainer.max_epochs=2", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    state = _checkpoint(run)["SunspotsDataModule"]
    assert sorted(state) == ["horizon", "target_mean", "target_std", "window"] and state["window"] == 20

    from labbook.datamodules.series import SunspotsDataModule

    windows = SunspotsDataModule(window=20).example_inputs(3)
    import labbook as api
    from labbook.config.rebuild import answer

    model, datamodule = api.load(run.info.run_id)
    answers = answer(model, datamodule, windows)
    assert datamodule._series is None, "labbook.load read the series to answer"
    # statsmodels (which bundles the series) cannot be imported: the answers come from the checkpoint alone.
    blocked = tmp_path / "blocked"
    (blocked / "statsmodels").mkdir(parents=True)
    (blocked / "statsmodels" / "__init__.py").write_text("raise ImportError('statsmodels is not on this machine')\n")
    path = os.pathsep.join([str(blocked), *filter(None, [os.environ.get("PYTHONPATH")])])
    served = labbook("predict", run.info.run_id, *windows, cwd=tmp_path, env={"PYTHONPATH": path})
    assert served.returncode == 0, served.stderr
    assert served.stdout.splitlines() == answers and len(answers) == 3


def test_answer_is_one_line_for_what_is_missing_a_refused_input_and_a_miscount() -> None:
    import pytest

    from labbook.config.rebuild import answer
    from labbook.datamodules.polynomial import SineCurveDataModule
    from labbook.errors import UserError

    class Silent:  # no predict(x)
        pass

    class Echo:
        def predict(self, x):
            return x

    class OneShort(SineCurveDataModule):
        def format_outputs(self, y):
            return super().format_outputs(y)[:-1]

    dm = SineCurveDataModule()
    assert answer(Echo(), dm, ["0.5", "-1"]) == ["0.5", "-1"]
    with pytest.raises(UserError, match=r"^tests\.test_predict\..*Silent has no predict\(x\), which labbook predict "
                                        r"calls \(docs/contract\.md\)$"):
        answer(Silent(), dm, ["0.5"])
    with pytest.raises(UserError, match=r"^input: line 2: 'x' is not a number$"):
        answer(Echo(), dm, ["0.5", "x"])
    with pytest.raises(UserError, match=r"OneShort\.format_outputs gave 1 answers for 2 inputs; predict prints "):
        answer(Echo(), OneShort(), ["0.5", "1"])

"""What answering needs of the data travels in the checkpoint (Lightning's datamodule ``state_dict``), and every
built-in datamodule gives input examples its own ``parse_inputs`` reads: no training here, small data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labbook.config.contract import data_examples, data_traits, rows_as_lines, table_as_lines
from labbook.config.rebuild import restore_datamodule
from labbook.datamodules.dates import DatesDataModule
from labbook.datamodules.polynomial import SineCurveDataModule
from labbook.datamodules.series import SineDataModule, SunspotsDataModule
from labbook.datamodules.tabular import (
    IRIS_COLUMNS,
    BlobsDataModule,
    CSVDataModule,
    IrisDataModule,
    format_rows,
)


def _csv(folder: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(1)
    path = folder / "points.csv"
    rows = [f"{a:.4f},{b:.2f},{c * 1000:.1f},{'xy'[i % 2]}" for i, (a, b, c) in enumerate(rng.normal(size=(n, 3)))]
    path.write_text("alpha,beta,gamma,kind\n" + "\n".join(rows) + "\n")
    return path


# (name, a small datamodule of each built-in option, and of the CSV's with and without standardisation)
def _datamodules(folder: Path) -> dict[str, Any]:
    return {
        "blobs": BlobsDataModule(n_samples=200, n_features=3, standardize=True),
        "blobs-raw": BlobsDataModule(n_samples=200, n_features=2),
        "iris": IrisDataModule(standardize=True),
        "csv": CSVDataModule(path=str(_csv(folder)), label_column="kind"),
        "csv-columns": CSVDataModule(path=str(_csv(folder)), columns=["gamma", "alpha"], standardize=False),
        "sine": SineDataModule(length=200, window=8, horizon=2),
        "sunspots": SunspotsDataModule(window=12),
        "dates": DatesDataModule(n_samples=300, n_test=30),
        "sine_curve": SineCurveDataModule(n_points=50),
    }


NAMES = ["blobs", "blobs-raw", "iris", "csv", "csv-columns", "sine", "sunspots", "dates", "sine_curve"]
SERIES = ("sine", "sunspots")


def _first_inputs(dm: Any, n: int) -> torch.Tensor:
    """The first ``n`` model inputs of the split ``example_inputs`` takes its examples from."""
    if isinstance(dm, (BlobsDataModule, IrisDataModule, CSVDataModule)):
        return dm.split("val")[0][:n]
    if isinstance(dm, (SineDataModule, SunspotsDataModule)):
        return dm.val_set.tensors[0][:n]
    if isinstance(dm, DatesDataModule):
        return dm._tensors(dm.val_idx)[0][:n]
    x = dm.dataset.tensors[0]
    return x[torch.linspace(0, len(x) - 1, n).round().long()]


@pytest.mark.parametrize("name", NAMES)
def test_example_inputs_are_what_parse_inputs_reads_into_the_splits_inputs(tmp_path: Path, name: str) -> None:
    dm = _datamodules(tmp_path)[name]
    assert data_traits(dm).gives_examples
    examples = data_examples(dm, 3)
    assert isinstance(examples, list) and len(examples) == 3 and all(isinstance(e, str) and e for e in examples)
    assert data_examples(dm) == examples  # the datamodule's own default: three
    dm.setup("fit")
    x = dm.parse_inputs(examples)
    # The very inputs the model saw in validation (a series' windows: standardised as a whole, or a window at a time).
    torch.testing.assert_close(x, _first_inputs(dm, 3), rtol=0, atol=1e-6 if name in SERIES else 0)
    assert dm.example_inputs(0) == [] and len(dm.example_inputs(5)) == 5


def test_tabular_input_columns_name_a_rows_values() -> None:
    assert IrisDataModule().input_columns == IRIS_COLUMNS  # known before setup: the source names them
    from sklearn.datasets import load_iris

    assert IRIS_COLUMNS == list(load_iris().feature_names)
    blobs = BlobsDataModule(n_samples=50, n_features=3)
    assert blobs.input_columns is None and data_traits(blobs).input_columns is None
    blobs.setup("fit")
    assert data_traits(blobs).input_columns == ("x0", "x1", "x2")


def test_a_csv_datamodules_state_stands_in_for_the_file(tmp_path: Path) -> None:
    trained = _datamodules(tmp_path)["csv"]
    assert trained.state_dict() == {}  # nothing known before setup
    trained.setup("fit")
    state = trained.state_dict()
    train = np.loadtxt(trained.path, delimiter=",", skiprows=1, usecols=(0, 1, 2))[
        np.random.default_rng(0).permutation(60)[:42]]  # seed 0: 42 training rows of 60 (70/10/20)
    assert state["n_features"] == 3 and state["input_columns"] == ["alpha", "beta", "gamma"]
    np.testing.assert_allclose(state["feature_mean"], train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(state["feature_std"], train.std(0), rtol=1e-12)
    assert all(type(v) is float for v in state["feature_mean"] + state["feature_std"])  # plain floats: weights_only loads
    inputs = trained.example_inputs(4)
    expected = trained.parse_inputs(inputs)

    Path(trained.path).rename(tmp_path / "elsewhere.csv")  # served on another machine: no training data
    served = CSVDataModule(path=trained.path, label_column="kind")
    assert restore_datamodule(served, {"CSVDataModule": state})
    assert torch.equal(served.parse_inputs(inputs), expected)
    assert served.input_columns == ["alpha", "beta", "gamma"] and served.state_dict() == state
    with pytest.raises(ValueError, match="expected 3 comma-separated values, got 2"):  # the width, from the state
        served.parse_inputs(["1,2"])
    with pytest.raises(FileNotFoundError):  # the state is no data
        served.setup("fit")


def test_a_checkpoint_without_datamodule_state_leaves_the_datamodule_reading_its_data(tmp_path: Path) -> None:
    dm = _datamodules(tmp_path)["csv"]
    assert not restore_datamodule(dm, {"state_dict": {}})  # a checkpoint written before datamodules kept state
    assert dm.parse_inputs(["1,2,3"]).shape == (1, 3)  # standardised with the data's own mean and std


@pytest.mark.parametrize("name", ["blobs", "csv", "sine", "sunspots"])
def test_a_resumed_fit_restores_the_state_of_the_same_data_and_refuses_another(tmp_path: Path, name: str) -> None:
    """Lightning restores a checkpoint's datamodule state after setting the datamodule up (a resumed fit, a test
    of the best checkpoint): the same data's state is accepted, and another's is refused, naming it."""
    first = _datamodules(tmp_path)[name]
    first.setup("fit")
    state = first.state_dict()
    again = _datamodules(tmp_path)[name]
    again.setup("fit")
    again.load_state_dict(state)
    assert again.state_dict() == state
    key = "feature_mean" if "feature_mean" in state else "target_mean"
    other = dict(state, **{key: [v + 0.5 for v in state[key]] if isinstance(state[key], list) else state[key] + 0.5})
    with pytest.raises(ValueError, match="the data changed since the checkpoint was written"):
        again.load_state_dict(other)
    # Restored first and set up after (labbook.load, then a notebook's setup()): the same check.
    late = _datamodules(tmp_path)[name]
    late.load_state_dict(other)
    with pytest.raises(ValueError, match="the data changed since the checkpoint was written"):
        late.setup("fit")


def test_a_series_state_is_its_scaler_and_window_and_spares_reading_the_series(tmp_path: Path) -> None:
    trained = SunspotsDataModule(window=12)
    trained.setup("fit")
    state = trained.state_dict()
    assert state == {"window": 12, "horizon": 1, "target_mean": trained.scaler[0], "target_std": trained.scaler[1]}
    inputs = trained.example_inputs(2)
    expected = trained.format_outputs(trained.parse_inputs(inputs)[:, -1, :])

    served = SunspotsDataModule(window=12)
    served.load_state_dict(state)
    assert served.format_outputs(served.parse_inputs(inputs)[:, -1, :]) == expected
    assert served._series is None, "the series was read"
    with pytest.raises(ValueError, match="window=20, the checkpoint's datamodule state says window=12"):
        SunspotsDataModule().load_state_dict(state)


def test_datamodules_without_state_save_none() -> None:
    assert DatesDataModule(n_samples=300, n_test=30).state_dict() == {}
    assert SineCurveDataModule(n_points=50).state_dict() == {}


def test_a_table_becomes_the_lines_its_datamodule_reads(tmp_path: Path) -> None:
    import pandas as pd

    dm = _datamodules(tmp_path)["csv"]
    dm.setup("fit")
    columns = data_traits(dm).input_columns
    frame = pd.read_csv(dm.path)  # the CSV's own columns, the label among them, in another order
    frame = frame[["kind", "gamma", "beta", "alpha"]]
    lines = table_as_lines(frame, columns)
    assert lines[:2] == format_rows(np.loadtxt(dm.path, delimiter=",", skiprows=1, usecols=(0, 1, 2))[:2].tolist())
    assert torch.equal(dm.parse_inputs(lines), dm.parse_inputs(rows_as_lines(frame[list(columns)].to_numpy())))
    assert rows_as_lines([[1, 2.5, np.float32(0.1)]]) == ["1.0,2.5,0.10000000149011612"]
    with pytest.raises(ValueError, match="lacks column.s. 'beta'; the model reads 'alpha', 'beta', 'gamma'"):
        table_as_lines(frame.drop(columns=["beta"]), columns)
    with pytest.raises(ValueError, match="row 1, value 2: 'x' is not a number"):
        rows_as_lines([[1, "x"]])

import numpy as np
import pytest
import torch

from labbook.datamodules.series import (
    SineDataModule,
    SunspotsDataModule,
    WindowedSeriesDataModule,
    make_windows,
)


class RampDataModule(WindowedSeriesDataModule):
    """series[t] = t (+ an optional tail), so unscaled targets *are* time indices."""

    def __init__(self, length: int = 100, tail: float = 0.0, **kw) -> None:
        super().__init__(**kw)
        self.length, self.tail = length, tail

    def _load_series(self) -> np.ndarray:
        s = np.arange(self.length, dtype=float)
        s[int(0.7 * self.length) :] += self.tail
        return s


def unscaled(dm: WindowedSeriesDataModule, t: torch.Tensor) -> np.ndarray:
    mean, std = dm.scaler
    return t.double().numpy() * std + mean


def test_make_windows_shapes_and_values():
    s = np.arange(10.0)
    x, y = make_windows(s, window=3, horizon=2, first_target=0, stop=10)
    assert x.shape == (6, 3) and y.shape == (6, 2)  # targets start at t=3 .. t=8
    np.testing.assert_array_equal(x[0], [0, 1, 2])
    np.testing.assert_array_equal(y[0], [3, 4])
    np.testing.assert_array_equal(y[-1], [8, 9])
    x, y = make_windows(s, window=3, horizon=1, first_target=7, stop=10)
    np.testing.assert_array_equal(y[:, 0], [7, 8, 9])
    np.testing.assert_array_equal(x[0], [4, 5, 6])  # inputs may reach back before first_target


@pytest.mark.parametrize("horizon", [1, 3])
def test_sine_batch_shapes_and_dims(horizon):
    dm = SineDataModule(length=300, window=12, horizon=horizon, batch_size=16)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 12, 1) and y.shape == (16, horizon)
    assert x.dtype == y.dtype == torch.float32
    assert dm.dims["horizon"] == horizon and dm.dims["n_features"] == 1 and dm.dims["window"] == 12
    assert {"target_mean", "target_std"} <= dm.dims.keys()


def test_split_is_chronological():
    dm = RampDataModule(length=100, window=5, horizon=2)
    dm.setup("fit")
    t = {k: unscaled(dm, getattr(dm, f"{k}_set").tensors[1]) for k in ("train", "val", "test")}
    assert t["train"].max() < t["val"].min() and t["val"].max() < t["test"].min()
    np.testing.assert_allclose(t["test"].max(), 99)  # the last value is used
    # every val target is a forecast from inputs that precede it
    x_val = unscaled(dm, dm.val_set.tensors[0])[..., 0]
    assert (x_val.max(axis=1) < t["val"].min(axis=1)).all()


def test_scaler_fitted_on_train_only():
    dm = RampDataModule(length=100, window=5)
    dm.setup("fit")
    n_train = dm.split_points()[0]
    z = (dm.series - dm.scaler[0]) / dm.scaler[1]
    assert abs(z[:n_train].mean()) < 1e-9 and abs(z[:n_train].std() - 1) < 1e-9
    # changing values after the train part leaves the scaler alone
    shifted = RampDataModule(length=100, window=5, tail=1e6)
    assert shifted.scaler == dm.scaler
    # ... and the scaled training windows equal the standardised train values
    dm_sine = SineDataModule(length=500, window=10)
    dm_sine.setup("fit")
    y_train = dm_sine.train_set.tensors[1].numpy()
    assert abs(y_train.mean()) < 0.05 and abs(y_train.std() - 1) < 0.05


def test_sine_is_deterministic():
    a, b, c = SineDataModule(seed=3), SineDataModule(seed=3), SineDataModule(seed=4)
    for dm in (a, b, c):
        dm.setup("fit")
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, f"{split}_set").tensors, getattr(b, f"{split}_set").tensors):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.train_set.tensors[0], c.train_set.tensors[0])
    xa = torch.cat([x for x, _ in a.train_dataloader()])
    xb = torch.cat([x for x, _ in b.train_dataloader()])
    assert torch.equal(xa, xb)  # the shuffle is seeded too


def test_sunspots_length_years_and_splits():
    frame = SunspotsDataModule.load_frame()
    assert len(frame) == 309
    assert frame["YEAR"].iloc[0] == 1700 and frame["YEAR"].iloc[-1] == 2008
    dm = SunspotsDataModule(window=20)
    dm.setup("fit")
    val_start, test_start = dm.split_points()
    assert frame["YEAR"].iloc[val_start] == 1917 and frame["YEAR"].iloc[test_start] == 1963
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (197, 46, 46)
    assert dm.dims["target_mean"] == pytest.approx(frame["SUNACTIVITY"].iloc[:val_start].mean())


def test_parse_inputs_roundtrip_and_format_outputs():
    dm = SunspotsDataModule(window=4)
    dm.setup("fit")
    first_input = dm.split_points()[1] - 4  # the first test window reads the 4 values before the test part
    raw = dm.series[first_input : first_input + 4]
    x = dm.parse_inputs([", ".join(str(v) for v in raw)])
    assert x.shape == (1, 4, 1)
    torch.testing.assert_close(x[0], dm.test_set.tensors[0][0])
    # format_outputs undoes the scaling
    mean, std = dm.scaler
    out = dm.format_outputs(torch.tensor([[(50.0 - mean) / std], [(0.0 - mean) / std]]))
    assert [float(s) for s in out] == pytest.approx([50.0, 0.0], abs=1e-3)
    h3 = SineDataModule(window=2, horizon=3).format_outputs(torch.zeros(2, 3))
    assert len(h3) == 2 and len(h3[0].split(",")) == 3


def test_parse_inputs_needs_no_setup():
    a, b = SineDataModule(window=3), SineDataModule(window=3)
    b.setup("fit")
    assert torch.equal(a.parse_inputs(["0.1,0.2,0.3"]), b.parse_inputs(["0.1,0.2,0.3"]))


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1,2,3", "1,2"], "line 2: expected 3"),
        (["1,2,x"], "line 1: 'x' is not a number"),
        (["1,nan,3"], "line 1: 'nan' is not a finite"),
        ([""], "line 1: expected 3"),
    ],
)
def test_parse_inputs_errors(lines, message):
    with pytest.raises(ValueError, match=message):
        SineDataModule(window=3).parse_inputs(lines)


def test_too_short_split_is_a_value_error():
    with pytest.raises(ValueError, match="too short"):
        SineDataModule(length=40, window=30).setup("fit")  # 28 training steps < one window

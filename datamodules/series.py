"""Univariate time series cut into (past window -> next values) pairs for one-step / few-step forecasting.

Two sources share one windowing base class:

- ``SineDataModule``: a synthetic noisy sine wave, generated from ``seed``.
- ``SunspotsDataModule``: yearly mean sunspot numbers 1700-2008 (309 values), bundled with statsmodels
  (``statsmodels.api.datasets.sunspots``), so nothing is downloaded. Source: the SIDC (Solar Influences
  Data Analysis Center, Royal Observatory of Belgium) via NOAA's National Geophysical Data Center. Licence:
  statsmodels' dataset documentation states that the data are in the public domain.

How the series becomes splits (the same for both sources), for a series of length T:

- The *time axis* is split chronologically: train = [0, n_train), val = [n_train, n_train + n_val),
  test = the rest. A window belongs to the split that holds its *targets*; its inputs may reach back into
  the previous split (the past is known at forecast time, and the sunspots series is too short to throw
  away ``window`` values at every boundary). Hence every test target comes after every val target, which
  comes after every train target.
- Standardisation (mean, std) is fitted on the train part of the time axis only and applied to inputs and
  targets of every split. The model sees scaled values; ``dims`` hands it ``target_mean``/``target_std`` so
  it can report errors in original units.
- ``parse_inputs`` and ``format_outputs`` need that scaler. It is the datamodule's ``state_dict()``, which Lightning
  stores in every checkpoint: after ``load_state_dict`` of it the series is not read (a model served elsewhere
  needs neither statsmodels' bundled data nor the seed's noise). Without one, the series is simply rebuilt from
  the constructor arguments (cheap: at most a few thousand floats).

Batches are ``(x, y)`` with x: (B, window, 1) and y: (B, horizon), both scaled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from .sharding import sharded_loader

# How far a checkpoint's scaler may be from the series' own (in standard deviations) and still be the same series:
# a sum over the same values may round differently on another machine.
SAME_STATE = 1e-9

if TYPE_CHECKING:
    import pandas as pd


def make_windows(
    series: np.ndarray, window: int, horizon: int, first_target: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """All windows whose targets lie in ``series[first_target:stop]``.

    Window i has inputs ``series[t - window : t]`` and targets ``series[t : t + horizon]`` for
    t = max(first_target, window), ..., stop - horizon.

    Args:
        series: (T,) values.
    Returns:
        x: (N, window), y: (N, horizon); N may be 0.
    """
    starts = np.arange(max(first_target, window), stop - horizon + 1)
    x = np.stack([series[t - window : t] for t in starts]) if len(starts) else np.zeros((0, window))
    y = np.stack([series[t : t + horizon] for t in starts]) if len(starts) else np.zeros((0, horizon))
    return x, y


class WindowedSeriesDataModule(pl.LightningDataModule):
    """Base class: chronological split, train-only standardisation, sliding windows.

    Subclasses implement ``_load_series() -> np.ndarray`` of shape (T,), deterministic given the
    constructor arguments.
    """

    def __init__(
        self,
        window: Annotated[int, ">= 1"] = 20,
        horizon: Annotated[int, ">= 1"] = 1,
        val_fraction: Annotated[float, "> 0", "< 1"] = 0.15,
        test_fraction: Annotated[float, "> 0", "< 1"] = 0.15,
        batch_size: Annotated[int, ">= 1"] = 32,
        num_workers: Annotated[int, ">= 0"] = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if window < 1 or horizon < 1:
            raise ValueError(f"window and horizon must be >= 1, got window={window}, horizon={horizon}")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"need 0 < val_fraction, test_fraction and their sum < 1, got {val_fraction}, {test_fraction}"
            )
        self.window = window
        self.horizon = horizon
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._series: np.ndarray | None = None
        self._scaler: tuple[float, float] | None = None
        self._restored = False  # the scaler is a checkpoint's (load_state_dict before any setup)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None


    def _load_series(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def series(self) -> np.ndarray:
        """The raw series, (T,) float64."""
        if self._series is None:
            self._series = np.asarray(self._load_series(), dtype=np.float64)
        return self._series

    def split_points(self) -> tuple[int, int]:
        """(n_train, n_train + n_val): where val and test begin on the time axis."""
        T = len(self.series)
        n_test = int(round(self.test_fraction * T))
        n_val = int(round(self.val_fraction * T))
        return T - n_val - n_test, T - n_test

    @property
    def scaler(self) -> tuple[float, float]:
        """(mean, std) of the train part of the series (never looks at val/test values), or a checkpoint's
        (``load_state_dict``)."""
        if self._scaler is None:
            self._scaler = self._fit_scaler()
        return self._scaler

    def _fit_scaler(self) -> tuple[float, float]:
        train = self.series[: self.split_points()[0]]
        std = float(train.std())
        return (float(train.mean()), std if std > 0 else 1.0)  # a constant series must not divide by 0

    def _check_scaler(self, ours: tuple[float, float], theirs: tuple[float, float]) -> None:
        """The series' scaler ``ours`` is a checkpoint's ``theirs``, to rounding; else ``ValueError``."""
        if any(abs(a - b) > SAME_STATE * ours[1] for a, b in zip(ours, theirs)):
            raise ValueError(f"{type(self).__name__}: the series' scaler (mean, std) is {ours}, the checkpoint's "
                             f"datamodule state says {theirs}: the data changed since the checkpoint was written")

    # what answering needs of the data: Lightning's datamodule state --------------------
    def state_dict(self) -> dict[str, Any]:
        """``window``, ``horizon`` and the scaler (``target_mean``, ``target_std``): what ``parse_inputs`` and
        ``format_outputs`` need. Empty until the scaler is known. Lightning stores it in each checkpoint."""
        if self._scaler is None:
            return {}
        mean, std = self._scaler
        return {"window": self.window, "horizon": self.horizon, "target_mean": mean, "target_std": std}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A checkpoint's :meth:`state_dict`: its scaler is this datamodule's from now on, and the series need not
        be read. Its window and horizon must be the constructor's; a scaler already computed (a resumed fit:
        Lightning restores a checkpoint after setting up) must equal it, to rounding; else ``ValueError``."""
        if not state_dict:
            return
        name = type(self).__name__
        for key in ("window", "horizon"):
            if int(state_dict[key]) != getattr(self, key):
                raise ValueError(f"{name}: {key}={getattr(self, key)}, the checkpoint's datamodule state says "
                                 f"{key}={state_dict[key]}")
        scaler = (float(state_dict["target_mean"]), float(state_dict["target_std"]))
        if self._scaler is None:
            self._scaler, self._restored = scaler, True
        else:
            self._check_scaler(self._scaler, scaler)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self._restored:  # a checkpoint's scaler came first: it must be this series'
            self._check_scaler(self._fit_scaler(), self.scaler)
        mean, std = self.scaler
        z = (self.series - mean) / std
        val_start, test_start = self.split_points()
        bounds = {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, len(z))}
        for name, (lo, hi) in bounds.items():
            x, y = make_windows(z, self.window, self.horizon, lo, hi)
            if len(x) == 0:
                raise ValueError(
                    f"{type(self).__name__}: the {name} split (time steps {lo}..{hi - 1}) is too short for "
                    f"window={self.window}, horizon={self.horizon}"
                )
            ds = TensorDataset(torch.tensor(x, dtype=torch.float32).unsqueeze(-1), torch.tensor(y, dtype=torch.float32))
            setattr(self, f"{name}_set", ds)

    @property
    def dims(self) -> dict[str, Any]:
        mean, std = self.scaler
        return {"window": self.window, "horizon": self.horizon, "n_features": 1, "target_mean": mean, "target_std": std}

    def train_dataloader(self) -> DataLoader:
        # Shuffled by (seed, epoch), not by a generator's running state: a run resumed at epoch k sees the
        # same order as one that never stopped (and under DDP the ranks split one permutation).
        return sharded_loader(*self.train_set.tensors, batch_size=self.batch_size, shuffle=True, seed=self.seed,
                              num_workers=self.num_workers, trainer=self.trainer)

    def _eval_loader(self, ds: TensorDataset) -> DataLoader:
        # Under DDP each process gets one contiguous, unpadded slice of the windows (labbook.datamodules.sharding):
        # summed errors equal the single-process sums, and rank order is time order.
        return sharded_loader(*ds.tensors, batch_size=self.batch_size, num_workers=self.num_workers)

    def example_inputs(self, n: int = 3) -> list[str]:
        """The first ``n`` windows of the validation split, raw (unscaled) values as Python's ``repr(float)``, in
        the text ``parse_inputs`` takes: a logged model's input example. Reads the series."""
        val_start, test_start = self.split_points()
        starts = range(max(val_start, self.window), test_start - self.horizon + 1)[: max(0, n)]
        return [",".join(repr(float(v)) for v in self.series[t - self.window : t]) for t in starts]

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


    def parse_inputs(self, lines: list[str]) -> torch.Tensor:
        """Each line: ``window`` comma-separated raw (unscaled) values, oldest first.

        Returns:
            (N, window, 1) float32, standardised with the training scaler.
        """
        mean, std = self.scaler
        rows = []
        for i, line in enumerate(lines, start=1):
            fields = [f.strip() for f in line.split(",")] if line.strip() else []
            if len(fields) != self.window:
                raise ValueError(
                    f"line {i}: expected {self.window} comma-separated values, got {len(fields)}: {line!r}"
                )
            row = []
            for f in fields:
                try:
                    v = float(f)
                except ValueError:
                    raise ValueError(f"line {i}: {f!r} is not a number") from None
                if not math.isfinite(v):
                    raise ValueError(f"line {i}: {f!r} is not a finite number")
                row.append(v)
            rows.append(row)
        x = (torch.tensor(rows, dtype=torch.float64).reshape(len(rows), self.window) - mean) / std
        return x.float().unsqueeze(-1)

    def format_outputs(self, y: torch.Tensor) -> list[str]:
        """Scaled forecasts (N, horizon) or (N,) -> one line per input: comma-separated values in original units."""
        mean, std = self.scaler
        y = y.detach().double().cpu().reshape(len(y), -1) * std + mean
        return [",".join(f"{v:.6g}" for v in row.tolist()) for row in y]


class SineDataModule(WindowedSeriesDataModule):
    """``amplitude * sin(2 pi t / period) + N(0, noise_std^2)`` for t = 0..length-1, noise drawn from ``seed``."""

    def __init__(
        self,
        length: Annotated[int, ">= 10"] = 1000,
        period: Annotated[float, "> 0"] = 50.0,
        amplitude: float = 1.0,
        noise_std: Annotated[float, ">= 0"] = 0.1,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the window and the split, :class:`WindowedSeriesDataModule`'s (their defaults are there)."""
        super().__init__(**kwargs)
        self.length = length
        self.period = period
        self.amplitude = amplitude
        self.noise_std = noise_std

    def _load_series(self) -> np.ndarray:
        t = np.arange(self.length)
        noise = np.random.default_rng(self.seed).normal(0.0, self.noise_std, self.length)
        return self.amplitude * np.sin(2 * np.pi * t / self.period) + noise


class SunspotsDataModule(WindowedSeriesDataModule):
    """Yearly mean sunspot numbers 1700-2008 from statsmodels (public domain; SIDC via NOAA NGDC).

    With the default 70/15/15 split the years divide into train 1700-1916, val 1917-1962, test 1963-2008.
    Its constructor is the base class's: the series itself has nothing to configure.
    """

    @staticmethod
    def load_frame() -> pd.DataFrame:
        """The bundled table: columns YEAR (1700.0 ... 2008.0) and SUNACTIVITY."""
        from statsmodels.api import datasets  # slow import (~1 s), only when the data are needed

        return datasets.sunspots.load_pandas().data

    def _load_series(self) -> np.ndarray:
        return self.load_frame()["SUNACTIVITY"].to_numpy(dtype=np.float64)

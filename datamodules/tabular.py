"""Tabular datamodules: synthetic Gaussian blobs, scikit-learn's bundled iris, a user CSV.

All three share ``TabularDataModule``: rows are float32 feature vectors x [D] with an integer
label y (−1 when unlabelled), split once into train/val/test by a permutation drawn from
``seed``. Batches are ``(x [B, D] float32, y [B] int64)``.

The loaders cut each split into contiguous batches themselves (no per-row collation, which
dominates the cost of large tabular batches) and partition rows across DDP processes without
the duplicate padding of ``DistributedSampler`` (``labbook.datamodules.sharding``): every process gets a
disjoint shard and the same number of batches, so sums over all processes are exactly the sums
over the split.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import warnings
from typing import Annotated, Any, Iterable, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .sharding import sharded_loader

# Rows converted (gathered, standardised, narrowed to float32) or generated at a time: a few MB of temporaries.
_BLOCK_ROWS = 65536
_READ_BYTES = 1 << 22
# The rows are trained in float32: a value beyond its range would become infinite. Within it, float64 sums and
# squares of any number of rows stay finite (the training split's mean and standard deviation).
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Raw rows kept (float64, as read) from the start of the validation split, for ``example_inputs``.
EXAMPLE_ROWS = 32
# How far a checkpoint's mean/std may be from the data's own (in standard deviations) and still be the same data:
# a sum over the same rows may round differently on another machine.
SAME_STATE = 1e-9


def _beyond_float32(value: float) -> str:
    return f"is beyond float32's range (±{FLOAT32_MAX:.3g}), which the rows are trained in; rescale the column"


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if test_fraction > 0:
        n_test = max(1, n_test)
    if val_fraction > 0:
        n_val = max(1, n_val)
    return n - n_val - n_test, n_val, n_test


def format_rows(rows: Iterable[Sequence[float]]) -> list[str]:
    """Rows of feature values → the lines ``TabularDataModule.parse_inputs`` takes: each value as Python's
    ``repr(float(v))`` (the shortest text that reads back as the same float64), joined by ``,``."""
    return [",".join(repr(float(v)) for v in row) for row in rows]


def _min_rows(val_fraction: float, test_fraction: float) -> int:
    """Fewest rows giving ≥ 2 training rows and ≥ 1 row in every split with a positive fraction."""
    n = 2
    while _split_counts(n, val_fraction, test_fraction)[0] < 2:
        n += 1
    return n

# The bounds of the arguments every tabular datamodule shares, written once (a subclass with other defaults
# restates the default, never the bound); labbook reads them as the config keys' checks.
BatchSize = Annotated[int, ">= 1"]
Workers = Annotated[int, ">= 0"]
Fraction = Annotated[float, ">= 0", "< 1"]


class TabularDataModule(pl.LightningDataModule):
    """Base class: subclasses implement ``_load() -> (X [N, D] float, y [N] int or None)``.

    ``dims`` = ``{"n_features": D, "n_classes": C or None, "n_train": rows of the training split,
    "feature_mean": …, "feature_std": …}``. With ``standardize`` every feature is shifted and scaled by the
    mean and standard deviation of the training split, and ``dims`` hands those on (None without).

    What answering inputs needs of the data (the number of features, their names in ``input_columns``, the
    standardisation) is its ``state_dict()``, which Lightning stores in every checkpoint; after
    ``load_state_dict`` of it, ``parse_inputs`` reads no data (the training data need not be there).
    """

    source = "data"

    def __init__(
        self,
        batch_size: BatchSize = 8192,
        num_workers: Workers = 0,
        seed: int = 0,
        val_fraction: Fraction = 0.1,
        test_fraction: Fraction = 0.2,
        standardize: bool = False,
        shuffle: bool = False,
    ) -> None:
        super().__init__()
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) with sum < 1"
            )
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.standardize = bool(standardize)
        self.shuffle = bool(shuffle)
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None
        self._n_classes: int | None = None
        self._n_features: int | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        # The feature columns' names, in the order of a row's values (what a table of inputs holds): known after
        # setup() or load_state_dict().
        self.input_columns: list[str] | None = None
        self._example_rows: np.ndarray | None = None  # raw rows of the validation split (else test, else train)
        self._restored: dict[str, Any] | None = None  # the state load_state_dict gave before any setup()

    # subclasses -------------------------------------------------------------
    def _load(self) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def _expected_features(self) -> int | None:
        """D when known without loading the data (used by ``parse_inputs``)."""
        return self._n_features

    def _declared_classes(self) -> int | None:
        """C when the source defines it (a class may be absent from a small sample)."""
        return None

    def _feature_names(self, n_features: int) -> list[str]:
        """The names of the loaded columns (after ``_load``): ``x0``, ``x1``, … unless the source names them."""
        return [f"x{j}" for j in range(n_features)]

    # splits -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        self._splits = self._build_splits()
        if self._restored is not None:  # a checkpoint's state came first: it must be this data's
            self._check_state(self._restored)

    def _check_rows(self, n: int) -> None:
        need = _min_rows(self.val_fraction, self.test_fraction)
        if n < need:
            raise ValueError(
                f"{self.source}: {n} data rows are too few for val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction} (need at least {need})"
            )

    def _check_range(self, X: np.ndarray) -> None:
        """Every value finite and within float32's range (a subclass's ``_load`` may hand on anything), checked
        a block of rows at a time."""
        for c in range(0, X.shape[0], _BLOCK_ROWS):
            block = X[c : c + _BLOCK_ROWS]
            bad = ~(np.abs(block) <= FLOAT32_MAX)  # NaN too
            if bad.any():
                r, j = np.argwhere(bad)[0]
                value = float(block[r, j])
                what = _beyond_float32(value) if math.isfinite(value) else "is not a finite number"
                raise ValueError(f"{self.source}: row {c + r + 1} of the data, {self._column_name(j)}: {value!r} {what}")

    def _column_name(self, j: int) -> str:
        return f"column {j + 1}"

    def _split_order(self, n: int) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
        """The permutation drawn from ``seed`` and each split's range ``[a, b)`` in it: train, val, test."""
        perm = np.random.default_rng(self.seed).permutation(n)
        n_train, n_val, _ = _split_counts(n, self.val_fraction, self.test_fraction)
        return perm, {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}

    @staticmethod
    def _example_range(ranges: dict[str, tuple[int, int]]) -> tuple[int, int]:
        """Where ``example_inputs`` come from in the split order: the first ``EXAMPLE_ROWS`` of the validation
        split, else of the test split, else of the training split."""
        a, b = next(ranges[s] for s in ("val", "test", "train") if ranges[s][1] > ranges[s][0])
        return a, min(b, a + EXAMPLE_ROWS)

    def _build_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Load everything (``_load``), then cut the splits, standardised and as float32.

        Memory: beside the loaded float64 rows, only the float32 splits and one block of rows at a time
        (a float64 copy of the training rows while their mean and standard deviation are computed).
        """
        X, y = self._load()
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        self._check_rows(n)
        self._check_range(X)
        if y is None:
            y = np.full(n, -1, dtype=np.int64)
            self._n_classes = None
        else:
            y = np.asarray(y, dtype=np.int64)
            self._n_classes = self._declared_classes() or (int(y.max()) + 1 if (y >= 0).any() else None)
        self._n_features = X.shape[1]
        self.input_columns = list(self._feature_names(X.shape[1]))
        perm, ranges = self._split_order(n)
        a, b = self._example_range(ranges)
        self._example_rows = X[perm[a:b]].copy()
        mean = std = None
        if self.standardize:
            train = X[perm[: ranges["train"][1]]]
            mean, std = train.mean(0), train.std(0)
            del train
            std[std == 0] = 1.0  # a constant feature stays constant rather than becoming NaN
            self.mean, self.std = torch.from_numpy(mean), torch.from_numpy(std)
        splits = {}
        for name, (a, b) in ranges.items():
            x = np.empty((b - a, X.shape[1]), dtype=np.float32)
            for c in range(a, b, _BLOCK_ROWS):
                rows = X[perm[c : min(b, c + _BLOCK_ROWS)]]
                if mean is not None:
                    rows = (rows - mean) / std
                x[c - a : c - a + rows.shape[0]] = rows
            splits[name] = (torch.from_numpy(x), torch.from_numpy(y[perm[a:b]]))
        return splits

    @property
    def dims(self) -> dict[str, Any]:
        """``n_features``, ``n_classes``, ``n_train`` (the training split's rows: a model can refuse, before any
        run is opened, what the data cannot support, e.g. more mixture components than rows) and, with
        ``standardize``, the per-feature ``feature_mean`` and ``feature_std`` the rows were standardised with
        (z = (x − mean) / std), so that a model can report what it measures in the data's own units; both None
        without standardisation."""
        self.setup("fit")
        assert self._splits is not None
        scaled = self.standardize and self.mean is not None and self.std is not None
        return {
            "n_features": self._n_features,
            "n_classes": self._n_classes,
            "n_train": int(self._splits["train"][0].shape[0]),
            "feature_mean": [float(v) for v in self.mean] if scaled else None,
            "feature_std": [float(v) for v in self.std] if scaled else None,
        }

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """The (x [N, D] float32, y [N] int64) tensors of ``train``, ``val`` or ``test``."""
        self.setup("fit")
        assert self._splits is not None
        return self._splits[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        x, y = self.split(name)
        return sharded_loader(x, y, batch_size=self.batch_size, shuffle=shuffle, seed=self.seed,
                              num_workers=self.num_workers, trainer=self.trainer if name == "train" else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    # what answering needs of the data: Lightning's datamodule state --------------------
    def state_dict(self) -> dict[str, Any]:
        """``n_features``, ``input_columns`` and, with ``standardize``, the training split's ``feature_mean`` and
        ``feature_std`` (float lists; None without): what ``parse_inputs`` needs of the data. Empty until known
        (``setup()`` or ``load_state_dict``). Lightning stores it in each checkpoint under the class's name."""
        if self._splits is None and self._restored is None:
            return {}
        return self._state()

    def _state(self) -> dict[str, Any]:
        scaled = self.standardize and self.mean is not None and self.std is not None
        return {
            "n_features": self._n_features,
            "input_columns": list(self.input_columns) if self.input_columns is not None else None,
            "feature_mean": [float(v) for v in self.mean] if scaled else None,
            "feature_std": [float(v) for v in self.std] if scaled else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A checkpoint's :meth:`state_dict`. Before ``setup()`` it stands in for the data (``parse_inputs`` then
        reads none); after it (a resumed fit: Lightning restores a checkpoint after setting up) it must be this
        data's, else ``ValueError`` (the data changed since the checkpoint was written)."""
        if not state_dict:
            return
        if self._splits is not None:
            self._check_state(state_dict)
            return
        self._restored = dict(state_dict)
        self._n_features = int(state_dict["n_features"])
        columns = state_dict.get("input_columns")
        self.input_columns = list(columns) if columns is not None else None
        mean, std = state_dict.get("feature_mean"), state_dict.get("feature_std")
        if mean is not None and std is not None:
            self.mean = torch.tensor(mean, dtype=torch.float64)
            self.std = torch.tensor(std, dtype=torch.float64)

    def _check_state(self, state: dict[str, Any]) -> None:
        """``state`` (a checkpoint's) is what this data gives, to rounding; else ``ValueError`` naming the first
        difference."""
        mine = self._state()
        changed = "the data changed since the checkpoint was written"
        for key in ("n_features", "input_columns"):
            if state.get(key) != mine[key]:
                raise ValueError(f"{self.source}: {key}={mine[key]!r}, the checkpoint's datamodule state says "
                                 f"{state.get(key)!r}: {changed}")
        if (state.get("feature_mean") is None) != (mine["feature_mean"] is None):
            raise ValueError(f"{self.source}: standardize={self.standardize}, but the checkpoint's datamodule state "
                             f"{'lacks' if state.get('feature_mean') is None else 'has'} a standardisation")
        if mine["feature_mean"] is None:
            return
        names = mine["input_columns"] or [f"x{j}" for j in range(len(mine["feature_mean"]))]
        for key in ("feature_mean", "feature_std"):
            for name, ours, theirs, std in zip(names, mine[key], state[key], mine["feature_std"]):
                if abs(ours - theirs) > SAME_STATE * std:
                    raise ValueError(f"{self.source}: column {name!r} has {key}={ours!r}, the checkpoint's datamodule "
                                     f"state says {theirs!r}: {changed}")

    # labbook predict ------------------------------------------------------------
    def example_inputs(self, n: int = 3) -> list[str]:
        """The first ``n`` rows (at most ``EXAMPLE_ROWS``) of the validation split (else test, else train), as
        read, in the text ``parse_inputs`` takes (:func:`format_rows`): a logged model's input example. Sets the
        data up."""
        self.setup("fit")
        assert self._example_rows is not None
        return format_rows(self._example_rows[: max(0, n)].tolist())

    def parse_inputs(self, lines: list[str]) -> Tensor:
        """Comma-separated numbers, one row per non-blank line → FloatTensor [N, D]: each row the values of
        ``input_columns``, in order (:func:`format_rows` writes them).

        Applies the training-split standardisation when ``standardize`` is on: a checkpoint's (after
        ``load_state_dict``), else the data's (which sets the data up).
        """
        rows: list[list[float]] = []
        width = self._expected_features()
        for i, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            row = []
            for cell in text.split(","):
                cell = cell.strip()
                try:
                    value = float(cell)
                except ValueError:
                    raise ValueError(f"line {i}: {cell!r} is not a number") from None
                if not math.isfinite(value):
                    raise ValueError(f"line {i}: {cell!r} is not a finite number")
                if abs(value) > FLOAT32_MAX:
                    raise ValueError(f"line {i}: {cell!r} is beyond float32's range (±{FLOAT32_MAX:.3g}), which the "
                                     "model computes in")
                row.append(value)
            if width is None:
                width = len(row)
            if len(row) != width:
                raise ValueError(f"line {i}: expected {width} comma-separated values, got {len(row)}")
            rows.append(row)
        x = torch.tensor(rows, dtype=torch.float64).reshape(-1, width or 0)
        if self.standardize:
            if self.mean is None or self.std is None:  # no checkpoint's state: the data's own
                self.setup("fit")
            assert self.mean is not None and self.std is not None
            x = (x - self.mean) / self.std
        return x.float()

    def format_outputs(self, y: Tensor) -> list[str]:
        """Component (or class) indices [N] → strings; rows of probabilities [N, K] → CSV text."""
        y = torch.as_tensor(y).detach().cpu()
        if y.dim() == 2:
            return [",".join(f"{v:.6g}" for v in row.tolist()) for row in y]
        return [str(int(v)) for v in y.reshape(-1).tolist()]


class BlobsDataModule(TabularDataModule):
    """Synthetic Gaussian mixture: ``n_centers`` anisotropic blobs in ``n_features`` dimensions.

    Centres are spread over [−10, 10]^D (each the best of 32 uniform candidates at maximising the
    distance to the centres before it, so blobs rarely overlap); blob k has covariance R_k diag(s_k²) R_kᵀ with a random
    rotation R_k and scales s_k = cluster_std · U(0.5, 1.5)^D; sizes are multinomial with
    Dirichlet(5)-distributed proportions. y is the blob that generated the row.
    """

    source = "blobs"

    def __init__(
        self,
        n_samples: Annotated[int, ">= 10"] = 30_000,
        n_features: Annotated[int, ">= 1"] = 2,
        n_centers: Annotated[int, ">= 1"] = 4,
        cluster_std: Annotated[float, "> 0"] = 1.0,
        **kwargs: Any,  # TabularDataModule's: batch_size, seed, the fractions, ...
    ) -> None:
        super().__init__(**kwargs)
        if n_samples < 1 or n_features < 1 or n_centers < 1 or cluster_std <= 0:
            raise ValueError("n_samples, n_features, n_centers and cluster_std must be positive")
        self.n_samples, self.n_centers, self.cluster_std = int(n_samples), int(n_centers), float(cluster_std)
        self._n_features = int(n_features)

    def _declared_classes(self) -> int | None:
        return self.n_centers

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        return make_blobs(self.n_samples, self._n_features, self.n_centers, self.cluster_std, self.seed)

    def _build_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The splits of ``make_blobs``' rows, generated block by block straight into them.

        The same numbers as loading everything, without ever holding the data in float64: the rows are
        generated twice (three times with ``standardize``) from the same random state — first only to reach
        the row order drawn after them, then into their place in the float32 splits. Peak memory beyond the
        splits (4·D + 8 bytes a row) is about 24 bytes a row of indices.
        """
        n, D = self.n_samples, int(self._n_features)
        self._check_rows(n)
        self._n_classes = self._declared_classes()
        source = _BlobSource(n, D, self.n_centers, self.cluster_std, self.seed)
        for _ in source.blocks(values=False):  # the row order is drawn after all the rows
            pass
        order = source.rng.permutation(n)
        perm, ranges = self._split_order(n)
        # The generated row that lands at each position of the split order (train rows first, then val, test).
        src = order[perm]
        del order, perm
        labels = source.labels(src)
        where = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)  # generated row -> its split position
        for c in range(0, n, _BLOCK_ROWS):
            where[src[c : c + _BLOCK_ROWS]] = np.arange(c, min(n, c + _BLOCK_ROWS), dtype=where.dtype)
        del src
        self.input_columns = list(self._feature_names(D))
        ex_lo, ex_hi = self._example_range(ranges)
        examples = np.empty((ex_hi - ex_lo, D))
        mean = std = None
        if self.standardize:
            mean, std = _train_moments(source, where, ranges["train"][1])
            std[std == 0] = 1.0
            self.mean, self.std = torch.from_numpy(mean), torch.from_numpy(std)
        xs = {name: np.empty((b - a, D), dtype=np.float32) for name, (a, b) in ranges.items()}
        for a, b, X in source.blocks():
            pos = where[a:b]
            sel = (pos >= ex_lo) & (pos < ex_hi)
            examples[pos[sel] - ex_lo] = X[sel]
            if mean is not None:
                X = (X - mean) / std
            for name, (lo, hi) in ranges.items():
                sel = (pos >= lo) & (pos < hi)
                xs[name][pos[sel] - lo] = X[sel]
        self._example_rows = examples
        return {name: (torch.from_numpy(xs[name]), torch.from_numpy(labels[a:b])) for name, (a, b) in ranges.items()}


class _BlobSource:
    """``make_blobs``' random draws, with the rows produced in blocks that can be produced again.

    Rows come in generation order (grouped by blob, ``labels``); ``blocks()`` restarts the random state
    where the rows begin, and after a complete pass ``rng`` stands where ``make_blobs`` draws the row order.
    """

    def __init__(self, n_samples: int, n_features: int, n_centers: int, cluster_std: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.uniform(-10.0, 10.0, size=(n_centers, n_features))
        for k in range(1, n_centers):
            candidates = rng.uniform(-10.0, 10.0, size=(32, n_features))
            gaps = np.linalg.norm(candidates[:, None, :] - centres[None, :k, :], axis=-1).min(axis=1)
            centres[k] = candidates[gaps.argmax()]
        q, r = np.linalg.qr(rng.normal(size=(n_centers, n_features, n_features)))
        # Sign fix makes the QR rotation Haar-distributed rather than biased.
        self.rot = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
        self.scales = cluster_std * rng.uniform(0.5, 1.5, size=(n_centers, n_features))
        counts = rng.multinomial(n_samples, rng.dirichlet(np.full(n_centers, 5.0)))
        self.centres, self.n, self.n_features = centres, n_samples, n_features
        self.ends = np.cumsum(counts)  # blob k's rows are [ends[k-1], ends[k]) in generation order
        self._state = rng.bit_generator.state
        self.rng = rng

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """The blob (int64) of each generated row index."""
        return np.searchsorted(self.ends, rows, side="right").astype(np.int64, copy=False)

    def blocks(self, values: bool = True) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(a, b, X [b − a, D] float64)`` over the rows in generation order (X is None with ``values=False``)."""
        self.rng = np.random.Generator(type(self.rng.bit_generator)())
        self.rng.bit_generator.state = self._state
        n, D = self.n, self.n_features
        for a in range(0, n, _BLOCK_ROWS):
            b = min(n, a + _BLOCK_ROWS)
            z = self.rng.normal(size=(b - a, D))  # one stream: the same numbers as one call for all rows
            if not values:
                yield a, b, None
                continue
            y = self.labels(np.arange(a, b))
            z *= self.scales[y]
            X = np.empty_like(z)
            # Per blob, the einsum of make_blobs' first version with the rotation gathered per row
            # ("nj,nij->ni" over rot[y]) gives these very numbers without the [rows, D, D] gather.
            cuts = np.searchsorted(y, np.arange(len(self.ends) + 1))
            for k in np.unique(y):
                lo, hi = cuts[k], cuts[k + 1]
                X[lo:hi] = self.centres[k] + np.einsum("nj,ij->ni", z[lo:hi], self.rot[k])
            yield a, b, X


def _train_moments(source: _BlobSource, where: np.ndarray, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased) standard deviation of the rows whose split position is below ``n_train``.

    Block means and centred sums of squares, merged pairwise (Chan et al.): agrees with numpy's mean/std of
    the gathered rows to rounding (≈1e-16 relative).
    """
    count, mean, m2 = 0, np.zeros(source.n_features), np.zeros(source.n_features)
    for a, b, X in source.blocks():
        rows = X[where[a:b] < n_train]
        if not rows.shape[0]:
            continue
        m, bm = rows.shape[0], rows.mean(0)
        bm2 = ((rows - bm) ** 2).sum(0)
        delta = bm - mean
        total = count + m
        mean = mean + delta * (m / total)
        m2 = m2 + bm2 + delta**2 * (count * m / total)
        count = total
    return mean, np.sqrt(m2 / max(count, 1))


def make_blobs(
    n_samples: int, n_features: int, n_centers: int, cluster_std: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """X [n_samples, n_features] float64 and y [n_samples] int64 (see ``BlobsDataModule``)."""
    source = _BlobSource(n_samples, n_features, n_centers, cluster_std, seed)
    X = np.empty((n_samples, n_features))
    for a, b, block in source.blocks():
        X[a:b] = block
    order = source.rng.permutation(n_samples)
    return X[order], source.labels(order)


def make_overlapping(
    n_samples: int, n_features: int, n_components: int, separation: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """X [n_samples, n_features] float64 and y [n_samples] int64: rows of a Gaussian mixture whose components
    overlap, where EM's start decides which local optimum it ends in (``benchmarks/gmm_vs_sklearn.py --mode fit``).

    Weights π ~ Dirichlet(5, …, 5); means μ_k ~ N(0, separation² I_D); covariances Σ_k = R_k diag(s_k²) R_kᵀ with
    a Haar-random rotation R_k and scales s_k ~ U(0.5, 1.5)^D. A component spreads about 1 in every direction and
    two means lie about separation·√(2D) apart, so with separation ≈ 1.5–3 neighbours overlap (``make_blobs``
    spreads its centres apart on purpose). Sizes are multinomial(n, π); y is the component of each row; the rows
    come in a random order.
    """
    if min(n_samples, n_features, n_components) < 1 or not separation > 0:
        raise ValueError("n_samples, n_features, n_components and separation must be positive")
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(scale=separation, size=(n_components, n_features))
    q, r = np.linalg.qr(rng.normal(size=(n_components, n_features, n_features)))
    rot = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]  # Haar-distributed, as make_blobs
    scales = rng.uniform(0.5, 1.5, size=(n_components, n_features))
    counts = rng.multinomial(n_samples, weights)
    X = np.empty((n_samples, n_features))
    y = np.repeat(np.arange(n_components, dtype=np.int64), counts)
    a = 0
    for k, c in enumerate(counts):
        X[a : a + c] = means[k] + (rng.normal(size=(c, n_features)) * scales[k]) @ rot[k].T
        a += c
    order = rng.permutation(n_samples)
    return X[order], y[order]


# The iris features as scikit-learn names them (``load_iris().feature_names``); its bundled file has no such header.
IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


class IrisDataModule(TabularDataModule):
    """scikit-learn's bundled iris data (150 × 4, 3 classes); nothing is downloaded."""

    source = "iris"

    def __init__(
        self,
        batch_size: BatchSize = 64,  # 150 rows: a few batches an epoch
        val_fraction: Fraction = 0.2,
        **kwargs: Any,  # TabularDataModule's others
    ) -> None:
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, **kwargs)
        self._n_features = 4
        self.input_columns = list(IRIS_COLUMNS)
        self.class_names: list[str] = ["setosa", "versicolor", "virginica"]

    def _declared_classes(self) -> int | None:
        return 3

    def _feature_names(self, n_features: int) -> list[str]:
        return list(IRIS_COLUMNS)

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        # The file load_iris() reads, read here without importing scikit-learn (0.2-0.5 s of a small run's
        # start); its header row: "150,4,setosa,versicolor,virginica".
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("sklearn")  # finds the package without running it
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        path = Path(folders[0]) / "datasets" / "data" / "iris.csv" if folders else None
        if path is None or not path.is_file():  # another layout: scikit-learn's own reader
            from sklearn.datasets import load_iris

            data = load_iris()
            self.class_names = [str(c) for c in data.target_names]
            return data.data, data.target
        with path.open(newline="") as f:
            header = next(csv.reader(f))
            table = np.loadtxt(f, delimiter=",", ndmin=2)
        n_samples, n_features = int(header[0]), int(header[1])
        self.class_names = header[2:]
        assert table.shape == (n_samples, n_features + 1), (path, table.shape)
        return table[:, :n_features], table[:, n_features].astype(int)


class CSVDataModule(TabularDataModule):
    """A user CSV with a header row: numeric feature columns, optionally a label column.

    ``columns`` selects the feature columns (default: every column but the label). Label
    values (text or numbers) become class indices in sorted order (``class_names``); an empty
    label cell means unlabelled (−1). Blank lines are skipped. Row numbers in error messages
    count lines in the file, the header being row 1.
    """

    source = "csv"

    def __init__(
        self,
        path: str,
        standardize: bool = True,  # a user's columns come in any units
        label_column: str | None = None,
        columns: Sequence[str] | None = None,
        **kwargs: Any,  # TabularDataModule's others
    ) -> None:
        super().__init__(standardize=standardize, **kwargs)
        self.path = os.fspath(path)
        self.source = self.path
        self.label_column = label_column
        self.columns = list(columns) if columns is not None else None
        self.class_names: list[str] = []
        self.feature_names: list[str] = []

    def _fail(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def _check_file(self) -> None:
        """The path is a file of UTF-8 text without NUL bytes; read in blocks, nothing kept."""
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise self._fail("is a directory, not a CSV file")
        with open(self.path, "rb") as fh:
            offset = 0
            for chunk in iter(lambda: fh.read(_READ_BYTES), b""):
                nul = chunk.find(b"\x00")
                if nul >= 0:
                    raise self._fail(f"binary file (NUL byte at offset {offset + nul}), not a text CSV")
                offset += len(chunk)
        decoder = codecs.getincrementaldecoder("utf-8")()
        with open(self.path, "rb") as fh:
            offset, pending = 0, 0
            try:
                for chunk in iter(lambda: fh.read(_READ_BYTES), b""):
                    pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
                    decoder.decode(chunk)
                    offset += len(chunk)
                pending = len(decoder.getstate()[0])
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as err:
                at = offset - pending + err.start
                raise self._fail(f"not UTF-8 text (undecodable byte at offset {at}); is it a binary file?") from None

    def _read_text(self) -> str:
        self._check_file()
        with open(self.path, encoding="utf-8-sig", newline="") as fh:
            return fh.read()

    def _header(self) -> tuple[list[str], list[int], int | None, int]:
        """Header names, indices of the feature columns and of the label column, and the number of lines up to
        and including the header (the first row that is not blank)."""
        self._check_file()
        with open(self.path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next((row for row in reader if row and any(c.strip() for c in row)), None)
            header_lines = reader.line_num
        if header is None:
            raise self._fail("empty file (no header row)")
        header = [h.strip() for h in header]
        positions: dict[str, list[int]] = {}
        for i, name in enumerate(header, start=1):
            positions.setdefault(name, []).append(i)
        for name, where in positions.items():
            if len(where) > 1:  # which of them a name would select is anyone's guess: refuse, naming them all
                numbers = ", ".join(map(str, where[:-1])) + f" and {where[-1]}"
                raise self._fail(f"columns {numbers} are {'both' if len(where) == 2 else 'all'} named {name!r}; "
                                 "each column needs a name of its own (rename one in the header row)")
        label_idx = None
        if self.label_column is not None:
            if self.label_column not in header:
                raise self._fail(
                    f"label_column {self.label_column!r} is not a column; columns are: {', '.join(header)}"
                )
            label_idx = header.index(self.label_column)
        if self.columns is not None:
            unknown = [c for c in self.columns if c not in header]
            if unknown:
                raise self._fail(f"unknown column(s) {', '.join(map(repr, unknown))}; columns are: {', '.join(header)}")
            feature_idx = [header.index(c) for c in self.columns]
        else:
            feature_idx = [i for i in range(len(header)) if i != label_idx]
        if not feature_idx:
            raise self._fail("no feature columns (only the label column)")
        return header, feature_idx, label_idx, header_lines

    def _expected_features(self) -> int | None:
        if self._n_features is None and self.columns is not None:
            return len(self.columns)
        if self._n_features is None and os.path.isfile(self.path):
            self._n_features = len(self._header()[1])
        return self._n_features

    def _load(self) -> tuple[np.ndarray, np.ndarray | None]:
        header, feature_idx, label_idx, header_lines = self._header()
        self.feature_names = [header[i] for i in feature_idx]
        loaded = self._load_fast(header, feature_idx, label_idx, header_lines)
        return loaded if loaded is not None else self._load_checked(header, feature_idx, label_idx)

    def _load_fast(
        self, header: list[str], feature_idx: list[int], label_idx: int | None, header_lines: int
    ) -> tuple[np.ndarray, np.ndarray | None] | None:
        """pandas' C parser, for a file without problems; None when anything looks off (a cell that is not a
        finite number, a row of the wrong length, an empty cell in the last column), and the careful reader
        then reads it again to name the problem or, for what only it accepts (blank rows of commas, an empty
        last cell in the label column), to read it.

        When it answers, it answers what the careful reader would: each cell that is a number parses to the
        same float64 (correctly rounded, as Python's ``float``), and a row shorter than the header always
        lacks the last column, which is read with an empty cell meaning missing.
        """
        import pandas as pd

        last = len(header) - 1
        features = set(feature_idx)
        if label_idx is not None and label_idx in features:
            return None
        # Every column is read (``usecols`` would drop the cells of a row longer than the header unseen): a longer
        # row is then a parser error, or more columns than the header when it is the first.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = pd.read_csv(
                    self.path, header=None, skiprows=header_lines,
                    dtype={i: np.float64 if i in features else object for i in range(len(header))},
                    keep_default_na=False, na_values={i: [""] for i in range(len(header)) if i in features or i == last},
                    skip_blank_lines=True, encoding="utf-8", engine="c", low_memory=False,
                )
        except Exception:  # noqa: BLE001 - whatever it refuses, the careful reader explains
            return None
        if frame.shape[0] == 0 or frame.shape[1] != len(header):
            return None
        if last not in features and bool(frame[last].isna().any()):
            return None
        X = frame[feature_idx].to_numpy(dtype=np.float64)
        if not (np.abs(X) <= FLOAT32_MAX).all():  # not finite, or beyond float32: the careful reader names it
            return None
        y = None
        if label_idx is not None:
            codes, uniques = pd.factorize(frame[label_idx].str.strip())
            present = sorted((str(u) for u in uniques if u), key=_label_sort_key)
            rank = {v: i for i, v in enumerate(present)}
            y = np.array([rank.get(str(u), -1) for u in uniques], dtype=np.int64)[codes]
            self.class_names = present
        return X, y

    def _load_checked(
        self, header: list[str], feature_idx: list[int], label_idx: int | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Cell by cell with the csv module: slow, but names the row and column of the first problem."""
        text = self._read_text()
        reader = csv.reader(io.StringIO(text))
        rows: list[list[str]] = []
        line_numbers: list[int] = []
        seen_header = False
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if not seen_header:
                seen_header = True
                continue
            if len(row) != len(header):
                raise self._fail(f"row {reader.line_num} has {len(row)} cells, the header has {len(header)}")
            rows.append(row)
            line_numbers.append(reader.line_num)
        if not rows:
            raise self._fail("has a header but no data rows")
        cells = np.array([[row[i] for i in feature_idx] for row in rows], dtype=object)
        try:
            X = cells.astype(np.float64)
        except ValueError:
            X = None
        if X is None or not (np.abs(X) <= FLOAT32_MAX).all():
            for r, row in enumerate(cells):
                for j, cell in enumerate(row):
                    name = header[feature_idx[j]]
                    try:
                        value = float(cell)
                    except ValueError:
                        what = "an empty cell" if not cell.strip() else f"{cell!r} is not a number"
                        raise self._fail(f"row {line_numbers[r]}, column {name!r}: {what}") from None
                    if not math.isfinite(value):
                        raise self._fail(f"row {line_numbers[r]}, column {name!r}: {cell!r} is not a finite number")
                    if abs(value) > FLOAT32_MAX:
                        raise self._fail(f"row {line_numbers[r]}, column {name!r}: {cell.strip()!r} "
                                         f"{_beyond_float32(value)}")
        y = None
        if label_idx is not None:
            labels = [row[label_idx].strip() for row in rows]
            present = sorted({v for v in labels if v}, key=_label_sort_key)
            self.class_names = present
            code = {v: i for i, v in enumerate(present)}
            y = np.array([code[v] if v else -1 for v in labels], dtype=np.int64)
        return X, y

    def _declared_classes(self) -> int | None:
        return len(self.class_names) or None

    def _feature_names(self, n_features: int) -> list[str]:
        """The header's names of the feature columns."""
        return list(self.feature_names)

    def _check_range(self, X: np.ndarray) -> None:
        """Nothing left to check: both readers refused a cell beyond float32's range, naming its row."""


def _label_sort_key(value: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order (2 before 10), then text labels alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)

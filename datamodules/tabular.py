"""Tabular datamodules: synthetic Gaussian blobs, scikit-learn's bundled iris, a user CSV.

All three share ``TabularDataModule``: rows are float32 feature vectors x [D] with an integer
label y (−1 when unlabelled), split once into train/val/test by a permutation drawn from
``seed``. Batches are ``(x [B, D] float32, y [B] int64)``.

The loaders cut each split into contiguous batches themselves (no per-row collation, which
dominates the cost of large tabular batches) and partition rows across DDP processes without
the duplicate padding of ``DistributedSampler`` (``datamodules.sharding``): every process gets a
disjoint shard and the same number of batches, so sums over all processes are exactly the sums
over the split.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.sharding import sharded_loader


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if test_fraction > 0:
        n_test = max(1, n_test)
    if val_fraction > 0:
        n_val = max(1, n_val)
    return n - n_val - n_test, n_val, n_test


def _min_rows(val_fraction: float, test_fraction: float) -> int:
    """Fewest rows giving ≥ 2 training rows and ≥ 1 row in every split with a positive fraction."""
    n = 2
    while _split_counts(n, val_fraction, test_fraction)[0] < 2:
        n += 1
    return n


class TabularDataModule(pl.LightningDataModule):
    """Base class: subclasses implement ``_load() -> (X [N, D] float, y [N] int or None)``.

    ``dims`` = ``{"n_features": D, "n_classes": C or None}``. With ``standardize`` every feature
    is shifted and scaled by the mean and standard deviation of the training split.
    """

    source = "data"

    def __init__(
        self,
        batch_size: int = 8192,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
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

    # subclasses -------------------------------------------------------------
    def _load(self) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def _expected_features(self) -> int | None:
        """D when known without loading the data (used by ``parse_inputs``)."""
        return self._n_features

    def _declared_classes(self) -> int | None:
        """C when the source defines it (a class may be absent from a small sample)."""
        return None

    # splits -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        X, y = self._load()
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        need = _min_rows(self.val_fraction, self.test_fraction)
        if n < need:
            raise ValueError(
                f"{self.source}: {n} data rows are too few for val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction} (need at least {need})"
            )
        if y is None:
            y = np.full(n, -1, dtype=np.int64)
            self._n_classes = None
        else:
            y = np.asarray(y, dtype=np.int64)
            self._n_classes = self._declared_classes() or (int(y.max()) + 1 if (y >= 0).any() else None)
        self._n_features = X.shape[1]
        perm = np.random.default_rng(self.seed).permutation(n)
        n_train, n_val, _ = _split_counts(n, self.val_fraction, self.test_fraction)
        parts = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
        if self.standardize:
            mean = X[parts["train"]].mean(0)
            std = X[parts["train"]].std(0)
            std[std == 0] = 1.0  # a constant feature stays constant rather than becoming NaN
            X = (X - mean) / std
            self.mean, self.std = torch.from_numpy(mean), torch.from_numpy(std)
        self._splits = {
            name: (torch.from_numpy(X[idx].astype(np.float32)), torch.from_numpy(y[idx].copy()))
            for name, idx in parts.items()
        }

    @property
    def dims(self) -> dict[str, Any]:
        self.setup("fit")
        return {"n_features": self._n_features, "n_classes": self._n_classes}

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

    # labbook predict ------------------------------------------------------------
    def parse_inputs(self, lines: list[str]) -> Tensor:
        """Comma-separated numbers, one row per non-blank line → FloatTensor [N, D].

        Applies the training-split standardisation when ``standardize`` is on.
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
                row.append(value)
            if width is None:
                width = len(row)
            if len(row) != width:
                raise ValueError(f"line {i}: expected {width} comma-separated values, got {len(row)}")
            rows.append(row)
        x = torch.tensor(rows, dtype=torch.float64).reshape(-1, width or 0)
        if self.standardize:
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
        batch_size: int = 8192,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        standardize: bool = False,
        shuffle: bool = False,
        n_samples: int = 30_000,
        n_features: int = 2,
        n_centers: int = 4,
        cluster_std: float = 1.0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, val_fraction, test_fraction, standardize, shuffle)
        if n_samples < 1 or n_features < 1 or n_centers < 1 or cluster_std <= 0:
            raise ValueError("n_samples, n_features, n_centers and cluster_std must be positive")
        self.n_samples, self.n_centers, self.cluster_std = int(n_samples), int(n_centers), float(cluster_std)
        self._n_features = int(n_features)

    def _declared_classes(self) -> int | None:
        return self.n_centers

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        return make_blobs(self.n_samples, self._n_features, self.n_centers, self.cluster_std, self.seed)


def make_blobs(
    n_samples: int, n_features: int, n_centers: int, cluster_std: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """X [n_samples, n_features] float64 and y [n_samples] int64 (see ``BlobsDataModule``)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10.0, 10.0, size=(n_centers, n_features))
    for k in range(1, n_centers):
        candidates = rng.uniform(-10.0, 10.0, size=(32, n_features))
        gaps = np.linalg.norm(candidates[:, None, :] - centres[None, :k, :], axis=-1).min(axis=1)
        centres[k] = candidates[gaps.argmax()]
    q, r = np.linalg.qr(rng.normal(size=(n_centers, n_features, n_features)))
    # Sign fix makes the QR rotation Haar-distributed rather than biased.
    rot = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    scales = cluster_std * rng.uniform(0.5, 1.5, size=(n_centers, n_features))
    counts = rng.multinomial(n_samples, rng.dirichlet(np.full(n_centers, 5.0)))
    y = np.repeat(np.arange(n_centers), counts)
    z = rng.normal(size=(n_samples, n_features)) * scales[y]
    X = centres[y] + np.einsum("nj,nij->ni", z, rot[y])
    order = rng.permutation(n_samples)
    return X[order], y[order]


class IrisDataModule(TabularDataModule):
    """scikit-learn's bundled iris data (150 × 4, 3 classes); nothing is downloaded."""

    source = "iris"

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        standardize: bool = False,
        shuffle: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, val_fraction, test_fraction, standardize, shuffle)
        self._n_features = 4
        self.class_names: list[str] = ["setosa", "versicolor", "virginica"]

    def _declared_classes(self) -> int | None:
        return 3

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
        batch_size: int = 8192,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        standardize: bool = True,
        shuffle: bool = False,
        label_column: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, val_fraction, test_fraction, standardize, shuffle)
        self.path = os.fspath(path)
        self.source = self.path
        self.label_column = label_column
        self.columns = list(columns) if columns is not None else None
        self.class_names: list[str] = []
        self.feature_names: list[str] = []

    def _fail(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def _read_text(self) -> str:
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise self._fail("is a directory, not a CSV file")
        with open(self.path, "rb") as fh:
            raw = fh.read()
        nul = raw.find(b"\x00")
        if nul >= 0:
            raise self._fail(f"binary file (NUL byte at offset {nul}), not a text CSV")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise self._fail(f"not UTF-8 text (undecodable byte at offset {err.start}); is it a binary file?") from None

    def _header(self, text: str) -> tuple[list[str], list[int], int | None]:
        """Header names, indices of the feature columns and of the label column."""
        reader = csv.reader(io.StringIO(text))
        header = next((row for row in reader if row), None)
        if header is None:
            raise self._fail("empty file (no header row)")
        header = [h.strip() for h in header]
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
        return header, feature_idx, label_idx

    def _expected_features(self) -> int | None:
        if self._n_features is None and self.columns is not None:
            return len(self.columns)
        if self._n_features is None and os.path.isfile(self.path):
            self._n_features = len(self._header(self._read_text())[1])
        return self._n_features

    def _load(self) -> tuple[np.ndarray, np.ndarray | None]:
        text = self._read_text()
        header, feature_idx, label_idx = self._header(text)
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
        if X is None or not np.isfinite(X).all():
            # Slow path only to name the first offending cell.
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
        y = None
        if label_idx is not None:
            labels = [row[label_idx].strip() for row in rows]
            present = sorted({v for v in labels if v}, key=_label_sort_key)
            self.class_names = present
            code = {v: i for i, v in enumerate(present)}
            y = np.array([code[v] if v else -1 for v in labels], dtype=np.int64)
        self.feature_names = [header[i] for i in feature_idx]
        return X, y

    def _declared_classes(self) -> int | None:
        return len(self.class_names) or None


def _label_sort_key(value: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order (2 before 10), then text labels alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)

"""Blobs, iris and CSV datamodules: splits, dims, loaders, user-file errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from labbook.datamodules.tabular import (
    BlobsDataModule,
    CSVDataModule,
    IrisDataModule,
    TabularDataModule,
    make_blobs,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _csv(tmp_path: Path, n: int = 20, label: bool = True) -> Path:
    rng = np.random.default_rng(0)
    lines = ["a,b,c,species" if label else "a,b,c"]
    for i in range(n):
        row = ",".join(f"{v:.3f}" for v in rng.normal(size=3))
        lines.append(row + ("," + ["cat", "dog"][i % 2] if label else ""))
    return _write(tmp_path / "data.csv", "\n".join(lines) + "\n")


def _all_batches(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------------- blobs / iris
def test_blobs_dims_splits_and_batches() -> None:
    dm = BlobsDataModule(n_samples=1000, n_features=3, n_centers=5, batch_size=128, seed=0)
    dm.setup("fit")
    assert dm.dims == {"n_features": 3, "n_classes": 5, "n_train": 700, "feature_mean": None, "feature_std": None}
    sizes = {name: dm.split(name)[0].shape[0] for name in ("train", "val", "test")}
    assert sizes == {"train": 700, "val": 100, "test": 200}
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (128, 3)
    assert y.dtype == torch.int64 and y.shape == (128,)
    # The loader yields the whole split exactly once, in order.
    xs, ys = _all_batches(dm.train_dataloader())
    assert torch.equal(xs, dm.split("train")[0]) and torch.equal(ys, dm.split("train")[1])


def test_blobs_n_classes_is_declared_even_if_a_blob_is_unsampled() -> None:
    dm = BlobsDataModule(n_samples=12, n_centers=10, seed=0)
    assert dm.dims["n_classes"] == 10


def test_blobs_are_deterministic_by_seed() -> None:
    a = BlobsDataModule(n_samples=500, seed=4)
    b = BlobsDataModule(n_samples=500, seed=4)
    c = BlobsDataModule(n_samples=500, seed=5)
    for dm in (a, b, c):
        dm.setup("fit")
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name)[0], b.split(name)[0])
    assert not torch.equal(a.split("train")[0], c.split("train")[0])


def test_make_blobs_labels_are_true_components() -> None:
    X, y = make_blobs(4000, 2, 3, 0.5, seed=1)
    assert X.shape == (4000, 2) and set(np.unique(y)) == {0, 1, 2}
    for k in range(3):
        assert X[y == k].std(0).max() < 1.0  # each label is one tight anisotropic blob


def test_splits_partition_the_data() -> None:
    dm = IrisDataModule(seed=2)
    dm.setup("fit")
    rows = torch.cat([dm.split(n)[0] for n in ("train", "val", "test")])
    assert rows.shape[0] == 150
    from sklearn.datasets import load_iris

    full = torch.from_numpy(load_iris().data.astype(np.float32))
    assert torch.equal(rows[rows[:, 0].argsort(stable=True)].sort(0).values, full.sort(0).values)


def test_iris_is_scikit_learns_iris() -> None:
    """Read from scikit-learn's bundled file without importing scikit-learn: the same arrays as load_iris()."""
    from sklearn.datasets import load_iris

    dm = IrisDataModule()
    X, y = dm._load()
    data = load_iris()
    assert np.array_equal(X, data.data) and X.dtype == data.data.dtype
    assert np.array_equal(y, data.target) and y.dtype == data.target.dtype
    assert dm.class_names == [str(c) for c in data.target_names]


def test_iris_dims_and_standardize() -> None:
    dm = IrisDataModule(standardize=True, seed=0, val_fraction=0.1)
    dm.setup("fit")
    # dims hand the model the standardisation, so that it can report in the data's own units.
    assert dm.dims == {"n_features": 4, "n_classes": 3, "n_train": 105, "feature_mean": dm.mean.tolist(), "feature_std": dm.std.tolist()}
    from sklearn.datasets import load_iris

    train = load_iris().data[np.random.default_rng(0).permutation(150)[:105]]  # the 105 training rows
    np.testing.assert_allclose(dm.dims["feature_mean"], train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(dm.dims["feature_std"], train.std(0), rtol=1e-12)
    x = dm.split("train")[0].double()
    np.testing.assert_allclose(x.mean(0).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(x.std(0, unbiased=False).numpy(), 1.0, atol=1e-6)
    # parse_inputs applies the same (train-split) standardisation.
    raw = "5.1,3.5,1.4,0.2"
    parsed = dm.parse_inputs([raw])
    expected = (torch.tensor([[5.1, 3.5, 1.4, 0.2]], dtype=torch.float64) - dm.mean) / dm.std
    torch.testing.assert_close(parsed, expected.float())


def test_parse_inputs_and_format_outputs() -> None:
    dm = BlobsDataModule(n_features=2)
    x = dm.parse_inputs(["1, 2", "", "  -3.5,4e2 "])  # blank lines are skipped
    assert x.dtype == torch.float32 and x.tolist() == [[1.0, 2.0], [-3.5, 400.0]]
    with pytest.raises(ValueError, match=r"line 2: 'x' is not a number"):
        dm.parse_inputs(["1,2", "x,3"])
    with pytest.raises(ValueError, match=r"line 1: expected 2 comma-separated values, got 3"):
        dm.parse_inputs(["1,2,3"])
    with pytest.raises(ValueError, match=r"line 1: 'nan' is not a finite number"):
        dm.parse_inputs(["nan,1"])
    assert dm.format_outputs(torch.tensor([2, 0, 1])) == ["2", "0", "1"]
    with pytest.raises(ValueError, match=r"line 2: '1e39' is beyond float32's range \(±3.4e\+38\)"):
        dm.parse_inputs(["1,2", "1e39,2"])  # float32 would make it inf


def test_a_subclass_value_beyond_float32_is_named_by_row_and_column() -> None:
    class Huge(TabularDataModule):
        source = "huge"

        def _load(self) -> tuple[np.ndarray, None]:
            X = np.ones((40, 3))
            X[7, 1] = 2e38 * 10
            return X, None

    with pytest.raises(ValueError, match=r"^huge: row 8 of the data, column 2: 2e\+39 is beyond float32's range"):
        Huge(standardize=True).setup("fit")


# ---------------------------------------------------------------------- CSV
def test_csv_reads_features_labels_and_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    dm = CSVDataModule(path=str(path), label_column="species", batch_size=4, seed=0, standardize=False)
    assert dm.dims == {"n_features": 3, "n_classes": 2, "n_train": 14, "feature_mean": None, "feature_std": None}
    assert dm.class_names == ["cat", "dog"] and dm.feature_names == ["a", "b", "c"]
    x, y = dm.split("train")
    assert x.shape == (14, 3) and set(y.tolist()) <= {0, 1}
    sub = CSVDataModule(path=str(path), label_column="species", columns=["c", "a"])
    assert sub.dims["n_features"] == 2
    assert sub.parse_inputs(["1,2"]).shape == (1, 2)  # width from the columns, before setup
    unlabelled = CSVDataModule(path=str(path), columns=["a", "b"], standardize=False)
    assert unlabelled.dims == {"n_features": 2, "n_classes": None, "n_train": 14, "feature_mean": None, "feature_std": None}
    assert (unlabelled.split("test")[1] == -1).all()


def test_csv_parse_inputs_width_comes_from_header_without_setup(tmp_path: Path) -> None:
    dm = CSVDataModule(path=str(_csv(tmp_path)), label_column="species")
    with pytest.raises(ValueError, match="expected 3 comma-separated values, got 2"):
        dm.parse_inputs(["1,2"])


def test_csv_numeric_labels_sorted_numerically(tmp_path: Path) -> None:
    path = _write(tmp_path / "n.csv", "x,label\n" + "\n".join(f"{i},{[10, 2, ''][i % 3]}" for i in range(30)) + "\n")
    dm = CSVDataModule(path=str(path), label_column="label", val_fraction=0.0, test_fraction=0.0,
                       standardize=False)
    x, y = dm.split("train")
    assert dm.class_names == ["2", "10"]
    for xi, yi in zip(x.tolist(), y.tolist()):
        assert yi == {0: 1, 1: 0, 2: -1}[int(xi[0]) % 3]  # empty label → unlabelled (-1)


def _error(tmp_path: Path, text: str | bytes | None, **kw: object) -> str:
    path = tmp_path / "bad.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        _write(path, text)
    dm = CSVDataModule(path=str(path), **kw)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message and str(path) in message  # one line, naming the file
    return message


def test_csv_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    good = "a,b\n" + "\n".join(f"{i},{i * 2}" for i in range(10)) + "\n"
    assert "no such file" in _error(tmp_path, None)
    assert "empty file" in _error(tmp_path, "")
    assert "empty file" in _error(tmp_path, "\n\n")
    assert "no data rows" in _error(tmp_path, "a,b\n")
    assert "binary" in _error(tmp_path, b"a,b\n1,2\x00\x01\n")
    assert "not UTF-8" in _error(tmp_path, b"a,b\n1,\xff\xfe\n")
    msg = _error(tmp_path, good.replace("3,6", "3,six"))
    assert re.search(r"row 5, column 'b': 'six' is not a number", msg), msg
    msg = _error(tmp_path, good.replace("4,8", "4,"))
    assert "row 6, column 'b': an empty cell" in msg
    assert "row 3 has 3 cells, the header has 2" in _error(tmp_path, good.replace("1,2", "1,2,3"))
    msg = _error(tmp_path, good, label_column="species")
    assert "label_column 'species' is not a column; columns are: a, b" in msg
    assert "unknown column(s) 'z'" in _error(tmp_path, good, columns=["a", "z"])
    msg = _error(tmp_path, "a,b\n1,2\n3,4\n")
    assert "2 data rows are too few" in msg and "need at least" in msg


def test_csv_row_numbers_count_blank_lines_and_header(tmp_path: Path) -> None:
    text = "a,b\n1,2\n\n3,4\n5,oops\n" + "".join(f"{i},{i}\n" for i in range(10))
    assert "row 5, column 'b': 'oops'" in _error(tmp_path, text)


def test_csv_splits_deterministic(tmp_path: Path) -> None:
    path = str(_csv(tmp_path, n=50))
    a, b, c = (CSVDataModule(path=path, label_column="species", seed=s) for s in (1, 1, 2))
    assert torch.equal(a.split("val")[0], b.split("val")[0])
    assert not torch.equal(a.split("val")[0], c.split("val")[0])


def test_csv_fast_reader_answers_what_the_careful_reader_answers(tmp_path: Path) -> None:
    """pandas reads clean files; whatever it would read differently goes to the cell-by-cell reader."""
    rng = np.random.default_rng(1)
    cells = [f"{v:.17g}" for v in rng.normal(size=300) * 10.0 ** rng.integers(-30, 30, 300)]
    cells += ["1e-320", "  2.5 ", "+3", "-0", "7.", ".5", "1E5", '"4.25"']  # subnormal, spaces, signs, quotes
    n = len(cells)
    kinds = [" cat ", "dog", "10", "2", ""]
    lines = ["x, y ,kind,z"] + [f"{cells[i]},{cells[(i * 7) % n]},{kinds[i % 5]},{i}" for i in range(n)]
    cases = {
        "clean": "\n".join(lines) + "\n",
        "blank lines and CRLF": "\r\n\r\n" + "\r\n".join(lines[:5] + ["", "   "] + lines[5:]),
        "row of empty cells": "\n".join(lines[:9] + [",,,"] + lines[9:]),  # only the careful reader skips it
        "empty last cell": "\n".join(lines[:9] + ["1,2,dog,"] + lines[9:]),  # an error when z is a feature
    }
    for name, text in cases.items():
        path = _write(tmp_path / "f.csv", text)
        for kw in ({"label_column": "kind"}, {"columns": ["z", "x"]}, {"label_column": "z", "columns": ["y"]}):
            fast = CSVDataModule(path=str(path), **kw)
            careful = CSVDataModule(path=str(path), **kw)
            try:
                expected = careful._load_checked(*careful._header()[:3])
            except ValueError as err:
                with pytest.raises(ValueError, match=re.escape(str(err))):
                    fast._load()
                continue
            header = fast._header()
            got = fast._load_fast(*header)
            # The fast reader leaves to the careful one the rows of empty cells, and an empty last cell when the last
            # column is not a feature (the same as a row one cell short, for it); both then read the same.
            assert (got is None) == (name in ("row of empty cells", "empty last cell")), (name, kw)
            got = fast._load()
            np.testing.assert_array_equal(got[0], expected[0])  # the same float64 bits
            assert (got[1] is None and expected[1] is None) or np.array_equal(got[1], expected[1])
            assert fast.class_names == careful.class_names and fast.feature_names == [header[0][i] for i in header[1]]
    assert CSVDataModule(path=str(_write(tmp_path / "l.csv", cases["clean"])), label_column="kind").class_names == []
    dm = CSVDataModule(path=str(tmp_path / "l.csv"), label_column="kind")
    dm.setup("fit")
    assert dm.class_names == ["2", "10", "cat", "dog"]  # stripped, numbers first in numeric order


def _reference_blobs(n_samples: int, n_features: int, n_centers: int, cluster_std: float, seed: int):
    """make_blobs as first written (all rows at once, the rotation gathered per row): the numbers to keep."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10.0, 10.0, size=(n_centers, n_features))
    for k in range(1, n_centers):
        candidates = rng.uniform(-10.0, 10.0, size=(32, n_features))
        gaps = np.linalg.norm(candidates[:, None, :] - centres[None, :k, :], axis=-1).min(axis=1)
        centres[k] = candidates[gaps.argmax()]
    q, r = np.linalg.qr(rng.normal(size=(n_centers, n_features, n_features)))
    rot = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    scales = cluster_std * rng.uniform(0.5, 1.5, size=(n_centers, n_features))
    counts = rng.multinomial(n_samples, rng.dirichlet(np.full(n_centers, 5.0)))
    y = np.repeat(np.arange(n_centers), counts)
    z = rng.normal(size=(n_samples, n_features)) * scales[y]
    X = centres[y] + np.einsum("nj,nij->ni", z, rot[y])
    order = rng.permutation(n_samples)
    return X[order], y[order]


@pytest.mark.parametrize("args", [(70_001, 8, 12, 2.0, 0), (3000, 3, 4, 1.0, 1), (500, 1, 3, 0.5, 5)])
def test_blobs_generated_in_blocks_are_the_same_numbers(args: tuple) -> None:
    X, y = _reference_blobs(*args)
    X2, y2 = make_blobs(*args)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    n, d, k, std, seed = args
    for standardize in (False, True):
        dm = BlobsDataModule(n_samples=n, n_features=d, n_centers=k, cluster_std=std, seed=seed, standardize=standardize)
        dm.setup("fit")
        perm = np.random.default_rng(seed).permutation(n)
        n_train, n_val = n - round(0.1 * n) - round(0.2 * n), round(0.1 * n)
        if standardize:
            mean, sd = X[perm[:n_train]].mean(0), X[perm[:n_train]].std(0)
            np.testing.assert_allclose(dm.mean.numpy(), mean, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dm.std.numpy(), sd, rtol=1e-12)
            Z = (X - dm.mean.numpy()) / dm.std.numpy()
        else:
            Z = X
        for name, idx in (("train", perm[:n_train]), ("val", perm[n_train : n_train + n_val]), ("test", perm[n_train + n_val :])):
            x_split, y_split = dm.split(name)
            assert torch.equal(x_split, torch.from_numpy(Z[idx].astype(np.float32))), name
            assert torch.equal(y_split, torch.from_numpy(y[idx])), name

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from labbook.datamodules.polynomial import SineCurveDataModule
from labbook.lightning_modules.polynomial import CubicPolynomial


@pytest.fixture(autouse=True)
def one_thread():
    # Two cores shared with other jobs: intra-op threads on tiny tensors spin and make each step ~10x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def least_squares_cubic(n_points: int = 2000) -> np.ndarray:
    x = np.linspace(-math.pi, math.pi, n_points)
    return np.linalg.lstsq(np.stack([x**0, x, x**2, x**3], 1), np.sin(x), rcond=None)[0]


def test_datamodule_grid_and_full_batch():
    dm = SineCurveDataModule(n_points=2000)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1
    x, y = batches[0]
    assert x.shape == y.shape == (2000,)
    assert x.min().item() == pytest.approx(-math.pi) and x.max().item() == pytest.approx(math.pi)
    torch.testing.assert_close(y, torch.sin(x))
    vx, _ = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(vx, torch.linspace(-math.pi, math.pi, 2000))  # same grid, in order


def test_minibatches_cover_the_grid():
    dm = SineCurveDataModule(n_points=10, batch_size=4)
    dm.setup("fit")
    sizes = [len(x) for x, _ in dm.train_dataloader()]
    assert sizes == [4, 4, 2]
    xs = torch.cat([x for x, _ in dm.train_dataloader()])
    torch.testing.assert_close(xs.sort().values, torch.linspace(-math.pi, math.pi, 10))


def test_parse_inputs_and_format_outputs():
    dm = SineCurveDataModule()
    torch.testing.assert_close(dm.parse_inputs(["0", " 1.5 ", "-3e-1"]), torch.tensor([0.0, 1.5, -0.3]))
    with pytest.raises(ValueError, match="line 2: 'abc' is not a number"):
        dm.parse_inputs(["1", "abc"])
    with pytest.raises(ValueError, match="line 1: 'inf' is not a finite"):
        dm.parse_inputs(["inf"])
    assert dm.format_outputs(torch.tensor([0.5, -1.25])) == ["0.5", "-1.25"]


def test_cubic_evaluates_its_coefficients():
    model = CubicPolynomial()
    with torch.no_grad():
        for name, value in zip("abcd", [1.0, 2.0, -1.0, 0.5]):
            getattr(model, name).fill_(value)
    x = torch.tensor([0.0, 1.0, -2.0])
    torch.testing.assert_close(model.predict(x), 1 + 2 * x - x**2 + 0.5 * x**3)
    assert not model.training


def test_gradient_descent_reaches_the_least_squares_cubic():
    pl.seed_everything(0, verbose=False)
    dm, model = SineCurveDataModule(), CubicPolynomial()
    trainer = pl.Trainer(max_epochs=130, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    a, b, c, d = least_squares_cubic()
    assert b == pytest.approx(0.857, abs=1e-3) and d == pytest.approx(-0.0933, abs=1e-4)
    coefs = model.coefficients()
    assert coefs["b"] == pytest.approx(b, abs=1e-3)
    assert coefs["d"] == pytest.approx(d, abs=1e-3)
    assert abs(coefs["a"]) < 1e-2 and abs(coefs["c"]) < 1e-2  # the even part converges a little slower
    assert trainer.callback_metrics["coef/b"].item() == pytest.approx(coefs["b"])

    metrics = trainer.test(model, dm, verbose=False)[0]
    grid = np.linspace(-math.pi, math.pi, 2000)
    fitted = np.polyval([coefs["d"], coefs["c"], coefs["b"], coefs["a"]], grid)
    assert metrics["test/loss"] == pytest.approx(np.mean((fitted - np.sin(grid)) ** 2), rel=1e-3)
    report = model.report()
    assert hasattr(report["fit"], "savefig")
    assert report["coefficients"]["b"] == pytest.approx(coefs["b"])

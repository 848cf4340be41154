import json
import math
import textwrap

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from labbook.datamodules.series import SineDataModule
from labbook.lightning_modules.lstm import LSTMForecaster
from tests.conftest import python_script


@pytest.fixture(autouse=True)
def one_thread():
    # Two cores shared with other jobs: intra-op threads on tiny tensors spin and make each step ~10x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quiet_trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


@pytest.mark.parametrize("horizon, num_layers", [(1, 1), (3, 2)])
def test_output_shapes(horizon, num_layers):
    model = LSTMForecaster(horizon=horizon, hidden_size=8, num_layers=num_layers, dropout=0.1)
    assert model(torch.randn(5, 12, 1)).shape == (5, horizon)
    assert model.predict(torch.randn(2, 7, 1)).shape == (2, horizon)
    assert not model.training  # predict runs in eval mode
    assert model.persistence(torch.randn(5, 12, 1)).shape == (5, horizon)


def test_overfits_a_few_windows():
    # random windows and targets: nothing to learn but memorisation, which a working model manages
    torch.manual_seed(0)
    x, y = torch.randn(8, 10, 1), torch.randn(8, 2)
    model = LSTMForecaster(horizon=2, hidden_size=32, optimizer=lambda params: torch.optim.Adam(params, lr=2e-2))
    opt = model.configure_optimizers()
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-4


def constant_model(bias: list[float], target_mean: float, target_std: float) -> LSTMForecaster:
    """A forecaster whose scaled output is always ``bias``, so its errors can be computed by hand."""
    model = LSTMForecaster(horizon=len(bias), hidden_size=4, target_mean=target_mean, target_std=target_std)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(bias))
    return model


def test_test_metrics_by_hand_in_original_units():
    # scaled windows and targets; original = scaled * 2 + 10
    x = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, -1.0]]).unsqueeze(-1)
    y = torch.tensor([[2.5, 3.0], [0.0, -1.5]])  # original [[15, 16], [10, 7]]
    model = constant_model([0.0, 0.5], target_mean=10.0, target_std=2.0)  # forecasts [10, 11] always
    # batch_size=1: per-batch RMSEs averaged would give (5 + sqrt(8)) / 2 = 3.91, not the pooled value
    loader = DataLoader(TensorDataset(x, y), batch_size=1)
    metrics = quiet_trainer().test(model, loader, verbose=False)[0]

    # persistence: last values 2, -1 -> original 14, 8, repeated; errors [[1, 2], [2, -1]]
    assert metrics["test/rmse_persistence"] == pytest.approx(math.sqrt((1 + 4 + 4 + 1) / 4))
    # model errors [[5, 5], [0, -4]] in original units
    assert metrics["test/rmse"] == pytest.approx(math.sqrt((25 + 25 + 0 + 16) / 4))
    assert metrics["test/mae"] == pytest.approx((5 + 5 + 0 + 4) / 4)

    report = model.report()
    arrays = report["forecast_arrays"]
    np.testing.assert_allclose(arrays["y_true"], [[15, 16], [10, 7]])
    np.testing.assert_allclose(arrays["y_pred"], [[10, 11], [10, 11]])
    np.testing.assert_allclose(arrays["y_persistence"], [[14, 14], [8, 8]])
    assert hasattr(report["forecast"], "savefig")


def test_dims_feed_the_constructor_and_hparams():
    dm = SineDataModule(length=300, window=10, horizon=2)
    dm.setup("fit")
    model = LSTMForecaster(**{k: v for k, v in dm.dims.items() if k != "window"}, hidden_size=8)
    assert model.hparams.target_std == dm.scaler[1] and model.hparams.horizon == 2
    assert "optimizer" not in model.hparams
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)


def test_short_training_beats_persistence_on_sine():
    pl.seed_everything(0, verbose=False)
    dm = SineDataModule(length=600, window=20, batch_size=32)
    dm.setup("fit")
    model = LSTMForecaster(**{k: v for k, v in dm.dims.items() if k != "window"}, hidden_size=16,
                           optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
    trainer = quiet_trainer(max_epochs=8, gradient_clip_val=1.0, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    m = trainer.test(model, dm, verbose=False)[0]
    assert m["test/rmse"] < m["test/rmse_persistence"]


DDP_SCRIPT = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np, pytorch_lightning as pl, torch
from labbook.datamodules.series import SineDataModule
from labbook.lightning_modules.lstm import LSTMForecaster

out = sys.argv[1]
dm = SineDataModule(length=207, window=10, batch_size=4)  # 31 test windows: uneven over 2 ranks
dm.setup("fit")
model = LSTMForecaster(**{k: v for k, v in dm.dims.items() if k != "window"}, hidden_size=8)
model.load_state_dict(torch.load(out + "/weights.pt"))
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)
metrics = trainer.test(model, dm, verbose=False)[0]
if trainer.global_rank == 0:
    json.dump(metrics, open(out + "/metrics.json", "w"))
    np.savez(out + "/report.npz", **model.report()["forecast_arrays"])
"""


def test_ddp_two_processes_match_one(tmp_path):
    torch.manual_seed(0)
    dm = SineDataModule(length=207, window=10, batch_size=4)
    dm.setup("fit")
    assert len(dm.test_set) % 2 == 1
    model = LSTMForecaster(**{k: v for k, v in dm.dims.items() if k != "window"}, hidden_size=8)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    single = quiet_trainer().test(model, dm, verbose=False)[0]
    single_arrays = model.report()["forecast_arrays"]

    script = tmp_path / "ddp_test.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    proc = python_script(script, str(tmp_path), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = json.loads((tmp_path / "metrics.json").read_text())

    for key in ("test/rmse", "test/mae", "test/rmse_persistence"):
        assert double[key] == pytest.approx(single[key], rel=1e-5), key
    gathered = np.load(tmp_path / "report.npz")
    for key, value in single_arrays.items():
        np.testing.assert_allclose(gathered[key], value, rtol=1e-5)  # all 31 windows, in time order


def test_epoch_train_loss_is_the_sample_weighted_mean_of_the_steps():
    # lr = 0 keeps the weights fixed, so the epoch's loss must equal the loss over all its windows at once;
    # 10 windows in batches of 4 end with a batch of 2, which an unweighted mean of step losses would miss.
    torch.manual_seed(0)
    x, y = torch.randn(10, 6, 1), torch.randn(10, 2)
    model = LSTMForecaster(horizon=2, hidden_size=8, optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    steps = (0, 4, 8)
    # The steps' own forecasts (a forward pass over 4 rows need not round as one over 10 does): only the sums differ.
    forecasts = torch.cat([model(x[i : i + 4]) for i in steps])
    expected = torch.nn.functional.mse_loss(forecasts, y).item()
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    # Both are float32 means of the same N = 20 squared errors e² (each rounded 3 times: e, e², relative 3u), so
    # positive sums, each within γ_{n−1} of its value relative: the expected one sums N and divides (γ_{N+3} in
    # all); the epoch's sums each step's b ≤ 8, divides, scales by its rows, adds the 3 steps, divides by the rows,
    # and MeanMetric multiplies by the weight and divides it back (γ_{b+4} + γ_{steps−1} + 3u).
    u, n, b = 2.0**-24, y.numel(), 4 * y.shape[1]
    gamma = lambda k: k * u / (1 - k * u)
    rel = gamma(n + 3) + gamma(b + 4) + gamma(len(steps) - 1) + 3 * u  # 2.4e-6
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(expected, rel=rel, abs=0)
    step_losses = [torch.nn.functional.mse_loss(model(x[i:i + 4]), y[i:i + 4]).item() for i in (0, 4, 8)]
    assert abs(sum(step_losses) / 3 - expected) > 1e-3  # the unweighted mean is distinguishable

"""An LSTM that reads a window of past values and forecasts the next ``horizon`` values.

    x: (B, W, F) scaled past values  ->  LSTM  ->  h_W: (B, hidden)  ->  Linear  ->  (B, H) scaled forecast

The model works in the scaled units the datamodule produces (standardised with the training part's mean and
std). Errors are reported in ORIGINAL units: the datamodule's ``dims`` supply ``target_mean``/``target_std``
and the model unscales with ``y = z * target_std + target_mean`` before measuring them.

Metrics (all exact under DDP: torchmetrics sums squared/absolute errors and counts over processes, then
divides once, instead of averaging per-process averages):

- ``train/loss``, ``val/loss``: MSE in scaled units (what is optimised).
- ``val/rmse``, ``test/rmse``, ``test/mae``: in original units.
- ``test/rmse_persistence``: the naive forecast "the next H values equal the last observed one", on the
  same test windows and in original units. A model that cannot beat it has learnt nothing useful.

``predict(x)`` returns the SCALED forecast (B, H); the datamodule's ``format_outputs`` unscales it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError
from torchmetrics.utilities.distributed import gather_all_tensors


class LSTMForecaster(pl.LightningModule):
    monitor = "val/loss"
    monitor_mode = "min"
    validation_metrics = ("val/loss", "val/rmse")  # what it logs on validation
    default_optimizer = functools.partial(torch.optim.Adam, lr=1e-3)  # when ``optimizer`` is None
    headline_metric = "test/rmse"

    def __init__(
        self,
        horizon: int = 1,
        n_features: int = 1,
        hidden_size: Annotated[int, ">= 1"] = 64,
        num_layers: Annotated[int, ">= 1"] = 1,
        dropout: Annotated[float, ">= 0", "< 1"] = 0.0,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        window: int | None = None,
    ) -> None:
        """``window``: the length of the input windows it is trained on, which the data decides; the LSTM reads
        any length, so it is only recorded with the weights (what ``labbook predict``'s inputs must hold)."""
        super().__init__()
        # The optimizer partial is configuration of training, not of the model; keeping it out of hparams
        # keeps checkpoints loadable without the optimizer's import path.
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        # nn.LSTM only applies dropout between stacked layers; asking for it with one layer is a warning
        self.lstm = nn.LSTM(
            n_features, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden_size, horizon)

        # The epoch's training loss is logged once per epoch: a per-step self.log costs Lightning ~0.6 ms
        # per call, a third of a small LSTM step (benchmarks/overhead.py). The steps only add into a plain
        # tensor (Σ loss·n); MeanMetric, whose update costs ~30 us, takes the epoch's sum once and does the
        # cross-process sum before dividing.
        self.train_loss = MeanMetric()
        self._epoch_loss_sum: torch.Tensor | None = None
        self._epoch_count = 0
        self.val_mse = MeanSquaredError()
        self.val_rmse = MeanSquaredError(squared=False)
        self.test_rmse = MeanSquaredError(squared=False)
        self.test_mae = MeanAbsoluteError()
        self.test_rmse_persistence = MeanSquaredError(squared=False)
        self._test_rows: list[torch.Tensor] = []  # (B, 3, H): truth, forecast, persistence, original units
        self._report_rows: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, W, F) scaled -> (B, H) scaled forecast of the values after the window."""
        out, _ = self.lstm(x)  # (B, W, hidden): the hidden state after every step
        return self.head(out[:, -1])  # the state after the last step has seen the whole window

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.hparams.target_std + self.hparams.target_mean

    def persistence(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, W, F) -> (B, H): the last observed value of the target (feature 0), repeated."""
        return x[:, -1, :1].expand(-1, self.hparams.horizon)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        weighted = loss.detach() * len(x)
        if self._epoch_loss_sum is None:
            self._epoch_loss_sum = weighted
        else:
            self._epoch_loss_sum.add_(weighted)
        self._epoch_count += len(x)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_count:
            # MeanMetric then holds (Σ loss·n, Σ n), as per-step updates would; compute() sums both across
            # processes before dividing
            self.train_loss.update(self._epoch_loss_sum / self._epoch_count, weight=self._epoch_count)
        self._epoch_loss_sum, self._epoch_count = None, 0
        self.log("train/loss", self.train_loss.compute(), prog_bar=True)
        self.train_loss.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written in the middle of an epoch (a run stopped by a signal) keeps the epoch's loss
        sum so far, summed over processes (they all save at the same batch), so the epoch's ``train/loss``
        is the same as if the run had never stopped."""
        if self._epoch_count:
            loss_sum = self._epoch_loss_sum.double()
            partial = torch.stack([loss_sum, torch.tensor(float(self._epoch_count), dtype=torch.float64,
                                                          device=loss_sum.device)])
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(partial)
            checkpoint["lstm_partial_epoch_loss"] = partial.cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        partial = checkpoint.get("lstm_partial_epoch_loss")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if partial is not None and (not distributed or torch.distributed.get_rank() == 0):
            self._epoch_loss_sum = partial[0].float()  # moved to the model's device in on_train_start
            self._epoch_count = int(partial[1])

    def on_train_start(self) -> None:
        if self._epoch_loss_sum is not None:
            self._epoch_loss_sum = self._epoch_loss_sum.to(self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        z = self(x)
        self.val_mse(z, y)
        self.val_rmse(self.unscale(z), self.unscale(y))
        # Logging the metric objects makes Lightning call compute() (a cross-process sum) at epoch end.
        self.log("val/loss", self.val_mse, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/rmse", self.val_rmse, on_step=False, on_epoch=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        y_true, y_pred, y_pers = self.unscale(y), self.unscale(self(x)), self.unscale(self.persistence(x))
        self.test_rmse(y_pred, y_true)
        self.test_mae(y_pred, y_true)
        self.test_rmse_persistence(y_pers, y_true)
        self.log("test/rmse", self.test_rmse, on_step=False, on_epoch=True)
        self.log("test/mae", self.test_mae, on_step=False, on_epoch=True)
        self.log("test/rmse_persistence", self.test_rmse_persistence, on_step=False, on_epoch=True)
        self._test_rows.append(torch.stack([y_true, y_pred, y_pers], dim=1).detach().cpu())

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        rows = torch.cat(self._test_rows) if self._test_rows else torch.zeros(0, 3, self.hparams.horizon)
        if self.trainer.world_size > 1:
            # Every rank's (n_r, 3, H) rows in rank order, n_r differing by one at most: the series datamodules
            # give each rank a contiguous slice of the test windows, so rank order is time order.
            rows = torch.cat(gather_all_tensors(rows.to(self.device))).cpu()
        self._report_rows = rows

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, W, F) scaled (as from the datamodule's ``parse_inputs``) -> (B, H) scaled forecast."""
        self.eval()
        return self(x.to(self.device)).cpu()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        make = self.optimizer or self.default_optimizer
        return make(self.parameters())

    def report(self) -> dict[str, Any]:
        """``forecast``: a figure of truth vs forecast vs persistence over the test windows (first forecast
        step), and arrays y_true, y_pred, y_persistence, each (N, H) in original units."""
        if self._report_rows is None:
            return {}
        from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it was

        arrays = {k: self._report_rows[:, i].numpy() for i, k in enumerate(["y_true", "y_pred", "y_persistence"])}
        rmse = {k: float(np.sqrt(np.mean((arrays[k] - arrays["y_true"]) ** 2))) for k in ["y_pred", "y_persistence"]}
        fig = Figure(figsize=(9, 4))
        ax = fig.subplots()
        t = np.arange(len(arrays["y_true"]))
        ax.plot(t, arrays["y_true"][:, 0], "k.-", label="truth")
        ax.plot(t, arrays["y_pred"][:, 0], "C0-", label=f"LSTM (RMSE {rmse['y_pred']:.3g})")
        ax.plot(t, arrays["y_persistence"][:, 0], "C1--", alpha=0.7,
                label=f"persistence (RMSE {rmse['y_persistence']:.3g})")
        ax.set_xlabel("test window (time order)")
        ax.set_ylabel("value, one step ahead")
        ax.set_title("Forecast vs truth on the test part")
        ax.legend()
        fig.tight_layout()
        return {"forecast": fig, "forecast_arrays": arrays}

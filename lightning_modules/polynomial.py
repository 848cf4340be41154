"""y = a + b x + c x^2 + d x^3 fitted to data by gradient descent: the "Learning PyTorch with Examples" warm-up.

Four scalar parameters, initialised from N(0, 1) as in the tutorial, and the mean squared error. The
least-squares cubic for sin(x) on [-pi, pi] is a = c = 0, b = 0.8567, d = -0.09333.

Why the default optimizer is SGD with momentum rather than the tutorial's plain SGD: the loss is a quadratic
whose Hessian eigenvalues on this grid run from 0.86 to 281 (the x^3 direction, E[x^6] = pi^6/7, dominates),
a condition number of ~300. Plain gradient descent needs thousands of steps to pin b and d to 1e-3;
heavy-ball momentum (lr=0.006, momentum=0.85) needs at most ~120 full-batch steps (i.e. epochs) from any
N(0, 1) start, a few seconds. lr is under half the divergence threshold 2 (1 + momentum) / 281 = 0.013.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanSquaredError


class CubicPolynomial(pl.LightningModule):
    monitor = "val/loss"
    monitor_mode = "min"
    validation_metrics = ("val/loss",)  # what it logs on validation
    default_optimizer = functools.partial(torch.optim.SGD, lr=0.006, momentum=0.85)  # when ``optimizer`` is None
    headline_metric = "test/loss"

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer] | None = None, n_features: int = 1) -> None:
        """``n_features``: the inputs' width, which the data decides; a cubic in one variable takes 1."""
        super().__init__()
        if n_features != 1:
            raise ValueError(f"n_features={n_features}: a cubic polynomial fits one input variable")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.a = nn.Parameter(torch.randn(()))
        self.b = nn.Parameter(torch.randn(()))
        self.c = nn.Parameter(torch.randn(()))
        self.d = nn.Parameter(torch.randn(()))
        self.val_mse = MeanSquaredError()
        self.test_mse = MeanSquaredError()
        self._test_x: list[torch.Tensor] = []
        self._test_y: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: any shape -> the cubic evaluated elementwise, same shape."""
        return self.a + self.b * x + self.c * x**2 + self.d * x**3

    def coefficients(self) -> dict[str, float]:
        return {name: getattr(self, name).item() for name in "abcd"}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.mean((self(x) - y) ** 2)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, prog_bar=True, batch_size=len(x))
        return loss

    def on_train_epoch_end(self) -> None:
        # Parameters are identical on every DDP process, so no reduction is needed.
        coefs = {f"coef/{name}": value for name, value in self.coefficients().items()}
        self.log_dict(coefs, on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_mse(self(x), y)
        self.log("val/loss", self.val_mse, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_mse(self(x), y)
        self.log("test/loss", self.test_mse, on_step=False, on_epoch=True)
        self._test_x.append(x.detach().cpu())
        self._test_y.append(y.detach().cpu())

    def on_test_epoch_start(self) -> None:
        self._test_x, self._test_y = [], []

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x: any shape -> the fitted cubic at x, same shape."""
        self.eval()
        return self(x.to(self.device)).cpu()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        make = self.optimizer or self.default_optimizer
        return make(self.parameters())

    def report(self) -> dict[str, Any]:
        """``fit``: the test targets (sin x) and the fitted cubic; ``coefficients``: arrays a, b, c, d."""
        from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it was

        coefs = self.coefficients()
        out: dict[str, Any] = {"coefficients": {k: torch.tensor(v).numpy() for k, v in coefs.items()}}
        if self._test_x:
            x, y = torch.cat(self._test_x), torch.cat(self._test_y)
            order = torch.argsort(x)
            x, y = x[order], y[order]
            fig = Figure(figsize=(6, 4))
            ax = fig.subplots()
            ax.plot(x.numpy(), y.numpy(), "k-", lw=3, alpha=0.4, label="data (sin x)")
            label = f"{coefs['a']:.3g} + {coefs['b']:.4g} x + {coefs['c']:.3g} x² + {coefs['d']:.4g} x³"
            ax.plot(x.numpy(), self.predict(x).numpy(), "C0-", label=label)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
            ax.set_title("Cubic fitted by gradient descent")
            ax.legend(fontsize=8)
            fig.tight_layout()
            out["fit"] = fig
        return out

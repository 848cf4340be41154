"""The warm-up data of the "Learning PyTorch with Examples" tutorial: y = sin(x) on a grid over [-pi, pi].

``n_points`` values of x, linearly spaced in [-pi, pi] (endpoints included), and y = sin(x); nothing random.
The task is curve *fitting* (how well gradient descent finds the least-squares cubic), not generalisation,
so val and test are the very same grid as train: their losses are the training objective evaluated
without a gradient step. By default a batch is the whole grid, i.e. full-batch gradient descent as in the
tutorial.

Batches are ``(x, y)``, both (B,) float32.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from .sharding import sharded_loader


class SineCurveDataModule(pl.LightningDataModule):
    def __init__(self, n_points: Annotated[int, ">= 4"] = 2000, batch_size: Annotated[int, ">= 1"] = 2000,
                 num_workers: Annotated[int, ">= 0"] = 0, seed: int = 0) -> None:
        super().__init__()
        if n_points < 4:
            raise ValueError(f"n_points must be >= 4 to determine a cubic, got {n_points}")
        self.n_points = n_points
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed  # only shuffles the training batches when batch_size < n_points
        self.dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        x = torch.linspace(-math.pi, math.pi, self.n_points)
        self.dataset = TensorDataset(x, torch.sin(x))

    @property
    def dims(self) -> dict[str, Any]:
        return {"n_features": 1}

    def _loader(self, shuffle: bool) -> DataLoader:
        # Whole batches are gathered with one index (labbook.datamodules.sharding): fetching 2000 scalars one by one
        # and collating them costs ~50x the gradient step itself.
        assert self.dataset is not None
        return sharded_loader(*self.dataset.tensors, batch_size=self.batch_size, shuffle=shuffle, seed=self.seed,
                              num_workers=self.num_workers, trainer=self.trainer if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)

    def example_inputs(self, n: int = 3) -> list[str]:
        """``n`` points of the grid (val and test are the grid), evenly spread over it, as ``parse_inputs`` takes
        them (Python's ``repr(float)``): a logged model's input example."""
        if n <= 0:
            return []
        x = torch.linspace(-math.pi, math.pi, self.n_points)
        picks = torch.linspace(0, self.n_points - 1, min(n, self.n_points)).round().long()
        return [repr(float(v)) for v in x[picks].tolist()]

    def parse_inputs(self, lines: list[str]) -> torch.Tensor:
        """One number (x) per line -> (N,) float32."""
        xs = []
        for i, line in enumerate(lines, start=1):
            try:
                v = float(line.strip())
            except ValueError:
                raise ValueError(f"line {i}: {line.strip()!r} is not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"line {i}: {line.strip()!r} is not a finite number")
            xs.append(v)
        return torch.tensor(xs, dtype=torch.float32)

    def format_outputs(self, y: torch.Tensor) -> list[str]:
        """(N,) predictions -> one string each."""
        return [f"{v:.6g}" for v in y.detach().reshape(-1).tolist()]

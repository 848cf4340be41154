"""What the date-conversion models share: the task, not the architecture.

Teacher-forced cross-entropy in training; loss, token accuracy and exact match of whole answers under
greedy decoding for validation and test; the optimizer with an optional OneCycle schedule. A subclass
provides the architecture: ``forward(src (B, S), tgt (B, T)) -> logits (B, T, V)`` (teacher forcing) and
``generate(src (B, S)) -> ids (B, T)`` (greedy), plus ``report()`` for its attention plots.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric


class CharSeq2SeqTask(pl.LightningModule):
    monitor = "val/exact_match"
    monitor_mode = "max"
    validation_metrics = ("val/loss", "val/token_accuracy", "val/exact_match")  # what it logs on validation
    headline_metric = "test/exact_match"
    schedule_fixed_by = "one_cycle"  # one_cycle=True fits the lr schedule to the run's length: it cannot grow
    default_optimizer: Callable[..., torch.optim.Optimizer] = functools.partial(torch.optim.Adam, lr=1e-3)

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer] | None = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.metrics = nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in ("val", "test")
                                      for name in ("loss", "token_accuracy", "exact_match")})
        self._report_src: torch.Tensor | None = None

    def generate(self, src: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # the architecture's greedy decoder

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Questions (B, S) -> answer ids (B, tgt_len); eval mode, no grad."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.generate(x.to(self.device))
        finally:
            self.train(was_training)

    # ---- training ------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        src, tgt = batch
        loss = self.loss(self(src, tgt), tgt)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=src.shape[0])
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        src, tgt = batch
        loss = self.loss(self(src, tgt), tgt)
        correct = self.generate(src) == tgt  # (B, T) under greedy decoding, not teacher forcing
        # MeanMetric sums and counts across DDP processes, so unequal last batches average correctly.
        m = self.metrics
        m[f"{stage}_loss"].update(loss, weight=src.shape[0])
        m[f"{stage}_token_accuracy"].update(correct.float().mean(1))
        m[f"{stage}_exact_match"].update(correct.all(1).float())
        for name in ("loss", "token_accuracy", "exact_match"):
            self.log(f"{stage}/{name}", m[f"{stage}_{name}"], on_step=False, on_epoch=True,
                     prog_bar=name == "exact_match")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        if batch_idx == 0:
            self._report_src = batch[0][: self.hparams.n_report].detach().cpu()
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, ...] | torch.Tensor, batch_idx: int) -> torch.Tensor:
        src = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.generate(src)

    def configure_optimizers(self) -> Any:
        """The optimizer; with ``one_cycle`` its lr is the peak of a OneCycle schedule over the whole run."""
        factory = self.optimizer_factory or self.default_optimizer
        opt = factory(self.parameters())
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        if not self.hparams.one_cycle or not math.isfinite(total):
            return opt
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                    total_steps=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

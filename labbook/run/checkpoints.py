"""Checkpoint files written off the training thread.

``torch.save`` of a model with its optimizer state takes the training thread 10-70 ms a checkpoint here
(the Transformer's last.ckpt: ~42 ms, once per 317-step epoch, 0.13 ms a step). :class:`BackgroundCheckpointIO`
takes a snapshot of the checkpoint's tensors (a copy into CPU memory, ~1 ms a MB) and writes the file on a
:class:`~labbook.run.background.Background` thread. Every file operation of a run goes through that one queue,
in order: writes, removals and the copies of the files into the run's artifacts
(:class:`labbook.run.checkpoints.CheckpointUpload` shares the queue), so a file is never copied before it is complete
or rewritten under its copy. Reading a checkpoint and the trainer's teardown (the end of ``fit``, of a
signal's or an error's way out) wait until the queue is done.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.callbacks import Callback

from labbook import names
from labbook.errors import one_line
from labbook.run.background import Background
from labbook.run.lifecycle import TrackedRun


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's values now, in CPU memory (a GPU's memory is not doubled for the write)."""
    return tensor.detach().to("cpu", copy=True)


class BackgroundCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` (the same files), writing and removing on ``background``."""

    def __init__(self, background: Background) -> None:
        super().__init__()
        self.background = background

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        snapshot = apply_to_collection(checkpoint, torch.Tensor, _snapshot)  # before training moves on
        self.background.submit(functools.partial(super().save_checkpoint, snapshot, path, storage_options))

    def remove_checkpoint(self, path: Any) -> None:
        self.background.submit(functools.partial(super().remove_checkpoint, path))

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.background.wait()
        return super().load_checkpoint(path, *args, **kwargs)

    def teardown(self) -> None:
        """Every file written before ``fit`` or ``test`` returns. A failed write is raised, unless the trainer
        is already on its way out with another error (a signal's stop must stay the run's story)."""
        leaving_with = sys.exc_info()[1]  # Lightning tears down inside its handler of a failure or stop
        try:
            self.background.wait()
        except Exception as exc:  # noqa: BLE001
            if leaving_with is None:
                raise
            print(f"labbook: warning: a checkpoint write failed: {one_line(exc)}", file=sys.stderr, flush=True)


class CheckpointUpload(Callback):
    """Store each checkpoint the run writes as ``checkpoints/best.ckpt`` / ``checkpoints/last.ckpt`` while
    it trains (a run stopped on one machine resumes on another), each name at most once per ``every_s``
    seconds; the final ones are stored when training ends whatever the interval. Each is stored once.

    A checkpoint never reaches the store ahead of the metrics of the steps it covers (a run killed right
    after a checkpoint was stored resumes from it with every earlier epoch's metrics stored): one written at
    an epoch's end is stored when the next epoch starts, or training ends — Lightning logs an epoch's
    training metrics only after the epoch-end hooks that write it — and the metrics logged so far are handed
    to the same queue first (:meth:`labbook.run.metrics_logger.MLflowMetricsLogger.flush_async`).

    The copies run on ``background``, the queue that also writes the files
    (:class:`labbook.run.checkpoints.BackgroundCheckpointIO`): a copy follows its file's write and precedes
    the next one, and the training thread does not wait for either (3-10 ms a copy for a 1-2 MB model).
    :meth:`flush` (the end of training, a signal, an error) stores what is still pending and waits."""

    def __init__(self, tracked: TrackedRun, every_s: float, background: Background) -> None:
        self.tracked, self.every_s, self.background = tracked, every_s, background
        self._last: dict[str, float] = {}
        self._pending: dict[str, str] = {}  # written but not stored yet

    def __call__(self, path: str) -> None:
        """A checkpoint file was written (rank 0): store it at the next :meth:`release`."""
        name = names.BEST_CHECKPOINT if Path(path).name.startswith("best") else names.LAST_CHECKPOINT
        self._pending[name] = path

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.release()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.release()

    def release(self, every: bool = False) -> None:
        """Queue the pending checkpoints whose interval has passed (``every``: all of them), after the
        metrics logged so far."""
        due = [n for n in self._pending if every or time.monotonic() - self._last.get(n, -math.inf) >= self.every_s]
        if not due:
            return
        if self.tracked.logger is not None:
            self.tracked.logger.flush_async()
        for name in due:
            self.background.submit(self._store, name, self._pending.pop(name))
            self._last[name] = time.monotonic()

    def flush(self, quiet: bool = False) -> None:
        """Every metric and every pending checkpoint stored, every write and copy under way finished. ``quiet``
        (on the way out of a failure or a signal, whose story the run must keep): a failure is not raised."""
        try:
            self.release(every=True)
            self.background.wait()
        except Exception:  # noqa: BLE001
            if not quiet:
                raise

    def _store(self, name: str, path: str) -> None:
        if Path(path).exists():
            self.tracked.log_file(path, name)

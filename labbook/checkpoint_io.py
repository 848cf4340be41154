"""Checkpoint files written off the training thread.

``torch.save`` of a model with its optimizer state takes the training thread 10-70 ms a checkpoint here
(the Transformer's last.ckpt: ~42 ms, once per 317-step epoch, 0.13 ms a step). :class:`BackgroundCheckpointIO`
takes a snapshot of the checkpoint's tensors (a copy into CPU memory, ~1 ms a MB) and writes the file on a
:class:`~labbook.background.Background` thread. Every file operation of a run goes through that one queue,
in order: writes, removals and the copies of the files into the run's artifacts
(:class:`labbook.train.CheckpointUpload` shares the queue), so a file is never copied before it is complete
or rewritten under its copy. Reading a checkpoint and the trainer's teardown (the end of ``fit``, of a
signal's or an error's way out) wait until the queue is done.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from labbook.background import Background
from labbook.errors import one_line


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

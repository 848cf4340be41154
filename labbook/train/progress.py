"""What a run shows while it trains (``trainer.enable_progress_bar``).

On a terminal: Lightning's tqdm bar, redrawn on time (every :data:`REFRESH_S`), not on every step. Lightning
redraws it and rebuilds its metrics postfix every ``refresh_rate`` steps (default 1): for a model whose step
takes a millisecond that is a sizeable share of training. Here a step that does not redraw costs one clock
read.

Anywhere else (a pipe, a CI log, a SLURM job's output file) no bar: a carriage-return bar fills such logs
with thousands of partial lines. One plain line per epoch instead, with the epoch's main metrics.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import convert_inf

from labbook.config.contract import model_traits

REFRESH_S = 0.25  # four redraws a second read as live; fewer would look stuck


class TimedProgressBar(TQDMProgressBar):
    """Lightning's training bar, drawn at most every ``refresh_s`` seconds, and once more when training ends.

    Lightning draws it at every step (``refresh_rate=1``) and, whatever the refresh rate, several times at
    every epoch's start and end; a model with 13-step epochs then pays ~0.1 ms a step for its bar. Here
    every draw waits for the clock, and validation gets no bar of its own (a new one at every validation
    was another draw an epoch): the training bar's postfix shows the validation metrics at its next draw.
    """

    def __init__(self, refresh_s: float = REFRESH_S) -> None:
        super().__init__(refresh_rate=1)
        self.refresh_s = refresh_s
        self._drawn_at = -float("inf")

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._drawn_at < self.refresh_s:
            return False
        self._drawn_at = now
        return True

    def _should_update(self, current: int, total: int) -> bool:
        # A test or predict bar's last batch draws too: those run once, and would otherwise stay at 0 %.
        return self.is_enabled and (self._due() or (current == total and not self.trainer.training))

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        if self._due():
            super().on_train_epoch_start(trainer, *args)
            return
        bar = self.train_progress_bar  # Lightning's reset, without its two draws
        bar.n = bar.last_print_n = bar.initial = 0
        bar.total = convert_inf(self.total_train_batches)
        bar.last_print_t = bar.start_t = bar._time()
        bar.set_description(f"Epoch {trainer.current_epoch}", refresh=False)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._due():
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        bar = self.train_progress_bar
        if not bar.disable:  # the bar as training left it: the last epoch's batches and metrics
            bar.n = trainer.fit_loop.epoch_loop.batch_progress.current.ready
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
        super().on_train_end(trainer, pl_module)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            super().on_validation_start(trainer, pl_module)

    def on_validation_batch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if trainer.sanity_checking:
            super().on_validation_batch_start(trainer, *args, **kwargs)

    def on_validation_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if trainer.sanity_checking:
            super().on_validation_batch_end(trainer, *args, **kwargs)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            super().on_validation_end(trainer, pl_module)


class EpochLines(Callback):
    """One line per training epoch on rank 0: ``epoch 3/100  val/loss=0.0145  train/loss=0.0123  (0.8 s)``.

    Written when the next epoch starts, or training ends: Lightning aggregates the epoch's ``train/`` values
    only after every ``on_train_epoch_end`` hook has run, so at that hook they are still the last epoch's.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._started = time.monotonic()
        self._ended: tuple[int, float] | None = None  # (epoch, its duration) not written yet

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer, pl_module)
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._ended = (trainer.current_epoch + 1, time.monotonic() - self._started)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer, pl_module)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._write(trainer, pl_module)  # the last complete epoch of a run stopped by a signal

    def _write(self, trainer: Any, pl_module: Any) -> None:
        ended, self._ended = self._ended, None
        if ended is None or not trainer.is_global_zero:
            return
        monitor = getattr(trainer.checkpoint_callback, "monitor", None) or model_traits(pl_module).monitor
        print(epoch_line(ended[0], trainer.max_epochs, trainer.callback_metrics, ended[1], monitor),
              file=self.stream or sys.stdout, flush=True)


def epoch_line(epoch: int, max_epochs: int | None, metrics: dict[str, Any], seconds: float,
               monitor: str | None = None) -> str:
    """The epoch's line: its number; every metric logged for the epoch (whatever a model calls them: ``val/loss``
    or ``val_loss``), the monitor first, then its training counterpart (``train/loss`` for ``val/loss``), the
    other validation metrics, then the rest; and how long the epoch took. Test metrics and per-step values
    (``…_step``) are not an epoch's."""
    counterpart = "train/" + monitor.split("/", 1)[-1] if monitor else "train/loss"

    def rank(key: str) -> tuple[int, str]:
        order = 0 if key == monitor else 1 if key == counterpart else 2 if key.startswith("val") else 3
        return order, key

    shown = sorted((k for k in metrics if not k.startswith("test") and not k.endswith("_step")), key=rank)
    values = "  ".join(f"{k}={float(metrics[k]):.6g}" for k in shown)
    total = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    return f"epoch {epoch}{total}  {values}  ({seconds:.1f} s)".replace("    ", "  ")


def progress_callbacks(enabled: bool, stream: TextIO | None = None) -> list[Callback]:
    """The progress display for a run on rank 0: a timed bar on a terminal, epoch lines elsewhere, none when
    ``enabled`` is false (``debug=quiet``)."""
    if not enabled:
        return []
    return [TimedProgressBar()] if (stream or sys.stdout).isatty() else [EpochLines(stream)]

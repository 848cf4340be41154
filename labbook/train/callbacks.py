"""The callbacks a run gets from ``conf/callbacks``: best/last checkpoints, early stopping, LR monitor."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import time
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint

from labbook.config.contract import model_traits
from labbook.config.schemas import CheckpointConfig
from labbook.errors import ConfigValueError, RunInterrupted
from labbook.run.owners import launcher_signal
from labbook.timing import mark, now

# Words in a metric's name that say lower or higher is better, for a monitor labbook chooses (ModelCheckpoint);
# the first list wins (neg_log_likelihood), and a name in neither is taken as a loss.
LOWER_IS_BETTER = ("loss", "err", "nll", "neg", "mse", "mae", "perplexity", "distance")
HIGHER_IS_BETTER = ("acc", "f1", "auc", "precision", "recall", "match", "ari", "r2", "iou", "dice", "score",
                    "likelihood")


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, with two corrections:

    - "already saved" means the same epoch *and* step. Lightning skips a save when the global step has not
      moved since the last one; models fitted without optimizer steps (EM: one epoch is one M-step) never
      move it, so no best checkpoint would ever be kept.
    - ``last.ckpt`` is the state at the end of a training epoch, rewritten at most every ``last_every_s``
      seconds and always at the last epoch. Lightning 2.6 rewrites it only in a step where it also saved a
      top-k checkpoint, so with a monitor it held the last *improvement* (epoch 9 of 12), and ``predict``'s
      fallback or a resume would have started from an older state than the run reached. It is written in
      ``on_train_epoch_end``, after Lightning counted the epoch as processed (and after an EM model's
      M-step): a checkpoint written during the epoch's validation is restored as "mid-epoch", and the
      resumed epoch then reshuffled its data as the previous one had. Rank 0's clock decides, and every
      process learns the decision (saving is collective under DDP).
    """

    _last_epoch_saved: int | None = None
    _in_epoch_end = False
    _last_ckpt_at: tuple[int, int] | None = None  # (epoch, global step) of the last.ckpt written at an epoch's end
    # Called on rank 0 with each checkpoint file written (labbook uploads them to the run while it trains).
    on_save: Callable[[str], None] | None = None
    _last_written_at = -math.inf  # time.monotonic() of the last last.ckpt

    def __init__(self, *args: Any, last_every_s: float = CheckpointConfig.last_every_s, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_every_s = last_every_s
        # Neither the config nor the model names a monitor: one is chosen from the first validation's metrics.
        self.chosen_monitor = self.monitor is None and self.save_top_k != 0

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A continued run's checkpoint names the folder its writer used (an earlier attempt's, another
        # machine's; under torchrun each rank localises its own copy, while Lightning gives every rank rank 0's
        # folder): restored into this one, or the ranks would judge "best" apart and part ways collectively.
        if state_dict.get("dirpath") and self.dirpath and state_dict["dirpath"] != self.dirpath:
            from labbook.train.resume import moved_checkpoint_state

            state_dict = moved_checkpoint_state(state_dict, str(self.dirpath))
        super().load_state_dict(state_dict)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.chosen_monitor and self.monitor is None and not trainer.sanity_checking:
            self._choose_monitor(trainer)
        super().on_validation_end(trainer, pl_module)

    def _choose_monitor(self, trainer: Any) -> None:
        """``val/loss`` (or ``val_loss``) when the model logs it, else the first validation metric; the
        highest is best for a metric named like a score (accuracy, F1, AUC...), else the lowest. Said once,
        on rank 0, and recorded with the run (tag ``checkpoint.monitor``)."""
        logged = [k for k in trainer.callback_metrics if k.startswith(("val/", "val_")) and not k.endswith("_step")]
        if not logged:
            return
        monitor = next((k for k in ("val/loss", "val_loss") if k in logged), logged[0])
        name = monitor.rsplit("/", 1)[-1].lower()
        higher = not any(w in name for w in LOWER_IS_BETTER) and any(w in name for w in HIGHER_IS_BETTER)
        mode = "max" if higher else "min"
        self.monitor = monitor
        self._ModelCheckpoint__init_monitor_mode(mode)  # Lightning's own: mode, and the worst value to beat
        if trainer.is_global_zero:
            print(f"labbook: the model names no monitor: the best checkpoint is the one with the "
                  f"{'highest' if mode == 'max' else 'lowest'} {monitor} (callbacks.checkpoint.monitor=... and "
                  "callbacks.checkpoint.mode=min|max choose another)", file=sys.stderr, flush=True)

    @functools.cached_property
    def state_key(self) -> str:
        # Lightning formats this key (a repr of five settings) on every callback hook it dispatches, six
        # times a training step (a few us each); the settings never change after construction.
        return super().state_key

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        # Without a step or time trigger Lightning's method returns without saving after ~10 us of checks,
        # every training step; labbook's checkpoints are per epoch unless the user sets a trigger.
        if self._every_n_train_steps < 1 and self._train_time_interval is None:
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def _should_skip_saving_checkpoint(self, trainer: Any) -> bool:
        if not super()._should_skip_saving_checkpoint(trainer):
            return False
        step_only = self._last_global_step_saved == trainer.global_step and not (
            trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit")
        return not (step_only and self._last_epoch_saved != trainer.current_epoch)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._last_epoch_saved = trainer.current_epoch
        if self.on_save is not None and trainer.is_global_zero:
            self.on_save(filepath)

    def _save_last_checkpoint(self, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        if not self.save_last or not self._last_due(trainer):
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_at = time.monotonic()
        if self._in_epoch_end:
            self._last_ckpt_at = (trainer.current_epoch, trainer.global_step)

    def _last_due(self, trainer: Any) -> bool:
        """Whether last.ckpt is to be rewritten now: at the last epoch's end, else once ``last_every_s`` has
        passed since the last one."""
        loop = trainer.fit_loop
        final = self._in_epoch_end and (
            trainer.should_stop or 0 < (loop.max_epochs or 0) <= loop.epoch_progress.current.processed
            or 0 < loop.max_steps <= loop.epoch_loop.global_step)
        due = final or time.monotonic() - self._last_written_at >= self.last_every_s
        if trainer.world_size > 1:
            due = bool(trainer.strategy.broadcast(due, src=0))
        return due

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._in_epoch_end = True
        try:
            super().on_train_epoch_end(trainer, pl_module)
            if not self.save_last or self._last_ckpt_at == (trainer.current_epoch, trainer.global_step):
                return
            if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
                return
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._in_epoch_end = False


class StopOnSignal(Callback):
    """SIGINT/SIGTERM stops training at a batch boundary, with a checkpoint of the state reached.

    Rank 0 has one (``tracked``: its run), and so has every DDP worker (``tracked`` None). Lightning installs
    a SIGTERM handler whenever a stage starts, and under DDP that handler runs a collective
    (``dist.broadcast``) from inside the signal handler: rank 0 is then usually in the middle of another
    collective and the job hangs instead of stopping. So at every stage start rank 0's run takes SIGINT and
    SIGTERM back, and workers ignore them (a worker dies with rank 0: PDEATHSIG, and rank 0 kills them).

    While training, the run's handler only records the signal (see ``TrackedRun.defer_signals``). At the end
    of the next training batch every process learns it (one broadcast from rank 0 per batch under DDP,
    as Lightning's own SIGTERM check does), all of them write ``last.ckpt`` together — model, optimizer,
    loops, the loader's place in the epoch (:class:`labbook.datamodules.sharding.ResumableLoader`) and the model's
    partial epoch sums — rank 0 stores it in the run and ends it KILLED, and the workers exit. ``resume=``
    continues from that batch. The last batch of an epoch is not a stopping point (the epoch's end, an EM
    model's M-step and validation, would then be skipped on resume); the stop comes one batch later, or at
    the end of training.
    """

    def __init__(self, tracked: Any = None) -> None:
        self.tracked = tracked
        self._stop = torch.zeros(1, dtype=torch.int32)  # 1 once rank 0's run received a signal

    def _claim(self, *args: Any) -> None:
        if self.tracked is not None:
            self.tracked.claim_signals()
            return
        # A cluster's time-limit signal reaches every process of the job; rank 0 acts on it for all.
        for signum in (signal.SIGINT, signal.SIGTERM, *([launcher_signal()] if os.environ.get("SLURM_JOB_ID") else [])):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(signum, signal.SIG_IGN)

    on_sanity_check_start = on_validation_start = on_test_start = on_predict_start = _claim

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._claim()
        self._stop = torch.zeros(1, dtype=torch.int32, device=trainer.strategy.root_device)
        if self.tracked is not None:
            self.tracked.defer_signals(lambda: self._stop.fill_(1))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        # Every process decides on the same snapshot: a signal landing on rank 0 between its broadcast and
        # its own check would otherwise send rank 0 into the checkpoint's collectives alone (a deadlock).
        stop = self._stop
        if trainer.world_size > 1:
            stop = stop.clone()
            torch.distributed.broadcast(stop, src=0)
        if not stop.item() or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        if self.tracked is not None:
            self.tracked.stopping()
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.save_last and checkpoint.dirpath:
            path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
            checkpoint.last_model_path = path
            trainer.save_checkpoint(path)  # every process: its partial sums are gathered into the file
            if checkpoint.on_save is not None and trainer.is_global_zero:
                checkpoint.on_save(path)
        self._interrupt()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tracked is not None:
            self.tracked.defer_signals(None)
        if self._stop.item():  # the signal came after the last batch: last.ckpt holds the final epoch
            self._interrupt()

    def _interrupt(self) -> None:
        if self.tracked is None:
            raise SystemExit(0)  # a worker: rank 0 reports the run
        name = signal.Signals(self.tracked.signal_received).name
        raise RunInterrupted(f"received {name}")


class PruneTrial(Callback):
    """A search's trial (``sweep.trial``) stops early when Optuna's pruner rejects it.

    After each validation of fitting, rank 0 reports the objective to its trial (``report``: epoch and
    the logged metrics -> whether to prune, :class:`labbook.sweep.search.TrialReport`); under DDP every process
    learns the answer in the same step (one broadcast from rank 0), and training stops after that epoch as
    with early stopping: the run keeps its metrics and checkpoints, and ends FINISHED. Worker ranks get
    ``report`` None.
    """

    def __init__(self, report: Callable[[int, Any], bool] | None = None) -> None:
        self.report = report
        self.pruned = False
        # The step a value is reported at: the number of validations so far (an epoch's, or several per epoch
        # with trainer.val_check_interval; an EM model never moves Lightning's global step).
        self.validations = 0

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        step, self.validations = self.validations, self.validations + 1
        prune = bool(self.report(step, trainer.callback_metrics)) if self.report else False
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned = True
            trainer.should_stop = True


class StepTiming(Callback):
    """With ``LABBOOK_TIMING=1`` (:mod:`labbook.timing`): when training starts (before the model's own
    ``on_train_start``), when the first training step starts and when the last one ended: the ends of what
    ``benchmarks/startup.py`` calls start-up and shut-down."""

    def __init__(self) -> None:
        self._started = False
        self._last_end: tuple[float, float] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        mark("train-start")  # callbacks before the model: what follows is the model's own start (a GMM's init)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._started:
            self._started = True
            mark("first-step")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._last_end = now()  # which step is the last is known only when training ends

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._last_end is not None:
            mark("last-step", at=self._last_end)


def build_callbacks(cfg: DictConfig, model: Any) -> list[Any]:
    """Checkpointing and early stopping follow the model's own ``monitor``/``monitor_mode`` unless set."""
    callbacks: list[Any] = []
    traits = model_traits(model)
    monitor, mode = traits.monitor, traits.monitor_mode
    ck = cfg.callbacks.checkpoint
    if ck.enabled:
        callbacks.append(ModelCheckpoint(
            dirpath=cfg.paths.checkpoint_dir, filename="best", monitor=ck.monitor or monitor,
            mode=ck.mode or mode, save_last=ck.save_last, save_top_k=1, auto_insert_metric_name=False,
            last_every_s=ck.get("last_every_s", CheckpointConfig.last_every_s)))  # absent from older runs' configs
    es = cfg.callbacks.early_stopping
    if es.enabled:
        if not (es.monitor or monitor):
            raise ConfigValueError("callbacks.early_stopping.monitor", None, "the model names no metric to monitor; set one")
        callbacks.append(EarlyStopping(monitor=es.monitor or monitor, mode=es.mode or mode,
                                       patience=es.patience, min_delta=es.min_delta))
    if cfg.callbacks.learning_rate_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return callbacks

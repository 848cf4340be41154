"""What does labbook (Lightning + the MLflow logger + checkpoints) cost per training step over plain PyTorch?

For each model it trains the SAME model (same constructor arguments, same initial state_dict) on the SAME
data (one datamodule, one ``train_dataloader()`` per run, seeded shuffle), same batch size, for the same
number of optimizer steps, two ways in this one process:

  labbook  what ``labbook train`` does: the config composed by Hydra from the experiment preset plus
           ``debug=quiet`` (no progress bar), the datamodule and model built by ``labbook.train.fit``'s own
           ``build_data_and_model``, the labbook ``ModelCheckpoint`` (best + last) from
           ``labbook.train.callbacks.build_callbacks``, ``logger=`` the ``MLflowMetricsLogger`` of a real
           ``TrackedRun`` in a temporary SQLite store (``prepare_store`` + ``TrackedRun.start``), the
           trainer instantiated from ``cfg.trainer`` (default ``log_every_n_steps=50``) with
           ``max_steps=N``; timed: ``Trainer(...)`` + ``trainer.fit`` + the logger's final flush.
  plain    a hand-written loop over a DataLoader from the same datamodule: ``model.train()``, the module's
           own forward + loss (what its ``training_step`` computes, minus ``self.log``), ``backward``,
           ``clip_grad_norm_`` with the preset's ``gradient_clip_val`` (Lightning's default "norm"
           algorithm), ``optimizer.step()``, ``zero_grad``; optimizer from ``model.configure_optimizers()``.

Both sides, identically:
  - validation OFF (``trainer.limit_val_batches=0``; the plain loop validates nothing). The test stage is
    not run either: the benchmark measures training steps.
  - no LR schedule: ``model.one_cycle=false`` for seq2seq/transformer (their presets use OneCycle; the
    LSTM has none), so the plain loop needs no scheduler.
  - ``torch.set_num_threads(1)`` (the presets' ``threads: 1``; the 2-core machine is shared, and one
    thread makes the timings far less noisy).
  - presets: ``lstm_sunspots`` (batch 16, hidden 32, clip 1.0), ``seq2seq_dates`` (batch 64, clip 5.0),
    ``transformer_dates`` (batch 128, clip 1.0).

The order is warm-up (a short run of each way), then the timed runs in ABBA order (plain, labbook, then
labbook, plain, ...), so a drift of the machine's speed favours neither way. The table gives the minimum and
median of each way, min/min ratios on wall-clock and on process CPU time, and the paired ratio: the median
over repeats of labbook / the plain run of the same repeat. R, on the last line, is that paired wall-clock
ratio: on this 2-core machine identical 150-step runs of the date models vary by ±3-5% from run to run,
which moves R for them between 1.01 and 1.06 over runs of the same code. After the runs it checks that
both ways end with the same weights (same steps, same batches, same clipping; the difference is exactly 0
for all three). The last two lines are

    overhead: lstm=R seq2seq=R transformer=R
    own_ms_per_step: lstm=Z seq2seq=Z transformer=Z

Z is labbook's own cost per training step, timed on the training thread inside labbook's own code
(:func:`time_own_code`: every hook of labbook's callbacks and its metrics logger), and counting only what
grows with the number of steps:
  - includes: every step's hooks (the signal check, the checkpoint's trigger check), every epoch's hooks,
    the metrics logger's hand-offs, and the timed ``last.ckpt`` rewrites (write and copy into the store)
    at their steady rate: one per ``callbacks.checkpoint.last_every_s`` (10 s) of training, or one per
    epoch when an epoch is longer (a rewrite waits for an epoch's end), each costing what this run's
    writes cost. A 150-step run of a date model writes only its final ``last.ckpt``; counting the rewrites
    it happened to make would give 0 for them, the truth being one per epoch (317-633 steps).
  - excludes, printed apart in ms once a run: the start and end hooks, the final ``last.ckpt`` (the last
    epoch's end) and the metrics flushes after training, the wait for the checkpoint copies still under way.
    These are paid once however many steps a run takes: over 150 steps they came to ~0.2-0.25 ms/step,
    which the earlier single figure counted as per-step cost.
  - excludes, printed apart: the CPU time of labbook's background threads (the metrics flush every
    ``logger.flush_every_s``, the checkpoints' writes and their copies into the store,
    :mod:`labbook.run.background`, :mod:`labbook.run.checkpoints`). They still cost the training thread its waits
    for the GIL while they run Python (up to the switch interval, which labbook shortens to 0.5 ms); those
    waits land inside labbook's hooks (counted) or in Lightning's and torch's Python (in X, not in Z).
  - not measured here: the run's heartbeat thread (one write every 30 s) and MLflow's system-metrics
    monitor, which ``labbook train`` starts (``logger.system_metrics``) and this benchmark does not.

The figures, with the machine and date they were measured on, are in the README ("Overhead over plain
PyTorch"), and only there. The Trainer's own per-step work (hook dispatch, closure, bookkeeping: ~0.5-1 ms
on a 1.1 ms LSTM step) is the floor for small steps; the date models' steps take 60-100 ms, where it is
under 1%.

    python benchmarks/overhead.py                      # all three (about 4-5 minutes on 2 shared cores)
    python benchmarks/overhead.py --models lstm --repeats 5
    python benchmarks/overhead.py --breakdown          # also: Lightning alone without/with the model's
                                                       # self.log, + checkpoint, labbook + progress bar,
                                                       # and the plain loop on Lightning Fabric
    python benchmarks/overhead.py --profile lstm       # cProfile of one labbook fit, top functions
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import logging
import os
import pstats
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.utils import get_class, instantiate  # noqa: E402

from labbook.config import schemas  # noqa: E402
from labbook.config.contract import constructor_arguments  # noqa: E402
from labbook.config.groups import CONF_DIR  # noqa: E402
from labbook.config.schemas import MLflowConfig  # noqa: E402
from labbook.run.background import Background  # noqa: E402
from labbook.run.checkpoints import BackgroundCheckpointIO, CheckpointUpload  # noqa: E402
from labbook.run.lifecycle import TrackedRun  # noqa: E402
from labbook.store.prepare import prepare_store  # noqa: E402
from labbook.train.callbacks import ModelCheckpoint, build_callbacks  # noqa: E402
from labbook.train.fit import build_trainer  # noqa: E402
from labbook.train.job import build_data_and_model  # noqa: E402
from labbook.train.progress import TimedProgressBar  # noqa: E402


def _lstm_loss(model: Any, batch: Any) -> torch.Tensor:  # LSTMForecaster.training_step without self.log
    x, y = batch
    return F.mse_loss(model(x), y)


def _seq_loss(model: Any, batch: Any) -> torch.Tensor:  # AttentionSeq2Seq / Transformer.training_step
    src, tgt = batch
    return model.loss(model(src, tgt), tgt)


CASES: dict[str, dict[str, Any]] = {
    # 1500 steps (~2 s): a run's fixed costs (the Trainer's construction, the final metrics commit, ~30 ms of
    # SQLite fsync) would otherwise pass for a per-step cost of a 300-step run.
    "lstm": {"overrides": ["experiment=lstm_sunspots"], "steps": 1500, "repeats": 5, "loss": _lstm_loss},
    "seq2seq": {"overrides": ["experiment=seq2seq_dates", "model.one_cycle=false"], "steps": 150, "repeats": 5,
                "loss": _seq_loss},
    "transformer": {"overrides": ["experiment=transformer_dates", "model.one_cycle=false"], "steps": 150, "repeats": 5,
                    "loss": _seq_loss},
}


def quiet() -> None:
    """No Lightning banners ("GPU available", "LitLogger tip") and no one-off warnings about workers or
    the checkpoint's monitor being absent (validation is off on purpose)."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def compose_cfg(overrides: list[str], steps: int, workdir: Path, uri: str) -> Any:
    schemas.register()
    GlobalHydra.instance().clear()
    paths = [f"paths.root_dir={workdir}", f"paths.output_dir={workdir}/out", f"paths.log_dir={workdir}/logs",
             f"paths.checkpoint_dir={workdir}/checkpoints"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            *overrides, "debug=quiet", "threads=1", f"trainer.max_steps={steps}", "trainer.max_epochs=100000",
            "trainer.limit_val_batches=0", f"logger.tracking_uri={uri}", *paths])
    schemas.validate(cfg)
    return cfg


class Case:
    """One model: its config, its datamodule (set up once) and its initial weights."""

    def __init__(self, name: str, steps: int, workdir: Path, uri: str) -> None:
        spec = CASES[name]
        self.name, self.steps, self.uri, self.loss = name, steps, uri, spec["loss"]
        self.cfg = compose_cfg(spec["overrides"], steps, workdir, uri)
        torch.set_num_threads(int(self.cfg.threads))
        pl.seed_everything(self.cfg.seed, workers=True, verbose=False)
        self.datamodule, model = build_data_and_model(self.cfg)
        self.init_state = copy.deepcopy(model.state_dict())
        self.dims = dict(self.datamodule.dims)
        self.clip = self.cfg.trainer.gradient_clip_val
        self.batch_size = self.cfg.datamodule.batch_size
        self.final: dict[str, dict[str, torch.Tensor]] = {}
        self.own: list[tuple[OwnTime, float]] = []  # per labbook run: labbook's own time, the run's wall s
        self.epoch_steps = len(self.datamodule.train_dataloader())  # batches an epoch (last.ckpt's steady rate)
        self.last_every_s = float(self.cfg.callbacks.checkpoint.last_every_s)

    def fresh_model(self) -> Any:
        model_cls = get_class(self.cfg.model._target_)
        model = instantiate(self.cfg.model, **constructor_arguments(model_cls, self.dims)[0])
        model.load_state_dict(self.init_state)
        return model

    # ------------------------------------------------------------------------------------ plain
    def plain(self, steps: int, fabric: bool = False) -> tuple[float, float]:
        """fabric=True (--breakdown): the same loop through Lightning Fabric (``fabric.setup``,
        ``fabric.backward``, ``fabric.clip_gradients``): what a loop of our own on Lightning's thin layer
        would cost, against the Trainer's."""
        pl.seed_everything(self.cfg.seed, workers=True, verbose=False)
        model = self.fresh_model()
        # The datamodule still points at the last Lightning run's trainer, whose fit loop counted the epoch it
        # stopped in (max_steps) as processed: a loader that takes its shuffle from the trainer's epoch
        # (labbook.datamodules.sharding.ResumableLoader) would start this loop at epoch 1's order.
        self.datamodule.trainer = None
        loader = self.datamodule.train_dataloader()
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        opt = model.configure_optimizers()
        assert isinstance(opt, torch.optim.Optimizer), "the plain loop expects no LR scheduler"
        params = [p for g in opt.param_groups for p in g["params"]]
        backward, clip = (lambda loss: loss.backward()), (lambda: torch.nn.utils.clip_grad_norm_(params, self.clip))
        if fabric:
            from lightning_fabric import Fabric

            fab = Fabric(accelerator="cpu", devices=1)
            model, opt = fab.setup(model, opt)
            loader = fab.setup_dataloaders(loader)
            backward, clip = fab.backward, (lambda: fab.clip_gradients(model, opt, max_norm=self.clip))
        step, epoch = 0, 0
        sampler = getattr(loader, "sampler", None)
        if hasattr(loader, "_epoch"):  # ResumableLoader: its (seed, epoch) order reads the epoch from a trainer,
            loader._epoch = lambda: epoch  # which this loop has not: without this every epoch had epoch 0's order
        while step < steps:
            if hasattr(sampler, "set_epoch"):  # as Lightning does each epoch: (seed, epoch)-shuffled loaders
                sampler.set_epoch(epoch)
            for batch in loader:
                loss = self.loss(model, batch)
                backward(loss)
                if self.clip:
                    clip()
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if step >= steps:
                    break
            epoch += 1
        elapsed = time.perf_counter() - t0, time.process_time() - c0
        if not fabric:
            self.final["plain"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return elapsed

    # ---------------------------------------------------------------------------------- labbook
    def labbook(self, steps: int, variant: str = "labbook") -> tuple[float, float]:
        """variant: "labbook" (as `labbook train ... debug=quiet`), or for --breakdown "bare" (no logger,
        no checkpoint), "nolog" (as "bare", with the model's ``self.log`` made a no-op on this instance: what
        the module's per-step ``self.log`` costs), "ckpt" (checkpoint, no logger), "progress" (labbook with the progress bar that
        `labbook train` shows without debug=quiet, written to /dev/null: a lower bound for a terminal)."""
        cfg = self.cfg
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        model = self.fresh_model()
        if variant == "nolog":
            model.log = lambda *args, **kwargs: None  # diagnosis only; the model file is untouched
        trainer_kwargs: dict[str, Any] = {"max_steps": steps}
        with contextlib.ExitStack() as stack:
            if variant == "progress":  # labbook's terminal bar (TimedProgressBar), drawn into /dev/null
                trainer_kwargs["enable_progress_bar"] = True
                sink = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(sink))
                stack.enter_context(contextlib.redirect_stderr(sink))
            tracked = None
            if variant in ("labbook", "progress"):
                tracked = stack.enter_context(TrackedRun.start(self.uri, f"overhead-{self.name}"))
            callbacks = build_callbacks(cfg, model) if variant not in ("bare", "nolog") else []
            if variant == "progress":
                callbacks.append(TimedProgressBar())
            files = None
            if tracked is not None:  # as labbook.train.fit.run: each checkpoint written (in the background) reaches the store
                files = Background("labbook-checkpoints")
                trainer_kwargs = {**trainer_kwargs, "plugins": [BackgroundCheckpointIO(files)]}
                for cb in callbacks:
                    if isinstance(cb, ModelCheckpoint):
                        cb.on_save = CheckpointUpload(tracked, MLflowConfig.checkpoint_upload_every_s, files)
            if variant in ("bare", "nolog"):
                trainer_kwargs["enable_checkpointing"] = False
            t0, c0 = time.perf_counter(), time.process_time()
            if variant in ("bare", "nolog"):  # Lightning's Trainer alone: none of labbook's callbacks
                trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False,
                                      **{"enable_progress_bar": False, **trainer_kwargs})
            else:
                trainer = build_trainer(cfg, callbacks, tracked, **trainer_kwargs)  # as labbook.train.fit.run builds it
            own = time_own_code(trainer) if variant == "labbook" else None
            trainer.fit(model, datamodule=self.datamodule)
            if trainer.logger:
                trainer.logger.flush()
            started = time.perf_counter()
            if files is not None:  # as labbook.train.fit.run, before it stores the final checkpoints
                files.wait()
            if own is not None:
                own.once += time.perf_counter() - started
                own.off_thread_s = sum(b.cpu_s for b in (files, getattr(trainer.logger, "background", None)) if b)
            elapsed = time.perf_counter() - t0, time.process_time() - c0
        assert trainer.global_step == steps, (trainer.global_step, steps)
        if variant == "labbook":
            self.final["labbook"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.own.append((own, elapsed[0]))
        return elapsed

    def same_weights(self) -> float:
        a, b = self.final.get("plain"), self.final.get("labbook")
        if not a or not b:
            return float("nan")
        return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())


# Hooks Lightning calls once per fit (or per stage), whatever the number of steps.
ONCE_HOOKS = ("setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
              "on_sanity_check_start", "on_sanity_check_end", "on_validation_start", "on_test_start",
              "on_predict_start", "on_exception", "finalize", "state_dict", "load_state_dict",
              "on_save_checkpoint", "on_load_checkpoint")


class OwnTime:
    """The seconds one labbook fit spent inside labbook's own code (:func:`time_own_code`), split by what
    its count grows with:

    - ``per_step``: the hooks of every step and every epoch, the metrics logger's hand-offs and the
      flushes it makes every ``flush_every_s`` while training; their count grows with the steps.
    - ``saves``: each ``last.ckpt`` write (and its copy into the run's artifacts): (seconds, final?). The
      final one (the last epoch's end) is paid once a run; the others are the timed rewrites, at most one
      per ``callbacks.checkpoint.last_every_s`` and one per epoch (the first epoch's end always writes).
    - ``once``: the hooks of a fit's start and end, and the metrics flushes after training (Lightning's
      ``finalize``, the explicit flush after ``fit``): paid once a run.
    ``detail`` keeps every label's (seconds, calls), self time (a nested label's time is its own only).
    """

    def __init__(self) -> None:
        self.detail: dict[str, list[float]] = {}
        self.saves: list[tuple[float, float, bool]] = []  # (write + upload s, of which upload s, final?)
        self.per_step = self.once = 0.0
        self.off_thread_s = 0.0  # CPU seconds of labbook's background threads (metrics flushes, checkpoint copies)

    @property
    def total(self) -> float:
        return self.per_step + self.once + sum(s for s, _, _ in self.saves)

    def fixed_s(self) -> float:
        """Seconds paid once a run: start/end hooks, the final flushes, the final last.ckpt."""
        return self.once + sum(s for s, _, final in self.saves if final)

    def save_s(self) -> float:
        """One last.ckpt write and upload (the median over the run's saves, the final one included: the
        same work)."""
        return statistics.median(s for s, _, _ in self.saves) if self.saves else 0.0

    def per_step_ms(self, steps: int, step_s: float, epoch_steps: int, every_s: float) -> tuple[float, float]:
        """(hooks ms/step, timed last.ckpt rewrites ms/step). The rewrites at their steady rate: one per
        ``every_s`` of training, or per epoch when an epoch is longer (a rewrite waits for an epoch's end),
        each costing :meth:`save_s`; their count in a short run (0 or 1) says nothing about a long one."""
        between = max(epoch_steps, every_s / step_s) if step_s > 0 else float(epoch_steps)
        return 1000 * self.per_step / steps, 1000 * self.save_s() / between


def time_own_code(trainer: Any) -> OwnTime:
    """Time every call Lightning makes into labbook's own code during ``trainer.fit``: the hooks of labbook's
    callbacks (checkpoint choices and the saves they decide, signal checks, progress, uploads to the store)
    and its metrics logger, and, inside them, each ``last.ckpt`` write and upload and each metrics flush.
    This is labbook's share measured directly: the date models' steps vary by milliseconds from run to run
    on a shared machine, far more than the tenth of a millisecond to be resolved by subtracting two
    wall-clock runs."""
    own = OwnTime()
    stack: list[list[float]] = []  # per active timed call: [time spent in nested timed calls]
    state = {"in_log": False, "upload": 0.0, "in_save": False}
    max_steps = trainer.fit_loop.max_steps

    def timed(label: str, fn: Callable[..., Any], on_done: Callable[[float, float], None] | None = None):
        def call(*args: Any, **kwargs: Any) -> Any:
            stack.append([0.0])
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                nested = stack.pop()[0]
                if stack:
                    stack[-1][0] += spent
                entry = own.detail.setdefault(label, [0.0, 0])
                entry[0] += spent - nested
                entry[1] += 1
                (on_done or (lambda s, n: None))(spent, nested)
        return call

    def hook_done(name: str) -> Callable[[float, float], None]:
        def done(spent: float, nested: float) -> None:
            if name in ONCE_HOOKS:
                own.once += spent - nested
            else:
                own.per_step += spent - nested
        return done

    def add(kind: str, seconds: float) -> None:
        setattr(own, kind, getattr(own, kind) + seconds)

    def defined_here(cls: type, name: str) -> bool:  # defined by a labbook class, not inherited from Lightning
        return any(name in k.__dict__ for k in cls.__mro__ if k.__module__.startswith("labbook."))

    for obj in [*trainer.callbacks, *([trainer.logger] if trainer.logger else [])]:
        cls = type(obj)
        if not cls.__module__.startswith("labbook."):
            continue
        for name in dir(cls):
            if (name.startswith("on_") or name in ("log_metrics", "flush", "save", "finalize", "setup",
                                                   "state_dict", "load_state_dict")) and defined_here(cls, name):
                if name in ("flush", "on_save"):
                    continue  # below, as their own kinds (on_save: ModelCheckpoint's upload, not a hook)
                if name == "log_metrics":
                    inner = getattr(obj, name)

                    def log_metrics(*args: Any, _inner: Callable[..., Any] = inner, **kwargs: Any) -> Any:
                        state["in_log"] = True
                        try:
                            return _inner(*args, **kwargs)
                        finally:
                            state["in_log"] = False
                    setattr(obj, name, timed(f"{cls.__name__}.{name}", log_metrics, hook_done(name)))
                    continue
                setattr(obj, name, timed(f"{cls.__name__}.{name}", getattr(obj, name), hook_done(name)))
        if hasattr(obj, "log_metrics") and hasattr(obj, "flush"):  # the metrics logger
            flush = obj.flush

            def timed_flush(*args: Any, _flush: Callable[..., Any] = flush, **kwargs: Any) -> Any:
                if state["in_log"]:  # every flush_every_s while training
                    return every(*args, **kwargs)
                return last(*args, **kwargs)  # after training: finalize, the explicit flush

            every = timed(f"{cls.__name__}.flush (every flush_every_s)", flush, lambda s, n: add("per_step", s - n))
            last = timed(f"{cls.__name__}.flush (after training)", flush, lambda s, n: add("once", s - n))
            obj.flush = timed_flush
        if isinstance(obj, ModelCheckpoint):  # each last.ckpt written, and its copy into the store
            write, upload = obj._save_last_checkpoint, obj.on_save

            def save_last(tr: Any, candidates: Any, _write: Callable[..., Any] = write, _ck: Any = obj) -> Any:
                before, t0 = _ck._last_written_at, time.perf_counter()
                state["upload"], state["in_save"] = 0.0, True
                try:
                    return _write(tr, candidates)
                finally:
                    spent = time.perf_counter() - t0
                    state["in_save"] = False
                    if _ck._last_written_at != before:  # written, not skipped as not due yet
                        final = 0 < max_steps <= tr.global_step or bool(tr.should_stop)
                        own.saves.append((spent, state["upload"], final))
                    else:
                        own.per_step += spent

            obj._save_last_checkpoint = timed("ModelCheckpoint last.ckpt (write + upload)", save_last)
            if upload is not None:
                def store(path: str, _up: Callable[[str], None] = upload) -> None:
                    t0 = time.perf_counter()
                    try:
                        _up(path)
                    finally:
                        if state["in_save"]:
                            state["upload"] += time.perf_counter() - t0
                        else:  # best.ckpt's, after a validation: per epoch
                            own.per_step += time.perf_counter() - t0

                obj.on_save = timed("CheckpointUpload (copy into the store)", store)
    return own


def profile(case: Case, steps: int, top: int = 35) -> None:
    case.labbook(max(10, steps // 10))  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    t = case.labbook(steps)[0]
    prof.disable()
    t_plain = case.plain(steps)[0]
    print(f"\n{case.name}: labbook {t:.3f} s (under cProfile), plain {t_plain:.3f} s, {steps} steps")
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    print(out.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: per model)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs of each way, alternating (default: 7 for lstm, 3 for the others)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time Lightning alone (no logger/checkpoint) and with the checkpoint only")
    ap.add_argument("--profile", choices=list(CASES), help="cProfile one labbook fit of this model and exit")
    args = ap.parse_args()
    quiet()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, pytorch-lightning {pl.__version__}, threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="labbook-overhead-") as tmp:
        workdir = Path(tmp)
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        prepare_store(uri)
        if args.profile:
            case = Case(args.profile, args.steps or CASES[args.profile]["steps"], workdir, uri)
            profile(case, case.steps)
            return

        # Always: the plain loop, Lightning's bare Trainer (the model as it is, no logger, no checkpoint) and
        # labbook, so that labbook's overhead splits into Lightning's share and labbook's own.
        ways: list[tuple[str, Callable[[Case, int], tuple[float, float]]]] = [
            ("plain", Case.plain), ("lightning", lambda c, n: c.labbook(n, "bare")), ("labbook", Case.labbook)]
        if args.breakdown:
            ways[1:1] = [("lightning -log", lambda c, n: c.labbook(n, "nolog"))]
            ways[3:3] = [("+checkpoint", lambda c, n: c.labbook(n, "ckpt"))]
            ways.append(("+progress bar", lambda c, n: c.labbook(n, "progress")))
            ways.append(("fabric loop", lambda c, n: c.plain(n, fabric=True)))
        rows, ratios, own, split, details = [], {}, {}, {}, {}
        for name in args.models:
            steps = args.steps or CASES[name]["steps"]
            case = Case(name, steps, workdir, uri)
            for _, fn in ways:  # warm-up: imports, allocator, first SQLite connection, thread pools
                fn(case, max(10, steps // 10))
            times: dict[str, list[tuple[float, float]]] = {w: [] for w, _ in ways}
            for i in range(args.repeats or CASES[name]["repeats"]):
                # ABBA order (plain, labbook, then labbook, plain, ...): a drift of the machine's speed
                # during the runs then favours neither way
                for way, fn in (ways if i % 2 == 0 else ways[::-1]):
                    times[way].append(fn(case, steps))
            diff = case.same_weights()
            wall = {w: [t[0] for t in v] for w, v in times.items()}
            cpu = {w: [t[1] for t in v] for w, v in times.items()}
            base, base_cpu = min(wall["plain"]), min(cpu["plain"])
            for way, _ in ways:
                t = min(wall[way])
                paired = statistics.median(a / b for a, b in zip(wall[way], wall["plain"]))
                rows.append((name, way, steps, case.batch_size, t, statistics.median(wall[way]), steps / t,
                             1000 * (t - base) / steps, t / base, paired, min(cpu[way]) / base_cpu))
            ratios[name] = statistics.median(a / b for a, b in zip(wall["labbook"], wall["plain"]))

            def per_step(way: str, base: str) -> float:  # ms a step, the median of the repeats' paired differences
                return 1000 * statistics.median(a - b for a, b in zip(wall[way], wall[base])) / steps

            runs = case.own[-len(wall["labbook"]):]  # the timed runs'
            hooks, timed_saves = zip(*(o.per_step_ms(steps, t / steps, case.epoch_steps, case.last_every_s)
                                       for o, t in runs))
            own[name] = statistics.median(h + s for h, s in zip(hooks, timed_saves))  # Z
            fixed = 1000 * statistics.median(o.fixed_s() for o, _ in runs)
            in_run = 1000 * statistics.median(o.total for o, _ in runs) / steps  # all of it, as this run paid it
            total = per_step("labbook", "plain")
            off = 1000 * statistics.median(o.off_thread_s for o, _ in runs) / steps
            split[name] = (total, total - in_run, own[name], statistics.median(hooks), statistics.median(timed_saves),
                           fixed, in_run, off)
            details[name] = (runs, case.epoch_steps)
            if "+progress bar" in wall:
                split[name] += (per_step("+progress bar", "labbook"),)
            print(f"{name}: done (wall s: {'; '.join(f'{w} ' + ' '.join(f'{x:.2f}' for x in v) for w, v in wall.items())});"
                  f" max |weight difference| plain vs labbook after {steps} steps: {diff:.2e}", flush=True)

    print()
    print("min s, median s: wall-clock of the timed runs; steps/s and +ms/step (over plain) from the minimum;")
    print("ratio = min / min(plain); paired = median over repeats of run / the plain run of the same repeat (ABBA order);")
    print("cpu = the same min/min ratio on process CPU time (insensitive to other jobs on the shared cores).")
    print(f"{'model':<12} {'way':<14} {'steps':>5} {'batch':>5} {'min s':>8} {'median s':>8} {'steps/s':>8} "
          f"{'+ms/step':>8} {'ratio':>6} {'paired':>6} {'cpu':>6}")
    for name, way, steps, bs, t, med, sps, extra, r, pr, rc in rows:
        print(f"{name:<12} {way:<14} {steps:>5} {bs:>5} {t:>8.3f} {med:>8.3f} {sps:>8.1f} {extra:>8.2f} {r:>6.3f}"
              f" {pr:>6.3f} {rc:>6.3f}")
    print()
    for name in args.models:  # where labbook's own time went, the mean over the timed runs
        runs, epoch_steps = details[name]
        labels = sorted({k for o, _ in runs for k in o.detail}, key=lambda k: -sum(o.detail.get(k, [0, 0])[0] for o, _ in runs))
        print(f"{name}: labbook's own time per run (self time, the mean of {len(runs)} runs; {epoch_steps} steps an epoch):")
        for k in labels:
            ms = 1000 * statistics.mean(o.detail.get(k, [0, 0])[0] for o, _ in runs)
            calls = statistics.mean(o.detail.get(k, [0, 0])[1] for o, _ in runs)
            print(f"    {k:<52} {ms:9.2f} ms {calls:7.0f} calls")
        saves = [sv for o, _ in runs for sv in o.saves]
        print("    last.ckpt writes: " + ", ".join(f"{1000 * t:.1f} ms (upload {1000 * u:.1f}){' final' if f else ''}"
                                                  for t, u, f in saves))
    print()
    for name in args.models:
        total, lightning, labbook, hooks, saves, fixed, in_run, off, *bar = split[name]
        print(f"{name}: +{total:.3f} ms/step over the plain loop, of which Lightning's bare Trainer is {lightning:.3f} "
              f"and labbook {labbook:.3f}" + (f"; the progress bar adds {bar[0]:.4f}" if bar else "")
              + f" (labbook per step: hooks {hooks:.3f} + timed last.ckpt rewrites {saves:.3f}; once a run: "
              f"{fixed:.1f} ms; all labbook's own time in these runs: {in_run:.3f} ms/step; its background threads' CPU: "
              f"{off:.3f} ms/step)")
    print("(+X: the median over repeats of labbook minus the plain run of the same repeat; Lightning's share: X minus"
          " all the time spent in labbook's own code in those runs; labbook's: its per-step cost Z, timed inside its"
          " own hooks, with the timed last.ckpt rewrites at their steady rate; once a run: the start/end hooks, the"
          " final last.ckpt and metrics flush; `--breakdown` also times Lightning alone as a check)")
    print("overhead: " + " ".join(f"{name}={ratios[name]:.2f}" for name in args.models))
    print("own_ms_per_step: " + " ".join(f"{name}={own[name]:.3f}" for name in args.models))


if __name__ == "__main__":
    main()

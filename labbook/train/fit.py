"""``labbook train``: build datamodule → model → callbacks → trainer from the config, fit, test, record.

The shape of lightning-hydra-template's ``train.py``: everything comes from the config through
``hydra.utils.instantiate``; what the model must know about the data travels explicitly from the
datamodule's ``dims`` to the model's constructor.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig

from labbook import names
from labbook.config.contract import model_traits
from labbook.config.experiment import run_name
from labbook.config.objective import objective_value, objectives_of
from labbook.config.schemas import LogModel, MLflowConfig
from labbook.run.background import Background
from labbook.run.checkpoints import BackgroundCheckpointIO, CheckpointUpload
from labbook.run.lifecycle import TrackedRun
from labbook.store.uri import ui_command
from labbook.sweep.job import SweepJob
from labbook.sweep.search import RUN_ID_ATTR
from labbook.timing import enabled as timing_enabled
from labbook.timing import mark
from labbook.train.callbacks import (
    ModelCheckpoint,
    PruneTrial,
    StepTiming,
    StopOnSignal,
)
from labbook.train.job import Job
from labbook.train.progress import TimedProgressBar, progress_callbacks
from labbook.train.ranks import ENV_RUN_ID, hand_off, process_group
from labbook.train.resume import ResumePlan, resume_record


def open_run(job: Job, uri: str, resume: ResumePlan | None = None, sweep: SweepJob | None = None,
             overrides: Sequence[str] = ()) -> TrackedRun:
    """Rank 0's run for ``job``: a new one in its experiment (a child of its sweep's parent run, named after
    what it sweeps; a single run after what its ``overrides`` set, and when), or the resumed run re-opened.
    It is tagged with its objective (``optimized_metric``, else the model's validation monitor) and that
    objective's direction."""
    cfg = job.cfg
    objective = objective_of(job.cfg, job.model)
    heartbeat_s = cfg.logger.get("heartbeat_s", MLflowConfig.heartbeat_s)  # absent from older runs' configs
    patience_s = cfg.logger.get("server_patience_s", MLflowConfig.server_patience_s)
    # Born with its objective and its trial: a run killed in its first second still says what it was.
    own_tags: dict[str, Any] = {}
    if objective is not None:
        own_tags.update({names.OBJECTIVE: objective[0], names.OBJECTIVE_DIRECTION: objective[1]})
    report = _trial_report(job)
    if report is not None:
        own_tags.update({names.TRIAL_NUMBER: report.trial.number, names.TRIAL_STATE: "RUNNING",
                         **{f"optuna.param.{k}": v for k, v in report.trial.params.items()}})
    if resume is not None:
        tracked = TrackedRun.reopen(uri, resume.run_id, heartbeat_s=heartbeat_s, patience_s=patience_s)
        if own_tags:
            tracked.set_tags(own_tags)
    else:
        tags = {**(sweep.tags() if sweep else {}), **dict(cfg.logger.tags or {}), **own_tags}
        name = cfg.logger.run_name or (sweep.name if sweep else run_name(cfg.logger.experiment_name, overrides))
        tracked = TrackedRun.start(uri, cfg.logger.experiment_name, name, tags, heartbeat_s=heartbeat_s,
                                   parent_run_id=sweep.parent_run_id if sweep else None, patience_s=patience_s)
    if report is not None:  # the search's trial knows its run, the run its trial
        report.trial.set_user_attr(RUN_ID_ATTR, tracked.run_id)
    mark("run-opened")
    return tracked


def _trial_report(job: Job) -> Any:
    return next((cb.report for cb in job.callbacks if isinstance(cb, PruneTrial) and cb.report is not None), None)


def _pruned(job: Job) -> bool:
    return any(isinstance(cb, PruneTrial) and cb.pruned for cb in job.callbacks)


def objective_of(cfg: Any, model: Any) -> tuple[str, str] | None:
    """The objective a sweep ranks runs by (the first of :func:`labbook.config.objective.objectives_of`), or None."""
    objectives = objectives_of(cfg, model)
    return objectives[0] if objectives else None


def run(job: Job, tracked: TrackedRun | None, overrides: list[str] | None = None,
        resume: ResumePlan | None = None) -> dict[str, Any]:
    """Fit and test ``job``, recording into the opened run ``tracked`` (rank 0), or as a DDP worker rank
    (``tracked`` None: no logger, no store). Returns ``{"run_id", "metrics", "headline", "uri"}``.

    With ``resume`` the job continues that run (``job.cfg.ckpt_path`` is its localised last checkpoint).
    """
    cfg, resolved, datamodule, model, callbacks = job.cfg, job.resolved, job.datamodule, job.model, job.callbacks
    if tracked is None:
        trainer = build_trainer(cfg, callbacks)
        with process_group():
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
            if cfg.test and not _pruned(job):  # as rank 0 decides (every rank learnt the pruning)
                trainer.test(model, datamodule=datamodule, ckpt_path=_test_ckpt(trainer), verbose=False)
        return {"run_id": os.environ.get(ENV_RUN_ID), "metrics": {}, "headline": None}

    with tracked:
        _record_start(job, tracked, overrides or [], resume)
        # One queue, in order: the checkpoints' writes, the metrics' flushes and the checkpoints' copies.
        files = Background("labbook-store")
        upload = CheckpointUpload(tracked, cfg.logger.get("checkpoint_upload_every_s",
                                                          MLflowConfig.checkpoint_upload_every_s), files)
        mark("recorded")
        if cfg.logger.log_checkpoints:
            for cb in callbacks:
                if isinstance(cb, ModelCheckpoint):
                    cb.on_save = upload
            callbacks = [*callbacks, upload]
        tracked.lightning_logger(cfg.logger.flush_every_s, files, resume.stored_steps if resume else None)
        trainer = build_trainer(cfg, callbacks, tracked, plugins=[BackgroundCheckpointIO(files)])
        mark("trainer-built")
        try:
            with hand_off(resolved, Path(cfg.paths.output_dir), tracked.run_id, trainer,
                          on_abandon=lambda error: tracked.end("FAILED", error)):
                started = time.perf_counter()
                trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
                # timing.build_s: the data were read before the run opened, so its duration leaves them out.
                timing = {names.TIMING_BUILD: round(job.build_s, 3), names.TIMING_FIT: round(time.perf_counter() - started, 3)}
                mark("fit-done")
                # Read before testing: loading the best checkpoint restores the callback's older state.
                checkpoints = _checkpoint_state(trainer)
                metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
                if cfg.test and not _pruned(job):  # a pruned trial's model is not one anybody would take
                    started = time.perf_counter()
                    trainer.test(model, datamodule=datamodule, ckpt_path=_test_ckpt(trainer), verbose=False)
                    timing[names.TIMING_TEST] = round(time.perf_counter() - started, 3)
                    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
                    mark("tested")
        except BaseException:
            upload.flush(quiet=True)  # interrupted or failed: the newest checkpoints reach the store for a resume
            raise
        upload.flush()  # the metrics, then the final checkpoints, each stored once
        trainer.logger.flush()
        if cfg.logger.log_checkpoints:
            _tag_checkpoints(tracked, checkpoints)
        if not _pruned(job):  # a pruned trial's model is not one anybody would take
            _log_models(tracked, checkpoints, LogModel(cfg.logger.get("log_model", LogModel.best)), resolved,
                        model, datamodule)
        mark("model-logged")
        traits = model_traits(model)
        if traits.reports:
            tracked.log_report(model.report())
        # The model's own headline, else its first test metric.
        headline_key = traits.headline_metric or next((k for k in metrics if k.startswith("test")), None)
        headline = (headline_key, metrics.get(headline_key)) if headline_key in metrics else None
        if objective_of(cfg, model) is None and checkpoints.get("monitor"):  # the monitor chosen while it trained
            tracked.set_tags({names.OBJECTIVE: checkpoints["monitor"],
                              names.OBJECTIVE_DIRECTION: "maximize" if checkpoints["mode"] == "max" else "minimize"})
        tracked.set_tags({**timing, **({names.HEADLINE: headline_key} if headline else {})})
        if _trial_report(job) is not None:
            tracked.set_tags({names.TRIAL_STATE: "PRUNED" if _pruned(job) else "COMPLETE"})
        mark("artifacts-logged")
    mark("run-closed")
    values = {metric: objective_value(metric, metrics, checkpoints.get("monitor"), checkpoints.get("score"))
              for metric, _ in objectives_of(job.cfg, job.model)}
    return {"run_id": tracked.run_id, "metrics": metrics, "headline": headline, "uri": tracked.uri,
            "objectives": values, "pruned": _pruned(job)}


def _record_start(job: Job, tracked: TrackedRun, overrides: list[str], resume: ResumePlan | None) -> None:
    """What a run records before it trains: its config and overrides (a resume's appended), git state,
    versions, its data, and from then on the machine's system metrics."""
    cfg, resolved = job.cfg, job.resolved
    if resume is None:
        tracked.log_config(resolved, overrides)
    else:  # params stay as first logged (MLflow refuses new values); the stored config is the current one
        tracked.log_config({**resolved, "ckpt_path": None}, resume.all_overrides, params=False)
        tracked.log_text(resume_record(resume), names.RESUME_RECORD.format(number=resume.number))
        tracked.set_tags({names.RESUMES: resume.number})
    tracked.log_git(Path.cwd())  # the user's project, not labbook's install folder
    tracked.log_environment()
    if resume is None:
        from labbook.run.datasets import dataset_entity, log_dataset

        log_dataset(tracked, dataset_entity(resolved["datamodule"], job.datamodule_choice, job.datamodule))
    if cfg.logger.get("system_metrics", MLflowConfig.system_metrics):  # after what rebuilds the run
        tracked.monitor_system(cfg.logger.get("system_metrics_every_s", MLflowConfig.system_metrics_every_s),
                               resume=resume is not None)


def build_trainer(cfg: DictConfig, callbacks: list[Any], tracked: TrackedRun | None = None,
                  **overrides: Any) -> Any:
    """The run's trainer: on rank 0 it logs into ``tracked``, whose run a signal stops at a batch boundary
    (:class:`StopOnSignal`); elsewhere (worker ranks) it has no logger. ``overrides`` go to the Trainer as
    they are. What rank 0 shows while training: :func:`labbook.train.progress.progress_callbacks`."""
    if timing_enabled():  # only when measured: otherwise no extra hook runs in every step
        callbacks = [*callbacks, StepTiming()]
    if tracked is None:
        return instantiate(cfg.trainer, callbacks=[*callbacks, StopOnSignal()], logger=False,
                           **{"enable_progress_bar": False, **overrides})
    progress = progress_callbacks(bool(cfg.trainer.enable_progress_bar))
    bar = any(isinstance(cb, TimedProgressBar) for cb in progress)
    return instantiate(cfg.trainer, callbacks=[*callbacks, *progress, StopOnSignal(tracked)],
                       logger=tracked.logger or tracked.lightning_logger(cfg.logger.flush_every_s),
                       **{"enable_progress_bar": bar, **overrides})


def _test_ckpt(trainer: Any) -> str | None:
    cb = trainer.checkpoint_callback
    return "best" if cb is not None and cb.best_model_path else None


def _checkpoint_state(trainer: Any) -> dict[str, Any]:
    cb = trainer.checkpoint_callback
    if cb is None:
        return {}
    score = cb.best_model_score
    return {"best": cb.best_model_path, "last": cb.last_model_path, "monitor": cb.monitor, "mode": cb.mode,
            "score": float(score) if score is not None else None}


def _log_models(tracked: TrackedRun, checkpoints: Mapping[str, Any], which: LogModel, resolved: Mapping[str, Any],
                model: Any, datamodule: Any) -> None:
    """The run's checkpoints as MLflow models (``logger.log_model``). A model that cannot be logged is a
    warning, not a failed run: the training happened, and its checkpoints stay in the run. One that cannot
    answer inputs is logged (to load, register, resume from) and says so."""
    import sys

    from labbook.config.rebuild import cannot_answer
    from labbook.errors import one_line

    if which is LogModel.none:
        return
    lacks = cannot_answer(model, datamodule)
    if lacks:
        print(f"labbook: note: the run's MLflow model cannot answer inputs: {lacks} (docs/contract.md)",
              file=sys.stderr, flush=True)
    try:
        tracked.log_models(checkpoints, which.value, resolved, model, datamodule)
    except Exception as exc:  # noqa: BLE001
        print(f"labbook: warning: the run's model was not logged ({one_line(exc)}); its checkpoints are in the "
              "run", file=sys.stderr, flush=True)


def _tag_checkpoints(tracked: TrackedRun, state: Mapping[str, Any]) -> None:
    """What the stored best checkpoint was chosen by, and its score."""
    if state.get("best") and Path(state["best"]).exists():
        score = state["score"]
        tracked.set_tags({names.CHECKPOINT_MONITOR: state["monitor"],
                          names.CHECKPOINT_BEST_SCORE: repr(score) if score is not None else "n/a"})


def summary(result: Mapping[str, Any]) -> str:
    lines = [f"run id: {result['run_id']}"]
    if result.get("headline"):
        key, value = result["headline"]
        lines.append(f"{key}: {value:.6g}")
    if result.get("uri"):
        lines.append(f"open the UI: {ui_command(result['uri'])}")
    return "\n".join(lines)

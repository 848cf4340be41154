"""A sweep is one thing in MLflow: a parent run per multirun, each job a child run under it.

:class:`Sweep` is registered in ``conf/hydra/default.yaml`` as a Hydra callback, so it runs for ``-m`` on the
command line and for a preset that sets ``hydra.mode: MULTIRUN`` alike, whatever the sweeper and the
launcher, once, in the launching process: before the first job it resolves and creates the store, opens
the parent run and names it in the environment; after the last it writes the summary and closes the
parent — FINISHED when every job finished, FAILED when any failed (tags ``sweep.failed``,
``sweep.failed_jobs``) — and :meth:`SweepOutcome.abort` closes it KILLED when the sweep is interrupted.

What the launching command learns of its sweep travels in a :class:`SweepOutcome`: ``labbook train`` makes
one per command and makes it current (:meth:`SweepOutcome.current`) while Hydra runs; the callback, which
Hydra builds from the config, records the open sweep and how many of its jobs did not finish there.

Jobs run in this process (Hydra's basic launcher), in joblib workers or as SLURM/submitit jobs. All of them
inherit the environment set here before the first job starts, which is how a job finds its parent
(:func:`labbook.sweep.job.job_of_sweep`), whichever launcher started it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from hydra.experimental.callback import Callback

from labbook import names
from labbook.errors import RunInterrupted, RunKilled, UserError
from labbook.sweep.devices import ENV_PER_JOB, ENV_POOL, sweep_environment
from labbook.sweep.job import ENV_EXPERIMENT, ENV_PARENT, ENV_SWEPT, STOPPING
from labbook.sweep.space import _overrides, is_search, short_names, sweep_key, sweep_space

# How long an interrupted sweep waits for its running jobs to stop themselves (each at a batch boundary,
# with a checkpoint; a job gives itself labbook.run.lifecycle.STOP_GRACE_S) before it leaves them to the
# launcher.
JOBS_STOP_GRACE_S = 10.0


@dataclasses.dataclass
class OpenSweep:
    parent: Any  # labbook.run.lifecycle.TrackedRun
    uri: str
    experiment: str
    directory: Path
    space: dict[str, str]
    objective: str | None
    direction: str | None


class SweepNotStarted(BaseException):
    """Hydra turns a callback's ``Exception`` into a warning and carries on; a sweep whose store or parent run
    could not be set up must not start, so the error travels out of Hydra wrapped in this."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class SweepFailed(Exception):
    """Some jobs of the sweep did not finish (the parent ends FAILED with this as its error)."""


class JobWithoutResult(UserError):
    """A launcher's job ended without a result: cancelled, lost with its node, out of time for good. The
    launcher (``hydra_plugins.labbook_slurm``) waits for every job and returns this one FAILED with this
    error, naming the job and how it ended; Hydra's basic sweeper then raises it, and the sweep ends as one
    whose jobs did not all finish (:meth:`SweepOutcome.abort`)."""


_CURRENT: contextvars.ContextVar["SweepOutcome | None"] = contextvars.ContextVar("labbook_sweep", default=None)


@dataclasses.dataclass
class SweepOutcome:
    """What one launching command learns of its sweep: the sweep while it is open, and how many of its jobs
    did not finish (the command's exit code). Jobs that run in other processes (joblib, submitit) report
    their own errors; this count is how the launching process learns of them."""

    open: OpenSweep | None = None
    failed: int = 0

    @contextlib.contextmanager
    def current(self) -> Iterator["SweepOutcome"]:
        """While inside, :class:`Sweep` (built by Hydra) records into this outcome."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    @staticmethod
    def active() -> "SweepOutcome":
        """The outcome made current by the launching command (a detached one when there is none)."""
        return _CURRENT.get() or SweepOutcome()

    def abort(self, exc: BaseException) -> tuple[str, int] | None:
        """The launching process is leaving with ``exc`` before the sweep's end: close the parent KILLED when
        a signal stopped it (in a job or while waiting for jobs), else FAILED, with the summary so far.
        Returns (parent run id, signal number) when it was KILLED."""
        if isinstance(exc, JobWithoutResult) and self.open is not None:
            self.finish()  # every job has ended: the sweep's normal end, with jobs that did not finish
            self.failed = max(self.failed, 1)
            return None
        sweep, self.open = self.open, None
        if sweep is None:
            return None
        parent = sweep.parent
        if parent.signal_received is None:
            if isinstance(exc, RunKilled):
                parent.signal_received = int(exc.code) - 128
            elif isinstance(exc, KeyboardInterrupt):
                parent.signal_received = signal.SIGINT
        with contextlib.suppress(Exception):  # on the way out: the status matters more than the table
            _summarise(sweep)
        _close(sweep, exc)
        return (parent.run_id, parent.signal_received) if parent.signal_received is not None else None


    def finish(self) -> None:
        """The sweep's end, every job ended: its summary, and the parent closed FINISHED, or FAILED when any job
        did not finish (their count in :attr:`failed`)."""
        sweep, self.open = self.open, None
        if sweep is None:
            return
        try:
            summary = _summarise(sweep)
        except Exception as exc:  # noqa: BLE001 - Hydra would only warn; the parent must still be closed
            print(f"labbook: error: the sweep's summary failed: {exc}", file=sys.stderr)
            self.failed = max(self.failed, 1)
            _close(sweep, exc)
            return
        self.failed = summary.failed
        print(summary.table(), flush=True)
        _close(sweep, None if not summary.failed else SweepFailed(summary.failure_text()))


class Sweep(Callback):
    """The parent run of a multirun (see the module doc)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            SweepOutcome.active().open = _open(config)
        except Exception as exc:  # noqa: BLE001
            raise SweepNotStarted(exc) from exc

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        SweepOutcome.active().finish()


def _open(config: Any) -> OpenSweep:
    """Resolve and prepare the store, open (or continue) the parent run, and name it in the environment that
    every job inherits."""
    from labbook.config.compose import task_overrides
    from labbook.config.experiment import experiment_name
    from labbook.config.objective import one_or_list
    from labbook.config.signature import check_sweep_values
    from labbook.run.owners import reap_own_host
    from labbook.store.prepare import prepare_store
    from labbook.store.uri import ENV_URI, resolve_tracking_uri

    if is_search(config):  # a bad search space fails here, before any run exists
        from labbook.sweep.search import check

        check(config)
    check_sweep_values(config, task_overrides(config.hydra))  # model.n_components=3,0: no job could take 0
    devices = sweep_environment(config.hydra.launcher)  # parallel jobs here: each its own GPUs (a bad list fails)
    uri = resolve_tracking_uri(config.logger.get("tracking_uri"))
    prepare_store(uri)
    os.environ[ENV_URI] = uri
    reap_own_host(uri)  # a sweep SIGKILLed earlier left its parent RUNNING: FAILED now, so it can resume
    experiment = experiment_name(config, config.hydra.runtime.choices)
    space = sweep_space(config)
    parent = _parent_run(config, uri, experiment, space)
    parent.__enter__()  # SIGINT/SIGTERM end it KILLED; a heartbeat while the sweep runs
    sweep = OpenSweep(parent, uri, experiment, Path(str(config.hydra.sweep.dir)), space,
                      # a multi-objective search's summary ranks its runs by the first objective
                      next(iter(one_or_list(config.get("optimized_metric"))), None),
                      next(iter(one_or_list(config.get("direction"))), None))
    parent.defer_signals(functools.partial(_stop_jobs, sweep), grace_s=JOBS_STOP_GRACE_S)
    os.environ[ENV_PARENT] = parent.run_id
    os.environ[ENV_SWEPT] = json.dumps(list(space))
    os.environ[ENV_EXPERIMENT] = experiment
    os.environ.update(devices)
    return sweep


def _parent_run(config: Any, uri: str, experiment: str, space: Mapping[str, str]) -> Any:
    """The sweep's parent run: the earlier one of the same command, continued (``sweep.resume=true``, and
    always for a search, whose study it records), else a new one."""
    from labbook.config.schemas import MLflowConfig
    from labbook.run.lifecycle import TrackedRun

    key = sweep_key(config)
    heartbeat_s = config.logger.get("heartbeat_s", MLflowConfig.heartbeat_s)
    continuing = bool(config.sweep.resume) or is_search(config)
    previous = _previous_parent(uri, experiment, key, quiet=not config.sweep.resume) if continuing else None
    if previous is not None:
        parent = TrackedRun.reopen(uri, previous.run_id, heartbeat_s=heartbeat_s)
        rounds = int(previous.tags.get(names.SWEEP_ROUNDS, "1")) + 1
        print(f"labbook: continuing sweep run {previous.run_id} (round {rounds})", file=sys.stderr)
    else:
        shown = ",".join(short_names(list(space)).values()) or "sweep"
        parent = TrackedRun.start(uri, experiment, run_name=f"sweep({shown})", heartbeat_s=heartbeat_s, tags={
            names.SWEEP_ROLE: "parent", names.SWEEP_KEY: key, names.SWEEP_SWEPT: ",".join(space),
            names.SWEEP_LAUNCHER: str(config.hydra.launcher.get("_target_", "")),
            names.SWEEP_SWEEPER: str(config.hydra.sweeper.get("_target_", ""))})
        rounds = 1
        parent.log_params(dict(space))
        parent.log_text(_space_yaml(config, space), names.SWEEP_SPACE)
    parent.set_tags({names.SWEEP_ROUNDS: rounds, names.SWEEP_DIR: str(config.hydra.sweep.dir)})
    return parent


def _summarise(sweep: OpenSweep) -> Any:
    from labbook.sweep.summary import summarise

    return summarise(sweep.parent, sweep.uri, sweep.directory, sweep.space, sweep.objective, sweep.direction)


def _running_jobs(sweep: OpenSweep) -> list[Any]:
    """The sweep's RUNNING child runs owned by processes of this host."""
    import socket

    from labbook.store.read import search_runs

    return [run for run in search_runs(sweep.uri, None, parent_run_id=sweep.parent.run_id, status="RUNNING")
            if run.tags.get(names.OWNER_HOST) == socket.gethostname() and run.tags.get(names.OWNER_PID)]


def _stop_jobs(sweep: OpenSweep) -> None:
    """The launching process got SIGINT/SIGTERM (called from its handler): no further job starts, and the
    jobs running in other processes of this host (joblib workers, submitit's local jobs) get the same
    signal, so that each stops at a batch boundary with a checkpoint and ends KILLED. Jobs that run in
    this very process (Hydra's basic launcher) handle the signal themselves."""
    signum = sweep.parent.signal_received or signal.SIGTERM
    with contextlib.suppress(OSError):
        sweep.directory.mkdir(parents=True, exist_ok=True)
        (sweep.directory / STOPPING).touch()
    running = [int(run.tags[names.OWNER_PID]) for run in _running_jobs(sweep)]
    running = [pid for pid in running if pid != os.getpid()]
    if not running:
        raise RunInterrupted(f"received {signal.Signals(signum).name}")
    for pid in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _release_workers() -> None:
    """joblib keeps its worker processes for the next call and, at interpreter exit, waits ~3 s for them
    to wind down; a finished sweep has no next call, so they go now."""
    if "joblib.externals.loky" in sys.modules:
        from joblib.externals.loky import get_reusable_executor

        with contextlib.suppress(Exception):
            get_reusable_executor().shutdown(wait=False, kill_workers=True)


def _close(sweep: OpenSweep, exc: BaseException | None) -> None:
    _release_workers()
    for variable in (ENV_PARENT, ENV_SWEPT, ENV_EXPERIMENT, ENV_POOL, ENV_PER_JOB):
        os.environ.pop(variable, None)
    # Jobs that a launcher killed with the interrupted sweep (their process is gone): KILLED too. Not at the end
    # of a sweep whose jobs all ended (SweepFailed): a run left RUNNING then was lost (its node, a SIGKILL), and
    # reap fails it, by its pid on this host and by its heartbeat elsewhere.
    if exc is not None and not isinstance(exc, SweepFailed):
        from labbook.run.owners import owner_gone
        from labbook.run.recorder import Recorder

        with contextlib.suppress(Exception):
            for run in _running_jobs(sweep):
                if owner_gone(run.tags, time.time(), stale_after_s=float("inf")) is not None:
                    Recorder.for_run(sweep.uri, run.run_id).end(
                        "KILLED", f"stopped with its sweep, which was interrupted ({type(exc).__name__})")
    try:
        sweep.parent.__exit__(type(exc) if exc is not None else None, exc, None)
    except RunKilled:
        pass  # the caller reports the signal


def _previous_parent(uri: str, experiment: str, key: str, quiet: bool = False) -> Any:
    """The newest parent run (a :class:`labbook.store.read.RunRecord`) of the same sweep command
    (``sweep.resume=true``); None: a new sweep."""
    from labbook.store.read import search_runs

    try:
        found = search_runs(uri, experiment, tags={names.SWEEP_ROLE: "parent", names.SWEEP_KEY: key})
    except UserError:  # no such experiment yet
        return None
    for run in found:
        if run.status == "RUNNING":
            raise UserError(f"sweep.resume=true: the sweep's run {run.run_id} is still RUNNING (process "
                            f"{run.tags.get(names.OWNER_PID, '?')} on {run.tags.get(names.OWNER_HOST, '?')}); "
                            "stop it first, or `labbook reap` if that process is gone")
        return run
    if not quiet:
        print("labbook: sweep.resume=true: no earlier run of this sweep in the store; starting it", file=sys.stderr)
    return None


def _space_yaml(config: Any, space: Mapping[str, str]) -> str:
    import yaml

    fixed = [str(o) for o in _overrides(config) if not o.is_sweep_override()]
    return yaml.safe_dump({"swept": dict(space), "fixed": fixed,
                           "sweeper": str(config.hydra.sweeper.get("_target_", "")),
                           "launcher": str(config.hydra.launcher.get("_target_", ""))}, sort_keys=False)

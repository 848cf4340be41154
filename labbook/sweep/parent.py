"""A sweep is one thing in MLflow: a parent run per multirun, each job a child run under it.

:class:`Sweep` is registered in ``conf/hydra/default.yaml`` as a Hydra callback, so it runs for ``-m`` on the
command line and for a preset that sets ``hydra.mode: MULTIRUN`` alike, whatever the sweeper and the
launcher, once, in the launching process: before the first job it resolves and creates the store, opens
the parent run and names it in the environment; after the last it writes the summary and closes the
parent — FINISHED when every job finished, FAILED when any failed (tags ``sweep.failed``,
``sweep.failed_jobs``) — and :func:`abort` closes it KILLED when the sweep is interrupted.

Jobs run in this process (Hydra's basic launcher), in joblib workers or as SLURM/submitit jobs. All of them
inherit the environment set here before the first job starts, which is how a job finds its parent
(:func:`job_of_sweep`), whichever launcher started it. Each job also leaves a small record beside its
outputs (``.labbook_job.yaml``: its status and run id), so that a job that failed before it could open a
run still counts in the parent's tally.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from hydra.experimental.callback import Callback

from labbook.sweep.job import ENV_EXPERIMENT, ENV_PARENT, ENV_SWEPT, STOPPING
from labbook.sweep.space import (
    _overrides,
    is_search,
    short_names,
    sweep_key,
    sweep_space,
)

# How long an interrupted sweep waits for its running jobs to stop themselves (each at a batch boundary,
# with a checkpoint; a job gives itself lifecycle.STOP_GRACE_S) before it leaves them to the launcher.
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


_OPEN: OpenSweep | None = None


LAST_FAILED = 0  # jobs of the last sweep that did not finish (the command's exit code)


class SweepNotStarted(BaseException):
    """Hydra turns a callback's ``Exception`` into a warning and carries on; a sweep whose store or parent run
    could not be set up must not start, so the error travels out of Hydra wrapped in this."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Sweep(Callback):
    """The parent run of a multirun (see the module doc)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            self._start(config)
        except Exception as exc:  # noqa: BLE001
            raise SweepNotStarted(exc) from exc

    def _start(self, config: Any) -> None:
        global _OPEN, LAST_FAILED
        from labbook.config.experiment import experiment_name
        from labbook.run.lifecycle import TrackedRun
        from labbook.store.prepare import prepare_store
        from labbook.store.uri import ENV_URI, resolve_tracking_uri

        if is_search(config):  # a bad search space fails here, before any run exists
            from labbook.sweep.search import check

            check(config)
        uri = resolve_tracking_uri(config.logger.get("tracking_uri"))
        prepare_store(uri)
        os.environ[ENV_URI] = uri
        from labbook.run.owners import reap_own_host

        reap_own_host(uri)  # a sweep SIGKILLed earlier left its parent RUNNING: FAILED now, so it can resume
        LAST_FAILED = 0
        experiment = experiment_name(config, config.hydra.runtime.choices)
        space = sweep_space(config)
        key = sweep_key(config)
        heartbeat_s = config.logger.get("heartbeat_s", 30.0)
        continuing = bool(config.sweep.resume) or is_search(config)
        previous = _previous_parent(uri, experiment, key, quiet=not config.sweep.resume) if continuing else None
        if previous is not None:
            parent = TrackedRun.reopen(uri, previous, heartbeat_s=heartbeat_s)
            rounds = int(parent.client.get_run(previous).data.tags.get("sweep.rounds", "1")) + 1
            print(f"labbook: continuing sweep run {previous} (round {rounds})", file=sys.stderr)
        else:
            shown = ",".join(short_names(list(space)).values()) or "sweep"
            parent = TrackedRun.start(uri, experiment, run_name=f"sweep({shown})", heartbeat_s=heartbeat_s, tags={
                "sweep.role": "parent", "sweep.key": key, "sweep.swept": ",".join(space),
                "sweep.launcher": str(config.hydra.launcher.get("_target_", "")),
                "sweep.sweeper": str(config.hydra.sweeper.get("_target_", ""))})
            rounds = 1
            parent.log_params({k: v for k, v in space.items()})
            parent.log_text(_space_yaml(config, space), "sweep/space.yaml")
        parent.set_tags({"sweep.rounds": rounds, "sweep.dir": str(config.hydra.sweep.dir)})
        parent.__enter__()  # SIGINT/SIGTERM end it KILLED; a heartbeat while the sweep runs
        parent.defer_signals(_stop_jobs, grace_s=JOBS_STOP_GRACE_S)
        os.environ[ENV_PARENT] = parent.run_id
        os.environ[ENV_SWEPT] = json.dumps(list(space))
        os.environ[ENV_EXPERIMENT] = experiment
        _OPEN = OpenSweep(parent, uri, experiment, Path(str(config.hydra.sweep.dir)), space,
                          _first(config.get("optimized_metric")), _first(config.get("direction")))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        global _OPEN, LAST_FAILED
        sweep, _OPEN = _OPEN, None
        if sweep is None:
            return
        from labbook.sweep.summary import summarise

        try:
            summary = summarise(sweep)
        except Exception as exc:  # noqa: BLE001 - Hydra would only warn; the parent must still be closed
            print(f"labbook: error: the sweep's summary failed: {exc}", file=sys.stderr)
            LAST_FAILED = max(LAST_FAILED, 1)
            _close(sweep, exc)
            return
        LAST_FAILED = summary.failed
        print(summary.table(), flush=True)
        _close(sweep, None if not summary.failed else SweepFailed(summary.failure_text()))


def _first(value: Any) -> Any:
    """A multi-objective search's summary ranks its runs by the first objective."""
    from labbook.config.objective import one_or_list

    return next(iter(one_or_list(value)), None)


class SweepFailed(Exception):
    """Some jobs of the sweep did not finish (the parent ends FAILED with this as its error)."""


def abort(exc: BaseException) -> tuple[str, int] | None:
    """The launching process is leaving with ``exc`` before the sweep's end: close the parent KILLED when
    a signal stopped it (in a job or while waiting for jobs), else FAILED, with the summary so far.
    Returns (parent run id, signal number) when it was KILLED."""
    global _OPEN
    sweep, _OPEN = _OPEN, None
    if sweep is None:
        return None
    from labbook.errors import RunKilled

    parent = sweep.parent
    if parent.signal_received is None:
        if isinstance(exc, RunKilled):
            parent.signal_received = int(exc.code) - 128
        elif isinstance(exc, KeyboardInterrupt):
            parent.signal_received = signal.SIGINT
    try:
        from labbook.sweep.summary import summarise

        summarise(sweep)
    except Exception:  # noqa: BLE001 - on the way out: the status matters more than the table
        pass
    _close(sweep, exc)
    return (parent.run_id, parent.signal_received) if parent.signal_received is not None else None


def _running_jobs(sweep: OpenSweep) -> list[Any]:
    """The sweep's RUNNING child runs owned by processes of this host."""
    import socket

    from labbook.store.runs import search_runs

    return [run for run in search_runs(sweep.uri, None, parent_run_id=sweep.parent.run_id, status="RUNNING")
            if run.data.tags.get("owner.host") == socket.gethostname() and run.data.tags.get("owner.pid")]


def _stop_jobs() -> None:
    """The launching process got SIGINT/SIGTERM (called from its handler): no further job starts, and the
    jobs running in other processes of this host (joblib workers, submitit's local jobs) get the same
    signal, so that each stops at a batch boundary with a checkpoint and ends KILLED. Jobs that run in
    this very process (Hydra's basic launcher) handle the signal themselves."""
    from labbook.errors import RunInterrupted

    sweep = _OPEN
    if sweep is None:
        raise RunInterrupted("the sweep was interrupted")
    signum = sweep.parent.signal_received or signal.SIGTERM
    with contextlib.suppress(OSError):
        sweep.directory.mkdir(parents=True, exist_ok=True)
        (sweep.directory / STOPPING).touch()
    running = [int(run.data.tags["owner.pid"]) for run in _running_jobs(sweep)]
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
    from labbook.errors import RunKilled

    _release_workers()

    for variable in (ENV_PARENT, ENV_SWEPT, ENV_EXPERIMENT):
        os.environ.pop(variable, None)
    if exc is not None:  # jobs that a launcher killed with the sweep (their process is gone): KILLED too
        from labbook.run.owners import owner_gone

        with contextlib.suppress(Exception):
            for run in _running_jobs(sweep):
                if owner_gone(run.data.tags, time.time(), stale_after_s=float("inf")) is not None:
                    sweep.parent.client.set_tag(run.info.run_id, "error", "stopped with its sweep, which was "
                                                f"interrupted ({type(exc).__name__})")
                    sweep.parent.client.set_terminated(run.info.run_id, status="KILLED")
    try:
        sweep.parent.__exit__(type(exc) if exc is not None else None, exc, None)
    except RunKilled:
        pass  # the caller reports the signal


def _previous_parent(uri: str, experiment: str, key: str, quiet: bool = False) -> str | None:
    """The newest parent run of the same sweep command (``sweep.resume=true``); None: a new sweep."""
    from labbook.errors import UserError
    from labbook.store.runs import search_runs

    try:
        found = search_runs(uri, experiment, tags={"sweep.role": "parent", "sweep.key": key})
    except UserError:  # no such experiment yet
        return None
    for run in found:
        if run.info.status == "RUNNING":
            raise UserError(f"sweep.resume=true: the sweep's run {run.info.run_id} is still RUNNING (process "
                            f"{run.data.tags.get('owner.pid', '?')} on {run.data.tags.get('owner.host', '?')}); "
                            "stop it first, or `labbook reap` if that process is gone")
        return run.info.run_id
    if not quiet:
        print("labbook: sweep.resume=true: no earlier run of this sweep in the store; starting it", file=sys.stderr)
    return None


def _space_yaml(config: Any, space: Mapping[str, str]) -> str:
    import yaml

    fixed = [str(o) for o in _overrides(config) if not o.is_sweep_override()]
    return yaml.safe_dump({"swept": dict(space), "fixed": fixed,
                           "sweeper": str(config.hydra.sweeper.get("_target_", "")),
                           "launcher": str(config.hydra.launcher.get("_target_", ""))}, sort_keys=False)

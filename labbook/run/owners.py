"""Who owns a RUNNING run, whether that owner is gone, and reaping the runs whose owner is gone.

A run carries ``owner.host``, ``owner.pid``, ``owner.boot_id`` and ``owner.start_ticks`` (the process's start
time, so a recycled pid is not mistaken for the owner), and a ``heartbeat`` tag rewritten every
``logger.heartbeat_s`` seconds for owners on other hosts. A process that cannot say anything (SIGKILL, the
out-of-memory killer, a lost machine) leaves its run RUNNING; :func:`reap` later marks it FAILED with the tags
``reaped`` (why) and ``reaped.at`` (when).
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import sys
import time
from typing import Any, Mapping

from labbook import names
from labbook.errors import UserError

# This module's import is light (the store is read and written only inside reap): `labbook reap --help` and
# tab completion read this default.
STALE_AFTER_S = 300.0  # a run on another host is dead after this long without a heartbeat
ENV_CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"


# ------------------------------------------------------------------------------------------- owners
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):  # a zombie has finished: its run's owner is gone
        return None
    return fields[19]


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """Who owns a run opened by this process (or ``pid``)."""
    pid = os.getpid() if pid is None else pid
    return {names.OWNER_HOST: socket.gethostname(), names.OWNER_PID: str(pid), names.OWNER_BOOT_ID: _boot_id(),
            names.OWNER_START_TICKS: _start_ticks(pid) or "", names.HEARTBEAT: str(int(time.time()))}


def scheduler_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Slurm job (as ``squeue`` shows it) or torchrun launch that runs this process (none outside them): a
    run is found from its job, and a job from its run."""
    env = os.environ if environ is None else environ
    tags = _torchrun_tags(env)
    if not env.get("SLURM_JOB_ID"):
        return tags
    task = env.get("SLURM_ARRAY_TASK_ID")
    job = f"{env['SLURM_ARRAY_JOB_ID']}_{task}" if task is not None and env.get("SLURM_ARRAY_JOB_ID") else env["SLURM_JOB_ID"]
    tags.update({names.SLURM_JOB: job, names.SLURM_NODES: env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))})
    if task is not None:
        tags[names.SLURM_ARRAY_TASK] = task
    tags[names.SLURM_REQUEUES] = env.get("SLURM_RESTART_COUNT") or "0"
    return tags


def _torchrun_tags(env: Mapping[str, str]) -> dict[str, str]:
    """A torchrun worker's launch: ``--rdzv-id@--rdzv-endpoint`` (from its agent's command line), the same on
    every node and in every attempt, and its agent's restart count."""
    if "TORCHELASTIC_RUN_ID" not in env:
        return {}
    return {names.TORCHRUN_JOB: f"{env['TORCHELASTIC_RUN_ID']}@{_agent_option('--rdzv-endpoint')}",
            names.TORCHRUN_RESTARTS: env.get("TORCHELASTIC_RESTART_COUNT") or "0"}


def _agent_option(option: str) -> str:
    """An option of the torchrun agent that started this worker (its parent), as given; "" when absent."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            args = fh.read().decode(errors="replace").split("\0")
    except OSError:
        return ""
    spellings = (option, option.replace("-", "_").replace("__", "--"))
    for i, arg in enumerate(args):
        if arg in spellings and i + 1 < len(args):
            return args[i + 1]
        if arg.split("=", 1)[0] in spellings and "=" in arg:
            return arg.split("=", 1)[1]
    return ""


def agent_started() -> float | None:
    """When this process's parent (a torchrun agent) started, in seconds since the epoch; None if unknown."""
    ticks = _start_ticks(os.getppid())
    try:
        with open("/proc/stat") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    return None if ticks is None else boot + int(ticks) / os.sysconf("SC_CLK_TCK")


def launcher_signal() -> int:
    """The signal submitit sends every process of a Slurm job before its time limit: ``USR2`` unless
    ``$SUBMITIT_PREEMPT_SIGNAL`` names another (submitit's own setting)."""
    return int(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2))


def earlier_attempt(tags: Mapping[str, str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether a run (or a claim) with these tags was opened by an earlier attempt of the very job that runs
    this process, which is over wherever it ran: an earlier allocation of this requeued Slurm job (Slurm starts
    a requeued job only once the earlier one ended), or an earlier attempt of this torchrun launch (its agents
    restart the workers only once all of them stopped; the launch's runs beat after its agents started, an
    earlier launch's before)."""
    mine = scheduler_tags(environ)
    if names.SLURM_JOB in mine and tags.get(names.SLURM_JOB) == mine[names.SLURM_JOB]:
        return int(tags.get(names.SLURM_REQUEUES) or 0) < int(mine[names.SLURM_REQUEUES])
    if names.TORCHRUN_JOB in mine and tags.get(names.TORCHRUN_JOB) == mine[names.TORCHRUN_JOB]:
        started = agent_started()
        not_mine = (tags.get(names.OWNER_HOST), tags.get(names.OWNER_PID)) != (socket.gethostname(), str(os.getpid()))
        return started is not None and not_mine and int(tags.get(names.HEARTBEAT) or 0) >= int(started)
    return False


def device_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The GPUs this process was given (``CUDA_VISIBLE_DEVICES``, by a scheduler, a parallel sweep's job
    slot or by hand; ``""``: none), where they were given at all."""
    env = os.environ if environ is None else environ
    return {names.CUDA_DEVICES: env[ENV_CUDA_DEVICES]} if ENV_CUDA_DEVICES in env else {}


def owner_gone(tags: Mapping[str, str], now: float, stale_after_s: float) -> str | None:
    """Why the owner of a RUNNING run with these tags is gone, or None while it may still be alive."""
    if earlier_attempt(tags):
        return "an earlier attempt of its job (a Slurm requeue, a torchrun restart) is over: this is the next one"
    host = tags.get(names.OWNER_HOST)
    if host == socket.gethostname() and tags.get(names.OWNER_BOOT_ID) == _boot_id():
        pid = int(tags.get(names.OWNER_PID) or 0)
        ticks = _start_ticks(pid) if pid else None
        if ticks is None:
            return f"its process {pid} on {host} no longer exists"
        if tags.get(names.OWNER_START_TICKS) and ticks != tags[names.OWNER_START_TICKS]:
            return f"its process {pid} on {host} has ended (the pid now belongs to another process)"
        return None
    if host == socket.gethostname():
        return f"{host} has rebooted since its process {tags.get(names.OWNER_PID)} started it"
    beat = float(tags.get(names.HEARTBEAT) or 0)
    if now - beat > stale_after_s:
        since = datetime.datetime.fromtimestamp(beat, datetime.timezone.utc).isoformat(timespec="seconds")
        return f"no heartbeat from {host or 'its owner'} since {since} (limit {stale_after_s:g} s)"
    return None


class RunClaimed(UserError):
    """Another live process claimed the stopped run first: it is the one resuming it."""


def claim(uri: str, run: Any, what: str = "resume") -> int:
    """Claim the stopped ``run`` (a :class:`labbook.store.read.RunRecord`) for this process before it is
    re-opened: of any number of processes claiming it at once, exactly one returns (the attempt's number) and
    the others raise :class:`RunClaimed` naming the winner.

    The claims are params ``labbook.claim.<n>`` (:data:`labbook.names.CLAIM`), each holding its claimant's
    owner tags: the store refuses a param's second value, atomically, in SQLite, PostgreSQL and behind a
    tracking server alike. A claim holds while its claimant may still be alive and the run has not ended
    since (its end time is still the one the claimant saw); one whose process is gone (killed while it
    prepared) or whose attempt ended frees the next number.
    """
    import json

    from labbook.run.recorder import Recorder, param_taken

    claims = sorted((int(k[len(names.CLAIM):]), v) for k, v in run.params.items()
                    if k.startswith(names.CLAIM) and k[len(names.CLAIM):].isdigit())
    number = claims[-1][0] if claims else 0
    if claims and _holds(json.loads(claims[-1][1]), run):
        raise RunClaimed(_claimed(what, json.loads(claims[-1][1])))
    mine = {**owner_tags(), **scheduler_tags(), "seen_end": run.end_time}  # a requeued job's: gone at once
    key = f"{names.CLAIM}{number + 1}"
    try:
        Recorder.for_run(uri, run.run_id).log_param(key, json.dumps(mine))
    except Exception as exc:  # noqa: BLE001 - only "changing a param's value" means another claim won
        if not param_taken(exc):
            raise
        from labbook.store.read import open_reader

        winner = open_reader(uri).run(run.run_id)
        raise RunClaimed(_claimed(what, json.loads(winner.params[key]) if winner else {})) from None
    return number + 1


def _holds(holder: Mapping[str, Any], run: Any) -> bool:
    """Whether a claim still holds: the run has not ended since it was made (ending sets a new end time), and
    its process may be alive (on another host: its claim is younger than :data:`STALE_AFTER_S`)."""
    return run.end_time == holder.get("seen_end") and owner_gone(holder, time.time(), STALE_AFTER_S) is None


def _claimed(what: str, holder: Mapping[str, Any]) -> str:
    return (f"another {what} claimed this run first: process {holder.get(names.OWNER_PID, '?')} on "
            f"{holder.get(names.OWNER_HOST, '?')} is continuing it (its claim lapses when that process ends; one "
            f"from another host, {STALE_AFTER_S:g} s after it was made)")


def reap(uri: str, *, stale_after_s: float = STALE_AFTER_S, this_host_only: bool = False) -> list[tuple[str, str]]:
    """Mark FAILED every RUNNING run of the store ``uri`` whose owner is gone; returns ``[(run_id, why), ...]``.

    Same host: the owner's pid no longer exists or belongs to a process started at another time. Another
    host: no heartbeat for ``stale_after_s``. A run without owner tags was not opened by labbook (a notebook's
    autolog, another tool) and is left alone. ``this_host_only`` leaves other hosts' runs alone too (what
    every command does first).
    """
    from labbook.run.recorder import Recorder
    from labbook.store.read import open_reader

    now, me, reaped = time.time(), socket.gethostname(), []
    for run in open_reader(uri).search(status="RUNNING"):
        tags = run.tags
        if names.OWNER_HOST not in tags or (this_host_only and tags[names.OWNER_HOST] != me
                                            and not earlier_attempt(tags)):
            continue
        why = owner_gone(tags, now, stale_after_s)
        if why is None:
            continue
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        recorder = Recorder.for_run(uri, run.run_id)
        recorder.set_tags({names.REAPED: f"reaped: {why}", names.REAPED_AT: stamp})
        recorder.end("FAILED", f"reaped: {why}")
        reaped.append((run.run_id, why))
    return reaped


def reap_own_host(uri: str) -> None:
    """What every command that opens runs does first: fail this host's runs whose process is gone."""
    for run_id, why in reap(uri, this_host_only=True):
        print(f"labbook: run {run_id} was left RUNNING by a process that is gone; marked FAILED ({why})",
              file=sys.stderr)

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
import socket
import sys
import time
from typing import Mapping

from labbook import names

# This module's import is light (the store is read and written only inside reap): `labbook reap --help` and
# tab completion read this default.
STALE_AFTER_S = 300.0  # a run on another host is dead after this long without a heartbeat


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


def owner_gone(tags: Mapping[str, str], now: float, stale_after_s: float) -> str | None:
    """Why the owner of a RUNNING run with these tags is gone, or None while it may still be alive."""
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
        if names.OWNER_HOST not in tags or (this_host_only and tags[names.OWNER_HOST] != me):
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

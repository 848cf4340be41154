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

from mlflow.tracking import MlflowClient

from labbook.run.recorder import MAX_TAG_LENGTH

# Light on purpose (MLflow is imported only where runs are read or written): `labbook reap --help` and tab
# completion read this default.
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
    return {"owner.host": socket.gethostname(), "owner.pid": str(pid), "owner.boot_id": _boot_id(),
            "owner.start_ticks": _start_ticks(pid) or "", "heartbeat": str(int(time.time()))}


def owner_gone(tags: Mapping[str, str], now: float, stale_after_s: float) -> str | None:
    """Why the owner of a RUNNING run with these tags is gone, or None while it may still be alive."""
    host = tags.get("owner.host")
    if host == socket.gethostname() and tags.get("owner.boot_id") == _boot_id():
        pid = int(tags.get("owner.pid") or 0)
        ticks = _start_ticks(pid) if pid else None
        if ticks is None:
            return f"its process {pid} on {host} no longer exists"
        if tags.get("owner.start_ticks") and ticks != tags["owner.start_ticks"]:
            return f"its process {pid} on {host} has ended (the pid now belongs to another process)"
        return None
    if host == socket.gethostname():
        return f"{host} has rebooted since its process {tags.get('owner.pid')} started it"
    beat = float(tags.get("heartbeat") or 0)
    if now - beat > stale_after_s:
        since = datetime.datetime.fromtimestamp(beat, datetime.timezone.utc).isoformat(timespec="seconds")
        return f"no heartbeat from {host or 'its owner'} since {since} (limit {stale_after_s:g} s)"
    return None


def reap(client: MlflowClient, *, stale_after_s: float = STALE_AFTER_S, this_host_only: bool = False) -> list[tuple[str, str]]:
    """Mark FAILED every RUNNING run whose owner is gone; returns ``[(run_id, why), ...]``.

    Same host: the owner's pid no longer exists or belongs to a process started at another time. Another
    host: no heartbeat for ``stale_after_s``. A run without owner tags was not opened by labbook (a notebook's
    autolog, another tool) and is left alone. ``this_host_only`` leaves other hosts' runs alone too (what
    every command does first).
    """
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    now, me, reaped = time.time(), socket.gethostname(), []
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=10000):
        tags = dict(run.data.tags)
        if "owner.host" not in tags or (this_host_only and tags["owner.host"] != me):
            continue
        why = owner_gone(tags, now, stale_after_s)
        if why is None:
            continue
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for key, value in (("reaped", f"reaped: {why}"), ("reaped.at", stamp), ("error", f"reaped: {why}")):
            client.set_tag(run.info.run_id, key, value[:MAX_TAG_LENGTH])
        client.set_terminated(run.info.run_id, status="FAILED")
        reaped.append((run.info.run_id, why))
    return reaped


def reap_own_host(uri: str) -> None:
    """What every command that opens runs does first: fail this host's runs whose process is gone."""
    for run_id, why in reap(MlflowClient(tracking_uri=uri), this_host_only=True):
        print(f"labbook: run {run_id} was left RUNNING by a process that is gone; marked FAILED ({why})",
              file=sys.stderr)

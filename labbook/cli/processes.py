"""What a long-running command (``labbook ui``, ``labbook server``) starts, and how it ends.

From its start to its end, SIGINT (Ctrl-C), SIGTERM and SIGHUP end such a command the same way, at any
moment: every process it started is stopped first — a server and everything that server spawned, which
MLflow's server spreads over sessions of its own — then it says so in one line and exits (0 once the server
answered, since stopping it is how a server's life ends; 128 + the signal's number before that).

A signal is held back, never lost, while a process is being started or stopped (:meth:`Lifetime.held`): a
process forked at that moment is always known to the cleanup, and a cleanup is never cut short.

The processes a server spawned are found on Linux's ``/proc``: every process of the server's session, and
every descendant of one of them together with its own session (MLflow's job runner starts each job with
``start_new_session=True``, so that a job's own children go with it — and none of them with the server's
process group). Elsewhere, the server's process group is all there is to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PROC = Path("/proc")


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP reached a long-running command; ``code`` is its exit status (128 + n)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def code(self) -> int:
        return 128 + self.signum


class Lifetime:
    """A command's signals and the cleanups of what it started, as a context manager: on leaving it, however
    (a return, an error, a signal), the cleanups run, newest first, with signals held back.

    The first stop signal raises :class:`Interrupted` where the command is, or where :meth:`held` ends when
    it arrives inside one; any later one is ignored (the cleanup it would ask for is under way)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._raised = False
        self._holding = 0
        self._cleanups: list[Callable[[], None]] = []

    def __enter__(self) -> Lifetime:
        # SIGINT too: a shell's & starts a command with it ignored, and `kill -INT` must still stop it.
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.held(deliver=False):
            while self._cleanups:
                with contextlib.suppress(Exception):
                    self._cleanups.pop()()
            self._raised = True  # nothing is left to stop: a signal from now on lets the command end as it is

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` when the command ends (after those registered later)."""
        self._cleanups.append(cleanup)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.received is not None or self._raised:
            return
        self.received = signum
        if not self._holding:
            self._raised = True
            raise Interrupted(signum)

    @contextlib.contextmanager
    def held(self, deliver: bool = True) -> Iterator[None]:
        """Hold stop signals back while the body runs (starting a process and registering its cleanup;
        a cleanup); one that arrived meanwhile is raised when it ends (with ``deliver``)."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if deliver and not self._holding and self.received is not None and not self._raised:
            self._raised = True
            raise Interrupted(self.received)


def _processes() -> dict[int, tuple[int, int, int, bool]] | None:
    """Every process on this machine: pid -> (parent pid, session id, start time in clock ticks, a zombie);
    None where there is no Linux ``/proc``."""
    if not (PROC / "self" / "stat").exists():
        return None
    found = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (PROC / entry.name / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp session ... starttime": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[19]), fields[0] in "ZX")
    return found


class ProcessTree:
    """A process started in a session of its own (``start_new_session=True``) and every process it spawns,
    in its session or in new ones; :meth:`stop` ends them all."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.sessions = {proc.pid}
        self.known: dict[int, int] = {}  # pid -> start time: a reused pid is not ours

    def members(self) -> set[int] | None:
        """The tree's live processes now (None without ``/proc``). A process is in it if its session is one
        of the tree's, or its parent is in it (then its session joins the tree's sessions); once seen, a
        process stays in it (its start time tells it from a later process given the same pid)."""
        table = _processes()
        if table is None:
            return None
        members = {pid for pid, (_, sid, start, _) in table.items()
                   if sid in self.sessions or self.known.get(pid) == start}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, sid, _, _) in table.items():
                if pid not in members and ppid in members:
                    members.add(pid)
                    self.sessions.add(sid)
                    grew = True
            for pid, (_, sid, _, _) in table.items():
                if pid not in members and sid in self.sessions:
                    members.add(pid)
                    grew = True
        for pid in members:
            self.known[pid] = table[pid][2]
        return {pid for pid in members if not table[pid][3]}

    @staticmethod
    def _signal_all(signum: int, pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def stop(self, grace_s: float = 10.0, kill_s: float = 10.0) -> None:
        """SIGTERM to every process of the tree (and to each one that appears meanwhile), ``grace_s``
        seconds for them all to end, then SIGKILL to whatever is left until nothing is (for up to
        ``kill_s`` seconds more: a process stuck in the kernel cannot be waited for forever)."""
        termed: set[int] = set()
        started = time.monotonic()
        while True:
            self.proc.poll()  # reaps the server once it ends: no zombie of ours counts as alive
            members = self.members()
            if members is None:
                self._stop_group(grace_s, kill_s)
                return
            elapsed = time.monotonic() - started
            if not members or elapsed > grace_s + kill_s:
                return
            if elapsed < grace_s:
                self._signal_all(signal.SIGTERM, members - termed)
                termed |= members
            else:
                self._signal_all(signal.SIGKILL, members)
            time.sleep(0.1)

    def _stop_group(self, grace_s: float, kill_s: float) -> None:
        """Without ``/proc``: the server's process group, SIGTERM then SIGKILL."""
        for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_s)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait_s)
                return


class Serving(Protocol):
    def serve(self) -> int:
        """Announce the server, then wait for it; its exit code when it ends by itself (a line said why)."""


def run_server_command(name: str, start: Callable[[Lifetime], Serving]) -> int:
    """``labbook NAME``'s life: ``start(lifetime)`` starts what it serves (registering each process's cleanup
    with the lifetime as it starts it), then its ``serve()`` runs until a signal or the server's own end.
    Whatever ends it, everything started is stopped before the last line is printed."""
    from labbook.cli.console import fail, full_error, quiet_libraries

    lifetime, serving = Lifetime(), False
    try:
        with lifetime:
            quiet_libraries()
            server = start(lifetime)
            serving = True
            return server.serve()
    except Interrupted as stop:
        if serving:
            _say(f"labbook {name}: stopped ({stop.name})")
            return 0
        _say(f"labbook {name}: {stop.name} received while starting; stopped everything it had started")
        return stop.code
    except Exception as exc:  # noqa: BLE001 - one line, as every command ends
        return fail(exc, full_error())


def _say(line: str) -> None:
    import sys

    with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
        print(line, file=sys.stderr, flush=True)

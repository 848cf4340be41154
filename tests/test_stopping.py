"""`labbook ui` and `labbook server` stopped at any moment — Ctrl-C, SIGTERM, SIGHUP; while the MLflow server
starts (it exists, /health does not answer yet), once it answers, and for `server --local-postgres` while
PostgreSQL starts — leave no process behind: not MLflow's server, nor its uvicorn, its job runner and the
runner's huey consumers, nor the PostgreSQL cluster. Each ends with one line and the exit code it should.

What "theirs" means, read from /proc: every descendant of the `labbook` process seen while it ran (by pid and
start time), every process in a session or process group one of those led or belonged to, and every process
whose command line or working directory names this test's folders or the server's port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from labbook.store.postgres import binaries, free_port
from tests.conftest import LABBOOK, kill_group

PROC = Path("/proc")
pytestmark = pytest.mark.skipif(not (PROC / "self" / "stat").exists(), reason="reads Linux's /proc")


def processes() -> dict[int, dict]:
    """Every process now: pid -> ppid, pgrp, sid, start (clock ticks), zombie, cmdline, cwd."""
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            cwd = ""
        fields = stat[stat.rfind(")") + 2:].split()
        found[int(entry.name)] = {"ppid": int(fields[1]), "pgrp": int(fields[2]), "sid": int(fields[3]),
                                  "start": int(fields[19]), "zombie": fields[0] in "ZX", "cmdline": cmdline,
                                  "cwd": cwd}
    return found


class Watch:
    """The processes of one `labbook` command, remembered while it runs."""

    def __init__(self, root: int, markers: list[str]) -> None:
        self.root, self.markers = root, markers
        self.seen: dict[int, tuple[int, str]] = {}  # pid -> (start, cmdline)
        self.groups: set[int] = set()  # sessions and process groups

    def look(self) -> dict[int, dict]:
        table = processes()
        family = {self.root} | {pid for pid in self.seen if pid in table and table[pid]["start"] == self.seen[pid][0]}
        grew = True
        while grew:
            grew = False
            for pid, p in table.items():
                if pid not in family and p["ppid"] in family:
                    family.add(pid)
                    grew = True
        for pid in family & table.keys():
            if table[pid]["cmdline"] or pid not in self.seen:  # a zombie's command line is empty
                self.seen[pid] = (table[pid]["start"], table[pid]["cmdline"])
            self.groups |= {table[pid]["sid"], table[pid]["pgrp"]}
        return {pid: table[pid] for pid in family if pid in table}

    def left(self) -> list[str]:
        """The live (not zombie) processes that are theirs."""
        me = os.getpid()
        rest = []
        for pid, p in processes().items():
            if pid == me or p["zombie"]:
                continue
            if (self.seen.get(pid, (None,))[0] == p["start"] or p["sid"] in self.groups or p["pgrp"] in self.groups
                    or any(names(p["cmdline"], m) or names(p["cwd"], m) for m in self.markers)):
                rest.append(f"{pid} (sid {p['sid']}): {p['cmdline'][:160]}")
        return rest


def names(text: str, marker: str) -> bool:
    """Whether ``text`` holds ``marker`` as a whole word or path (this test's folder, not test_x01 for test_x0)."""
    return re.search(re.escape(marker) + r"(?=[/\s]|$)", text) is not None


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1):
            return True
    except OSError:
        return False


def mlflow_server(seen: dict[int, dict]) -> bool:
    return any("-m mlflow server" in p["cmdline"] for p in seen.values())


def run_and_stop(args: list[str], cwd: Path, markers: list[str], ready: Callable[[Watch, subprocess.Popen], bool],
                 signum: int, timeout: float = 240) -> tuple[subprocess.CompletedProcess, Watch, list[str]]:
    """Start `labbook ARGS` (a session of its own, as a terminal gives a command its process group), wait until
    ``ready(watch, proc)``, send ``signum`` as a terminal or `kill` would (SIGINT and SIGHUP to the process
    group, SIGTERM to the process), wait for it to exit; returns what it printed, the watch, and its processes
    left the moment it exited. Whatever happens, nothing it started outlives this."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    with open(cwd / "stdout.txt", "w") as stdout:  # a file: `ready` may read what it printed so far
        proc = subprocess.Popen([LABBOOK, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    watch = Watch(proc.pid, markers)
    try:
        deadline = time.time() + timeout
        while not ready(watch, proc):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "never ready: " + "; ".join(p["cmdline"][:120] for p in watch.look().values())
            time.sleep(0.1)
        watch.look()
        if signum == signal.SIGTERM:
            proc.send_signal(signum)
        else:
            os.killpg(proc.pid, signum)
        while proc.poll() is None:  # remember what it starts while it stops, too
            watch.look()
            time.sleep(0.1)
            assert time.time() < deadline + 60, "it did not exit"
        left = watch.left()  # now: the clean-up below would hide them
        _, err = proc.communicate(timeout=30)
        out = (cwd / "stdout.txt").read_text()
        return subprocess.CompletedProcess(args, proc.returncode, out, err), watch, left
    finally:
        kill_group(proc.pid)
        for pid in list(watch.seen):
            kill_group(pid)


def assert_stopped(out: subprocess.CompletedProcess, left: list[str], code: int, last_line: str) -> None:
    assert not left, (left, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert (out.returncode, lines[-1:]) == (code, [last_line]), out.stderr[-3000:]


def starting(port: int) -> Callable[[Watch, subprocess.Popen], bool]:
    """Ready once the MLflow server process exists and before it answers."""
    url = f"http://127.0.0.1:{port}"

    def ready(watch: Watch, proc: subprocess.Popen) -> bool:
        if not mlflow_server(watch.look()):
            return False
        assert not answers(url), "the server answered before the signal could be sent while it started"
        return True

    return ready


def serving(cwd: Path) -> Callable[[Watch, subprocess.Popen], bool]:
    """Ready once `labbook` printed its URL (the server answered) and MLflow's job runner has started its
    huey consumers."""

    def ready(watch: Watch, proc: subprocess.Popen) -> bool:
        seen = watch.look()
        printed = (cwd / "stdout.txt").read_text()
        return ": http://127.0.0.1:" in printed and any("huey_consumer" in p["cmdline"] for p in seen.values())

    return ready


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_ui_stopped_while_its_server_starts_leaves_nothing(tmp_path: Path, signum: signal.Signals) -> None:
    port = free_port()
    out, watch, left = run_and_stop(["ui", "--port", str(port)], tmp_path, [str(tmp_path), f"--port {port}"],
                              starting(port), signum)
    assert_stopped(out, left, 128 + signum,
                   f"labbook ui: {signum.name} received while starting; stopped everything it had started")
    assert mlflow_server({pid: {"cmdline": c} for pid, (_, c) in watch.seen.items()})


@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_ui_stopped_while_it_serves_leaves_nothing(tmp_path: Path, signum: signal.Signals) -> None:
    port = free_port()
    out, watch, left = run_and_stop(["ui", "--port", str(port)], tmp_path, [str(tmp_path), f"--port {port}"],
                              serving(tmp_path), signum)
    assert_stopped(out, left, 0, f"labbook ui: stopped ({signum.name})")
    started = [c for _, c in watch.seen.values()]
    # What MLflow 3's server spawned here: uvicorn, the job runner, and its huey consumers.
    assert [c for c in started if "-m uvicorn" in c] and [c for c in started if "mlflow.server.jobs._job_runner" in c]


@pytest.fixture
def pg_dir():  # noqa: ANN201
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    # Not under tmp_path: pytest's folders are private to their user, and as root the cluster runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="labbook-stop-"))
    yield data
    shutil.rmtree(data, ignore_errors=True)


def postgres_running(data: Path) -> Callable[[Watch, subprocess.Popen], bool]:
    def ready(watch: Watch, proc: subprocess.Popen) -> bool:
        watch.look()
        postmaster = re.compile(r"bin/postgres -D " + re.escape(str(data)))
        return any(postmaster.search(p["cmdline"]) for p in processes().values())

    return ready


@pytest.mark.parametrize("moment,signum", [("postgres starting", signal.SIGINT),
                                           ("mlflow starting", signal.SIGTERM),
                                           ("serving", signal.SIGHUP)])
def test_server_with_local_postgres_stopped_leaves_nothing(tmp_path: Path, pg_dir: Path, moment: str,
                                                           signum: signal.Signals) -> None:
    port = free_port()
    ready = {"postgres starting": postgres_running(pg_dir), "mlflow starting": starting(port),
             "serving": serving(tmp_path)}[moment]
    out, _, left = run_and_stop(["server", "--local-postgres", str(pg_dir), "--pg-port", str(free_port()), "--port",
                                 str(port), "--artifacts-destination", str(tmp_path / "art")], tmp_path,
                                [str(tmp_path), str(pg_dir), f"--port {port}"], ready, signum)
    if moment == "serving":
        assert_stopped(out, left, 0, f"labbook server: stopped ({signum.name})")
    else:
        assert_stopped(out, left, 128 + signum, f"labbook server: {signum.name} received while starting; "
                                                 "stopped everything it had started")
    # The cluster was shut down, not killed.
    assert "database system is shut down" in (pg_dir / "postgres.log").read_text(errors="replace")


def test_a_server_tree_is_stopped_across_sessions(tmp_path: Path) -> None:
    """As MLflow's job runner starts each job: a child in a session of its own, with a child of its own, all
    ignoring SIGTERM — stopping the tree reaches them all (SIGKILL after the grace)."""
    from labbook.cli.processes import ProcessTree

    script = tmp_path / "spawner.py"
    script.write_text(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if sys.argv[1:] == ['job']:\n"
        "    subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); time.sleep(600)'])\n"
        "else:\n"
        "    subprocess.Popen([sys.executable, __file__, 'job'], start_new_session=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    watch = Watch(proc.pid, [str(tmp_path)])
    try:
        assert proc.stdout.readline() == "ready\n"
        deadline = time.time() + 60
        while len(watch.look()) < 3:  # the server, the job (another session), the job's child
            assert time.time() < deadline
            time.sleep(0.1)
        assert len({p["sid"] for p in watch.look().values()}) == 2
        started = time.monotonic()
        ProcessTree(proc).stop(grace_s=1, kill_s=10)
        assert time.monotonic() - started < 11
        assert proc.returncode is not None and not watch.left(), watch.left()
    finally:
        for pid in [proc.pid, *watch.seen]:
            kill_group(pid)

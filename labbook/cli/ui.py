"""``labbook ui [--port P] [--host H] [--tracking-uri URI]``: MLflow's UI on the store that ``labbook train`` in
this directory would use.

The store is resolved as every command resolves it and created or upgraded first (so a UI started beside a
first training run cannot race MLflow's table creation). The UI listens on 127.0.0.1 unless ``--host`` says
otherwise — then everything in the store is open to whoever reaches the port, and a warning says so. It
prints the URL of the newest experiment's runs table, opened in MLflow's "Model training" view. Ctrl-C,
SIGTERM or SIGHUP stops it at any moment, start-up included, together with every process the server spawned
(:mod:`labbook.cli.processes`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from labbook.cli.console import tracking_uri_option
from labbook.cli.processes import Lifetime, ProcessTree, run_server_command
from labbook.redact import redact_uri

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# MLflow 3.17's UI opens in its GenAI view unless the URL (or the browser's localStorage key
# mlflow.workflowType_v1) asks for the "Model training" one; the experiment's mlflow.experimentKind tag is
# ignored by this version's UI. The parameter goes after the hash.
MODEL_TRAINING = "workflowType=machine_learning"
START_TIMEOUT_S = 90.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labbook ui", description="Serve MLflow's UI on the store `labbook train` here would use.")
    listening_options(p, 5000)
    return p


def listening_options(p: argparse.ArgumentParser, port: int) -> None:
    """A server command's ``--port``, ``--host`` (loopback by default) and ``--tracking-uri``."""
    p.add_argument("--port", type=int, default=port, help=f"the port to listen on (default {port})")
    p.add_argument("--host", default="127.0.0.1",
                   help="the interface to listen on (default 127.0.0.1: this machine only)")
    tracking_uri_option(p)


def parse_listening(arguments: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace:
    """A server command's arguments, its port checked."""
    options = arguments.parse_args(list(args))
    if not 0 < options.port < 65536:
        arguments.error(f"--port={options.port} is not allowed: expected a port number 1-65535")
    return options


def main(args: Sequence[str]) -> int:
    options = parse_listening(parser(), args)
    return run_server_command("ui", lambda lifetime: start(lifetime, options.tracking_uri, options.host, options.port))


class UIServer:
    """An ``mlflow server`` process and everything it spawned, serving one store."""

    def __init__(self, tree: ProcessTree, uri: str, url: str, log: Path, name: str) -> None:
        self.tree, self.uri, self.url, self.log, self.name = tree, uri, url, log, name
        self.notes: list[str] = []  # more lines to print once it answers

    @property
    def proc(self) -> subprocess.Popen:
        return self.tree.proc

    def serve(self) -> int:
        """Print its URL, then wait: until a signal (:class:`Interrupted`, which the command's lifetime
        answers by stopping everything) or until the server exits by itself."""
        print(f"labbook {self.name}: {self.url}", flush=True)
        for note in self.notes:
            print(note, file=sys.stderr, flush=True)
        print(f"labbook {self.name}: serving {self.uri} (server log: {self.log}); Ctrl-C stops it", file=sys.stderr,
              flush=True)
        code = self.proc.wait()
        print(f"labbook: error: the MLflow server exited ({code}): {_last_line(self.log)}", file=sys.stderr)
        return 1


def start(lifetime: Lifetime, tracking_uri: str | None, host: str, port: int) -> UIServer:
    """Resolve and prepare the store, check the port, start ``mlflow server`` and wait until it answers."""
    from labbook.errors import UserError
    from labbook.store.prepare import prepare_store
    from labbook.store.uri import resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise UserError(f"the store is a tracking server already, with its own UI: open {uri}")
    prepare_store(uri)
    db = sqlite_path(uri)
    # Artifacts of experiments created in the UI go beside the store, as labbook's own do.
    extra = ["--artifacts-destination", str(db.parent / "mlartifacts")] if db is not None else []
    server = start_mlflow_server(lifetime, uri, host, port, extra, name="ui")
    server.url = runs_url(server.url, uri)
    return server


def start_mlflow_server(lifetime: Lifetime, uri: str, host: str, port: int, extra: list[str], name: str,
                        workers: int = 1, env: dict[str, str] | None = None) -> UIServer:
    """``mlflow server`` on ``uri`` (already prepared), in a session of its own, its output in
    ``logs/NAME-PORT.log``; returns once it answers ``/health``. It and everything it spawns are stopped when
    ``lifetime`` ends, however it ends (a signal while it starts included)."""
    if host not in LOOPBACK:
        print(f"labbook: warning: --host {host}: the UI and everything in the store {redact_uri(uri)} (configs, "
              f"metrics, artifacts) are open to anyone who can reach this machine on port {port}",
              file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
               "--port", str(port), "--workers", str(workers), *extra]
    if host not in LOOPBACK:
        command += ["--allowed-hosts", "*"]
    return start_server(lifetime, command, redact_uri(uri), host, port, name, env)


def start_server(lifetime: Lifetime, command: list[str], shown: str, host: str, port: int, name: str,
                 env: dict[str, str] | None = None) -> UIServer:
    """``command``, an HTTP server of MLflow's (``shown``: what it serves) on ``host:port``, in a session of its
    own, its output in ``logs/NAME-PORT.log``; returns once it answers ``/health``. It and everything it spawns
    are stopped when ``lifetime`` ends, however it ends (a signal while it starts included)."""
    _check_port_free(host, port)
    log = Path.cwd() / "logs" / f"{name}-{port}.log"  # the server's own messages and access log
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out, lifetime.held():  # no signal between its start and the cleanup that stops it
        # A session of its own: a terminal's Ctrl-C reaches labbook alone, which stops the server itself.
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
        tree = ProcessTree(proc)
        lifetime.on_exit(tree.stop)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    _wait_until_up(proc, base, log)
    return UIServer(tree, shown, base, log, name)


def runs_url(base: str, uri: str) -> str:
    """The runs table (children grouped under their sweep's parent) of the newest run's experiment, else the
    home page."""
    from labbook.store.read import open_reader

    newest = open_reader(uri).search(max_results=1)
    if not newest:
        return f"{base}/#/?{MODEL_TRAINING}"
    return f"{base}/#/experiments/{newest[0].experiment_id}/runs?{MODEL_TRAINING}"


def _check_port_free(host: str, port: int) -> None:
    from labbook.errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the server will: a port a stopped server left in TIME_WAIT is free; one that something listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"--port {port}: {host}:{port} is not free ({exc.strerror}; another UI or server "
                            "is there?); choose another with --port") from None


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1].strip() if lines else f"see {log}"


def _wait_until_up(proc: subprocess.Popen, base: str, log: Path) -> None:
    import urllib.error
    import urllib.request

    from labbook.errors import UserError

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the MLflow server exited ({proc.returncode}) before it answered at {base}: "
                            f"{_last_line(log)}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (a server with authentication refuses strangers even there)
        except OSError:
            pass
        time.sleep(0.3)
    raise UserError(f"the MLflow server did not answer at {base} within {START_TIMEOUT_S:g} s")

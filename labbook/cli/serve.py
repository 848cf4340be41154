"""``labbook serve RUN | SWEEP_PARENT | models:/NAME@ALIAS [--port P] [--host H]``: a run's MLflow model
answering HTTP, through MLflow's own scoring server (``mlflow models serve --env-manager local``).

POST ``/invocations`` with ``{"inputs": {"input": ["…", …]}}`` (one string per example, as ``labbook predict``
takes them; a model that is not tabular also takes ``{"inputs": ["…", …]}``), or ``{"dataframe_split": …}`` with a
tabular model's columns; the answer is ``{"predictions": […]}``, what
``labbook predict`` prints. It listens on 127.0.0.1 unless ``--host`` says otherwise, with a warning then.
Ctrl-C, SIGTERM or SIGHUP stops it at any moment, start-up included, with every process it started
(:mod:`labbook.cli.processes`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from labbook.cli.processes import Lifetime, run_server_command
from labbook.cli.ui import LOOPBACK, UIServer, listening_options, parse_listening, start_server

DEFAULT_PORT = 5001  # beside `labbook ui`'s 5000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labbook serve", description="Serve a run's MLflow model over HTTP (POST /invocations).")
    p.add_argument("what", metavar="RUN_ID|SWEEP_PARENT_ID|models:/…",
                   help="a run id or an unambiguous prefix, a sweep's parent run (its best child), or a model URI "
                        "(models:/NAME@ALIAS, models:/NAME/VERSION)")
    listening_options(p, DEFAULT_PORT)
    return p


def main(args: Sequence[str]) -> int:
    options = parse_listening(parser(), args)
    return run_server_command("serve", lambda lifetime: start(lifetime, options))


def start(lifetime: Lifetime, options: argparse.Namespace) -> UIServer:
    """Find the model (a mistyped run or a run without a model is one line before anything starts), then start
    MLflow's scoring server on it and wait until it answers."""
    from labbook.redact import redact_uri
    from labbook.store.models import resolve
    from labbook.store.read import open_reader
    from labbook.store.uri import resolve_tracking_uri

    uri = resolve_tracking_uri(options.tracking_uri)
    ref = resolve(uri, open_reader(uri), options.what)
    if options.host not in LOOPBACK:
        print(f"labbook: warning: --host {options.host}: the model answers anyone who can reach this machine on "
              f"port {options.port}", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", ref.uri, "--env-manager", "local",
               "--host", options.host, "--port", str(options.port), "--workers", "1"]
    server = start_server(lifetime, command, f"{ref.described} ({ref.uri}) from {redact_uri(uri)}", options.host,
                          options.port, "serve", env={"MLFLOW_TRACKING_URI": uri, "PATH": _path_with_venv()})
    server.url = f"{server.url}/invocations"
    server.notes.append(f"labbook serve: POST {{\"inputs\": {{\"input\": [...]}}}} (one string per example, as "
                        f"labbook predict takes them) to {server.url}")
    return server


def _path_with_venv() -> str:
    """``PATH`` with this interpreter's scripts first: MLflow starts ``uvicorn`` by name, which a venv used
    without activating it would not find."""
    import os

    scripts = os.path.dirname(sys.executable)
    return os.pathsep.join([scripts, *(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != scripts)])

"""``labbook server``: a team's tracking server — ``mlflow server`` with its backend store on PostgreSQL and the
artifacts proxied by the server (``--serve-artifacts``, kept in ``--artifacts-destination``), on 127.0.0.1
unless ``--host`` says otherwise.

Jobs on any machine then record into it with ``MLFLOW_TRACKING_URI=http://HOST:PORT`` (or
``logger.tracking_uri=``): runs, metrics and artifacts all travel over HTTP, so a job needs no database
driver and no shared disk. To try it on one machine, ``--local-postgres DIR`` initialises (once) and starts a
PostgreSQL cluster in DIR with Debian's binaries, and stops it again with the server. Ctrl-C, SIGTERM or SIGHUP
stops it at any moment, start-up included: the MLflow server with every process it spawned, then the cluster
(:mod:`labbook.cli.processes`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from labbook.cli.processes import Lifetime
    from labbook.cli.ui import UIServer

ENV_ADMIN_PASSWORD = "LABBOOK_ADMIN_PASSWORD"
ENV_ADMIN_USER = "LABBOOK_ADMIN_USER"


def basic_auth(port: int) -> dict[str, str]:
    """The environment MLflow's basic-auth app needs: its config file (admin user and password, its user
    database beside the server's log) and a secret key for its sessions. Written readable by us only."""
    import secrets

    from labbook.errors import UserError

    try:
        import flask_wtf  # noqa: F401 - what mlflow[auth] adds; without it the server refuses to start
    except ImportError:
        raise UserError("--auth needs MLflow's auth extra: pip install 'labbook[team]'") from None
    password = os.environ.get(ENV_ADMIN_PASSWORD, "")
    if len(password) < 12:
        raise UserError(f"--auth: set {ENV_ADMIN_PASSWORD} to the admin user's password (12 characters or more)")
    folder = Path.cwd() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"server-auth-{port}.ini"
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{Path.cwd() / 'mlflow-auth.db'}\n"
                      f"admin_username = {os.environ.get(ENV_ADMIN_USER, 'admin')}\nadmin_password = {password}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labbook server",
        description="A team's MLflow tracking server: backend store on PostgreSQL, artifacts served by it.")
    p.add_argument("--backend-store-uri", default=None, metavar="URI",
                   help="the team's database, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB")
    p.add_argument("--local-postgres", default=None, metavar="DIR", type=Path,
                   help="instead: a PostgreSQL cluster in DIR (initialised on first use), for one machine")
    p.add_argument("--pg-port", type=int, default=5433, help="the local cluster's port (default 5433)")
    p.add_argument("--artifacts-destination", default="mlartifacts", metavar="DIR",
                   help="where the server keeps the artifacts it receives (default ./mlartifacts)")
    p.add_argument("--host", default="127.0.0.1", help="the interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="the port to listen on (default 5000)")
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument("--auth", action="store_true",
                   help="MLflow's basic-auth app: every request needs a user and password (jobs send "
                        "$MLFLOW_TRACKING_USERNAME/$MLFLOW_TRACKING_PASSWORD); the admin user's password "
                        f"comes from ${ENV_ADMIN_PASSWORD}")
    return p


def main(args: Sequence[str]) -> int:
    from labbook.cli.processes import run_server_command

    arguments = parser()
    options = arguments.parse_args(list(args))
    if (options.backend_store_uri is None) == (options.local_postgres is None):
        arguments.error("give one of --backend-store-uri URI (postgresql://...) and --local-postgres DIR")
    return run_server_command("server", lambda lifetime: start(lifetime, options))


def start(lifetime: Lifetime, options: argparse.Namespace) -> UIServer:
    """The local cluster (with ``--local-postgres``), the store prepared, ``mlflow server`` answering: each
    stopped when ``lifetime`` ends, the server before the cluster."""
    from labbook.cli.ui import start_mlflow_server
    from labbook.store.prepare import prepare_store

    uri = options.backend_store_uri
    if options.local_postgres is not None:
        from labbook.store.postgres import Cluster

        cluster = Cluster(options.local_postgres, options.pg_port)
        with lifetime.held():  # initdb and pg_ctl run to their end: an interrupted initdb would spoil DIR
            lifetime.on_exit(cluster.stop)  # registered first: a pg_ctl stopped half-way may have started it
            cluster.start()
        uri = cluster.database("mlflow")
        print(f"labbook server: PostgreSQL in {cluster.directory} on 127.0.0.1:{cluster.port}", file=sys.stderr)
    prepare_store(uri)
    destination = Path(options.artifacts_destination).resolve()
    destination.mkdir(parents=True, exist_ok=True)
    extra, env = ["--serve-artifacts", "--artifacts-destination", str(destination)], {}
    if options.auth:
        extra, env = extra + ["--app-name", "basic-auth"], basic_auth(options.port)
    server = start_mlflow_server(lifetime, uri, options.host, options.port, extra, name="server",
                                 workers=options.workers, env=env)
    server.notes.append(f"labbook server: jobs record here with MLFLOW_TRACKING_URI={server.url} "
                        f"(artifacts in {destination})")
    return server

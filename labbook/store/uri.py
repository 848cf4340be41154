"""Where runs are stored: the tracking URI, resolved in one order by every command.

``labbook train``'s ``logger.tracking_uri`` or another command's ``--tracking-uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory; SQLite paths come back
absolute. Creating the store is :mod:`labbook.store.uri.prepare`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from labbook.redact import redact_uri

ENV_URI = "MLFLOW_TRACKING_URI"
DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(explicit: str | None = None, cwd: str | os.PathLike | None = None) -> str:
    """The store to use: ``explicit`` (``logger.tracking_uri`` / ``--tracking-uri``) if given, else
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``. SQLite paths come back absolute, so the
    URI means the same store from any working directory; a bare path is taken as a SQLite file."""
    uri = explicit or os.environ.get(ENV_URI)
    base = Path(cwd or os.getcwd())
    if not uri:
        return f"sqlite:///{base.resolve() / DEFAULT_DB}"
    if "://" not in uri:  # a bare path to a .db file is what users type most often
        return f"sqlite:///{(base / uri).resolve()}"
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():
        query = uri.split("?", 1)[1] if "?" in uri else ""
        return f"sqlite:///{(base / db).resolve()}" + (f"?{query}" if query else "")
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    # sqlite:///relative.db and sqlite:////absolute.db: what follows the third slash is the path.
    return Path(uri.split("?", 1)[0][len("sqlite:///"):])


ENV_REQUEST_TIMEOUT = "LABBOOK_REQUEST_TIMEOUT_S"
REQUEST_TIMEOUT_S = 5.0  # labbook's own requests to a store (a server's /health, its REST API, a database's connect)


def request_timeout_s() -> float:
    """How long labbook waits for a store to answer one request before it says it cannot reach it:
    ``$LABBOOK_REQUEST_TIMEOUT_S``, else :data:`REQUEST_TIMEOUT_S` seconds. A server that accepts connections
    and never answers is one line within that time, not a minute of MLflow's retries."""
    from labbook.errors import UserError

    raw = os.environ.get(ENV_REQUEST_TIMEOUT)
    if not raw:
        return REQUEST_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{ENV_REQUEST_TIMEOUT}={raw!r} is not allowed: expected a number of seconds > 0")
    return value


def existing_sqlite_store(uri: str) -> Path | None:
    """The SQLite file of ``uri`` (None for other stores), which commands that only read must find in place:
    a :class:`UserError` when it does not exist, rather than a new empty store created by reading."""
    from labbook.errors import UserError

    db = sqlite_path(uri)
    if db is not None and db.is_dir():
        raise UserError(f"tracking store {db} is a directory, not a SQLite file")
    if db is not None and not db.is_file():
        raise UserError(f"no tracking store at {db} (pass --tracking-uri URI, set MLFLOW_TRACKING_URI, or run "
                        "from the directory holding mlflow.db)")
    return db


def run_not_found(run_id: str, uri: str) -> str:
    """How every command says that a run id is not in the store."""
    return f"run {run_id!r} not found in the store {redact_uri(uri)}"


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database file; a server decides for itself."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def ui_command(uri: str) -> str:
    """How to open ``uri``'s runs in MLflow's UI: ``labbook ui`` (with ``--tracking-uri`` unless it is the
    store ``labbook ui`` in the working directory would find), or the server's own address."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact_uri(uri)}"
    return "labbook ui" if uri == resolve_tracking_uri(None) else f"labbook ui --tracking-uri {redact_uri(uri)}"

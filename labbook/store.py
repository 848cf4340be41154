"""Where runs are stored: resolving the tracking URI and creating the store exactly once.

Several processes creating a fresh SQLite store at the same time corrupt it, so the CLI calls
:func:`prepare_store` in the parent process before Hydra starts any job or Lightning any worker, and
exports the resolved URI so that every later process agrees on it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_URI = "MLFLOW_TRACKING_URI"
DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(uri: str | None = None, cwd: str | os.PathLike | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute)."""
    uri = uri or os.environ.get(ENV_URI)
    if not uri:
        return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / DEFAULT_DB}"
    if "://" not in uri:  # a bare path to a .db file is what users type most often
        return f"sqlite:///{Path(uri).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    # sqlite:///relative.db and sqlite:////absolute.db: what follows the third slash is the path.
    return Path(uri.split("?", 1)[0][len("sqlite:///"):])


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database file; a server decides for itself."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def prepare_store(uri: str) -> None:
    """Create or upgrade the tracking store's schema once, in this process."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    # Opening the store runs MLflow's schema migrations for SQL stores; listing one experiment also
    # proves a server is reachable before any training starts.
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def ui_command(uri: str) -> str:
    db = sqlite_path(uri)
    if db is not None:
        return f"mlflow ui --backend-store-uri {uri} --port 5000"
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"

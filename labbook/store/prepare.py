"""Where runs are stored: resolving the tracking URI, in one order, and creating the store exactly once.

Every command resolves its store with :func:`resolve_tracking_uri` and nothing else: ``labbook train``'s
``logger.tracking_uri`` or another command's ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working directory. It then calls :func:`prepare_store` once, before any
sweep job or DDP worker starts, and exports the URI so that every later process agrees on it.

Several processes creating a fresh SQLite store at the same time corrupt it ("table _alembic_tmp_latest_
metrics already exists", then a store nobody can open), and independent ``labbook`` commands (``&`` in a
shell, a scheduler's job array) do exactly that. :func:`prepare_store` therefore holds an exclusive lock
while MLflow creates or upgrades the schema: the first process creates it, the others wait, then find it
ready. A new SQLite store is a copy of a blank one made once per machine and MLflow version
(:func:`blank_store`): MLflow would otherwise run its whole migration history for every new store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from labbook.redact import redact_uri
from labbook.store.reach import check_database, check_server
from labbook.store.uri import sqlite_path


@contextlib.contextmanager
def _exclusive(uri: str) -> Iterator[None]:
    """An exclusive lock for creating ``uri``'s schema: on the SQLite file's folder (every process that
    can open the file sees it), else on a file named after the URI in this host's temporary folder (a
    server or a database serialises writers from other hosts itself)."""
    db = sqlite_path(uri)
    if db is not None:
        fd = os.open(db.parent, os.O_RDONLY)
    else:
        name = f"labbook-store-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock"
        fd = os.open(Path(tempfile.gettempdir()) / name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_store(uri: str) -> None:
    """Create or upgrade the tracking store's schema, one process at a time (see the module's doc), or
    raise a :class:`~labbook.errors.UserError` saying in one line why the store cannot be used."""
    from labbook.errors import UserError, one_line

    check_server(uri)
    db = sqlite_path(uri)
    if db is not None:
        check_sqlite_file(db)
    else:
        check_database(uri)
    from mlflow.tracking import MlflowClient

    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(uri):
            if db is not None and not db.exists():
                _copy_blank_store(db)
            # Opening the store runs MLflow's schema migrations for SQL stores (none left after a copy of the
            # blank store); listing one experiment also proves a server is reachable before training starts.
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"tracking store {redact_uri(uri)}: {one_line(exc)}") from exc


SQLITE_HEADER = b"SQLite format 3\x00"
MIN_FREE_BYTES = 1 << 20  # less than this on a SQLite store's disk is full: a run's first writes would fail


def check_sqlite_file(db: Path) -> None:
    """A SQLite store labbook can write to, or a :class:`~labbook.errors.UserError` saying why not, at once: a
    directory at its path (MLflow would retry it for two minutes), a file that is no SQLite database, a store
    or folder this process cannot write (a read-only mount or file: MLflow's first write would fail with two
    tracebacks)."""
    from labbook.errors import UserError

    if db.is_dir():
        raise UserError(f"tracking store {db} is a directory, not a SQLite file")
    if db.is_file() and db.stat().st_size:
        with open(db, "rb") as fh:
            if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise UserError(f"tracking store {db} is not a SQLite database")
    folder = next((p for p in (db.parent, *db.parents) if p.exists()), None)
    for path in (db, folder) if db.exists() else (folder,):
        # SQLite writes a journal beside the file, so the folder must be writable as well as the file.
        if path is not None and not os.access(path, os.W_OK):
            raise UserError(f"tracking store {db} is read-only here ({path} cannot be written): a run records into "
                            "its store; use a writable copy, or read it with labbook compare, diff or ui")
    free = shutil.disk_usage(folder).free if folder is not None else MIN_FREE_BYTES
    if free < MIN_FREE_BYTES:  # said now, rather than by the run's first write once torch has loaded
        raise UserError(f"tracking store {db}: its disk is full ({free / 1e6:.1f} MB free); free some space")


def cache_dir() -> Path:
    """Where labbook keeps what it can rebuild: ``$XDG_CACHE_HOME/labbook``, else ``~/.cache/labbook``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labbook"


def blank_store() -> Path | None:
    """An empty SQLite store with this MLflow's whole schema and no experiment: made once per machine and
    MLflow/SQLAlchemy version (MLflow's ~60 migrations take ~1.6 s of every new store's first command), then
    copied. None when the cache cannot be written; the caller lets MLflow create the store itself."""
    import sqlite3

    import mlflow
    import sqlalchemy
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    cache = cache_dir()
    blank = cache / f"blank-store-mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}.db"
    if blank.is_file():
        return blank
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            db = Path(tmp) / "store.db"
            db_uri = f"sqlite:///{db}"
            SqlAlchemyStore(db_uri, (Path(tmp) / "artifacts").as_uri())
            SqlAlchemyStore._engine_map.pop(db_uri).dispose()  # MLflow caches one engine per URI
            # Experiment 0 names its artifact folder; MLflow recreates it, with the right one, on first opening.
            with contextlib.closing(sqlite3.connect(db)) as con:
                con.execute("DELETE FROM experiments")
                con.commit()
                con.execute("VACUUM")
            os.replace(db, blank)  # atomic: a concurrent maker's file is as complete as this one
    except OSError:
        return None
    return blank


def _copy_blank_store(db: Path) -> None:
    """Create the SQLite store ``db`` as a copy of :func:`blank_store` (the caller holds the store's lock)."""
    import shutil

    blank = blank_store()
    if blank is None:
        return
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(blank, tmp)
        os.link(tmp, db)  # never over a store that another program (not holding labbook's lock) just made
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)

"""A tracking server that goes away while a run trains (restarted, a network blip) costs the run nothing:
every call a run makes to the store is retried until it succeeds, for up to ``logger.server_patience_s``
seconds, so metrics, tags and checkpoints arrive late rather than never. Past that the run stops with one
line naming the server (its status cannot be written to a server that is away: `labbook reap` fails it
later, from its stale heartbeat).

MLflow's own client retries each request with back-off for minutes before it gives up; labbook processes
ask it for one quick retry (:func:`quick_http_retries`) and do the waiting here, with a limit the user sets.

A SQLite store is waited for the same way when it answers "database is locked": MLflow waits 20 s for a
lock, but SQLite gives up at once, without waiting, when two transactions would deadlock (one reading and
about to write while another commits), which several writers to one file (a sweep's parent and its jobs,
heartbeats, system metrics) meet now and then. MLflow rolled the transaction back, so the call is repeated.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

from labbook.errors import UserError
from labbook.redact import redact_uri

RETRY_EVERY_S = 2.0
LOCKED_RETRY_S = 0.2  # a SQLite lock is held for milliseconds: try again soon


class TrackingServerAway(UserError):
    """The tracking server did not answer for ``logger.server_patience_s`` seconds while a run recorded."""


def quick_http_retries() -> None:
    """MLflow's HTTP client: one retry, one second of back-off, 30 s per request (each unless set)."""
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        os.environ.setdefault(name, value)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server could not be reached (rather than refused what was asked)."""
    text = str(exc)
    markers = ("Max retries exceeded", "Connection refused", "Connection aborted", "Read timed out",
               "RemoteDisconnected", "too many 5", "503", "502", "504")
    return type(exc).__name__ in ("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout") or (
        "API request to" in text and any(m in text for m in markers))


class StoreUnusable(UserError):
    """The store refused a write for a reason no retry mends: a full disk, a read-only file, an I/O error."""


_BROKEN = ("database or disk is full", "readonly database", "disk I/O error", "unable to open database file",
           "No space left on device", "Read-only file system")


def store_broken(exc: BaseException) -> str | None:
    """Why the store cannot take a write, when ``exc`` says so (SQLite's or the file system's own words), else
    None. MLflow wraps SQLite's errors with their statement and parameters; the first line is the reason."""
    text = str(exc)
    if not any(marker in text for marker in _BROKEN):
        return None
    first = text.strip().splitlines()[0]
    return first.split(") ", 1)[1] if first.startswith("(sqlite3.") and ") " in first else first


def locked(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (MLflow rolled the transaction back)."""
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


class PatientClient:
    """An ``MlflowClient`` whose calls wait out an unreachable server, or a locked SQLite store, for up to
    ``patience_s`` seconds."""

    def __init__(self, client: Any, uri: str, patience_s: float) -> None:
        self._client, self._uri, self.patience_s = client, uri, patience_s
        self._http = uri.startswith(("http://", "https://"))
        self._sqlite = uri.startswith("sqlite:")
        self.gave_up = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or not (self._http or self._sqlite):
            return attribute
        return lambda *args, **kwargs: self._call(attribute, name, *args, **kwargs)

    def _call(self, method: Callable[..., Any], name: str, /, *args: Any, **kwargs: Any) -> Any:
        if self.gave_up:
            raise TrackingServerAway(self._message())
        away_since: float | None = None
        locked_since: float | None = None
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only an absent server or a locked file is waited for
                if self._sqlite and locked(exc):
                    locked_since = locked_since or time.monotonic()
                    if time.monotonic() - locked_since >= self.patience_s:
                        raise
                    time.sleep(LOCKED_RETRY_S)
                    continue
                broken = store_broken(exc)
                if broken is not None:  # the store itself refused (full, read-only): its name and why, in one line
                    raise StoreUnusable(f"tracking store {redact_uri(self._uri)}: {broken}") from exc
                if not (self._http and unreachable(exc)):
                    raise
                now = time.monotonic()
                if away_since is None:
                    away_since = now
                    print(f"labbook: tracking server {redact_uri(self._uri)} is not answering; retrying for up to "
                          f"{self.patience_s:g} s (logger.server_patience_s)", file=sys.stderr, flush=True)
                if now - away_since >= self.patience_s:
                    self.gave_up = True
                    raise TrackingServerAway(self._message()) from None
                time.sleep(RETRY_EVERY_S)
                continue
            if away_since is not None:
                print(f"labbook: tracking server {redact_uri(self._uri)} is back after "
                      f"{time.monotonic() - away_since:.0f} s; nothing was lost", file=sys.stderr, flush=True)
            return result

    def _message(self) -> str:
        return (f"tracking server {redact_uri(self._uri)} did not answer for {self.patience_s:g} s "
                "(logger.server_patience_s); the run stopped here. When the server is back: `labbook reap` "
                "marks it FAILED, `labbook train resume=RUN_ID` continues it from its last stored checkpoint")

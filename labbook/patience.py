"""A tracking server that goes away while a run trains (restarted, a network blip) costs the run nothing:
every call a run makes to the store is retried until it succeeds, for up to ``logger.server_patience_s``
seconds, so metrics, tags and checkpoints arrive late rather than never. Past that the run stops with one
line naming the server (its status cannot be written to a server that is away: `labbook reap` fails it
later, from its stale heartbeat).

MLflow's own client retries each request with back-off for minutes before it gives up; labbook processes
ask it for one quick retry (:func:`quick_http_retries`) and do the waiting here, with a limit the user sets.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

from labbook.errors import UserError
from labbook.redact import redact_uri

RETRY_EVERY_S = 2.0


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


class PatientClient:
    """An ``MlflowClient`` whose calls wait out an unreachable server for up to ``patience_s`` seconds."""

    def __init__(self, client: Any, uri: str, patience_s: float) -> None:
        self._client, self._uri, self.patience_s = client, uri, patience_s
        self.gave_up = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or not self._uri.startswith(("http://", "https://")):
            return attribute
        return lambda *args, **kwargs: self._call(attribute, name, *args, **kwargs)

    def _call(self, method: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
        if self.gave_up:
            raise TrackingServerAway(self._message())
        away_since: float | None = None
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only an absent server is waited for
                if not unreachable(exc):
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

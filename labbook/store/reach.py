"""Whether a store answers at all, asked once and briefly before MLflow is: a tracking server's ``/health``,
a database's connection. MLflow's own client retries an absent server or database for one to four minutes,
printing warnings; these probes make each unusable store one line naming it within seconds
(:func:`~labbook.store.uri.request_timeout_s`)."""

from __future__ import annotations

from labbook.redact import redact_uri
from labbook.store.uri import request_timeout_s


def check_database(uri: str) -> None:
    """For a database store (``postgresql://``, ``mysql://``...): one connection, given
    :func:`~labbook.store.uri.request_timeout_s` to succeed, so that a database that is down, refuses the user
    or has no such database is one line within seconds (MLflow retries connecting for over a minute)."""
    if uri.startswith(("http://", "https://", "file:", "databricks")) or "://" not in uri:
        return
    import sqlalchemy

    from labbook.errors import UserError

    timeout = request_timeout_s()
    connect_args = {"connect_timeout": max(1, round(timeout))} if uri.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - a driver's error: its first line says what is wrong
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise UserError(f"cannot reach the tracking store {redact_uri(uri)}: "
                        f"{text[0] if text else type(exc).__name__}") from None


def check_server(uri: str, timeout_s: float | None = None) -> None:
    """For an ``http(s)://`` tracking server: one request to its ``/health`` endpoint, answered within
    ``timeout_s`` (:func:`~labbook.store.uri.request_timeout_s`), so that a wrong host or port, a server that is
    down or one that never answers is one line naming the URI within seconds (MLflow's client would retry
    with back-off for about four minutes, printing urllib3 warnings)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.parse
    import urllib.request

    from labbook.errors import UserError

    parts = urllib.parse.urlsplit(uri)  # credentials in the URI are the server's business, not this probe's
    probe = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        with urllib.request.urlopen(probe.rstrip("/") + "/health", timeout=timeout_s or request_timeout_s()):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # a server with authentication: it is there; MLflow sends the credentials
            return
        reason = f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise UserError(f"tracking server {redact_uri(uri)} cannot be reached ({reason}); is it running? (check the "
                    "URI in logger.tracking_uri / MLFLOW_TRACKING_URI)")

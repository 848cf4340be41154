"""What a run never records: secrets. Every value labbook writes into a run (params, tags, text artifacts such
as the config and the overrides) passes through :func:`redact` first — each value on its own, before it is
serialised (:func:`redact_tree`): YAML folds a long value over two lines and escapes non-ASCII letters and
quotes, JSON escapes them too, so a secret is no longer findable in the text they write.

Two kinds are masked as ``***``: credentials inside URIs (``postgresql://user:PASSWORD@host``,
``http://user:PASSWORD@host``), and the value of every environment variable whose name says it is a secret
(``TOKEN``, ``PASSWORD``, ``SECRET``, ``KEY``), wherever it appears — a config value interpolated from such
a variable, an override typed with it.
"""

from __future__ import annotations

import os
import re
from typing import Any

_URI_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@/\s]*@")
_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|KEY", re.IGNORECASE)
MASK = "***"


def redact_uri(uri: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return _URI_PASSWORD.sub(rf"\g<1>{MASK}@", uri)


def secret_values() -> list[str]:
    """Values of this process's secret-named environment variables (longest first; short ones, which would
    mask ordinary text, are left alone)."""
    values = {v for k, v in _environment().items() if _SECRET_NAME.search(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def _environment() -> dict[str, str]:
    """A copy of the environment, taken while other threads may change it (MLflow's telemetry sets and
    deletes variables of its own): a variable gone between listing and reading is retried, not a crash."""
    for _ in range(10):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue
    return dict(os.environ)


def redact(text: str) -> str:
    """``text`` with URI credentials and secret environment values masked."""
    text = redact_uri(text)
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_tree(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, strings, other leaves) with every string in it, keys
    included, passed through :func:`redact`: what is serialised afterwards holds no secret, whatever shape
    the serialiser gives it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_tree(k): redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value

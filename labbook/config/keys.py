"""Config keys as runs store them: flattened dotted names, and which of them belong to one run only.

Light on purpose (no torch, Lightning or MLflow import): ``compare`` and ``diff`` use it as well as the
code that records runs.
"""

from __future__ import annotations

from typing import Any, Mapping

# Config keys whose values belong to one run, not to what it tries (directories named by time and job):
# recorded as tags, not params, so that the params that differ between a sweep's jobs are the swept ones;
# and how a sweep runs (sweep.resume) is not what a job tries.
RUN_LOCAL_PREFIXES = ("paths.", "sweep.")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"n": 3}}`` → ``{"model.n": 3}``; lists and empty dicts stay whole (their text is the value)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def run_local(key: str) -> bool:
    """Whether ``key`` (dotted) holds a value that belongs to one run only (see :data:`RUN_LOCAL_PREFIXES`)."""
    return key.startswith(RUN_LOCAL_PREFIXES)

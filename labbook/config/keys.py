"""Config keys as runs store them: flattened dotted names, and which of them belong to one run only.

Light on purpose (no torch, Lightning or MLflow import): ``compare`` and ``diff`` use it as well as the
code that records runs and the sweep that tells its jobs apart. The names themselves live in
:mod:`labbook.names`.
"""

from __future__ import annotations

from typing import Any, Mapping

from labbook import names


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
    """Whether ``key`` (dotted) holds a value that belongs to one run only, recorded as a tag rather than a
    param (:data:`labbook.names.RUN_LOCAL_PREFIXES`)."""
    return key.startswith(names.RUN_LOCAL_PREFIXES)


def differs_between_any_runs(key: str) -> bool:
    """Whether ``key`` differs between any two runs without being part of what they tried: run-local values,
    where a run continued from and wrote to (:data:`labbook.names.RUN_LOCAL_KEYS`), and Hydra's own settings.
    ``compare`` never shows such keys; ``diff`` lists them apart."""
    return key in names.RUN_LOCAL_KEYS or run_local(key) or key.startswith(("hydra.", names.CLAIM))


def what_it_trains(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config without run-local values and without how it is recorded or where it starts
    from (:data:`labbook.names.HOW_RECORDED`): two jobs with the same entries train the same thing."""
    return {k: v for k, v in flat.items() if not run_local(k) and not k.startswith(names.HOW_RECORDED)
            and k not in ("resume", "ckpt_path")}

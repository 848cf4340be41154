"""A sweep's space and names, without MLflow: the swept keys and their expressions, the key that finds a
sweep's command again, the hash that says two jobs train the same thing, and the short names runs show.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

from labbook import names
from labbook.config.compose import task_overrides
from labbook.config.keys import flatten, what_it_trains

# Overrides that change how a sweep runs, not what it computes: left out of the key that finds it again.
_HOW = ("hydra.", "hydra/", *names.RUN_LOCAL_PREFIXES, *names.HOW_RECORDED)


def _overrides(config: Any) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(task_overrides(config.hydra))


def sweep_space(config: Any) -> dict[str, str]:
    """Swept key -> its sweep expression: the command line's sweep overrides (``a=1,2``, ``range(..)``,
    ``glob(..)``) and a sweeper's own ``hydra.sweeper.params`` (the Optuna sweeper's search space)."""
    space = {o.key_or_group: o.input_line.partition("=")[2] for o in _overrides(config) if o.is_sweep_override()}
    for key, value in (config.hydra.sweeper.get("params") or {}).items():
        space[str(key)] = str(value)
    return space


def sweep_key(config: Any) -> str:
    """Identifies a sweep's command across re-runs: its overrides, those that only change how it runs left out."""
    kept = sorted(o for o in task_overrides(config.hydra) if not o.lstrip("+~").startswith(_HOW))
    kept.append(str(config.hydra.sweeper.get("_target_", "")))  # a grid sweep and a search are not one sweep
    if is_search(config):  # a search's parent run is its study's: another study is another sweep
        kept += [str(config.hydra.sweeper.get("study_name")), str(config.hydra.sweeper.get("storage"))]
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


def is_search(config: Any) -> bool:
    """Whether the sweeper is labbook's Optuna search, whose study (and so its parent run) every run of the
    same command continues."""
    return str(config.hydra.sweeper.get("_target_", "")).startswith("hydra_plugins.labbook_optuna_sweeper.")


def config_hash(resolved: Mapping[str, Any]) -> str:
    """Identifies what a job computes: its resolved config without run-local values (directories, the
    sweep's own settings) and without how it is recorded or where it starts from. Two jobs with the same
    hash train the same thing."""
    flat = what_it_trains(flatten(resolved))
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """``model.covariance_type`` -> ``covariance_type`` unless two swept keys end alike."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (tail if last.count(tail) == 1 else k) for k, tail in zip(keys, last)}

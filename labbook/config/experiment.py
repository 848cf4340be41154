"""Which experiment a run belongs to (``logger.experiment_name``, else the experiment preset's name, else
``<model>-<datamodule>``), and what a single run is called.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Mapping, Sequence

# Overrides that say where or how a run records, not what it tries: left out of its name.
_NOT_IN_NAMES = ("experiment=", "debug=", "logger.", "paths.", "hydra", "resume=", "ckpt_path=", "sweep.")


def experiment_name(cfg: Any, choices: Mapping[str, Any] | None) -> str:
    """``logger.experiment_name``, else the experiment preset's name, else ``<model>-<datamodule>``."""
    if cfg.logger.get("experiment_name"):
        return str(cfg.logger.experiment_name)
    choices = choices or {}
    if choices.get("experiment"):
        return str(choices["experiment"])
    return f"{choices.get('model', 'model')}-{choices.get('datamodule', 'data')}"


def run_name(experiment: str, overrides: Sequence[str], started: datetime.datetime | None = None) -> str:
    """A single run's name when ``logger.run_name`` gives none: what its command line sets (the last part of
    each key: ``model.n_components=5`` -> ``n_components=5``), else its experiment, then when it started and
    six random hex digits. Never the same twice, whatever the seed: MLflow's own names come from the random
    generator that ``seed`` has just seeded, so every run of ``seed=0`` was called the same."""
    shown = [o.lstrip("+~") for o in overrides if "=" in o and not o.lstrip("+~").startswith(_NOT_IN_NAMES)]
    what = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in (o.partition("=") for o in shown))
    when = (started or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{what[:60] or experiment}-{when}-{os.urandom(3).hex()}"

"""Which experiment a run belongs to: ``logger.experiment_name``, else the experiment preset's name, else
``<model>-<datamodule>``.
"""

from __future__ import annotations

from typing import Any, Mapping


def experiment_name(cfg: Any, choices: Mapping[str, Any] | None) -> str:
    """``logger.experiment_name``, else the experiment preset's name, else ``<model>-<datamodule>``."""
    if cfg.logger.get("experiment_name"):
        return str(cfg.logger.experiment_name)
    choices = choices or {}
    if choices.get("experiment"):
        return str(choices["experiment"])
    return f"{choices.get('model', 'model')}-{choices.get('datamodule', 'data')}"

"""What a sweep or a search optimises, in which direction, and a run's value of it.

Light on purpose (no torch, Lightning or MLflow import): the sweep's summary, ``compare`` and the search
read it as well as the code that trains.
"""

from __future__ import annotations

from typing import Any, Mapping

from labbook.config.contract import model_traits


def objective_value(objective: str, metrics: Mapping[str, float], monitor: str | None = None,
                    best_score: float | None = None) -> float | None:
    """A run's value of ``objective``: its best checkpoint's score when the checkpoint monitored that very
    metric (the model a user would take), else the metric's last value; None when it has neither."""
    if monitor == objective and best_score is not None:
        return float(best_score)
    value = metrics.get(objective)
    return None if value is None else float(value)


def objectives_of(cfg: Mapping[str, Any], model: Any) -> list[tuple[str, str]]:
    """What a sweep or search of ``cfg`` optimises, each objective with its direction: ``optimized_metric``
    (one metric or a list, for a multi-objective search) and ``direction`` (one or a list alike), else the
    model's validation monitor and its mode (``model``: the model or its class). Empty when the model names
    no monitor. A metric the model declares it never logs (its ``validation_metrics``) is refused."""
    from labbook.errors import ConfigValueError

    traits = model_traits(model)
    monitor, mode = traits.monitor, traits.monitor_mode
    given, directions = cfg.get("optimized_metric"), cfg.get("direction")
    metrics = [str(m) for m in one_or_list(given)] or [monitor]
    if metrics == [None]:
        return []
    if is_list(directions):
        directions = [str(d) for d in directions]
        if len(directions) != len(metrics):
            raise ConfigValueError("direction", directions, f"one direction per objective: {len(metrics)} for "
                                   f"optimized_metric={metrics}")
    elif directions is not None and len(metrics) > 1:
        raise ConfigValueError("direction", directions, f"a list, one direction per objective of {metrics}")
    else:
        directions = [directions] * len(metrics)
    declared = traits.validation_metrics
    found = []
    for metric, direction in zip(metrics, directions):
        if declared is not None and metric not in declared:
            raise ConfigValueError("optimized_metric", metric, f"{traits.name} "
                                   f"logs {', '.join(declared)} on validation")
        if direction is None:
            if metric != monitor:
                raise ConfigValueError("direction", None, f"set direction=minimize or direction=maximize for "
                                       f"optimized_metric={metric} (only the model's own monitor, {monitor}, has "
                                       "a known one)")
            direction = {"min": "minimize", "max": "maximize"}[mode]
        found.append((metric, str(direction)))
    return found


def is_list(value: Any) -> bool:
    """A list in a config: a Python list or tuple, or OmegaConf's ListConfig (checked by name: no import)."""
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig"


def one_or_list(value: Any) -> list[Any]:
    """``optimized_metric``/``direction`` as a list: [] for null, [x] for one value, the list as it is."""
    if value is None:
        return []
    return list(value) if is_list(value) else [value]

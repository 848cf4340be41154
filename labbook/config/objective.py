"""What a sweep or a search optimises, in which direction, and a run's value of it.

Light on purpose (no torch, Lightning or MLflow import): the sweep's summary, ``compare`` and the search
read it as well as the code that trains.

"Best" is one rule everywhere, here: a run's value of an objective is :func:`objective_value` (read from a
stored run by :func:`run_value`), and the best of a set of runs is :func:`best_run`, the first of
:func:`ranked_runs`. The sweep's summary, the search's best trial and ``compare``'s order of a sweep use them;
which way a metric is better when no objective says so is :func:`metric_direction`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from labbook import names
from labbook.config.contract import model_traits

Run = TypeVar("Run")  # a stored run: labbook.store.read.RunRecord (run_id, status, start_time, metrics, tags)

# A metric whose name holds one of these (lowercased) is better lower, when nothing states its direction.
LOWER_IS_BETTER = ("loss", "error", "rmse", "mse", "mae", "nll", "aic", "bic")


def objective_value(objective: str, metrics: Mapping[str, float], monitor: str | None = None,
                    best_score: float | None = None) -> float | None:
    """A run's value of ``objective``: its best checkpoint's score when the checkpoint monitored that very
    metric (the model a user would take), else the metric's last value; None when it has neither."""
    if monitor == objective and best_score is not None:
        return float(best_score)
    value = metrics.get(objective)
    return None if value is None else float(value)


def run_value(run: Any, objective: str) -> float | None:
    """A stored run's value of ``objective`` (:func:`objective_value`): its best checkpoint's score (tags
    ``checkpoint.monitor`` and ``checkpoint.best_score``) when that checkpoint monitored ``objective``, else
    the metric's last value; None when it has neither. ``run``: a ``labbook.store.read.RunRecord``."""
    return objective_value(objective, run.metrics, run.tags.get(names.CHECKPOINT_MONITOR), _checkpoint_score(run))


def from_checkpoint(run: Any, objective: str) -> bool:
    """Whether :func:`run_value` of ``run`` is its best checkpoint's score (not the metric's last value)."""
    return run.tags.get(names.CHECKPOINT_MONITOR) == objective and _checkpoint_score(run) is not None


def _checkpoint_score(run: Any) -> float | None:
    try:
        return float(run.tags[names.CHECKPOINT_BEST_SCORE])
    except (KeyError, TypeError, ValueError):  # no checkpoint, or "n/a"
        return None


def can_be_best(run: Any) -> bool:
    """Whether ``run`` may be a set's best at all: it FINISHED, and no search counted it as a pruned or
    failed trial (tag ``optuna.state``; Optuna never takes those for its best trial either)."""
    return run.status == "FINISHED" and run.tags.get(names.TRIAL_STATE) not in ("PRUNED", "FAIL")


def maximized(direction: str | None) -> bool:
    """``maximize`` (or ``max``) -> True; ``minimize``, ``min`` or None -> False."""
    return str(direction).lower() in ("maximize", "max")


def ranked_runs(runs: Iterable[Run], value: Callable[[Run], float | None], direction: str | None) -> list[Run]:
    """``runs`` best first, by ``value`` (a run's number, e.g. ``lambda r: run_value(r, objective)``) in
    ``direction`` (``minimize``/``maximize``): first the runs that :func:`can_be_best` with a finite value,
    then the other runs with a finite value, each group by value; a tie keeps the earliest-started run first
    (then the smaller run id); last the runs without a finite value (none, NaN, ±inf), earliest started first.
    Its first run is :func:`best_run`'s when it can be best."""
    sign = -1.0 if maximized(direction) else 1.0

    def start(run: Any) -> tuple[float, str]:
        return (run.start_time if run.start_time is not None else math.inf, run.run_id)

    def key(run: Any) -> tuple[int, float, tuple[float, str]]:
        number = value(run)
        if number is None or not math.isfinite(number):
            return (2, 0.0, start(run))
        return (0 if can_be_best(run) else 1, sign * number, start(run))

    return sorted(runs, key=key)


def best_run(runs: Iterable[Run], objective: str, direction: str | None) -> Run | None:
    """The best of ``runs`` (``labbook.store.read.RunRecord`` values, e.g. a sweep's children) by
    ``objective`` in ``direction`` (``minimize``/``maximize``; None: minimize) — the one rule for "best" that
    the sweep's summary (``sweep.best_run_id``), the search's best trial, ``labbook compare``'s first row of a
    sweep and ``labbook register`` follow:

    * a run's value is :func:`run_value`: its best checkpoint's score when the checkpoint monitored
      ``objective``, else the metric's last value;
    * only a run that :func:`can_be_best` (FINISHED, not a search's pruned or failed trial) with a finite value
      can be best;
    * of equal values, the earliest-started run is best (then the smaller run id);
    * None when no run qualifies (none finished, none logged the objective).
    """
    ranked = ranked_runs(runs, lambda r: run_value(r, objective), direction)
    if not ranked or not can_be_best(ranked[0]):
        return None
    found = run_value(ranked[0], objective)
    return ranked[0] if found is not None and math.isfinite(found) else None


def metric_direction(metric: str, stated: Mapping[str, str] | None = None) -> str:
    """Which way ``metric`` is better, ``minimize`` or ``maximize`` — the one rule for a metric's own "best"
    (``compare --agg best``): as ``stated`` (metric -> direction, :func:`stated_directions`: a sweep's
    objective and direction, else what the runs' ``objective``/``objective.direction`` tags record, i.e. the
    model's monitor and its ``monitor_mode``); else by its name: ``minimize`` when the lowercased name holds one
    of :data:`LOWER_IS_BETTER` (loss, error, rmse, mse, mae, nll, aic, bic), ``maximize`` otherwise."""
    given = (stated or {}).get(metric)
    if given:
        return "maximize" if maximized(given) else "minimize"
    lowered = metric.lower()
    return "minimize" if any(word in lowered for word in LOWER_IS_BETTER) else "maximize"


def stated_directions(runs: Sequence[Any], parent: Any = None) -> dict[str, str]:
    """The directions stored runs state for their metrics: a sweep parent's ``sweep.objective`` and
    ``sweep.direction`` first, then each metric the runs' ``objective`` tags name, with the direction most of
    them record in ``objective.direction``."""
    counts: dict[str, Counter[str]] = {}
    for run in runs:
        metric, direction = run.tags.get(names.OBJECTIVE), run.tags.get(names.OBJECTIVE_DIRECTION)
        if metric and direction:
            counts.setdefault(metric, Counter())[direction] += 1
    found = {metric: count.most_common(1)[0][0] for metric, count in counts.items()}
    if parent is not None and parent.tags.get(names.SWEEP_OBJECTIVE) and parent.tags.get(names.SWEEP_DIRECTION):
        found[parent.tags[names.SWEEP_OBJECTIVE]] = parent.tags[names.SWEEP_DIRECTION]
    return found


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

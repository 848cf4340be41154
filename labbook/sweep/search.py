"""Bayesian search on Optuna >= 4: what labbook's sweeper (``hydra/sweeper=optuna``, in
``hydra_plugins/labbook_optuna_sweeper``) and each trial's job share.

- **The space**: Hydra's sweep syntax (``choice``, ``range``, ``interval``, ``tag(log, ..)``, ``int(..)``) on
  the command line or in ``hydra.sweeper.params``, as Optuna distributions; checked against the config
  before the sweep's parent run is opened (:func:`check`), so a bad space leaves nothing behind.
- **The objectives**: :func:`labbook.config.objective.objectives_of` — ``optimized_metric``/``direction`` (one or a
  list), else the model's validation monitor; never a test metric.
- **The study**: named after the experiment unless ``hydra.sweeper.study_name``; stored in ``optuna.db``
  beside a SQLite tracking store, or in ``hydra.sweeper.storage`` (any SQLAlchemy URL: the team's
  ``postgresql://``). ``n_trials`` is the study's total, so the same command continues it.
- **A trial's side**: the sweeper hands each job ``sweep.trial=N`` and, through the environment
  (:data:`ENV_SEARCH`), where the study is and how it prunes; the job's rank 0 reports its objective after
  every validation epoch (:class:`labbook.train.callbacks.PruneTrial`) and learns whether to stop.
- **The end**: the best trial on the search's parent run (tags and Optuna's plots), and on the terminal; the
  best trial is the one whose run :func:`labbook.config.objective.best_run` picks, as the sweep's summary does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from labbook import names
from labbook.errors import ConfigValueError, UserError
from labbook.redact import redact_uri as redact

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsga2")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
RUN_ID_ATTR = "mlflow_run_id"  # a trial's user attribute: the run that trained it
ENV_SEARCH = "LABBOOK_SEARCH"  # JSON: {"storage", "study", "pruner"}, set by the sweeper for its jobs
SYNTAX = "choice(a,b,..), range(start,stop[,step]), interval(low,high), tag(log, interval(low,high)), int(interval(low,high))"


# ------------------------------------------------------------------------------------------ the space

@dataclasses.dataclass
class Space:
    fixed: list[str]  # the command's other overrides, given to every trial as they are
    distributions: dict[str, Any]  # key -> optuna distribution


def search_space(config: Any) -> Space:
    """The search space of a multirun's ``config`` (its sweep overrides and ``hydra.sweeper.params``),
    each key checked against the composed config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from labbook.config.compose import task_overrides

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(task_overrides(config.hydra))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    space = {o.key_or_group: distribution(o) for o in parsed if o.is_sweep_override()}
    for key, expression in (config.hydra.sweeper.get("params") or {}).items():
        try:
            override = parser.parse_override(f"{key}={expression}")
        except Exception as exc:  # noqa: BLE001 - Hydra's parse error is several lines
            raise ConfigValueError(f"hydra.sweeper.params.{key}", str(expression), f"a search space: {SYNTAX}") from exc
        space[str(key)] = distribution(override)
    if not space:
        raise UserError("the search has nothing to search: give hydra.sweeper.params, or sweep overrides on the "
                        f"command line ({SYNTAX})")
    for key in space:
        _check_key(config, key)
    return Space(fixed, space)


def _check_key(config: Any, key: str) -> None:
    from omegaconf import OmegaConf

    from labbook.config.groups import options

    bare = key.lstrip("+~")
    if "." not in bare and options(bare):
        return  # a config group: model=choice(gmm,lstm)
    if key.startswith("+") or OmegaConf.select(config, bare, default=_ABSENT) is not _ABSENT:
        return
    parent, _, _ = bare.rpartition(".")
    node = OmegaConf.select(config, parent) if parent else config
    known = sorted(str(k) for k in node.keys()) if hasattr(node, "keys") else []
    raise ConfigValueError("search space key", bare, "a key of the composed config" +
                           (f"; {parent or 'the root'} has {', '.join(known)}" if known else ""))


_ABSENT = object()


def distribution(override: Any) -> Any:
    """Optuna's distribution for one Hydra sweep override (``choice``, ``range``, ``interval``, ``tag(log, ..)``)."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    key, value = override.key_or_group, override.value()
    if isinstance(value, ChoiceSweep) or (override.is_sweep_override() and isinstance(value, list)):
        choices = value.list if isinstance(value, ChoiceSweep) else value
        if not choices:
            raise ConfigValueError(key, override.input_line.partition("=")[2], "choice(..) needs at least one value")
        return d.CategoricalDistribution([_plain(c) for c in choices])
    if isinstance(value, RangeSweep):
        step = value.step or 1
        start, stop = value.start, value.stop
        if (stop - start) / step <= 0:
            raise ConfigValueError(key, override.input_line.partition("=")[2],
                                   "range(start, stop[, step]) holds no value: stop is exclusive, start < stop")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return d.IntDistribution(int(start), int(stop) - 1 - (int(stop) - 1 - int(start)) % int(step), step=int(step))
        count = math.ceil((stop - start) / step)
        return d.FloatDistribution(float(start), float(start + (count - 1) * step), step=float(step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        text = override.input_line.partition("=")[2]
        if value.start > value.end:
            raise ConfigValueError(key, text, "interval(low, high) needs low <= high")
        if log_scale and value.start <= 0:
            raise ConfigValueError(key, text, "a log interval needs low > 0 (log(0) is -inf)")
        if "int" in value.tags or (isinstance(value.start, int) and isinstance(value.end, int)):
            return d.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ConfigValueError(key, override.input_line.partition("=")[2], f"a search space: {SYNTAX}")


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def override_value(value: Any) -> str:
    """A sampled value as Hydra reads it back on a job's command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if re.fullmatch(r"[\w./-]+", text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def grid(space: Space) -> dict[str, list[Any]]:
    """The grid sampler's points: every ``choice`` and ``range``; an ``interval`` has no grid."""
    import optuna.distributions as d

    points: dict[str, list[Any]] = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, d.CategoricalDistribution):
            points[key] = list(dist.choices)
        elif isinstance(dist, d.IntDistribution) and not dist.log:
            points[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, d.FloatDistribution) and dist.step is not None:
            points[key] = [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]
        else:
            raise ConfigValueError(key, repr(dist), "hydra.sweeper.sampler=grid searches choice(..) and range(..) "
                                   "only; an interval has no grid")
    return points


# ------------------------------------------------------------------------------------------ the study

def objectives(config: Any) -> list[tuple[str, str]]:
    """Each objective of the search and its direction, as every trial records them."""
    from hydra.utils import get_class

    from labbook.config.objective import objectives_of
    from labbook.config.schemas import validate

    validate(config)  # optimized_metric=test/... is refused here, before any trial
    found = objectives_of(config, get_class(config.model._target_))
    if not found:
        raise ConfigValueError("optimized_metric", None, "the model names no validation monitor: set "
                               "optimized_metric=val/... and direction")
    return found


def study_name(sweeper: Mapping[str, Any], config: Any) -> str:
    from labbook.config.experiment import experiment_name

    return str(sweeper.get("study_name") or experiment_name(config, config.hydra.runtime.choices))


def storage_url(sweeper: Mapping[str, Any], config: Any) -> str:
    """``hydra.sweeper.storage``, else ``optuna.db`` beside a SQLite tracking store."""
    if sweeper.get("storage"):
        return str(sweeper["storage"])
    from labbook.store.uri import resolve_tracking_uri, sqlite_path

    db = sqlite_path(resolve_tracking_uri(config.logger.get("tracking_uri")))
    if db is None:
        raise ConfigValueError("hydra.sweeper.storage", None, "the tracking store is not a SQLite file, so the "
                               "study has no place beside it: give an RDB URL (the team's postgresql://...)")
    return f"sqlite:///{db.with_name('optuna.db')}"


def storage(url: str) -> Any:
    """Optuna's RDB storage at ``url``; SQLite waits for a lock (parallel trials report at once)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # noqa: BLE001 - a wrong URL or a server that is away: one line
        raise UserError(f"hydra.sweeper.storage={redact(url)!r}: cannot open the study's storage: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc


def sampler(name: str, seed: int | None, space: Space, n_objectives: int) -> Any:
    import optuna

    if name not in SAMPLERS:
        raise ConfigValueError("hydra.sweeper.sampler", name, f"one of {', '.join(SAMPLERS)}")
    if name == "cmaes" and n_objectives > 1:
        raise ConfigValueError("hydra.sweeper.sampler", name, "CMA-ES optimises one objective: use nsga2 or tpe "
                               "for several")
    if name == "grid":
        return _GridSampler(grid(space), seed=seed)
    if name == "tpe":  # constant liar: trials in flight count as bad guesses, so a batch spreads out
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return {"random": optuna.samplers.RandomSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "nsga2": optuna.samplers.NSGAIISampler}[name](seed=seed)


def _grid_sampler_class() -> Any:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid, without its call to ``study.stop()`` once every point is taken (only allowed inside
        ``study.optimize``); the sweeper stops asking when the grid is exhausted."""

        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            pass

    return GridSampler


def _GridSampler(points: dict[str, list[Any]], seed: int | None) -> Any:  # noqa: N802 - a class, built lazily
    return _grid_sampler_class()(points, seed=seed)


def pruner(spec: Mapping[str, Any] | None) -> Any:
    """The pruner ``spec`` names (``type``: median, successive_halving, hyperband or none), given those of
    its other settings its constructor takes."""
    import optuna

    spec = dict(spec or {})
    kind = spec.pop("type", "median")
    if kind not in PRUNERS:
        raise ConfigValueError("hydra.sweeper.pruner.type", kind, f"one of {', '.join(PRUNERS)}")
    cls = {"median": optuna.pruners.MedianPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
           "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}[kind]
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in spec.items() if k in accepted and v is not None})


def check(config: Any) -> None:
    """Everything about a search that can be wrong, checked before its parent run is opened: the space,
    the objectives, the sampler and the pruner (each failure one line naming the key)."""
    sweeper = config.hydra.sweeper
    space = search_space(config)
    found = objectives(config)
    sampler(str(sweeper.get("sampler", "tpe")), sweeper.get("seed"), space, len(found))
    pruner(_container(sweeper.get("pruner")))
    storage_url(sweeper, config)


def _container(node: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if isinstance(node, DictConfig) else node


# ------------------------------------------------------------------------------------- a trial's side

class TrialReport:
    """Rank 0's link to its trial: reports the objective after each validation and answers whether the
    pruner stops it. A multi-objective trial is never pruned (Optuna prunes one objective).

    What is reported is what the trial will be judged on: when the objective is the checkpoint's monitor,
    the trial's value is its best checkpoint's score, so each report is the best value so far (a curve
    that oscillates on its way down — heavy-ball SGD — is not pruned for one bad epoch); otherwise the
    metric as logged. A non-finite value is reported as NaN, which the pruners stop at once."""

    def __init__(self, trial: Any, metric: str, prunable: bool, best_of: Callable[..., float] | None = None) -> None:
        self.trial, self.metric, self.prunable, self.best_of = trial, metric, prunable, best_of
        self.best: float | None = None

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> bool:
        value = metrics.get(self.metric)
        if not self.prunable or value is None:
            return False
        value = float(value)
        if not math.isfinite(value):
            value = math.nan
        elif self.best_of is not None:
            value = self.best = value if self.best is None else self.best_of(self.best, value)
        self.trial.report(value if self.best is None or math.isnan(value) else self.best, step=step)
        return bool(self.trial.should_prune())


def trial_report(cfg: Any, model: Any) -> TrialReport | None:
    """This job's trial (``sweep.trial`` in a search started by labbook's sweeper), or None."""
    number = (cfg.get("sweep") or {}).get("trial")
    raw = os.environ.get(ENV_SEARCH)
    if number is None or not raw:
        return None
    import optuna

    from labbook.config.contract import model_traits
    from labbook.config.objective import objectives_of

    spec = json.loads(raw)
    store = storage(spec["storage"])
    study = optuna.load_study(study_name=spec["study"], storage=store, pruner=pruner(spec.get("pruner")))
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(spec["study"]), int(number))
    found = objectives_of(cfg, model)
    metric, direction = found[0]
    checkpoint = cfg.callbacks.checkpoint
    monitored = checkpoint.enabled and (checkpoint.monitor or model_traits(model).monitor) == metric
    return TrialReport(optuna.trial.Trial(study, trial_id), metric, prunable=len(found) == 1,
                       best_of=(max if direction == "maximize" else min) if monitored else None)


# --------------------------------------------------------------------------------------------- the end

def record_best(study: Any, uri: str, parent_run_id: str, objectives_found: list[tuple[str, str]]) -> str:
    """The best trial (or, with several objectives, the Pareto front) on the parent run — tags
    ``optuna.best_*`` and plots under ``optuna/`` — and the text the terminal shows."""
    from optuna.trial import TrialState

    from labbook.run.recorder import Recorder

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    head = f"search: study {study.study_name!r}: {len(done)} complete, {pruned} pruned, {failed} failed trials"
    if not done:
        return head + "; no complete trial"
    metrics = [m for m, _ in objectives_found]
    if len(metrics) == 1:
        best = best_trial(done, uri, parent_run_id, objectives_found[0])
        if best is None:
            return head + f"; no complete trial's run in the store has {metrics[0]}"
        tags = {f"{names.SEARCH_BEST}trial": best.number, f"{names.SEARCH_BEST}value": f"{best.value:.6g}",
                f"{names.SEARCH_BEST}run_id": best.user_attrs.get(RUN_ID_ATTR, ""),
                **{f"{names.SEARCH_BEST_PARAM}{k}": v for k, v in best.params.items()}}
        text = (f"{head}\nbest trial {best.number}: {metrics[0]}={best.value:.6g} (run "
                f"{best.user_attrs.get(RUN_ID_ATTR, '?')}) " + " ".join(f"{k}={v}" for k, v in best.params.items()))
    else:
        front = sorted(study.best_trials, key=lambda t: t.number)
        tags = {names.SEARCH_PARETO_TRIALS: ",".join(str(t.number) for t in front),
                names.SEARCH_PARETO_RUNS: ",".join(t.user_attrs.get(RUN_ID_ATTR, "") for t in front)}
        text = f"{head}\nPareto front ({len(front)} trials):\n" + "\n".join(
            f"  trial {t.number}: " + " ".join(f"{m}={v:.6g}" for m, v in zip(metrics, t.values)) +
            f" (run {t.user_attrs.get(RUN_ID_ATTR, '?')}) " + " ".join(f"{k}={v}" for k, v in t.params.items())
            for t in front)
    parent = Recorder.for_run(uri, parent_run_id)
    parent.set_tags(tags)
    for name, path in _plots(study, metrics).items():
        parent.log_file(path, f"{names.SEARCH_PLOTS}/{name}.png")
    return text


def best_trial(done: list[Any], uri: str, parent_run_id: str, objective: tuple[str, str]) -> Any:
    """The complete trial (of ``done``) whose run is :func:`labbook.config.objective.best_run` of those trials'
    runs in the store: the run the sweep's summary names best, by the same values (a run's best checkpoint's
    score when it monitored the objective, else its last value) and the same tie rule (the earliest-started
    run) — not Optuna's own pick, which may break a tie otherwise. None when no such run has a value."""
    from labbook.config.objective import best_run
    from labbook.store.read import search_runs

    by_number = {t.number: t for t in done}
    runs = [r for r in search_runs(uri, None, parent_run_id=parent_run_id)
            if (r.tags.get(names.TRIAL_NUMBER) or "").isdigit() and int(r.tags[names.TRIAL_NUMBER]) in by_number]
    found = best_run(runs, *objective)
    return None if found is None else by_number[int(found.tags[names.TRIAL_NUMBER])]


def tag_trial_run(uri: str | None, parent: str | None, number: int, state: str) -> None:
    """The child run of trial ``number`` (if it got as far as opening one) records how the study counted it."""
    if not (uri and parent):
        return
    from labbook.run.recorder import Recorder
    from labbook.store.read import search_runs

    try:
        for run in search_runs(uri, None, parent_run_id=parent, tags={names.TRIAL_NUMBER: str(number)}):
            Recorder.for_run(uri, run.run_id).set_tags({names.TRIAL_STATE: state})
    except Exception as exc:  # noqa: BLE001 - the study is right; a missing tag must not stop the search
        print(f"labbook: warning: could not tag trial {number}'s run: {exc}", file=sys.stderr)


def _plots(study: Any, metrics: list[str]) -> dict[str, Path]:
    """Optuna's figures as PNG files: optimisation history (or the Pareto front), parameter importances
    when enough trials completed, parallel coordinates. A figure Optuna cannot draw is left out."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov
    from optuna.trial import TrialState

    target: dict[str, Callable[[Any], float]] = {}
    if len(metrics) > 1:  # several objectives: each figure shows the first
        target = {"target": lambda t: t.values[0], "target_name": metrics[0]}
    else:
        target = {"target_name": metrics[0]}
    out = Path(tempfile.mkdtemp(prefix="labbook-optuna-"))
    figures: dict[str, Callable[[], Any]] = {
        "parallel_coordinate": lambda: ov.plot_parallel_coordinate(study, **target),
    }
    if len(metrics) > 1:
        figures["pareto_front"] = lambda: ov.plot_pareto_front(study, target_names=metrics)
    else:
        figures["optimization_history"] = lambda: ov.plot_optimization_history(study, **target)
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 4:
        figures["param_importances"] = lambda: ov.plot_param_importances(study, **target)
    written: dict[str, Path] = {}
    for name, draw in figures.items():
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            drawn = draw()
            figure = drawn.figure if hasattr(drawn, "figure") else drawn.flat[0].figure
            figure.set_size_inches(9, 5.5)
            figure.tight_layout()
            path = out / f"{name}.png"
            figure.savefig(path, dpi=100)
            plt.close(figure)
            written[name] = path
    return written

"""A Hydra sweeper on Optuna >= 4: ``labbook train -m hydra/sweeper=optuna 'model.lr=tag(log, interval(1e-4, 1e-1))'``.

Built so far (issue 10 is open): TPE, random and CMA-ES samplers, search spaces in
Hydra's sweep syntax, a persistent study beside the tracking store that the same command continues
(``n_trials`` is the study's total), trials launched through any Hydra launcher in batches of ``n_jobs``.
The objective is the jobs' own (``optimized_metric`` and ``direction``, else the model's validation
monitor; a ``test/`` metric is refused), and each trial's value is what its run reports as that objective.
Not yet (issue 10): pruning, multi-objective (NSGA-II), the grid sampler, presets in conf/hparams_search/.
"""


import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig

log = logging.getLogger(__name__)
SAMPLERS = ("tpe", "random", "cmaes")


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.labbook_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    sampler: str = "tpe"
    seed: Optional[int] = None
    n_trials: int = 20  # the study's total: a later run of the same command completes (or extends) it
    n_jobs: int = 1  # trials launched at once (with hydra/launcher=joblib, in parallel)
    study_name: Optional[str] = None  # null: the experiment's name
    storage: Optional[str] = None  # null: sqlite beside the tracking store (optuna.db)
    params: Dict[str, str] = field(default_factory=dict)  # key -> Hydra sweep expression


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="labbook")


def distribution(override: Override) -> Any:
    """Optuna's distribution for one Hydra sweep override (``choice``, ``range``, ``interval``, ``tag(log, ..)``)."""
    import optuna.distributions as d

    value = override.value()
    if isinstance(value, ChoiceSweep) or (override.is_sweep_override() and isinstance(value, list)):
        choices = value.list if isinstance(value, ChoiceSweep) else value
        return d.CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        step = value.step or 1
        if all(isinstance(v, int) for v in (value.start, value.stop, step)):
            return d.IntDistribution(int(value.start), int(value.stop) - 1, step=int(step))
        return d.FloatDistribution(value.start, value.stop, step=step)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags or (isinstance(value.start, int) and isinstance(value.end, int)):
            return d.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: not a search space (use choice(..), range(..) or interval(..))")


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: str, seed: Optional[int], n_trials: int, n_jobs: int, study_name: Optional[str],
                 storage: Optional[str], params: Dict[str, str]) -> None:
        self.sampler_name, self.seed, self.n_trials, self.n_jobs = sampler, seed, n_trials, max(1, n_jobs)
        self.study_name, self.storage, self.params = study_name, storage, dict(params or {})
        self.job_idx = 0

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def _sampler(self) -> Any:
        import optuna

        if self.sampler_name not in SAMPLERS:
            raise ValueError(f"hydra.sweeper.sampler={self.sampler_name!r} is not allowed: one of {', '.join(SAMPLERS)}")
        return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "cmaes": optuna.samplers.CmaEsSampler}[self.sampler_name](seed=self.seed)

    def sweep(self, arguments: List[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        parser = OverridesParser.create()
        parsed = parser.parse_overrides(arguments)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        space = {o.key_or_group: distribution(o) for o in parsed if o.is_sweep_override()}
        for key, expression in self.params.items():
            space[key] = distribution(parser.parse_override(f"{key}={expression}"))
        metric, direction = self._objective()
        log.info(f"Optuna study {self._study_name()!r}: {direction} {metric}, {self.n_trials} trials in all")
        study = optuna.create_study(study_name=self._study_name(), storage=self._storage(), sampler=self._sampler(),
                                    direction=direction, load_if_exists=True)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # A trial left RUNNING by a process that died (SIGKILL, a crashed sweep): failed, and asked again.
            study.tell(trial.number, state=TrialState.FAIL)

        def counted() -> int:
            return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

        returns: list[Any] = []
        while counted() < self.n_trials:
            batch = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - counted()))]
            overrides = [[*fixed, *(f"{k}={v}" for k, v in t.params.items())] for t in batch]
            results = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(batch)
            for trial, result in zip(batch, results):
                try:
                    value = result.return_value
                except Exception:  # noqa: BLE001 - the job failed; labbook reported it
                    value = None
                if value is None:
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    study.tell(trial, float(value))
            returns.append(results)
        return returns

    def _objective(self) -> tuple:
        """The objective and its direction, as every trial will record it (labbook.train.objective_of)."""
        from hydra.utils import get_class

        from labbook.schemas import validate
        from labbook.train import objective_of

        validate(self.config)  # optimized_metric=test/... is refused before any trial
        objective = objective_of(self.config, get_class(self.config.model._target_))
        if objective is None:
            raise ValueError("the model names no validation monitor: set optimized_metric and direction")
        return objective

    def _study_name(self) -> str:
        from labbook.tracking import experiment_name

        return self.study_name or experiment_name(self.config, self.config.hydra.runtime.choices)

    def _storage(self) -> str:
        if self.storage:
            return self.storage
        from labbook.store import resolve_tracking_uri, sqlite_path

        db = sqlite_path(resolve_tracking_uri(self.config.logger.get("tracking_uri")))
        if db is None:
            raise ValueError("hydra.sweeper.storage: the tracking store is not a SQLite file; give the study an "
                             "RDB URL (the team's postgresql://...)")
        return f"sqlite:///{db.with_name('optuna.db')}"

"""labbook's Hydra sweeper on Optuna >= 4: ``labbook train -m hydra/sweeper=optuna 'model.lr=tag(log, interval(1e-4, 1e-1))'``
or a preset, ``labbook train hparams_search=gmm_blobs``.

Thin on purpose: the space, the objectives, the study's storage, sampler and pruner, and the best trial's
record live in :mod:`labbook.sweep.search`, which each trial's job shares. This class runs the loop: ask a batch of
``n_jobs`` trials, launch them through whatever launcher is configured (each job gets ``sweep.trial=N``),
tell the study what each returned, until the study holds ``n_trials`` complete or pruned trials in all.
Trials a dead process left RUNNING are failed and their parameters asked again first.

No ``from __future__ import annotations`` here: Hydra's ConfigStore reads the dataclass's annotations.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf


@dataclass
class PrunerConf:
    # median (default), successive_halving, hyperband, or none. A trial reports its objective after every
    # validation epoch; the settings below go to the pruner that takes them (Optuna's defaults when null).
    type: str = "median"
    n_startup_trials: Optional[int] = 5  # median: trials that finish before any is pruned
    n_warmup_steps: Optional[int] = 5  # median: epochs a trial trains before it can be pruned
    interval_steps: Optional[int] = None
    min_resource: Optional[Any] = None  # successive_halving / hyperband
    max_resource: Optional[Any] = None  # hyperband
    reduction_factor: Optional[int] = None


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.labbook_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    sampler: str = "tpe"  # tpe, random, grid, cmaes, nsga2 (several objectives: tpe or nsga2)
    seed: Optional[int] = None
    n_trials: int = 20  # the study's total: a later run of the same command completes (or extends) it
    n_jobs: Optional[int] = None  # trials in flight at once; null: the launcher's n_jobs (joblib), else 1
    max_failures: int = 5  # failed trials in one command before the search gives up
    study_name: Optional[str] = None  # null: the experiment's name
    storage: Optional[str] = None  # null: sqlite beside the tracking store (optuna.db); or an RDB URL
    pruner: PrunerConf = field(default_factory=PrunerConf)
    params: Dict[str, str] = field(default_factory=dict)  # key -> Hydra sweep expression


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="labbook")


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: str, seed: Optional[int], n_trials: int, n_jobs: Optional[int], max_failures: int,
                 study_name: Optional[str], storage: Optional[str], pruner: Any, params: Dict[str, str]) -> None:
        self.settings = {"sampler": sampler, "seed": seed, "study_name": study_name, "storage": storage,
                         "pruner": OmegaConf.to_container(pruner, resolve=True) if isinstance(pruner, DictConfig)
                         else dict(pruner or {})}
        self.n_trials, self.n_jobs, self.max_failures = n_trials, n_jobs, max_failures

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def _in_flight(self) -> int:
        if self.n_jobs:
            return max(1, int(self.n_jobs))
        n = self.config.hydra.launcher.get("n_jobs")
        return max(1, os.cpu_count() or 1) if n == -1 else max(1, int(n or 1))

    def sweep(self, arguments: List[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        from labbook.store.uri import ENV_URI
        from labbook.sweep import search
        from labbook.sweep.job import ENV_PARENT

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space = search.search_space(self.config)
        objectives = search.objectives(self.config)
        name, url = search.study_name(self.settings, self.config), search.storage_url(self.settings, self.config)
        sampler = search.sampler(self.settings["sampler"], self.settings["seed"], space, len(objectives))
        storage = search.storage(url)
        directions = [d for _, d in objectives]
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                                        pruner=search.pruner(self.settings["pruner"]), load_if_exists=True)
        except ValueError as exc:  # the stored study optimises in other directions
            raise search.UserError(f"study {name!r} in {search.redact(url)}: {exc}; name another "
                                   "(hydra.sweeper.study_name)") from None
        if [d.name.lower() for d in study.directions] != directions:
            raise search.UserError(f"study {name!r} in {search.redact(url)} has directions "
                                   f"{[d.name.lower() for d in study.directions]}, this search {directions}: "
                                   "name another (hydra.sweeper.study_name)")
        parent, uri = os.environ.get(ENV_PARENT), os.environ.get(ENV_URI)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Left RUNNING by a process that died (SIGKILL, an interrupted sweep): failed, and asked again.
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
            search.tag_trial_run(uri, parent, trial.number, "FAIL")
        os.environ[search.ENV_SEARCH] = json.dumps({"storage": url, "study": name,
                                                    "pruner": self.settings["pruner"]})
        in_flight = self._in_flight()
        shown = ", ".join(f"{d} {m}" for m, d in objectives)
        print(f"labbook: search: study {name!r} ({search.redact(url)}): {shown}; {self.n_trials} trials in all, "
              f"{in_flight} at a time, {self.settings['sampler']} sampler", file=sys.stderr, flush=True)

        def counted() -> int:
            return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

        returns: List[Any] = []
        failures = 0
        grid = isinstance(sampler, optuna.samplers.GridSampler)
        try:
            while counted() < self.n_trials:
                if grid and sampler.is_exhausted(study):
                    print(f"labbook: search: the grid's {len(study.trials)} points are all tried", file=sys.stderr)
                    break
                batch = [study.ask(space.distributions) for _ in range(min(in_flight, self.n_trials - counted()))]
                overrides = [[*space.fixed, *(f"{k}={search.override_value(v)}" for k, v in t.params.items()),
                              f"sweep.trial={t.number}"] for t in batch]
                # Job numbers are trial numbers (a batch is asked in one go, so its numbers follow each other).
                results = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
                for trial, result in zip(batch, results):
                    failures += not self._tell(study, trial, result, uri, parent)
                returns.append(results)
                if failures >= self.max_failures:
                    print(f"labbook: search: {failures} trials failed in this run (hydra.sweeper.max_failures="
                          f"{self.max_failures}); stopping the search", file=sys.stderr)
                    break
        finally:
            os.environ.pop(search.ENV_SEARCH, None)
        if parent and uri:
            print(search.record_best(study, uri, parent, objectives), flush=True)
        return returns

    def _tell(self, study: Any, trial: Any, result: Any, uri: Optional[str], parent: Optional[str]) -> bool:
        """Tell the study how ``trial`` ended; False when it failed."""
        from optuna.trial import TrialState

        from labbook.sweep import search

        try:
            returned = result.return_value
        except Exception:  # noqa: BLE001 - the job failed; labbook reported it
            returned = None
        values = (returned or {}).get("objectives") if isinstance(returned, dict) else None
        if isinstance(returned, dict) and returned.get("pruned"):
            study.tell(trial, state=TrialState.PRUNED)
            return True
        if not values or any(v is None for v in values):
            study.tell(trial, state=TrialState.FAIL)
            search.tag_trial_run(uri, parent, trial.number, "FAIL")
            return False
        study.tell(trial, [float(v) for v in values])
        return True

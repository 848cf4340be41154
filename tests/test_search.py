"""labbook's Optuna sweeper (hydra/sweeper=optuna) through the real `labbook train`, read back from the MLflow
store and the Optuna study: presets, persistence and continuation, pruning (one process and DDP), parallel
trials, a search killed and resumed, several objectives (NSGA-II), the grid sampler, an RDB storage on
PostgreSQL, and the errors a bad search space gives before any trial."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from labbook.store import postgres
from tests.conftest import labbook, labbook_interrupted, runs, store_has
from tests.test_sweeps import parent_and_children
from tests.test_train_e2e import QUIET

GMM_SEARCH = ("hparams_search=gmm_blobs", "hydra.sweeper.seed=0", "trainer.max_epochs=3", "datamodule.n_samples=600",
              "hydra.sweeper.pruner.type=none")
POLY = ("-m", "hydra/sweeper=optuna", "experiment=polynomial", "hydra.sweeper.seed=0",
        "model.optimizer.lr=tag(log, interval(1e-4, 1e-1))")
# Prunes after two finished trials and five epochs: at seed 0 a third of the trials stop early.
PRUNING = ("hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=5")


def study(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path / 'optuna.db'}")


def history(uri: str, run_id: str, key: str) -> list[float]:
    return [m.value for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


def by_trial(children: list) -> dict[int, object]:
    return {int(c.data.tags["optuna.trial_number"]): c for c in children}


def test_a_preset_search_persists_and_the_same_command_continues_it(tmp_path: Path, store: str) -> None:
    first = labbook("train", *GMM_SEARCH, "hydra.sweeper.n_trials=3", QUIET, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    parent, _ = parent_and_children(store)
    again = labbook("train", *GMM_SEARCH, "hydra.sweeper.n_trials=5", QUIET, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing sweep run {parent.info.run_id} (round 2)" in again.stderr

    same, children = parent_and_children(store)
    assert same.info.run_id == parent.info.run_id and same.data.tags["sweep.rounds"] == "2"
    assert same.info.status == "FINISHED" and len(children) == 5
    found = study(tmp_path, "gmm_blobs")  # the experiment's name
    assert found.direction == optuna.study.StudyDirection.MINIMIZE  # the preset's objective: val/bic
    trials = found.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 5 == len(found.trials)  # n_trials is the study's total, not per command

    runs_of = by_trial(children)
    assert sorted(runs_of) == [0, 1, 2, 3, 4]
    for trial in trials:
        run = runs_of[trial.number]
        assert run.info.status == "FINISHED" and trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["optuna.state"] == "COMPLETE" and run.data.tags["objective"] == "val/bic"
        for key, value in trial.params.items():  # what the study sampled is what the run trained
            assert run.data.tags[f"optuna.param.{key}"] == str(value) == run.data.params[key]
        # A trial's value is its run's validation objective (the last val/bic), never a test metric.
        assert trial.value == pytest.approx(history(store, run.info.run_id, "val/bic")[-1], rel=1e-9)

    best = found.best_trial
    tags = same.data.tags
    assert tags["optuna.best_trial"] == str(best.number)
    assert float(tags["optuna.best_value"]) == pytest.approx(best.value, rel=1e-5)
    assert tags["optuna.best_run_id"] == runs_of[best.number].info.run_id == tags["sweep.best_run_id"]
    assert tags["optuna.best.model.n_components"] == str(best.params["model.n_components"])
    plots = {a.path for a in MlflowClient(tracking_uri=store).list_artifacts(parent.info.run_id, "optuna")}
    assert plots == {"optuna/optimization_history.png", "optuna/parallel_coordinate.png",
                     "optuna/param_importances.png"}
    assert f"best trial {best.number}: val/bic={best.value:.6g} (run {tags['optuna.best_run_id']})" in again.stdout


def test_a_search_refuses_a_test_objective(tmp_path: Path, store: str) -> None:
    out = labbook("train", *GMM_SEARCH, "hydra.sweeper.n_trials=2", "optimized_metric=test/log_likelihood", QUIET,
                  cwd=tmp_path)
    assert out.returncode == 1 and "optimized_metric='test/log_likelihood' is not allowed" in out.stderr
    assert not runs(store, parents=True) and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (("model.optimizer.lrr=interval(0.001, 0.01)",),
     "search space key='model.optimizer.lrr' is not allowed: a key of the composed config; model.optimizer has"),
    (("model.optimizer.momentum=choice()",), "Error parsing override 'model.optimizer.momentum=choice()': empty "
     "choice is not legal (sweep syntax: choice(a,b),"),
    (("model.optimizer.momentum=interval(0.9, 0.1)",), "needs low <= high"),
    (("model.optimizer.momentum=tag(log, interval(0, 0.9))",), "a log interval needs low > 0"),
    (("model.optimizer.momentum=interval(0.1, 0.9)", "optimized_metric=val/accuracy", "direction=maximize"),
     "optimized_metric='val/accuracy' is not allowed: CubicPolynomial logs val/loss on validation"),
    (("model.optimizer.momentum=interval(0.1, 0.9)", "hydra.sweeper.sampler=bayes"),
     "hydra.sweeper.sampler='bayes' is not allowed: one of tpe, random, grid, cmaes, nsga2"),
    (("model.optimizer.momentum=interval(0.1, 0.9)", "hydra.sweeper.sampler=grid"),
     "hydra.sweeper.sampler=grid searches choice(..) and range(..) only"),
], ids=["unknown-key", "empty-choice", "low-above-high", "log-touching-0", "metric-never-logged", "sampler",
        "grid-of-an-interval"])
def test_a_bad_search_space_fails_before_any_trial(tmp_path: Path, store: str, args: tuple, message: str) -> None:
    out = labbook("train", "-m", "hydra/sweeper=optuna", "experiment=polynomial", *args, QUIET, cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("labbook: error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not runs(store, parents=True)  # no parent, no trial
    assert not (tmp_path / "optuna.db").exists()


def test_pruned_trials_stop_early_keep_their_metrics_and_end_finished(tmp_path: Path, store: str) -> None:
    out = labbook("train", *POLY, "hydra.sweeper.n_trials=6", "trainer.max_epochs=40", *PRUNING, QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = study(tmp_path, "polynomial")
    pruned = found.get_trials(states=(TrialState.PRUNED,))
    complete = found.get_trials(states=(TrialState.COMPLETE,))
    assert pruned and complete and len(pruned) + len(complete) == 6
    parent, children = parent_and_children(store)
    runs_of = by_trial(children)
    for trial in pruned:
        run = runs_of[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"
        losses = history(store, run.info.run_id, "val/loss")
        # Reported after each validation — the best val/loss so far, as the trial is judged on its best
        # checkpoint — and stopped at the first the pruner rejected: the metrics stay.
        assert len(losses) == len(trial.intermediate_values) < 40
        running_best = [min(losses[: i + 1]) for i in range(len(losses))]
        assert [trial.intermediate_values[i] for i in range(len(losses))] == pytest.approx(running_best, rel=1e-6)
        assert "test/loss" not in run.data.metrics  # a pruned model is not tested
    for trial in complete:
        run = runs_of[trial.number]
        assert run.data.tags["optuna.state"] == "COMPLETE" and "test/loss" in run.data.metrics
        assert len(history(store, run.info.run_id, "val/loss")) == 40
    assert parent.info.status == "FINISHED"
    assert "FINISHED (pruned)" in out.stdout  # the summary table says which trials were pruned


def test_pruning_under_ddp_stops_every_rank_in_the_same_epoch(tmp_path: Path, store: str) -> None:
    out = labbook("train", *POLY, "trainer=ddp_cpu", "hydra.sweeper.n_trials=4", "trainer.max_epochs=30",
                  "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=3", QUIET,
                  cwd=tmp_path, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    found = study(tmp_path, "polynomial")
    pruned = found.get_trials(states=(TrialState.PRUNED,))
    assert pruned and len(found.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4
    _, children = parent_and_children(store)
    runs_of = by_trial(children)
    for trial in pruned:
        run = runs_of[trial.number]
        # Rank 0 alone reports; had a worker not learnt the decision it would wait in the next epoch's
        # collectives and the job would hang instead of finishing here.
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"
        assert len(history(store, run.info.run_id, "val/loss")) == len(trial.intermediate_values) < 30
    assert not [c for c in children if c.info.status != "FINISHED"]


def test_two_trials_in_flight_share_one_study(tmp_path: Path, store: str) -> None:
    out = labbook("train", *POLY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=4",
                  "trainer.max_epochs=100", "hydra.sweeper.pruner.type=none", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 trials in all, 2 at a time" in out.stderr  # n_jobs follows the launcher's
    found = study(tmp_path, "polynomial")
    assert sorted(t.number for t in found.trials) == [0, 1, 2, 3]  # none lost, none duplicated
    assert all(t.state == TrialState.COMPLETE for t in found.trials)
    _, children = parent_and_children(store)
    runs_of = by_trial(children)
    assert sorted(runs_of) == [0, 1, 2, 3] and len(children) == 4
    assert len({c.data.tags["owner.pid"] for c in children}) == 2  # two worker processes
    for a, b in ((0, 1), (2, 3)):  # each batch's two trials trained at the same time
        first, second = runs_of[a].info, runs_of[b].info
        assert first.start_time < second.end_time and second.start_time < first.end_time
    assert {int(c.data.tags["sweep.job"]) for c in children} == {0, 1, 2, 3}  # job numbers are trial numbers


def _running_trial(number: int | None = None) -> str:
    which = "" if number is None else f"AND t.value = '{number}'"
    return ("SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.status = 'RUNNING' AND "
            f"t.key = 'optuna.trial_number' {which} AND EXISTS (SELECT 1 FROM metrics m WHERE m.run_uuid = "
            "r.run_uuid AND m.key = 'train/loss') LIMIT 1")


def test_a_search_killed_twice_completes_to_exactly_n_trials(tmp_path: Path, store: str) -> None:
    search = ("train", *POLY, "hydra.sweeper.n_trials=4", "trainer.max_epochs=400", "hydra.sweeper.pruner.type=none",
              QUIET)
    db = tmp_path / "mlflow.db"

    # 1. SIGTERM to the search while its second trial trains: the parent and that trial's run end KILLED.
    out = labbook_interrupted(*search, cwd=tmp_path, ready=lambda: store_has(db, _running_trial(1)),
                              then=lambda proc: proc.send_signal(signal.SIGTERM))
    assert out.returncode == 143, out.stderr[-3000:]
    parent, children = parent_and_children(store)
    assert parent.info.status == "KILLED" and by_trial(children)[1].info.status == "KILLED"
    params_of_killed = study(tmp_path, "polynomial").trials[1].params

    # 2. The same command with two trials in flight; one trial's process is SIGKILLed mid-training.
    def kill_a_trial(_: subprocess.Popen) -> None:
        victim = next(c for c in runs(store) if c.info.status == "RUNNING")
        os.kill(int(victim.data.tags["owner.pid"]), signal.SIGKILL)

    out = labbook_interrupted(*search, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path,
                              ready=lambda: store_has(db, _running_trial()), then=kill_a_trial)
    assert out.returncode != 0

    # 3. Once more: the study completes to exactly n_trials, under the same parent run.
    out = labbook(*search, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = study(tmp_path, "polynomial")
    states = [t.state for t in found.trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) >= 2
    assert set(states) == {TrialState.COMPLETE, TrialState.FAIL}  # nothing left RUNNING
    # The trial the SIGTERM stopped was asked again, first, with its parameters.
    again = [t for t in found.trials if t.number > 1 and t.params == params_of_killed]
    assert again and again[0].state in (TrialState.COMPLETE, TrialState.FAIL)
    final, children = parent_and_children(store)
    assert final.info.run_id == parent.info.run_id and final.info.status == "FINISHED"
    assert final.data.tags["sweep.rounds"] == "3"
    assert "RUNNING" not in {c.info.status for c in runs(store, parents=True)}
    for trial in found.trials:
        run = by_trial(children).get(trial.number)
        if trial.state == TrialState.FAIL and run is not None:
            assert run.info.status in ("KILLED", "FAILED") and run.data.tags["optuna.state"] == "FAIL"


def test_several_objectives_are_searched_with_nsga2(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", "hydra/sweeper=optuna", "experiment=gmm_blobs", "hydra.sweeper.sampler=nsga2",
                  "hydra.sweeper.seed=0", "hydra.sweeper.n_trials=4", "trainer.max_epochs=3",
                  "datamodule.n_samples=600", "model.n_components=range(1, 6)",
                  "optimized_metric=[val/log_likelihood,val/aic]", "direction=[maximize,minimize]", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = study(tmp_path, "gmm_blobs")
    assert [d.name for d in found.directions] == ["MAXIMIZE", "MINIMIZE"]
    parent, children = parent_and_children(store)
    runs_of = by_trial(children)
    for trial in found.get_trials(states=(TrialState.COMPLETE,)):
        run = runs_of[trial.number]
        # The monitor's value is its best checkpoint's score; the other objective's its last value.
        assert trial.values[0] == pytest.approx(float(run.data.tags["checkpoint.best_score"]), rel=1e-5)
        assert trial.values[1] == pytest.approx(history(store, run.info.run_id, "val/aic")[-1], rel=1e-9)
    front = sorted(t.number for t in found.best_trials)
    assert parent.data.tags["optuna.pareto_trials"] == ",".join(map(str, front))
    plots = {a.path for a in MlflowClient(tracking_uri=store).list_artifacts(parent.info.run_id, "optuna")}
    assert "optuna/pareto_front.png" in plots
    assert f"Pareto front ({len(front)} trials)" in out.stdout


def test_the_grid_sampler_tries_each_point_once(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", "hydra/sweeper=optuna", "experiment=gmm_blobs", "hydra.sweeper.sampler=grid",
                  "hydra.sweeper.n_trials=10", "trainer.max_epochs=2", "datamodule.n_samples=600",
                  "model.n_components=range(2, 4)", "model.covariance_type=choice(full, diag)", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "the grid's 4 points are all tried" in out.stderr
    points = {(t.params["model.n_components"], t.params["model.covariance_type"])
              for t in study(tmp_path, "gmm_blobs").trials}
    assert points == {(2, "full"), (2, "diag"), (3, "full"), (3, "diag")}


def test_a_study_on_postgresql(tmp_path: Path, store: str) -> None:
    with postgres.cluster() as server:
        url = server.database("studies")
        out = labbook("train", *POLY, "hydra.sweeper.n_trials=3", "trainer.max_epochs=20",
                      f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=cubic", QUIET, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        found = optuna.load_study(study_name="cubic", storage=url)
        assert len(found.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
    assert not (tmp_path / "optuna.db").exists()  # the study went where the config said
    _, children = parent_and_children(store)
    assert sorted(by_trial(children)) == [0, 1, 2]


@pytest.mark.parametrize("preset", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "hparams_search")
                                          .glob("*.yaml")))
def test_each_search_preset_composes_a_valid_search(preset: str) -> None:
    """Every preset's space, objectives, sampler and pruner pass the checks a search runs before its first
    trial (one of them, gmm_blobs, also runs for real above)."""
    from hydra import compose, initialize_config_dir

    import hydra_plugins.labbook_optuna_sweeper.optuna_sweeper  # noqa: F401 - registers hydra/sweeper=optuna
    from labbook.config import schemas
    from labbook.config.compose import search_project_configs
    from labbook.config.groups import CONF_DIR
    from labbook.sweep import search

    schemas.register()
    search_project_configs()  # a model's keys are its constructor's, as in every labbook command
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("train", overrides=[f"hparams_search={preset}"], return_hydra_config=True)
    assert config.hydra.mode.name == "MULTIRUN" and config.hydra.sweeper._target_.endswith("OptunaSweeper")
    search.check(config)
    space = search.search_space(config)
    assert len(space.distributions) >= 2 and all(not m.startswith("test/") for m, _ in search.objectives(config))


def test_an_editable_install_whose_plugin_hydra_cannot_list_says_how_to_set_up(tmp_path: Path) -> None:
    """setuptools' editable install serves hydra_plugins through an import hook, which Hydra's plugin scan
    (pkgutil) cannot list (hydra#3252): dev.py puts a link to the checkout's hydra_plugins on sys.path. Without
    it (the link's path taken out), hydra/sweeper=optuna is one line saying how to set up."""
    import sys

    hidden = ("import sys; sys.path = [p for p in sys.path if 'labbook-hydra-plugins' not in p]; "
              "from labbook.cli.commands import main; "
              "sys.argv = ['labbook', 'train', '-m', 'hydra/sweeper=optuna', 'experiment=polynomial']; sys.exit(main())")
    if "labbook-hydra-plugins" not in " ".join(sys.path):
        pytest.skip("labbook installed without dev.py's link (a wheel): Hydra lists its plugin as it is")
    out = subprocess.run([sys.executable, "-c", hidden], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "labbook: error: In 'hydra/config': Could not find 'hydra/sweeper/optuna' Available options: basic "
        "(labbook's Optuna sweeper is installed but Hydra's plugin scan cannot list an editable install's "
        "hydra_plugins: set up the checkout with python3 dev.py setup)"]

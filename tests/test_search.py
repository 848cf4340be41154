"""labbook's Optuna sweeper (hydra/sweeper=optuna) through the real `labbook train -m`: the study persists
beside the store, the same command continues it to n_trials in all under the same parent run, and each
trial's value is its run's validation objective. (Issue 10 is open: pruning, NSGA-II and presets to come.)"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import labbook, runs
from tests.test_sweeps import parent_and_children
from tests.test_train_e2e import QUIET

SEARCH = ("-m", "hydra/sweeper=optuna", "hydra.sweeper.seed=0", "experiment=gmm_blobs", "trainer.max_epochs=3",
          "datamodule.n_samples=600", "model.n_components=range(2,6)", "model.covariance_type=choice(full,diag)")


def test_a_search_persists_and_the_same_command_continues_it(tmp_path: Path, store: str) -> None:
    first = labbook("train", *SEARCH, "hydra.sweeper.n_trials=3", QUIET, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    parent, _ = parent_and_children(store)
    again = labbook("train", *SEARCH, "hydra.sweeper.n_trials=5", QUIET, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing sweep run {parent.info.run_id} (round 2)" in again.stderr

    same, children = parent_and_children(store)
    assert same.info.run_id == parent.info.run_id and same.data.tags["sweep.rounds"] == "2"
    assert len(children) == 5 and all(c.info.status == "FINISHED" for c in children)
    study = optuna.load_study(study_name="gmm_blobs", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # the GMM's monitor, val/log_likelihood
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 5  # n_trials is the study's total, not per command
    # A trial's value is its run's objective (the best checkpoint's val/log_likelihood), never a test metric.
    scores = sorted(float(c.data.tags["checkpoint.best_score"]) for c in children)
    assert sorted(t.value for t in trials) == pytest.approx(scores, rel=1e-6)
    assert {c.data.tags["objective"] for c in children} == {"val/log_likelihood"}


def test_a_search_refuses_a_test_objective(tmp_path: Path, store: str) -> None:
    out = labbook("train", *SEARCH, "hydra.sweeper.n_trials=2", "optimized_metric=test/log_likelihood", QUIET,
                  cwd=tmp_path)
    assert out.returncode == 1 and "optimized_metric='test/log_likelihood' is not allowed" in out.stderr
    assert not runs(store) and "Traceback" not in out.stderr

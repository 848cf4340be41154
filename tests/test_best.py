"""One rule for "best": :func:`labbook.config.objective.best_run`, the sweep's summary, the search's best trial and
`labbook compare`'s first row name the same run, by each run's best checkpoint's score of the objective (not its
last value). On a store written directly (every exclusion and tie) and on real training runs whose last values
rank them otherwise."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from labbook.config.objective import best_run, metric_direction, ranked_runs, run_value
from labbook.store.read import RunRecord, search_runs
from tests.conftest import labbook
from tests.test_sweeps import parent_and_children
from tests.test_train_e2e import QUIET

T0 = 1_700_000_000_000
CKPT = {"checkpoint.monitor": "val/loss"}
# name -> (val/loss history, extra tags, status); started in this order, one second apart
RUNS = {
    "a": ([0.8, 0.2, 0.7], {**CKPT, "checkpoint.best_score": "0.2"}, "FINISHED"),  # the best: its checkpoint's 0.2
    "b": ([0.5, 0.3], {**CKPT, "checkpoint.best_score": "0.3"}, "FINISHED"),
    "c": ([0.9, 0.1], {}, "FAILED"),  # the lowest last value, but it failed
    "d": ([0.6, 0.05, 0.4], {**CKPT, "checkpoint.best_score": "0.05", "optuna.state": "PRUNED"}, "FINISHED"),
    "e": ([0.1, 0.25], {"checkpoint.monitor": "val/acc", "checkpoint.best_score": "0.99"}, "FINISHED"),  # last: 0.25
    "f": ([0.2, 0.3], {**CKPT, "checkpoint.best_score": "0.2"}, "FINISHED"),  # ties with a, started later
    "g": ([], {}, "FINISHED"),  # never logged the objective
    "h": ([math.nan], {**CKPT, "checkpoint.best_score": "n/a"}, "FINISHED"),
}
ORDER = ["a", "f", "e", "b", "d", "c", "g", "h"]  # best first: those that can be best, then the others, then no value


def record(run_id: str, start: int, value: float | None, status: str = "FINISHED") -> RunRecord:
    return RunRecord(run_id, run_id, "0", status, start, start + 1, metrics={} if value is None else {"m": value})


def test_ties_directions_and_runs_without_a_value() -> None:
    # a tie keeps the earliest-started run, whatever the ids; no value, NaN, inf or a failed run is never best
    runs = [record("b", 2, 0.5), record("a", 3, 0.5), record("z", 1, 0.9), record("n", 0, math.nan),
            record("i", 0, math.inf), record("x", 0, None), record("f", 0, 0.1, "FAILED")]
    assert best_run(runs, "m", "minimize").run_id == "b"
    assert [r.run_id for r in ranked_runs(runs, lambda r: run_value(r, "m"), "minimize")] == \
        ["b", "a", "z", "f", "i", "n", "x"]
    assert best_run(runs, "m", "maximize").run_id == "z"
    assert best_run(runs, "m", None).run_id == "b"  # no direction: minimize
    assert best_run(runs[3:], "m", "minimize") is None and best_run([], "m", "maximize") is None
    # the best checkpoint's score counts only when the checkpoint monitored the objective itself
    scored = record("s", 5, 0.7)
    scored.tags = {"checkpoint.monitor": "m", "checkpoint.best_score": "0.05"}
    assert run_value(scored, "m") == 0.05 and best_run([*runs, scored], "m", "minimize") is scored
    scored.tags["checkpoint.monitor"] = "other"
    assert run_value(scored, "m") == 0.7
    # a metric's direction: as stated, else by its name
    assert metric_direction("val/acc", {"val/acc": "minimize"}) == "minimize"
    assert [metric_direction(m) for m in ("val/loss", "val/RMSE", "val/bic", "val/accuracy")] == \
        ["minimize", "minimize", "minimize", "maximize"]


def make_store(root: Path) -> tuple[str, str, dict[str, str]]:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("rule", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, start_time=T0, tags={
        "sweep.role": "parent", "sweep.swept": "model.lr", "mlflow.runName": "the-sweep",
        "sweep.objective": "val/loss", "sweep.direction": "minimize"}).info.run_id
    ids = {}
    for i, (name, (history, tags, status)) in enumerate(RUNS.items()):
        start = T0 + 1000 * (i + 1)
        run = client.create_run(exp, start_time=start, tags={
            "mlflow.parentRunId": parent, "sweep.role": "child", "sweep.job": str(i), "mlflow.runName": name,
            "objective": "val/loss", "objective.direction": "minimize", **tags})
        ids[name] = run.info.run_id
        metrics = [Metric("val/loss", v, start + s, s) for s, v in enumerate(history)]
        client.log_batch(ids[name], metrics=[*metrics, Metric("val/acc", 0.5, start, 0)],
                         params=[], synchronous=True)
        client.set_terminated(ids[name], status, end_time=start + 500)
    return uri, parent, ids


def test_summary_compare_and_best_run_agree_on_a_store(tmp_path: Path) -> None:
    from labbook.run.recorder import Recorder
    from labbook.sweep.summary import summarise

    uri, parent, ids = make_store(tmp_path)
    records = search_runs(uri, None, parent_run_id=parent)
    assert best_run(records, "val/loss", "minimize").run_id == ids["a"]

    summary = summarise(Recorder.for_run(uri, parent), uri, tmp_path, {"model.lr": ""}, "val/loss", "minimize")
    assert summary.best.run_id == ids["a"] and summary.best.objective == 0.2
    tags = MlflowClient(tracking_uri=uri).get_run(parent).data.tags
    assert tags["sweep.best_run_id"] == ids["a"] and tags["sweep.best_name"] == "a"

    shown = labbook("compare", parent, "--format", "json", "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [r["run_id"] for r in rows] == [ids[n] for n in ORDER]
    objective = "val/loss (best ckpt)"  # the rule's value, headed so
    values = {r["name"]: r["metrics"].get(objective, "absent") for r in rows}
    assert values == {"a": 0.2, "f": 0.2, "e": 0.25, "b": 0.3, "d": 0.05, "c": 0.1, "g": "absent", "h": None}

    table = labbook("compare", parent, "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert objective in lines[1] and lines[3].startswith(f"* {ids['a'][:8]}  a ")
    assert ("* best: lowest val/loss (the sweep's objective, minimized; a run's value is its best checkpoint's "
            "score)") in table.stdout


def test_a_sweep_whose_last_values_rank_it_otherwise(tmp_path: Path, store: str) -> None:
    """Real training: at lr=0.006 val/loss dips to its lowest before the last epoch, at lr=0.012 it ends
    lowest. The last values name one run, the best checkpoints the other: every "best" names the latter."""
    out = labbook("train", "-m", "experiment=polynomial", "model.optimizer.lr=0.006,0.012", "trainer.max_epochs=10",
                  QUIET, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    parent, children = parent_and_children(store)
    client = MlflowClient(tracking_uri=store)
    history = {c.info.run_id: [m.value for m in sorted(client.get_metric_history(c.info.run_id, "val/loss"),
                                                       key=lambda m: m.step)] for c in children}
    by_last = min(history, key=lambda r: history[r][-1])
    by_best = min(history, key=lambda r: min(history[r]))
    assert by_last != by_best, history  # what the test is about: the two rules disagree here
    for child in children:  # the checkpoint kept each run's lowest val/loss
        assert float(child.data.tags["checkpoint.best_score"]) == pytest.approx(min(history[child.info.run_id]),
                                                                                 rel=1e-5)
    records = search_runs(store, None, parent_run_id=parent.info.run_id)
    assert best_run(records, "val/loss", "minimize").run_id == by_best
    assert parent.data.tags["sweep.best_run_id"] == by_best
    assert re.search(rf"best: lr=0\.006 \(run {by_best}\)", out.stdout)

    shown = labbook("compare", "--format", "json", cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[0]["run_id"] == by_best
    table = labbook("compare", cwd=tmp_path, timeout=120)
    assert table.stdout.splitlines()[3].startswith(f"* {by_best[:8]}")
    # ordered by the last values instead, the other run comes first; the note says this is not the sweep's best
    last = labbook("compare", "--agg", "last", "--format", "json", cwd=tmp_path, timeout=120)
    assert [r["run_id"] for r in json.loads(last.stdout)][0] == by_last


def test_a_search_names_the_run_the_summary_names(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", "hydra/sweeper=optuna", "experiment=polynomial", "hydra.sweeper.sampler=grid",
                  "model.optimizer.lr=choice(0.006,0.012)", "hydra.sweeper.n_trials=2",
                  "hydra.sweeper.pruner.type=none", "trainer.max_epochs=10", QUIET, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    parent, children = parent_and_children(store)
    tags = parent.data.tags
    best = best_run(search_runs(store, None, parent_run_id=parent.info.run_id), "val/loss", "minimize")
    assert best.params["model.optimizer.lr"] == "0.006"  # the lower best checkpoint, not the lower last value
    assert tags["optuna.best_run_id"] == tags["sweep.best_run_id"] == best.run_id
    assert tags["optuna.best_trial"] == best.tags["optuna.trial_number"]
    assert float(tags["optuna.best_value"]) == pytest.approx(float(best.tags["checkpoint.best_score"]), rel=1e-5)
    shown = labbook("compare", "--format", "json", cwd=tmp_path, timeout=120)
    assert json.loads(shown.stdout)[0]["run_id"] == best.run_id

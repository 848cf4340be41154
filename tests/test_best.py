"""One rule for "best": :func:`labbook.config.objective.best_run` — ties, directions, runs without a value."""

from __future__ import annotations

import math

from labbook.config.objective import best_run, metric_direction, ranked_runs, run_value
from labbook.store.read import RunRecord


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

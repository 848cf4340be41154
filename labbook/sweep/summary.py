"""A sweep's summary, written to its parent run at the end: the best child by the objective, a table with
one row per configuration, and the objective against each swept parameter.

The objective is ``optimized_metric`` when the sweep sets it, else the jobs' own validation monitor (each
child records it as tags ``objective`` and ``objective.direction``); it is never a test metric. A child's
objective value is its best checkpoint's score when the objective is the checkpoint's monitor (the model
that a user would take), else the metric's last value; the best child is
:func:`labbook.config.objective.best_run`'s, the one rule ``compare`` and the search follow too.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import yaml

from labbook import names
from labbook.config.objective import best_run, run_value
from labbook.sweep.job import JOB_RECORD
from labbook.sweep.space import short_names


@dataclasses.dataclass
class Row:
    job: int | None
    run_id: str | None
    name: str
    status: str
    duration_s: float | None
    values: dict[str, str]  # swept key -> this configuration's value
    objective: float | None
    headline: float | None
    error: str = ""
    pruned: bool = False  # a search's trial stopped early by the pruner (its run FINISHED)


@dataclasses.dataclass
class Summary:
    rows: list[Row]
    swept: list[str]
    objective: str | None
    direction: str
    headline: str | None
    best: Row | None

    @property
    def failed(self) -> int:
        return sum(r.status != "FINISHED" for r in self.rows)

    def failure_text(self) -> str:
        bad = [r for r in self.rows if r.status != "FINISHED"]
        jobs = ", ".join(f"{r.job if r.job is not None else '?'} ({r.status})" for r in bad)
        return f"{len(bad)} of {len(self.rows)} jobs did not finish: job {jobs}"

    def columns(self) -> list[str]:
        short = short_names(self.swept)
        return ["best", "job", "run", "name", "status", "duration_s", *(short[k] for k in self.swept),
                self.objective or "objective", self.headline or "headline"]

    def records(self) -> list[list[Any]]:
        return [["*" if r is self.best else "", r.job, r.run_id or "", r.name, r.status + (" (pruned)" if r.pruned else ""),
                 None if r.duration_s is None else round(r.duration_s, 1), *(r.values.get(k, "") for k in self.swept),
                 r.objective, r.headline] for r in self.rows]

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.columns())
        writer.writerows(self.records())
        return out.getvalue()

    def table(self) -> str:
        """The table the terminal shows (run ids shortened), the best run marked with ``*``."""
        def cell(value: Any, column: str) -> str:
            if value is None:
                return "-"
            if isinstance(value, float):
                return f"{value:.6g}"
            return str(value)[:8] if column == "run" else str(value)

        header = self.columns()
        body = [[cell(v, c) for v, c in zip(record, header)] for record in self.records()]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)).rstrip() for b in body]
        goal = f"{self.direction} {self.objective}" if self.objective else "no objective logged"
        best = f"best: {self.best.name} (run {self.best.run_id})" if self.best else "best: none finished"
        return "\n".join([f"sweep: {len(self.rows)} configurations, {self.failed} not finished; {goal}; {best}",
                          *lines])


def summarise(parent: Any, uri: str, directory: Path, space: Mapping[str, str], objective: str | None,
              direction: str | None) -> Summary:
    """Gather the children of the sweep's ``parent`` run (every round of it) and this round's job records in
    ``directory``; store the summary in the parent run (tags, best objective as a metric,
    ``sweep/summary.csv``, ``sweep/summary.txt``, ``plots/objective.png``) and return it. ``objective`` and
    ``direction``: the sweep's own (``optimized_metric``, ``direction``), else the children's."""
    from labbook.store.read import search_runs

    children = search_runs(uri, None, parent_run_id=parent.run_id)
    objective = objective or _most_common(r.tags.get(names.OBJECTIVE) for r in children)
    direction = direction or _most_common(r.tags.get(names.OBJECTIVE_DIRECTION) for r in children) or "minimize"
    headline = _most_common(r.tags.get(names.HEADLINE) for r in children)
    swept = list(space)

    best_child = best_run(children, objective, direction) if objective else None
    rows_by_config: dict[str, Row] = {}
    for run in sorted(children, key=lambda r: r.start_time or 0):  # later attempts replace earlier ones
        key = run.tags.get(names.SWEEP_CONFIG_HASH) or run.run_id
        row = _row(run, swept, objective, headline)
        kept = rows_by_config.get(key)
        if kept is None or kept.status != "FINISHED" or run is best_child:  # the best child is its config's row
            rows_by_config[key] = row
    for record in _records(directory):  # jobs that failed before they could open a run
        key = record.get("config_hash") or f"job-{record.get('job')}"
        if record.get("run_id") is None and key not in rows_by_config:
            rows_by_config[key] = Row(record.get("job"), None, record.get("name") or f"job-{record.get('job')}",
                                      record.get("status", "FAILED"),
                                      None, _values(record.get("overrides") or [], swept), None, None,
                                      record.get("error") or "")
    rows = sorted(rows_by_config.values(), key=lambda r: (r.job is None, r.job if r.job is not None else 0))
    best = next((r for r in rows if best_child is not None and r.run_id == best_child.run_id), None)
    summary = Summary(rows, swept, objective, direction, headline, best)
    _store(parent, summary)
    return summary


def _row(run: Any, swept: list[str], objective: str | None, headline: str | None) -> Row:
    tags, metrics, params = run.tags, run.metrics, run.params
    value = run_value(run, objective) if objective else None
    overrides = _values(tags.get(names.SWEEP_OVERRIDES, "").split(), swept)
    values = {k: params.get(k, overrides.get(k, "")) for k in swept}
    end, start = run.end_time, run.start_time
    job = tags.get(names.SWEEP_JOB)
    return Row(int(job) if job is not None and job.isdigit() else None, run.run_id, run.name, run.status,
               (end - start) / 1000 if end and start else None, values,
               value, float(metrics[headline]) if headline and headline in metrics else None, tags.get(names.ERROR, ""),
               pruned=tags.get(names.TRIAL_STATE) == "PRUNED")


def _values(overrides: list[str], swept: list[str]) -> dict[str, str]:
    found = {}
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key in swept:
            found[key] = value
    return found


def _records(directory: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(directory.glob(f"**/{JOB_RECORD}")):
        try:
            found.append(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError):
            continue
    return found


def _most_common(values: Any) -> str | None:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def _store(parent: Any, summary: Summary) -> None:
    tags: dict[str, Any] = {names.SWEEP_JOBS: len(summary.rows), names.SWEEP_FAILED: summary.failed,
                            names.SWEEP_FAILED_JOBS: ",".join(str(r.job) for r in summary.rows if r.status != "FINISHED"),
                            names.SWEEP_DIRECTION: summary.direction}
    if summary.objective:
        tags[names.SWEEP_OBJECTIVE] = summary.objective
    if summary.best is not None:
        tags.update({names.SWEEP_BEST_RUN: summary.best.run_id, names.SWEEP_BEST_NAME: summary.best.name})
        parent.log_metric(summary.objective, summary.best.objective)
    parent.set_tags(tags)
    parent.log_text(summary.csv(), names.SWEEP_SUMMARY_CSV)
    parent.log_text(summary.table() + "\n", names.SWEEP_SUMMARY_TXT)
    figure = objective_plot(summary)
    if figure is not None:
        parent.log_report({"objective": figure})  # plots/objective.png


def objective_plot(summary: Summary) -> Any:
    """The objective against each swept parameter (one panel each; categorical values in order of
    appearance), the best configuration in red. None when no configuration logged the objective."""
    points = [r for r in summary.rows if r.objective is not None and math.isfinite(r.objective)]
    if not points or not summary.swept:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = short_names(summary.swept)
    fig, axes = plt.subplots(1, len(summary.swept), figsize=(4 * len(summary.swept), 3.2), squeeze=False)
    for ax, key in zip(axes[0], summary.swept):
        raw = [r.values.get(key, "") for r in points]
        try:
            xs: list[float] = [float(v) for v in raw]
            ticks = None
        except ValueError:
            ticks = list(dict.fromkeys(raw))
            xs = [float(ticks.index(v)) for v in raw]
        ax.scatter(xs, [r.objective for r in points], color=["tab:red" if r is summary.best else "tab:blue"
                                                             for r in points])
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30)
        ax.set_xlabel(short[key])
        ax.set_ylabel(summary.objective or "objective")
    fig.suptitle(f"{summary.direction} {summary.objective}")
    fig.tight_layout()
    return fig

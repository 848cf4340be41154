"""``labbook compare [EXPERIMENT | PARENT_RUN_ID]``: a sweep's or an experiment's runs side by side.

Shows, per run: its short id, name, status, duration, the params whose values differ between the listed
runs (those all runs share say nothing about the difference between them), and the chosen metrics.
Reads the store through :mod:`labbook.store.read`, so it starts without importing MLflow, torch,
Lightning or Hydra (``--filter`` on a SQLite store is the exception: MLflow evaluates its own grammar).

What is shown:

* ``PARENT_RUN_ID`` (a full id or an unambiguous prefix): that sweep's child runs;
* ``EXPERIMENT``: the experiment's runs, without sweep parent runs (their children are there already);
* nothing: the newest run decides. If it belongs to a sweep (a sweep's parent, or a child of one), that
  sweep; otherwise its experiment.

Order: ``--sort`` if given; else a sweep's objective (its ``sweep.objective`` tag, in its
``sweep.direction``), by :func:`labbook.config.objective.ranked_runs`, so the first row is the run
:func:`~labbook.config.objective.best_run` names best, as the sweep's summary does; else the start time,
oldest first (a sweep's jobs in the order they were run).

Values (``--agg``): without it each metric's last value, except a sweep's objective, which shows each run's
value of it by the one rule (its best checkpoint's score when that checkpoint monitored the objective, else
the last value; headed ``M (best ckpt)`` when a run's value is a checkpoint's score); ``--agg last|min|max``
the last value, the smallest, the largest of each metric's history (read through :mod:`labbook.store.read`),
``--agg best`` the smallest or largest in the metric's direction (:func:`labbook.config.objective.
metric_direction`), each column headed ``M (AGG)``. The rows are always ordered by the values shown.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from labbook import names
from labbook.cli.console import run_command, tracking_uri_option
from labbook.config.keys import differs_between_any_runs
from labbook.config.objective import (
    LOWER_IS_BETTER,
    can_be_best,
    from_checkpoint,
    metric_direction,
    ranked_runs,
    run_value,
    stated_directions,
)
from labbook.errors import UserError
from labbook.store.read import Reader, RunNotFound, RunRecord

MAX_CELL = 40  # characters of a param value in the table (csv and json keep it whole)
AGGS = ("last", "best", "min", "max")  # --agg: what of a metric's history a column shows
Histories = Callable[[Sequence[RunRecord], Sequence[str]], Mapping[tuple[str, str], list[float]]]


@dataclass
class Target:
    """What to compare: a title for the header line, and how to find the runs."""

    title: str
    experiment_ids: list[str] | None
    tags: dict[str, str] = field(default_factory=dict)
    parent: RunRecord | None = None


@dataclass
class SortKey:
    key: str
    descending: bool
    is_metric: bool
    source: str  # "sweep" (its objective and direction), "user" (--sort with a direction) or "default"


@dataclass
class Table:
    target: Target
    runs: list[RunRecord]
    params: list[str]
    metrics: list[str]
    experiments: dict[str, str]
    sort: SortKey | None
    hidden_params: int = 0
    agg: str | None = None  # --agg, None when not given
    values: dict[tuple[str, str], float] = field(default_factory=dict)  # (run id, metric) -> the value shown
    headings: dict[str, str] = field(default_factory=dict)  # metric -> its column's heading
    from_checkpoint: bool = False  # a sweep objective's column holds a best checkpoint's score

    def value(self, run: RunRecord, metric: str) -> float | None:
        return self.values.get((run.run_id, metric))

    def heading(self, metric: str) -> str:
        return self.headings.get(metric, metric)


# Which runs.


def resolve_target(reader: Reader, what: str | None, experiments: dict[str, str]) -> Target:
    """The sweep or experiment ``what`` names (see the module's doc); ``experiments`` are the store's."""
    if what is None:
        newest = reader.search(max_results=1)
        if not newest:  # an empty store: an empty table, as for an empty experiment
            return Target(f"store {reader.uri}", [])
        parent = _sweep_of(reader, newest[0])
        if parent is not None:
            return _sweep(parent, experiments)
        return _experiment(newest[0].experiment_id, experiments)
    if what in experiments.values():
        return _experiment(next(i for i, n in experiments.items() if n == what), experiments)
    try:
        parent = reader.find_run(what)
    except RunNotFound:  # neither: say both were looked for
        raise UserError(f"no experiment or run {what!r} in the store {reader.uri} (experiments: "
                        f"{', '.join(sorted(experiments.values())) or 'none'})") from None
    return _sweep(parent, experiments)


def _sweep_of(reader: Reader, run: RunRecord) -> RunRecord | None:
    """The sweep parent ``run`` is or belongs to, else None."""
    if run.tags.get(names.SWEEP_ROLE) == "parent":
        return run
    parent_id = run.tags.get(names.PARENT_RUN)
    if parent_id:
        parent = reader.run(parent_id)
        if parent is not None and (parent.tags.get(names.SWEEP_ROLE) == "parent" or run.tags.get(names.SWEEP_ROLE) == "child"):
            return parent
    return None


def _sweep(parent: RunRecord, experiments: dict[str, str]) -> Target:
    name = experiments.get(parent.experiment_id, parent.experiment_id)
    # children may sit in other experiments (a sweep over experiment=...), so search them all
    return Target(f"sweep {parent.run_id[:8]} ({name})", None, {names.PARENT_RUN: parent.run_id}, parent)


def _experiment(experiment_id: str, experiments: dict[str, str]) -> Target:
    return Target(f"experiment {experiments.get(experiment_id, experiment_id)}", [experiment_id])


def find_runs(reader: Reader, target: Target, filter_string: str) -> list[RunRecord]:
    runs = reader.search(target.experiment_ids, target.tags, filter_string)
    runs = [r for r in runs if r.tags.get(names.SWEEP_ROLE) != "parent"]
    if target.parent is not None and not runs and not filter_string.strip():
        hint = ""
        if target.parent.tags.get(names.PARENT_RUN):
            hint = f"; it belongs to the sweep {target.parent.tags[names.PARENT_RUN]}"
        raise UserError(f"run {target.parent.run_id} has no child runs: compare takes a sweep's parent run id or "
                        f"an experiment name{hint}")
    return runs


# Which columns, in which order.


def parse_sort(text: str) -> tuple[str, bool | None]:
    """``M``, ``M:asc`` -> ascending; ``-M``, ``M:desc`` -> descending; None when not stated."""
    text = text.strip()
    if text.startswith("-"):
        return text[1:], True
    key, sep, direction = text.rpartition(":")
    if sep and direction.lower() in ("asc", "desc"):
        return key, direction.lower() == "desc"
    return text, None


def split_names(values: Iterable[str] | None) -> list[str]:
    """``--metric a --metric b,c`` -> ``[a, b, c]`` (first mention wins)."""
    given = [n.strip() for v in values or () for n in v.split(",") if n.strip()]
    return list(dict.fromkeys(given))


def choose_metrics(runs: Sequence[RunRecord], wanted: Sequence[str], target: Target) -> list[str]:
    have = sorted({k for r in runs for k in r.metrics})
    if wanted:
        for name in wanted:
            if name not in have:
                raise UserError(f"no listed run has the metric {name!r} (they have: {', '.join(have) or 'no metrics'})")
        return list(wanted)
    chosen = []
    if target.parent is not None:
        chosen.append(target.parent.tags.get(names.SWEEP_OBJECTIVE, ""))
    chosen += sorted({r.tags.get(names.HEADLINE, "") for r in runs})
    chosen += [k for k in have if k.startswith("val/")]
    chosen = [k for k in dict.fromkeys(chosen) if k in have]
    return chosen or have  # runs labbook did not make: show what they have


def differing_params(runs: Sequence[RunRecord], target: Target) -> tuple[list[str], int]:
    """Params whose value (or absence) is not the same in every run, swept keys first; and how many
    params were left out for being equal everywhere."""
    keys = sorted({k for r in runs for k in r.params if not differs_between_any_runs(k)})
    differ = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    swept = [k.strip() for k in (target.parent.tags.get(names.SWEEP_SWEPT, "") if target.parent else "").split(",")]
    first = [k for k in swept if k in differ]
    return first + [k for k in differ if k not in first], len(keys) - len(differ)


def choose_sort(text: str | None, runs: Sequence[RunRecord], target: Target) -> SortKey | None:
    metrics = {k for r in runs for k in r.metrics}
    params = {k for r in runs for k in r.params}
    if text is None:
        objective = target.parent.tags.get(names.SWEEP_OBJECTIVE) if target.parent else None
        if objective and objective in metrics:
            return SortKey(objective, target.parent.tags.get(names.SWEEP_DIRECTION) == "maximize", True, "sweep")
        return None
    key, descending = parse_sort(text)
    if key not in metrics and key not in params:
        raise UserError(f"--sort {text!r}: no listed run has a metric or param {key!r} "
                        f"(metrics: {', '.join(sorted(metrics)) or 'none'})")
    return SortKey(key, bool(descending), key in metrics, "default" if descending is None else "user")


def sort_runs(runs: list[RunRecord], sort: SortKey | None,
              shown: Callable[[RunRecord, str], float | None] | None = None) -> list[RunRecord]:
    """``runs`` in ``sort``'s order; a metric by the value ``shown`` (the column's), else its last value. A
    sweep's objective orders as :func:`labbook.config.objective.ranked_runs` does (its first run is the
    sweep's best); any other key plainly, runs without it last."""
    if sort is None:
        return sorted(runs, key=lambda r: (r.start_time or 0, r.run_id))
    metric_value = shown or (lambda run, key: run.metrics.get(key))
    if sort.source == "sweep":
        return ranked_runs(runs, lambda r: metric_value(r, sort.key), "maximize" if sort.descending else "minimize")

    def value(run: RunRecord) -> Any:
        return metric_value(run, sort.key) if sort.is_metric else run.params.get(sort.key)

    present = [r for r in runs if value(r) is not None and not (sort.is_metric and math.isnan(value(r)))]
    missing = [r for r in runs if r not in present]  # runs without the key go last, whichever the direction
    if not sort.is_metric and all(_number(value(r)) is not None for r in present):
        key = lambda r: _number(value(r))  # noqa: E731 - numeric params sort as numbers (10 after 9)
    else:
        key = value
    return sorted(present, key=key, reverse=sort.descending) + sorted(missing, key=lambda r: r.start_time or 0)


def _number(text: str | None) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def build_table(target: Target, runs: list[RunRecord], metrics: Sequence[str], sort_text: str | None,
                experiments: dict[str, str], agg: str | None = None, histories: Histories | None = None) -> Table:
    """The table: ``agg`` (``--agg``) says what of each metric's history is shown (see the module's doc);
    ``histories`` reads them (a reader's ``metric_histories``) for ``min``, ``max`` and ``best``."""
    shown_metrics = choose_metrics(runs, metrics, target) if runs else list(metrics)
    sort = choose_sort(sort_text, runs, target) if runs else None
    params, hidden = differing_params(runs, target)
    if sort is not None:
        columns = shown_metrics if sort.is_metric else params
        if sort.key not in columns:
            columns.append(sort.key)  # what the rows are ordered by is always on screen
    table = Table(target, runs, params, shown_metrics, experiments, sort, hidden, agg)
    fill_values(table, histories)
    table.runs = sort_runs(runs, sort, table.value)
    return table


def fill_values(table: Table, histories: Histories | None) -> None:
    """Each shown metric's value per run, and its column's heading, as ``table.agg`` asks."""
    runs, agg, parent = table.runs, table.agg, table.target.parent
    objective = parent.tags.get(names.SWEEP_OBJECTIVE) if parent is not None else None
    history: Mapping[tuple[str, str], list[float]] = {}
    if agg in ("best", "min", "max") and runs and histories is not None:
        history = histories(runs, table.metrics)
    stated = stated_directions(runs, parent)
    for metric in table.metrics:
        how = agg
        if agg == "best":
            how = "min" if metric_direction(metric, stated) == "minimize" else "max"
        by_rule = agg is None and metric == objective
        for run in runs:
            if by_rule:
                value = run_value(run, metric)  # the sweep's rule: its best checkpoint's score, else the last
            elif metric not in run.metrics:
                continue
            elif how in ("min", "max"):
                value = aggregate(history.get((run.run_id, metric)) or [run.metrics[metric]], how)
            else:
                value = run.metrics[metric]
            if value is not None:
                table.values[(run.run_id, metric)] = value
        if by_rule and any(from_checkpoint(r, metric) for r in runs):
            table.from_checkpoint = True
            table.headings[metric] = f"{metric} (best ckpt)"
        elif agg is not None:
            table.headings[metric] = f"{metric} ({agg}: {how})" if agg == "best" else f"{metric} ({agg})"


def aggregate(values: Sequence[float], how: str) -> float:
    """The smallest (``min``) or largest (``max``) of a metric's history, NaN left out (NaN if all are)."""
    numbers = [v for v in values if not math.isnan(v)]
    return (min if how == "min" else max)(numbers) if numbers else math.nan


# Rendering.


def fmt_number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}"


def duration_s(run: RunRecord) -> float | None:
    if run.start_time is None:
        return None
    end = run.end_time if run.end_time else (time.time() * 1000 if run.status == "RUNNING" else None)
    return None if end is None else max(0.0, (end - run.start_time) / 1000)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _cell(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def header_line(table: Table, filter_string: str) -> str:
    line = f"{table.target.title}: {len(table.runs)} run{'s' if len(table.runs) != 1 else ''}"
    return line + (f" matching {filter_string}" if filter_string.strip() else "")


def render_table(table: Table, filter_string: str) -> str:
    lines = [header_line(table, filter_string)]
    if not table.runs:
        return "\n".join(lines + ["(no runs to show)"]) + "\n"
    mark = marked(table)
    head = ["run", "name", "status", "duration", *table.params, *(table.heading(k) for k in table.metrics)]
    rows = []
    for i, run in enumerate(table.runs):
        first = ("* " if i == 0 else "  ") if mark else ""
        rows.append([first + run.run_id[:8], run.name, run.status, fmt_duration(duration_s(run)),
                     *(_cell(run.params.get(k, "-")) for k in table.params),
                     *(fmt_number(table.value(run, k)) for k in table.metrics)])
    if mark:
        head[0] = "  run"
    numeric = [False] * 4 + [all(_number(r.params.get(k)) is not None for r in table.runs) for k in table.params] \
        + [True] * len(table.metrics)
    widths = [max(len(str(c)) for c in column) for column in zip(head, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    lines += [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    notes = []
    if table.sort is not None and table.sort.is_metric:
        notes.append(sort_note(table) if mark else f"no run can be best: none finished with a value of {table.sort.key}")
    if table.hidden_params:
        n = table.hidden_params
        notes.append(f"{n} param{' is' if n == 1 else 's are'} equal in every run (not shown)")
    return "\n".join(lines + notes) + "\n"


def marked(table: Table) -> bool:
    """Whether the first row is marked ``*``: the rows are ordered by a metric and, for a sweep's objective,
    the first run can be the sweep's best (it finished with a value)."""
    sort = table.sort
    if sort is None or not sort.is_metric or not table.runs:
        return False
    if sort.source != "sweep":
        return True
    value = table.value(table.runs[0], sort.key)
    return can_be_best(table.runs[0]) and value is not None and math.isfinite(value)


def sort_note(table: Table) -> str:
    sort = table.sort
    assert sort is not None
    how = "highest" if sort.descending else "lowest"
    shown = table.heading(sort.key)
    if sort.source == "sweep":
        goal = f"the sweep's objective, {'maximized' if sort.descending else 'minimized'}"
        if table.agg is not None:  # ordered by another value than the sweep's rule: not its best, maybe
            return (f"* {how} {shown} of the runs that finished ({goal}; the sweep's best, by its rule: "
                    "compare without --agg)")
        rule = "; a run's value is its best checkpoint's score" if table.from_checkpoint else ""
        return f"* best: {how} {sort.key} ({goal}{rule})"
    if sort.source == "user":
        return f"* {how} {shown}"
    return f"* {how} {shown} (--sort M is ascending; -M or M:desc for descending)"


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else value


def records(table: Table) -> list[dict[str, Any]]:
    """One object per run: full id, params that differ, chosen metrics (absent: the run lacks it; null: NaN)."""
    return [{"run_id": r.run_id, "name": r.name, "experiment": table.experiments.get(r.experiment_id, r.experiment_id),
             "status": r.status, "start_time": _iso(r.start_time), "duration_s": duration_s(r),
             "params": {k: r.params[k] for k in table.params if k in r.params},
             "metrics": {table.heading(k): _json_number(table.value(r, k)) for k in table.metrics
                         if (r.run_id, k) in table.values}}
            for r in table.runs]


def render_json(table: Table) -> str:
    return json.dumps(records(table), indent=2, allow_nan=False) + "\n"


def render_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run_id", "name", "experiment", "status", "start_time", "duration_s",
                     *(f"params.{k}" for k in table.params), *(f"metrics.{table.heading(k)}" for k in table.metrics)])
    for r in records(table):
        duration = r["duration_s"]
        writer.writerow([r["run_id"], r["name"], r["experiment"], r["status"], r["start_time"] or "",
                         "" if duration is None else f"{duration:.3f}",
                         *(r["params"].get(k, "") for k in table.params),
                         *(_csv_number(r["metrics"], table.heading(k)) for k in table.metrics)])
    return out.getvalue()


def _csv_number(metrics: dict[str, float | None], key: str) -> str:
    if key not in metrics:
        return ""
    return "nan" if metrics[key] is None else repr(metrics[key])


# The command.


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labbook compare",
        description="Runs side by side: the params that differ between them and their metrics. Without an "
                    "argument: the sweep the newest run belongs to, else the newest run's experiment.")
    p.add_argument("what", nargs="?", metavar="EXPERIMENT | PARENT_RUN_ID",
                   help="an experiment name, or a sweep's parent run id (a unique prefix will do)")
    p.add_argument("--metric", action="append", metavar="M",
                   help="a metric to show (repeat, or a,b,c; default: each run's headline metric and every val/ metric)")
    p.add_argument("--sort", metavar="M", help="order by metric or param M: M or M:asc ascending, -M or M:desc "
                                               "descending (default: a sweep's objective, else start time)")
    p.add_argument("--filter", default="", metavar="EXPR",
                   help="an MLflow search filter, e.g. \"metrics.`val/loss` < 0.5\" or \"params.`model.lr` = '0.01'\"")
    p.add_argument("--agg", choices=AGGS,
                   help="what each metric's column shows of its history: the last, min or max value, or the best (min "
                        "or max in the metric's direction: as a sweep's or the runs' objective tags state it, else min "
                        f"for names holding {', '.join(LOWER_IS_BETTER)}, else max); headed 'M (min)', 'M (best: max)'. "
                        "Without it: each metric's last value, except a sweep's objective, which shows each run's best "
                        "checkpoint's score where that checkpoint monitored it (else its last value), as the sweep's "
                        "summary ranks runs (headed 'M (best ckpt)'). The rows follow the values shown")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    tracking_uri_option(p)
    return p


def _glue_sort(args: Sequence[str]) -> list[str]:
    """``--sort -val/loss`` -> ``--sort=-val/loss``: argparse would take ``-val/loss`` for an option."""
    args, out = list(args), []
    while args:
        arg = args.pop(0)
        if arg == "--sort" and args and args[0].startswith("-") and args[0] != "--":
            arg = f"--sort={args.pop(0)}"
        out.append(arg)
    return out


def main(args: Sequence[str]) -> int:
    options = parser().parse_args(_glue_sort(args))

    def compare() -> None:
        from labbook.store.read import open_reader
        from labbook.store.uri import resolve_tracking_uri

        reader = open_reader(resolve_tracking_uri(options.tracking_uri))
        experiments = reader.experiments()
        target = resolve_target(reader, options.what, experiments)
        runs = find_runs(reader, target, options.filter)
        table = build_table(target, runs, split_names(options.metric), options.sort, experiments, options.agg,
                            reader.metric_histories)
        if options.format == "table":
            sys.stdout.write(render_table(table, options.filter))
            return
        print(header_line(table, options.filter), file=sys.stderr)  # stdout stays pure CSV/JSON
        sys.stdout.write(render_json(table) if options.format == "json" else render_csv(table))

    return run_command(compare)

"""``labbook diff RUN_A RUN_B``: what differs between two runs: config, metrics, code.

* config: key by key from each run's stored ``config/config.yaml`` (the whole resolved config; params are
  truncated at MLflow's length limit), nested keys flattened to ``a.b.c``. Run-local keys (``paths.*``,
  ``ckpt_path``, ``resume``, ``logger.tracking_uri``: where a run wrote its files, which run it continued)
  differ between any two runs; they are listed apart, after the real differences.
* metrics: the latest value of every metric either run has: A, B and B - A.
* code: each run's ``git.commit`` and ``git.dirty`` tags; for two dirty runs of one commit, whether their
  stored ``git/diff.patch`` files are the same.

The runs may come from different experiments; ids may be shortened to a unique prefix. Reads the store
through :mod:`labbook.store.read` (no MLflow import for SQLite stores and tracking servers).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Mapping, Sequence

from labbook import names
from labbook.cli.compare import fmt_number
from labbook.cli.console import run_command, tracking_uri_option
from labbook.config.keys import differs_between_any_runs, flatten
from labbook.store.read import Reader, RunRecord


def show(value: Any) -> str:
    """A config value as YAML writes it: null, true, 0.001, [1, 2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def run_config(reader: Reader, run: RunRecord) -> tuple[dict[str, Any], str]:
    """The run's flattened config and where it came from; runs without ``config/config.yaml`` (made outside
    ``labbook train``) fall back to their params, as text."""
    import yaml

    text = reader.artifact_text(run, names.CONFIG)
    if text is not None:
        loaded = yaml.safe_load(text)
        if isinstance(loaded, Mapping):
            return flatten(loaded), names.CONFIG
    return dict(run.params), "params"


def config_lines(a: Mapping[str, Any], b: Mapping[str, Any], as_text: bool) -> tuple[list[str], list[str]]:
    """``key: A -> B`` lines for the keys that differ, and those for run-local keys apart."""
    def norm(value: Any) -> Any:
        # one side from params (text): compare both as the text the params would hold
        return show(value) if as_text else value

    lines: list[str] = []
    local: list[str] = []
    for key in sorted(set(a) | set(b)):
        into = local if differs_between_any_runs(key) else lines
        if key not in b:
            into.append(f"- {key}: {show(a[key])}  (only in A)")
        elif key not in a:
            into.append(f"+ {key}: {show(b[key])}  (only in B)")
        elif norm(a[key]) != norm(b[key]):
            into.append(f"  {key}: {show(a[key])} -> {show(b[key])}")
    return lines, local


def metric_lines(a: RunRecord, b: RunRecord) -> list[str]:
    keys = sorted(set(a.metrics) | set(b.metrics))
    if not keys:
        return ["  (neither run has metrics)"]
    rows = [["metric", "A", "B", "B-A"]]
    for key in keys:
        va, vb = a.metrics.get(key), b.metrics.get(key)
        delta = vb - va if va is not None and vb is not None and not (math.isnan(va) or math.isnan(vb)) else None
        rows.append([key, fmt_number(va), fmt_number(vb), "" if delta is None else fmt_number(delta)])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  " + "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()
            for r in rows]


def _git(run: RunRecord) -> tuple[str, str]:
    commit = run.tags.get(names.GIT_COMMIT) or "unknown"
    dirty = {"true": "dirty", "false": "clean"}.get(run.tags.get(names.GIT_DIRTY, ""), "dirty: unknown")
    return commit, dirty


def git_lines(reader: Reader, a: RunRecord, b: RunRecord) -> list[str]:
    (commit_a, dirty_a), (commit_b, dirty_b) = _git(a), _git(b)
    lines = [f"  A: {commit_a} ({dirty_a})", f"  B: {commit_b} ({dirty_b})"]
    unknown = [label for label, commit in (("A", commit_a), ("B", commit_b)) if commit == "unknown"]
    if unknown:  # trained outside a git repository: nothing to compare, least of all "the same commit"
        lines.append(f"  code not comparable: {' and '.join(unknown)} ran outside a git repository")
    elif commit_a != commit_b:
        lines.append("  different commits")
    elif dirty_a == dirty_b == "dirty":
        # same commit, both with uncommitted changes: the stored patches tell whether the code was the same
        patch_a, patch_b = reader.artifact_text(a, names.GIT_PATCH), reader.artifact_text(b, names.GIT_PATCH)
        if patch_a is None or patch_b is None:
            lines.append(f"  same commit, both dirty ({names.GIT_PATCH} missing, so the changes cannot be compared)")
        else:
            lines.append(f"  same commit, both dirty: their {names.GIT_PATCH} are " + ("identical" if patch_a == patch_b else "different"))
    elif dirty_a == dirty_b == "clean":
        lines.append("  same code (same commit, both clean)")
    else:
        lines.append(f"  same commit; A {dirty_a}, B {dirty_b}")
    return lines


def describe(run: RunRecord, experiments: Mapping[str, str]) -> str:
    return (f"{run.run_id}  {run.name or '-'}  (experiment {experiments.get(run.experiment_id, run.experiment_id)}, "
            f"{run.status})")


def diff_text(reader: Reader, a: RunRecord, b: RunRecord) -> str:
    experiments = reader.experiments()
    (conf_a, from_a), (conf_b, from_b) = run_config(reader, a), run_config(reader, b)
    as_text = "params" in (from_a, from_b)
    changed, local = config_lines(conf_a, conf_b, as_text)
    out = [f"A: {describe(a, experiments)}", f"B: {describe(b, experiments)}", ""]
    source = names.CONFIG if not as_text else f"A: {from_a}, B: {from_b} (a run without {names.CONFIG}: compared as text)"
    out.append(f"config ({source}): " + ("1 key differs" if len(changed) == 1 else f"{len(changed)} keys differ"))
    out += changed or ["  (none)"]
    if local:
        out += ["", "run-local keys (where each run wrote its files; not differences in what was run):", *local]
    out += ["", "metrics (latest values):", *metric_lines(a, b), "", "code (git):", *git_lines(reader, a, b)]
    return "\n".join(out) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labbook diff", description="What differs between two runs: the config key by key (from their "
                                         "stored config/config.yaml), the metrics, and the git commits.")
    p.add_argument("run_a", metavar="RUN_A", help="a run id (a unique prefix will do)")
    p.add_argument("run_b", metavar="RUN_B")
    tracking_uri_option(p)
    return p


def main(args: Sequence[str]) -> int:
    options = parser().parse_args(list(args))

    def diff() -> None:
        from labbook.store.read import open_reader
        from labbook.store.uri import resolve_tracking_uri

        reader = open_reader(resolve_tracking_uri(options.tracking_uri))
        a, b = reader.find_run(options.run_a), reader.find_run(options.run_b)
        sys.stdout.write(diff_text(reader, a, b))

    return run_command(diff)

"""Logging the run's MLflow model: what ``logger.log_model=best`` (the default: the best checkpoint as an MLflow 3
logged model, :mod:`labbook.run.model`) costs a ``labbook train`` run over ``logger.log_model=none``.

The goal (issue 21, point 8): logging the model adds at most 0.5 s to a run on this machine, and nothing to
its per-step time.

In one process run, for each built-in preset at a small size (``PRESETS``), side by side: ``labbook train
PRESET debug=quiet logger.log_model=best`` and the same with ``logger.log_model=none``, each a whole process
with ``LABBOOK_TIMING=1`` (labbook prints ``labbook-timing: PHASE WALL CPU`` on stderr, :mod:`labbook.timing`),
N times each, interleaved: every repeat runs every preset both ways, the order of the two ways alternating
from one repeat to the next (best first, then none first, ...), so that a change of the machine's load hits
both alike. Per preset it reports medians of:

- the whole command's wall time (and CPU time) each way, and the median of the paired differences
  (best - none of the same repeat): what a user waits, and much noisier than the run's ~0.1-1 s share of it;
- the model logging: the time from the mark ``tested`` (the test pass ended; ``fit-done`` where a preset does
  not test) to ``model-logged`` (labbook/train/fit.py: the final checkpoint uploads and metrics flush, the
  checkpoint tags, then ``_log_models``). For ``log_model=none`` the same interval is what every run pays
  there anyway, so the difference (paired, best - none) is the model logging's own cost. **The goal is checked
  on the whole interval for ``log_model=best``** (its wall time, the conservative figure);
- the time per training step: from ``first-step`` (the first batch's start) to ``last-step`` (the last batch's
  end), the validation passes between epochs included, over the number of training batches (read from the
  run's ``checkpoints/last.ckpt``: Lightning's batch progress); the ratio best/none is the paired median.
  Nothing of the model logging runs before training ends, so it should be 1 within the noise.

Each run gets a fresh store (a new working folder: ``./mlflow.db``, ``./mlartifacts``): every run then starts
from the same state and its cost does not depend on the runs before it (in a shared store later runs would find
more runs, more logged models and a larger file, and the order of the two ways would matter); a new store is
a copy of a blank one (``labbook/store/prepare.py``), the same few milliseconds both ways. One unmeasured run
first warms the file cache. The script checks that every ``best`` run logged exactly one model, READY, and
every ``none`` run none, and that no run warned that its model was not logged.

Exit status: 1 when any preset's model logging (the median ``tested`` -> ``model-logged`` wall time with
``log_model=best``) exceeds ``--goal`` (0.5 s), so it can be rerun as a check.

``--breakdown`` instead runs each preset once with ``log_model=best`` in a python that times the parts of
``Recorder.log_models`` (wall and CPU): the import of ``labbook.run.model`` (``mlflow.pyfunc``), each store
call, MLflow's ``pyfunc.log_model`` and inside it ``save_model``, its check of the pip requirements against
the installed packages, the copy of the model's files into the store.

    python benchmarks/model_logging.py                       # the five presets, 5 repeats each way
    python benchmarks/model_logging.py --repeat 3 --presets polynomial gmm_iris
    python benchmarks/model_logging.py --presets all         # also gmm_blobs and lstm_sine
    python benchmarks/model_logging.py --breakdown
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from labbook.timing import read_marks

LABBOOK = str(Path(sys.executable).parent / "labbook")
GOAL_S = 0.5
TINY_DATES = ["datamodule.n_samples=1200", "datamodule.n_test=200", "datamodule.batch_size=32",
              "trainer.max_epochs=1"]  # tests/test_sequence_e2e.py's
PRESETS = {  # each built-in preset (conf/experiment/) at a small size: a run of 5-10 s, most of it start-up
    "polynomial": ["experiment=polynomial"],  # 200 epochs of one batch, ~2 s of training
    "gmm_iris": ["experiment=gmm_iris"],
    "lstm_sunspots": ["experiment=lstm_sunspots", "trainer.max_epochs=10"],
    "seq2seq_dates": ["experiment=seq2seq_dates", *TINY_DATES],
    "transformer_dates": ["experiment=transformer_dates", *TINY_DATES],
    # the same model classes on other data (--presets all)
    "gmm_blobs": ["experiment=gmm_blobs", "datamodule.n_samples=3000", "trainer.max_epochs=20"],
    "lstm_sine": ["experiment=lstm_sine", "trainer.max_epochs=5"],
}
DEFAULT = ["polynomial", "gmm_iris", "lstm_sunspots", "seq2seq_dates", "transformer_dates"]
WAYS = ("best", "none")
NOT_LOGGED = "the run's model was not logged"  # labbook/train/fit.py's warning

# --breakdown: labbook's main in a python that times the parts of Recorder.log_models. Each target is wrapped
# where it is looked up when called (a module's or a class's attribute); a target MLflow no longer has is skipped.
BREAKDOWN_SCRIPT = r'''
import functools, importlib, sys, time
TIMES = {}
def timed(label, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = TIMES.setdefault(label, [0.0, 0.0, 0])
            entry[0] += time.perf_counter() - wall
            entry[1] += time.process_time() - cpu
            entry[2] += 1
    return wrapper
def wrap(module, owner, name, label):
    target = importlib.import_module(module)
    target = getattr(target, owner) if owner else target
    if hasattr(target, name):
        setattr(target, name, timed(label, getattr(target, name)))
TARGETS = [
    ("labbook.run.model", "", "read_position", "read the checkpoint's position (torch.load, mmap)"),
    ("labbook.store.models", "", "logged_models", "the run's models so far (search_logged_models)"),
    ("labbook.run.model", "", "signature_and_example", "signature and input example"),
    ("labbook.run.model", "", "requirements", "pip requirements (versions of 5 packages)"),
    ("mlflow.tracking", "MlflowClient", "get_run", "store: get_run"),
    ("mlflow.tracking", "MlflowClient", "create_logged_model", "store: create_logged_model"),
    ("mlflow.pyfunc", "", "log_model", "mlflow.pyfunc.log_model (all of it)"),
    ("mlflow.pyfunc", "", "save_model", "  pyfunc.save_model (MLmodel, python_env, artifacts)"),
    ("mlflow.utils.environment", "", "warn_dependency_requirement_mismatches",
     "    its check of the requirements against the installed packages"),
    ("mlflow.pyfunc", "", "warn_dependency_requirement_mismatches", "  the same check when the model is loaded"),
    ("mlflow.models.utils", "", "_validate_serving_input", "  validating the serving input example (load, predict)"),
    ("mlflow.tracking", "MlflowClient", "log_model_artifacts", "  store: the model's files copied in"),
    ("mlflow.tracking", "MlflowClient", "finalize_logged_model", "store: finalize_logged_model"),
    ("mlflow.tracking", "MlflowClient", "log_outputs", "store: log_outputs (the run's output)"),
    ("mlflow.tracking", "MlflowClient", "get_metric_history", "store: get_metric_history"),
    ("mlflow.tracking", "MlflowClient", "log_batch", "store: log_batch (metrics linked)"),
    ("mlflow.store.artifact.local_artifact_repo", "LocalArtifactRepository", "delete_artifacts",
     "the run's best.ckpt removed"),
]
import labbook.run.recorder as recorder
log_models = recorder.Recorder.log_models
def measured(self, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    import labbook.run.model  # mlflow.pyfunc
    TIMES["import labbook.run.model (mlflow.pyfunc)"] = [time.perf_counter() - wall, time.process_time() - cpu, 1]
    for target in TARGETS:
        wrap(*target)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return log_models(self, *args, **kwargs)
    finally:
        TIMES["Recorder.log_models (all of it)"] = [time.perf_counter() - wall, time.process_time() - cpu, 1]
        order = ["import labbook.run.model (mlflow.pyfunc)", *(t[3] for t in TARGETS), "Recorder.log_models (all of it)"]
        for label in order:
            if label not in TIMES:
                continue
            w, c, n = TIMES[label]
            print(f"breakdown: {w:.6f} {c:.6f} {n} {label}", file=sys.stderr, flush=True)
recorder.Recorder.log_models = measured
from labbook.cli.commands import main
sys.exit(main(sys.argv[1:]))
'''


def run_once(overrides: Sequence[str], way: str, env: dict[str, str], parent: Path,
             command: Sequence[str] = (LABBOOK,)) -> dict[str, Any]:
    """One ``labbook train`` in a fresh working folder (a fresh store): its wall and CPU time, its timing marks,
    its stderr, the store's logged models and the training batches (from the run's stored last.ckpt)."""
    cwd = Path(tempfile.mkdtemp(prefix=f"{way}-", dir=parent))
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run([*command, "train", *overrides, "debug=quiet", f"logger.log_model={way}"], check=False,
                              cwd=cwd,
                              env={**env, "LABBOOK_TIMING": "1"}, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        ended = time.monotonic()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            sys.exit(f"labbook train {' '.join(overrides)} logger.log_model={way} failed:\n{done.stderr[-3000:]}")
        if NOT_LOGGED in done.stderr:
            sys.exit(f"labbook train {' '.join(overrides)}: {NOT_LOGGED}:\n{done.stderr[-3000:]}")
        marks = read_marks(done.stderr)
        with sqlite3.connect(cwd / "mlflow.db") as con:
            models = con.execute("SELECT status FROM logged_models").fetchall()
        want = [(2,)] if way == "best" else []  # LoggedModelStatus.READY = 2
        if models != want:
            sys.exit(f"labbook train {' '.join(overrides)} logger.log_model={way}: logged models {models}, "
                     f"expected {want} (statuses; 2 is READY)")
        return {"wall": ended - started, "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                "marks": marks, "stderr": done.stderr, "batches": training_batches(cwd)}
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def training_batches(cwd: Path) -> int | None:
    """The training batches the run took, from its stored ``checkpoints/last.ckpt`` (Lightning's batch
    progress; a GMM's global step stays 0: it steps no optimizer)."""
    found = sorted(cwd.glob("mlartifacts/*/*/artifacts/checkpoints/last.ckpt"))
    if not found:
        return None
    import torch

    state = torch.load(found[0], map_location="cpu", weights_only=False, mmap=True)
    try:
        return int(state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"])
    except (KeyError, TypeError):
        return int(state.get("global_step", 0)) or None


def interval(marks: dict[str, tuple[float, float]], start: str | Sequence[str], end: str) -> tuple[float, float]:
    """(wall, CPU) from the first of ``start`` that is there to ``end``."""
    first = next(m for m in ([start] if isinstance(start, str) else start) if m in marks)
    return marks[end][0] - marks[first][0], marks[end][1] - marks[first][1]


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of one preset's runs each way, and of the paired (best - none, best / none) differences."""
    out: dict[str, Any] = {}
    for way, samples in runs.items():
        logging = [interval(s["marks"], ("tested", "fit-done"), "model-logged") for s in samples]
        training = [interval(s["marks"], "first-step", "last-step")[0] for s in samples]
        batches = samples[0]["batches"]
        out[way] = {"wall": median(s["wall"] for s in samples), "cpu": median(s["cpu"] for s in samples),
                    "log_wall": median(w for w, _ in logging), "log_cpu": median(c for _, c in logging),
                    "log_max": max(w for w, _ in logging),
                    "step_ms": 1000 * median(training) / batches if batches else None, "batches": batches,
                    "training": training}
        if any(s["batches"] != batches for s in samples):
            sys.exit(f"the runs took different numbers of batches: {[s['batches'] for s in samples]}")
    pairs = list(zip(runs["best"], runs["none"]))
    out["d_wall"] = median(b["wall"] - n["wall"] for b, n in pairs)
    out["d_log"] = median(interval(b["marks"], ("tested", "fit-done"), "model-logged")[0]
                          - interval(n["marks"], ("tested", "fit-done"), "model-logged")[0] for b, n in pairs)
    out["d_log_cpu"] = median(interval(b["marks"], ("tested", "fit-done"), "model-logged")[1]
                              - interval(n["marks"], ("tested", "fit-done"), "model-logged")[1] for b, n in pairs)
    out["step_ratio"] = median(b / n for b, n in zip(out["best"]["training"], out["none"]["training"]))
    return out


def breakdown(presets: Sequence[str], env: dict[str, str], parent: Path) -> None:
    print("Where Recorder.log_models' time goes (one run each, log_model=best; wall / CPU in ms; a call "
          "nested in another is in both):")
    results = {}
    for name in presets:
        done = run_once(PRESETS[name], "best", env, parent, command=(sys.executable, "-c", BREAKDOWN_SCRIPT))
        parts: dict[str, tuple[float, float, int]] = {}
        for line in done["stderr"].splitlines():
            if line.startswith("breakdown: "):
                wall, cpu, calls, label = line[len("breakdown: "):].split(" ", 3)
                parts[label] = (float(wall), float(cpu), int(calls))
        results[name] = parts
    labels = list(dict.fromkeys(label for parts in results.values() for label in parts))
    print(f"   {'':<66}" + "".join(f"{n:>22}" for n in presets))
    for label in labels:
        cells = []
        for name in presets:
            wall, cpu, calls = results[name].get(label, (0.0, 0.0, 0))
            cells.append(f"{1000 * wall:7.1f} /{1000 * cpu:6.1f} x{calls:<2}" if calls else f"{'-':>19}")
        print(f"   {label:<66}" + "".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each preset each way; medians are shown")
    parser.add_argument("--presets", nargs="+", default=DEFAULT, choices=[*PRESETS, "all"])
    parser.add_argument("--goal", type=float, default=GOAL_S, help="seconds the model logging may take (0.5)")
    parser.add_argument("--breakdown", action="store_true", help="time the parts of the model logging, once each")
    options = parser.parse_args()
    presets = list(PRESETS) if "all" in options.presets else options.presets

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"{datetime.datetime.now().isoformat(timespec='minutes')}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start", flush=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)  # ./mlflow.db in each run's own folder
    env.pop("HYDRA_FULL_ERROR", None)
    with tempfile.TemporaryDirectory(prefix="labbook-model-logging-") as tmp:
        parent = Path(tmp)
        if options.breakdown:
            breakdown(presets, env, parent)
            print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
            return
        started = time.monotonic()
        run_once(PRESETS[presets[0]], "none", env, parent)  # warm-up: the file cache, byte-compiled files
        runs = {name: {way: [] for way in WAYS} for name in presets}
        for i in range(options.repeat):
            for name in presets:  # best first in even repeats, none first in odd ones
                for way in (WAYS if i % 2 == 0 else WAYS[::-1]):
                    runs[name][way].append(run_once(PRESETS[name], way, env, parent))
            print(f"repeat {i + 1}/{options.repeat} done ({time.monotonic() - started:.0f} s; load average "
                  f"{os.getloadavg()[0]:.2f})", flush=True)

    results = {name: summarise(runs[name]) for name in presets}
    print(f"\nmedians of {options.repeat} runs each way; Δ: the median of the paired differences (best - none of "
          "the same repeat); ratio: the median of the paired ratios")
    print("model logging: from the mark `tested` to `model-logged` (wall, CPU); per step: first step to last "
          "(validation included) / training batches")
    head = (f"{'preset':<18} {'batches':>7} | {'command best':>12} {'none':>7} {'Δ':>6} | "
            f"{'model logging best':>18} {'(CPU)':>7} {'none':>6} {'Δ':>6} {'(Δ CPU)':>8} | "
            f"{'ms/step best':>12} {'none':>7} {'ratio':>6} | goal")
    print(head)
    print("-" * len(head))
    failed = []
    for name in presets:
        r = results[name]
        best, none = r["best"], r["none"]
        ok = best["log_wall"] <= options.goal
        if not ok:
            failed.append(name)

        def ms(x: float | None) -> str:
            return f"{x:.2f}" if x is not None else "n/a"

        print(f"{name:<18} {best['batches'] or 'n/a':>7} | {best['wall']:11.2f}s {none['wall']:6.2f}s "
              f"{r['d_wall']:+5.2f}s | {best['log_wall']:17.3f}s {best['log_cpu']:6.3f}s {none['log_wall']:5.3f}s "
              f"{r['d_log']:+5.3f}s {r['d_log_cpu']:+7.3f}s | {ms(best['step_ms']):>12} {ms(none['step_ms']):>7} "
              f"{r['step_ratio']:6.3f} | {'ok' if ok else 'OVER'}")
    print("\nthe whole command's CPU time, best / none: " + ", ".join(
        f"{n} {results[n]['best']['cpu']:.2f} / {results[n]['none']['cpu']:.2f} s" for n in presets))
    print("the slowest model logging (best): " + ", ".join(f"{n} {results[n]['best']['log_max']:.3f} s" for n in presets))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    worst = max(presets, key=lambda n: results[n]["best"]["log_wall"])
    over = ", ".join(f"{n} ({results[n]['best']['log_wall']:.3f} s)" for n in failed)
    print(f"model logging: the goal of at most {options.goal:g} s is "
          + (f"MISSED by {over}" if failed else
             f"met (the slowest preset, {worst}: {results[worst]['best']['log_wall']:.3f} s)"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

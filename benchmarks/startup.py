"""Start-up: how long the commands that train nothing take, and what a training command costs before its first
step and after its last, beyond importing torch, Lightning, Hydra and MLflow.

In one process run, into a fresh store (the first training runs, which create the store, are not counted):

1. each no-training command (``--help``, ``train --help``, ``train --cfg job``, a bad config, ``compare``,
   ``diff``, ``predict`` with a bad run id, two tab-completion queries): wall time, the median of N runs
   taken in turns (every command once, then again: a change of load hits all of them alike); goal < 1 s;
2. the floor: a fresh interpreter that imports torch, pytorch_lightning, hydra and mlflow (with the
   ``MlflowClient`` labbook uses and the SQL store that MLflow loads for a ``sqlite:///`` store: sqlalchemy,
   alembic) and exits: each import's time and the exit. Like labbook, it takes what the imports left alive
   out of the garbage collector's walks (``gc.freeze``) before it exits: without that, the exit's collections
   over ~650,000 objects take 2-3 s here, which labbook does not pay;
3. ``labbook train`` for tiny runs (``experiment=polynomial trainer.max_epochs=1`` and ``experiment=gmm_iris``,
   both ``debug=quiet``) with ``LABBOOK_TIMING=1``: labbook prints ``labbook-timing: PHASE WALL CPU`` on stderr
   (WALL: :func:`time.monotonic`, the clock this script reads too; CPU: the process's CPU time), so each
   phase from the command's start to training's start (Lightning's ``on_train_start``, before the model's own:
   a GMM's initialisation passes over the data are training, as its EM passes are), and from its last
   training step to the process's exit, is timed; and labbook's own share beyond the imports by subtraction:
   (start-up + shut-down) - the floor;
4. labbook's own share measured directly, which the subtraction of two ~10 s measurements of different
   processes cannot resolve to a second on a shared machine: the same commands in a python that imports
   the four libraries before calling labbook's ``main``, its phases from ``main`` to training's start and
   from the last step to exit, less the floor's exit. Goal: at most 1 s.

The floor and the training runs are measured in turns. Wall times are what a user waits; where other jobs
share the cores they stretch, and CPU seconds (these phases run on one thread) are what the same work
costs on an idle machine. Both are shown; medians of N.

    python benchmarks/startup.py                 # 3 runs of everything
    python benchmarks/startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Sequence

from labbook.timing import read_marks

LABBOOK = str(Path(sys.executable).parent / "labbook")
GOAL_S = 1.0
TRAINING = {"polynomial": ["experiment=polynomial", "trainer.max_epochs=1", "debug=quiet"],
            "gmm_iris": ["experiment=gmm_iris", "debug=quiet"]}
# The marks labbook prints (labbook/timing.py), in order, each with what happens up to it.
PHASES = [
    ("main", "python starts, imports the command table"),
    ("hydra-imported", "imports Hydra, OmegaConf, the train glue"),
    ("composed", "Hydra composes the config (once)"),
    ("validated", "labbook's schema checks"),
    ("store-prepared", "imports MLflow, opens the store"),
    ("reaped", "reaps this host's dead runs"),
    ("train-imported", "imports torch, Lightning, labbook.train.fit"),
    ("built", "seed, datamodule, model, callbacks"),
    ("run-opened", "opens the MLflow run"),
    ("recorded", "records config, git, environment, dataset"),
    ("trainer-built", "constructs the Trainer"),
    ("train-start", "Lightning's fit set-up, to training's start"),
    ("first-step", "(training, not counted: the model's own start"),
    ("last-step", " - a GMM's initialisation passes - and steps)"),
    ("fit-done", "epoch end, validation, checkpoints"),
    ("tested", "test pass"),
    ("artifacts-logged", "artifacts: checkpoints, plots, tags"),
    ("run-closed", "closes the run (metrics flushed, status)"),
    ("main-returned", "prints the summary"),
    ("exit", "interpreter exit"),
]
NAMES = [name for name, _ in PHASES]
LIBRARIES = """
import time
marks = [("python start", time.monotonic(), time.process_time())]
import torch
marks.append(("import torch", time.monotonic(), time.process_time()))
import pytorch_lightning
marks.append(("import pytorch_lightning", time.monotonic(), time.process_time()))
import hydra, omegaconf
marks.append(("import hydra", time.monotonic(), time.process_time()))
import mlflow
from mlflow.tracking import MlflowClient
marks.append(("import mlflow", time.monotonic(), time.process_time()))
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
marks.append(("import mlflow's SQL store (sqlalchemy, alembic)", time.monotonic(), time.process_time()))
"""
FLOOR_SCRIPT = LIBRARIES + """
import gc
gc.freeze()  # as labbook does after its imports (labbook.cli.console.freeze_imports): the exit is the libraries' own
print("|".join(f"{name}={wall:.6f}={cpu:.6f}" for name, wall, cpu in marks), flush=True)
"""
# labbook's own share, measured directly: the libraries are imported before labbook starts.
DIRECT_SCRIPT = LIBRARIES + """
import sys
from labbook.timing import mark
mark("libraries-imported")
from labbook.cli.commands import main
sys.exit(main(sys.argv[1:]))
"""
Timings = dict[str, tuple[float, float]]  # phase -> (wall s, CPU s)


def run(command: Sequence[str], cwd: str, env: dict[str, str]) -> tuple[float, float, float, subprocess.CompletedProcess]:
    """(monotonic start, monotonic end, the CPU seconds the process used, the finished process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return started, ended, cpu, done


def run_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r for (r,) in con.execute("SELECT run_uuid FROM runs ORDER BY start_time")]


def no_training_commands(a: str, b: str) -> list[tuple[str, list[str], dict[str, str], int]]:
    """(name, arguments, extra environment, expected exit code)."""
    def query(line: str) -> tuple[str, list[str], dict[str, str], int]:
        return (f"<TAB> {line}", ["completion", "query", "bash"], {"COMP_LINE": line, "COMP_POINT": str(len(line))}, 0)

    return [
        ("labbook --help", ["--help"], {}, 0),
        ("labbook train --help", ["train", "--help"], {}, 0),
        ("labbook train --cfg job", ["train", "--cfg", "job"], {}, 0),
        ("labbook train model.n_components=0", ["train", "model.n_components=0"], {}, 1),
        ("labbook compare", ["compare"], {}, 0),
        ("labbook diff A B", ["diff", a, b], {}, 0),
        ("labbook predict NOSUCHRUN 1", ["predict", "0" * 32, "1"], {}, 1),
        query("labbook train model=g"),
        query("labbook train model.n_comp"),
    ]


def measure_commands(cwd: str, env: dict[str, str], repeat: int) -> list[tuple[str, float, float]]:
    """(name, median wall, median CPU) of each no-training command."""
    ids = run_ids(Path(cwd) / "mlflow.db")
    commands = no_training_commands(ids[0], ids[-1])
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in commands}
    for _ in range(repeat):
        for name, args, extra, code in commands:
            started, ended, cpu, done = run([LABBOOK, *args], cwd, {**env, **extra})
            if done.returncode != code:
                sys.exit(f"{name}: exit code {done.returncode}, expected {code}:\n{done.stderr[-2000:]}")
            times[name].append((ended - started, cpu))
    return [(name, median(w for w, _ in v), median(c for _, c in v)) for name, v in times.items()]


def measure_floor(cwd: str, env: dict[str, str]) -> Timings:
    """Python's start, each import and the exit (from the last import to the process gone)."""
    started, ended, cpu_total, done = run([sys.executable, "-c", FLOOR_SCRIPT], cwd, env)
    timings, wall_before, cpu_before = {}, started, 0.0
    for item in done.stdout.strip().split("|"):
        name, wall, cpu = item.rsplit("=", 2)
        timings[name] = (float(wall) - wall_before, float(cpu) - cpu_before)
        wall_before, cpu_before = float(wall), float(cpu)
    timings["exit"] = (ended - wall_before, cpu_total - cpu_before)
    return timings


def measure_training(cwd: str, env: dict[str, str], overrides: Sequence[str], direct: bool = False) -> Timings:
    """Each phase's duration, by the name of the mark that ends it, for one run; exits when it failed.
    ``direct``: run in a python that imports the four libraries first (DIRECT_SCRIPT); its first phase is
    then ``libraries-imported``."""
    command = [sys.executable, "-c", DIRECT_SCRIPT] if direct else [LABBOOK]
    names = ["libraries-imported", *NAMES] if direct else NAMES
    started, ended, cpu_total, done = run([*command, "train", *overrides], cwd, {**env, "LABBOOK_TIMING": "1"})
    if done.returncode != 0:
        sys.exit(f"labbook train {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
    marks = read_marks(done.stderr)
    marks["exit"] = (ended, cpu_total)
    missing = [name for name in names if name not in marks]
    if missing:
        sys.exit(f"labbook train {' '.join(overrides)}: no timing mark for {', '.join(missing)}")
    timings, before = {}, (started, 0.0)
    for name in names:
        timings[name] = (marks[name][0] - before[0], marks[name][1] - before[1])
        before = marks[name]
    return timings


def med(samples: list[Timings], pick: str | list[str]) -> tuple[float, float]:
    """Median (wall, CPU) over the samples of one phase, or of the sum of several."""
    names = [pick] if isinstance(pick, str) else pick
    return (median(sum(s[n][0] for n in names) for s in samples), median(sum(s[n][1] for n in names) for s in samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; medians are shown")
    options = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"{datetime.date.today().isoformat()}; load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory() as cwd:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        env.pop("MLFLOW_TRACKING_URI", None)  # ./mlflow.db in the temporary folder
        env.pop("HYDRA_FULL_ERROR", None)
        for overrides in TRAINING.values():  # the store is created, and there are two runs for diff
            measure_training(cwd, env, overrides)

        print(f"\n1. commands that train nothing (median of {options.repeat}; goal < {GOAL_S:g} s wall)")
        print(f"   {'':<40} {'wall':>7} {'CPU':>7}")
        for name, wall, cpu in measure_commands(cwd, env, options.repeat):
            print(f"   {name:<40} {wall:6.2f}s {cpu:6.2f}s  {'ok' if wall < GOAL_S else 'OVER'}")

        floors: list[Timings] = []
        runs: dict[str, list[Timings]] = {name: [] for name in TRAINING}
        directs: dict[str, list[Timings]] = {name: [] for name in TRAINING}
        for _ in range(options.repeat):  # in turns, so that a change of load hits all of them alike
            floors.append(measure_floor(cwd, env))
            for name, overrides in TRAINING.items():
                runs[name].append(measure_training(cwd, env, overrides))
                directs[name].append(measure_training(cwd, env, overrides, direct=True))

        print(f"\n2. the floor: a fresh python imports the libraries and exits (median of {options.repeat})")
        print(f"   {'':<52} {'wall':>7} {'CPU':>7}")
        for name in floors[0]:
            wall, cpu = med(floors, name)
            print(f"   {name:<52} {wall:6.2f}s {cpu:6.2f}s")
        floor = med(floors, list(floors[0]))
        print(f"   {'total':<52} {floor[0]:6.2f}s {floor[1]:6.2f}s")

        names = list(TRAINING)
        print(f"\n3. labbook train: start-up and shut-down (median of {options.repeat} per phase)")
        print(f"   {'what happens':<44} {'up to mark':<17}" + "".join(f"{n + ' wall':>17}{'CPU':>8}" for n in names))

        def row(label: str, mark: str, values: list[tuple[float, float]]) -> None:
            print(f"   {label:<44} {mark:<17}" + "".join(f"{w:16.3f}s{c:7.3f}s" for w, c in values))

        for mark, what in PHASES:
            row(what, mark, [med(runs[n], mark) for n in names])
        before = NAMES[:NAMES.index("train-start") + 1]
        after = NAMES[NAMES.index("last-step") + 1:]
        print("   " + "-" * (61 + 25 * len(names)))
        row("start-up: command to training's start", "", [med(runs[n], before) for n in names])
        row("shut-down: last step to exit", "", [med(runs[n], after) for n in names])
        row("minus the floor (imports and exit)", "", [(-floor[0], -floor[1])] * len(names))
        subtracted = {n: tuple(t - f for t, f in zip(med(runs[n], before + after), floor)) for n in names}
        row("= labbook's own share, by subtraction (*)", "", [subtracted[n] for n in names])
        print("   (*) two ~10 s measurements of different processes: on a shared machine their noise is about a second")

        # Directly: the four libraries imported before labbook's main starts; labbook's phases up to the first
        # step and from the last step to exit, less the libraries' own exit (the floor's).
        print(f"\n4. labbook's own share, measured directly: the same commands in a python that imported the four "
              f"libraries first\n   (median of {options.repeat} per phase)")
        print(f"   {'what happens':<44} {'up to mark':<17}" + "".join(f"{n + ' wall':>17}{'CPU':>8}" for n in names))
        own = before + after
        for mark, what in PHASES:
            row(what if mark != "main" else "imports labbook's command table", mark, [med(directs[n], mark) for n in names])
        floor_exit = med(floors, "exit")
        print("   " + "-" * (61 + 25 * len(names)))
        row("labbook's phases (all but the training)", "", [med(directs[n], own) for n in names])
        row("minus the floor's exit (the libraries' own)", "", [(-floor_exit[0], -floor_exit[1])] * len(names))
        direct = {n: tuple(t - f for t, f in zip(med(directs[n], own), floor_exit)) for n in names}
        row("= labbook's own share beyond the imports", "", [direct[n] for n in names])
        for n in names:
            total = med(runs[n], before + after)
            wall, cpu = direct[n]
            print(f"\n{n}: start-up + shut-down {total[0]:.2f} s wall ({total[1]:.2f} s CPU); labbook's own share "
                  f"beyond the imports = {wall:.2f} s wall, {cpu:.2f} s CPU (by subtraction {subtracted[n][0]:.2f} s, "
                  f"{subtracted[n][1]:.2f} s): the goal of at most {GOAL_S:g} s is {'met' if wall <= GOAL_S else 'missed'} "
                  f"in wall time, {'met' if cpu <= GOAL_S else 'missed'} in CPU time")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()

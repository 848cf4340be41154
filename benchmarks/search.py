"""Optuna search through ``labbook train hparams_search=PRESET``: TPE against random sampling at the same
budget, and what median pruning saves.

Each configuration runs for seeds 0..S-1, each seed one command as a user types it, one at a time, in its own
fresh working directory (so the MLflow store ``mlflow.db`` and the Optuna study ``optuna.db`` start empty):

    labbook train hparams_search=PRESET hydra.sweeper.n_trials=N hydra.sweeper.seed=S
        hydra.sweeper.sampler=random|tpe hydra.sweeper.pruner.type=none|median debug=quiet [PRESET'S OVERRIDES]

    random        random sampler, no pruning
    tpe           TPE sampler, no pruning
    tpe+median    TPE sampler, median pruning (the preset's settings)

Presets (``--preset``):

    gmm_blobs   (default) the known good region is the data's own: 4 blobs, full covariances; 1-10 components x 4
                covariance types to choose from by val/bic. ``model.tol=0 trainer.max_epochs=40``: every
                trial runs 40 EM passes unless pruned, so the epochs saved are the pruner's, not EM's own
                convergence test's.
    polynomial  heavy-ball SGD on the cubic fit, lr x momentum, val/loss after 60 epochs: a narrow good
                region whose curves oscillate early (momentum ~0.85), the hard case for a pruner.

Afterwards it reads the stores, never the command's output: from the study the best value, the COMPLETE /
PRUNED / FAIL counts and the values each trial reported (``trial.intermediate_values``, one per validation);
from the MLflow store each child run's objective history, one entry per epoch trained. Checked for every
command (after the table is printed): each trial reported exactly what labbook promises — the objective as
logged, or its best so far when the objective is the checkpoint's monitor (a trial is judged on its best
checkpoint), NaN for a non-finite value — a COMPLETE trial trained every epoch, a PRUNED one fewer.

The last lines compare the configurations (medians over seeds of the best value; epochs summed over seeds):

    tpe_vs_random: median best OBJECTIVE tpe=X random=Y (tpe/random = R)
    pruning: epochs trained median=E1 none=E0 (-P% fewer), median best OBJECTIVE median=A none=B

Measured figures are in the README ("Hyper-parameter search").

    python benchmarks/search.py                       # gmm_blobs, 20 trials, seeds 0 1 2: 9 commands, ~6 min on 2 cores
    python benchmarks/search.py --preset polynomial
    python benchmarks/search.py --trials 10 --seeds 1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

LABBOOK = str(Path(sys.executable).parent / "labbook")
# preset -> (study: the experiment's name, objective, epochs per trial, objective is the checkpoint monitor,
# overrides given to every command)
PRESETS = {
    "gmm_blobs": ("gmm_blobs", "val/bic", 40, False, ["model.tol=0", "trainer.max_epochs=40"]),
    "polynomial": ("polynomial", "val/loss", 60, True, []),
}
PRESET = "gmm_blobs"  # set from --preset
CONFIGS = {"random": ("random", "none"), "tpe": ("tpe", "none"), "tpe+median": ("tpe", "median")}


@dataclass
class Result:
    config: str
    seed: int
    wall_s: float
    best: float = math.nan
    states: dict[str, int] = field(default_factory=dict)
    epochs: int = 0  # trained: val/loss entries in MLflow
    reported: int = 0  # reported to Optuna
    problems: list[str] = field(default_factory=list)  # failed cross-checks
    stderr: list[str] = field(default_factory=list)  # the command's stderr, less the search's own line


def run_one(config: str, seed: int, trials: int) -> Result:
    sampler, pruner = CONFIGS[config]
    overrides = PRESETS[PRESET][4]
    with tempfile.TemporaryDirectory(prefix="labbook-search-") as tmp:
        command = [LABBOOK, "train", f"hparams_search={PRESET}", *overrides, f"hydra.sweeper.n_trials={trials}",
                   f"hydra.sweeper.seed={seed}", f"hydra.sweeper.sampler={sampler}",
                   f"hydra.sweeper.pruner.type={pruner}", "debug=quiet"]
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}  # the default, made explicit
        started = time.perf_counter()
        done = subprocess.run(command, check=False, cwd=tmp, env=env, capture_output=True, text=True)
        result = Result(config, seed, time.perf_counter() - started)
        if done.returncode != 0:
            sys.exit(f"{config} seed {seed}: the command failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result.stderr = [line for line in done.stderr.splitlines()
                         if line.strip() and not line.startswith("labbook: search: study")]
        read_back(result, Path(tmp), trials)
    return result


def read_back(result: Result, workdir: Path, trials: int) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_name, metric, max_epochs, running_best, _ = PRESETS[PRESET]
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{workdir}/optuna.db")
    result.best = study.best_value
    for trial in study.trials:
        result.states[trial.state.name] = result.states.get(trial.state.name, 0) + 1
    result.reported = sum(len(t.intermediate_values) for t in study.trials)

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = {int(r.data.tags["optuna.trial_number"]): r for r in runs
                if r.data.tags.get("sweep.role") == "child" and "optuna.trial_number" in r.data.tags}
    if sorted(children) != [t.number for t in study.trials]:
        result.problems.append(f"trials {[t.number for t in study.trials]} but child runs for {sorted(children)}")
    if result.states.get("COMPLETE", 0) + result.states.get("PRUNED", 0) != trials:
        result.problems.append(f"{trials} trials asked for, the study counts {result.states}")
    for trial in study.trials:
        run = children.get(trial.number)
        if run is None:
            continue
        history = client.get_metric_history(run.info.run_id, metric)
        result.epochs += len(history)
        # labbook reports, after each validation, the objective — its best so far when it is the checkpoint's
        # monitor (the trial is judged on its best checkpoint) — and NaN for a non-finite value.
        expected, best = [], math.inf
        for m in history:
            if math.isfinite(m.value) and abs(m.value) < sys.float_info.max:
                best = min(best, m.value) if running_best else m.value
                expected.append(best)
            else:
                expected.append(math.nan)
        reported = [trial.intermediate_values[i] for i in sorted(trial.intermediate_values)]
        same = len(reported) == len(expected) and all(
            (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6) for a, b in zip(reported, expected))
        if not same:
            result.problems.append(f"trial {trial.number}: values reported to Optuna {reported[:5]}... are not the "
                                   f"objective's history in MLflow {expected[:5]}...")
        if trial.state.name == "COMPLETE" and len(history) != max_epochs:
            result.problems.append(f"trial {trial.number} COMPLETE after {len(history)} epochs, not {max_epochs}")
        if trial.state.name == "PRUNED" and len(history) >= max_epochs:
            result.problems.append(f"trial {trial.number} PRUNED after all {len(history)} epochs")
        if run.data.tags.get("optuna.state") != trial.state.name:
            result.problems.append(f"trial {trial.number}: study says {trial.state.name}, its run's "
                                   f"optuna.state tag {run.data.tags.get('optuna.state')}")


def change(new: float, old: float) -> str:
    """``-40% fewer`` (or ``+5% more``) from ``old`` to ``new``."""
    percent = 100 * (new / old - 1) if old else math.nan
    return f"{percent:.0f}% fewer" if percent <= 0 else f"+{percent:.0f}% more"


def main() -> None:
    global PRESET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per search (hydra.sweeper.n_trials)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per configuration (hydra.sweeper.seed)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=PRESET, help="the hparams_search preset")
    args = parser.parse_args()
    PRESET = args.preset
    _, metric, max_epochs, _, overrides = PRESETS[PRESET]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    print(f"search: hparams_search={PRESET} {' '.join(overrides)}, {args.trials} trials of {max_epochs} epochs, "
          f"seeds 0..{args.seeds - 1}, one command at a time\n")
    header = f"{'config':<11} {'seed':>4} {'best ' + metric:>14} {'complete':>8} {'pruned':>6} {'failed':>6} " \
             f"{'epochs':>6} {'reported':>8} {'wall_s':>7}"
    print(header)
    results: list[Result] = []
    for config in CONFIGS:
        for seed in range(args.seeds):
            r = run_one(config, seed, args.trials)
            results.append(r)
            print(f"{config:<11} {seed:>4} {r.best:>14.6g} {r.states.get('COMPLETE', 0):>8} "
                  f"{r.states.get('PRUNED', 0):>6} {r.states.get('FAIL', 0):>6} {r.epochs:>6} {r.reported:>8} "
                  f"{r.wall_s:>7.1f}", flush=True)

    print(f"\nper configuration ({args.seeds} seeds; epochs and wall time summed over the seeds)")
    print(f"{'config':<11} {'median best':>12} {'worst best':>11} {'epochs':>7} {'reported':>8} {'pruned':>6} "
          f"{'wall_s':>7}")
    summary: dict[str, dict[str, float]] = {}
    for config in CONFIGS:
        rs = [r for r in results if r.config == config]
        s = summary[config] = {"best": median(r.best for r in rs), "worst": max(r.best for r in rs),
                               "epochs": sum(r.epochs for r in rs), "reported": sum(r.reported for r in rs),
                               "pruned": sum(r.states.get("PRUNED", 0) for r in rs),
                               "wall": sum(r.wall_s for r in rs)}
        print(f"{config:<11} {s['best']:>12.6g} {s['worst']:>11.6g} {s['epochs']:>7.0f} {s['reported']:>8.0f} "
              f"{s['pruned']:>6.0f} {s['wall']:>7.1f}")

    notes = sorted({line for r in results for line in r.stderr})
    if notes:
        print(f"\nthe commands' stderr, besides the search's own line ({len(notes)} distinct lines):")
        for line in notes[:20]:
            print(f"  {line[:200]}")

    tpe, rnd, pruned = summary["tpe"], summary["random"], summary["tpe+median"]
    print(f"\ntpe_vs_random: median best {metric} tpe={tpe['best']:.6g} random={rnd['best']:.6g} "
          f"(tpe/random = {tpe['best'] / rnd['best']:.3g})")
    print(f"pruning: epochs trained median={pruned['epochs']:.0f} none={tpe['epochs']:.0f} "
          f"({change(pruned['epochs'], tpe['epochs'])}), "
          f"median best {metric} median={pruned['best']:.6g} none={tpe['best']:.6g}")
    print(f"pruning: epochs reported to Optuna median={pruned['reported']:.0f} none={tpe['reported']:.0f} "
          f"({change(pruned['reported'], tpe['reported'])})")

    problems = [f"{r.config} seed {r.seed}: {p}" for r in results for p in r.problems]
    print(f"cross-check (Optuna's reported values against MLflow's {metric}, {len(results)} commands): "
          f"{'ok' if not problems else f'{len(problems)} problems'}")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    main()

"""What a sweep costs beyond its jobs' training: N tiny jobs under joblib with W worker processes.

Runs ``labbook train -m experiment=polynomial trainer.max_epochs=E seed=range(N) hydra/launcher=joblib
hydra.launcher.n_jobs=W`` into a fresh store, then reads the store back:

    per-job share of the sweep  = wall time x W / N        (what each job occupied a worker for)
    per-job training            = mean of the children's timing.fit_s + timing.test_s tags
    per-job overhead            = share - training          (Hydra, the run's records, checkpoints, ...)

and checks that joblib reused its workers (the children's ``owner.pid`` tags name W processes at most).
The one-time start of the command and of each worker (imports: ~5 s) is part of the share, spread over
the N jobs, as a user pays it; the steady-state figures leave it out: the time from one job's start to
the next on a warm worker, which is what each further job costs.

    python benchmarks/sweep_overhead.py              # 20 jobs, 2 workers, 3 epochs each
    python benchmarks/sweep_overhead.py --jobs 40 --workers 2 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, median

LABBOOK = str(Path(sys.executable).parent / "labbook")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        command = [LABBOOK, "train", "-m", "experiment=polynomial", f"trainer.max_epochs={args.epochs}",
                   f"seed=range({args.jobs})", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.workers}",
                   "debug=quiet"]
        started, started_at = time.perf_counter(), time.time()
        done = subprocess.run(command, cwd=tmp, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                              capture_output=True, text=True)
        wall, ended_at = time.perf_counter() - started, time.time()
        if done.returncode != 0:
            sys.exit(f"the sweep failed:\n{done.stderr[-3000:]}")
        client = MlflowClient(uri)
        found = client.search_runs([e.experiment_id for e in client.search_experiments()])
        children = [r for r in found if r.data.tags.get("sweep.role") == "child"]
        assert len(children) == args.jobs and all(r.info.status == "FINISHED" for r in children)
        training = [float(r.data.tags["timing.fit_s"]) + float(r.data.tags.get("timing.test_s", 0)) for r in children]
        recorded = [(r.info.end_time - r.info.start_time) / 1000 for r in children]
        workers = {r.data.tags["owner.pid"] for r in children}
        # Steady state: on each worker, the time from one job's start to the next one's, once it is warm.
        gaps = []
        for pid in workers:
            starts = sorted(r.info.start_time for r in children if r.data.tags["owner.pid"] == pid)
            gaps += [(b - a) / 1000 for a, b in zip(starts, starts[1:])]
        first_job = min(r.info.start_time for r in children) / 1000
        last_end = max(r.info.end_time for r in children) / 1000

    share = wall * args.workers / args.jobs
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    print(f"sweep: {args.jobs} jobs of experiment=polynomial ({args.epochs} epochs), joblib, {args.workers} workers "
          f"(worker processes used: {len(workers)})")
    print(f"wall time of the command                 {wall:8.2f} s")
    print(f"per-job share of the sweep (wall*W/N)    {share:8.3f} s")
    print(f"per-job training (fit + test)            {mean(training):8.3f} s")
    print(f"per-job run, open to close               {mean(recorded):8.3f} s")
    print(f"per-job overhead (share - training)      {share - mean(training):8.3f} s")
    print(f"ratio share / training                   {share / mean(training):8.2f}")
    print("steady state, a warm worker (jobs reuse their process):")
    print(f"  per-job cost (median start-to-start)   {median(gaps):8.3f} s")
    print(f"  per-job overhead beyond training       {median(gaps) - mean(training):8.3f} s")
    print(f"one-time: command start to first job     {first_job - started_at:8.2f} s (imports; workers start)")
    print(f"one-time: last job's end to exit         {ended_at - last_end:8.2f} s (summary, plot, shutdown)")


if __name__ == "__main__":
    main()

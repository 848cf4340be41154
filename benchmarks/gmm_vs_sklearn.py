"""Time GaussianMixtureEM against scikit-learn's GaussianMixture, per EM iteration, end to end, and at scale.

``--mode iterations`` (the default): both fit the same data from the same start (weights, means,
precisions) for the same number of EM iterations with convergence checks disabled, each limited to 2
threads, in one process so that machine load affects both alike::

    python benchmarks/gmm_vs_sklearn.py [--n 500000 --d 8 --k 12 --iters 20 --repeats 3]

Prints both times, ``speedup: X.XXx`` per compute dtype and the log-likelihood differences.
On a loaded machine scikit-learn's OpenBLAS can be much slower with 2 threads than with 1;
``--sklearn-threads 1`` gives the conservative ratio.
scikit-learn's ``fit`` also runs one extra E-step after its last iteration (to make
``fit_predict`` consistent); that is part of its fit time and is about 1/(2·iters) of it.

``--mode e2e``: as a user runs both on a file. A CSV of ``--n`` blobs rows (``--cluster-std``; no label column)
is written to disk; then, ``--repeats`` times, side by side: the command
``labbook train datamodule=tabular datamodule.path=FILE model.n_components=K model.covariance_type=T
model.tol=TOL trainer.max_epochs=MAX`` (a fresh store each time; its defaults otherwise: standardised,
70/10/20 split, test pass, checkpoints, report) in its own process, and, in this process, pandas reading the
file and ``GaussianMixture(K, covariance_type=T, tol=TOL, max_iter=MAX).fit`` on all its rows, with
scikit-learn's default initialisation (k-means) and ``random_state=--seed``::

    python benchmarks/gmm_vs_sklearn.py --mode e2e [--n 500000 --d 8 --k 12 --tol 1e-4 --cluster-std 3]

It prints, as medians: the labbook process's wall time and peak memory (its maximum RSS, from GNU time), the
run's duration as MLflow recorded it (start to end: EM passes, the test pass, artifacts) and the reading of
the CSV before it (``timing.build_s``), scikit-learn's fit time; the EM iterations each needed (labbook:
epochs, plus its initialisation's passes); the mean log-likelihoods of both fitted mixtures on the same rows
(the whole file and labbook's test rows), in the file's units.

``--mode scale``: ``labbook train datamodule=blobs`` with ``--d`` features and ``--k`` full components for 5 EM
epochs (``model.tol=0``) on each of ``--sizes`` rows, one process each: wall time, run duration, data
build time and peak memory per size, and the growth of peak memory from one size to the next against the
data's size as float32::

    python benchmarks/gmm_vs_sklearn.py --mode scale [--sizes 100000,1000000,10000000]
"""

from __future__ import annotations

import os

# Thread limits must be set before numpy/torch load their BLAS/OpenMP runtimes. A passive
# OpenMP wait policy stops idle threads spinning at barriers, which on a shared 2-core machine
# otherwise steals the cores from the thread doing the work (it applies to both contenders).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "2"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from labbook.datamodules.tabular import BlobsDataModule  # noqa: E402
from labbook.lightning_modules.gmm import GaussianMixtureEM  # noqa: E402


def _sklearn_fit(X: np.ndarray, start: GaussianMixtureEM, iters: int, threads: int = 2) -> tuple[float, object]:
    from sklearn.mixture import GaussianMixture

    P = start.precisions_cholesky.numpy()
    g = GaussianMixture(
        start.n_components,
        covariance_type=start.covariance_type,
        tol=0,
        max_iter=iters,
        reg_covar=start.hparams.reg_covar,
        weights_init=start.weights.numpy().copy(),
        means_init=start.means.numpy().copy(),
        precisions_init=P @ np.swapaxes(P, -1, -2) if P.ndim == 3 else P**2,
    )
    t0 = time.perf_counter()
    with threadpool_limits(limits=threads):
        g.fit(X)
    return time.perf_counter() - t0, g


def _ours_fit(dm: BlobsDataModule, start: GaussianMixtureEM, iters: int, dtype: str) -> tuple[float, GaussianMixtureEM]:
    model = GaussianMixtureEM(**{**start.hparams, "compute_dtype": dtype})
    model.load_state_dict(start.state_dict())  # already initialised: fit goes straight to EM
    trainer = pl.Trainer(
        max_epochs=iters,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loader = dm.train_dataloader()
    t0 = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    elapsed = time.perf_counter() - t0
    assert int(model.n_iter) == iters, int(model.n_iter)
    return elapsed, model


LABBOOK = str(Path(sys.executable).parent / "labbook")


def run_labbook(args: list[str], workdir: Path) -> dict:
    """``labbook train ARGS`` in its own process and store: wall time, peak RSS, and what its run recorded."""
    from mlflow.tracking import MlflowClient

    workdir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONWARNINGS": "ignore"}
    # Peak memory through GNU time: a child forked from this process (which holds the data and scikit-learn's fit)
    # would report this process's size as its own peak.
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(workdir / "maxrss.txt")] if os.path.exists("/usr/bin/time") else []
    with open(workdir / "stdout.txt", "w") as out, open(workdir / "stderr.txt", "w") as err:
        started = time.perf_counter()
        proc = subprocess.run([*timer, LABBOOK, "train", *args, "debug=quiet"], cwd=workdir, env=env, stdout=out,
                              stderr=err)
        wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"labbook train failed ({proc.returncode}): {(workdir / 'stderr.txt').read_text()[-3000:]}")
    peak_kb = float((workdir / "maxrss.txt").read_text().split()[-1]) if timer else float("nan")
    client = MlflowClient(uri)
    exps = client.search_experiments()
    (run,) = client.search_runs([e.experiment_id for e in exps])
    history = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)]
               for k in ("train/n_iter", "train/init_passes")}
    params = None
    if "parameters.npz" in {a.path for a in client.list_artifacts(run.info.run_id)}:
        with np.load(client.download_artifacts(run.info.run_id, "parameters.npz", str(workdir))) as data:
            params = {k: data[k] for k in data.files}
    return {
        "wall": wall, "peak_mb": peak_kb / 1024, "run": (run.info.end_time - run.info.start_time) / 1000,
        "build": float(run.data.tags.get("timing.build_s", "nan")), "fit": float(run.data.tags.get("timing.fit_s", "nan")),
        "test": float(run.data.tags.get("timing.test_s", "nan")), "metrics": run.data.metrics,
        "em": int(history["train/n_iter"][-1]) if history["train/n_iter"] else 0,
        "epochs": len(history["train/n_iter"]),
        "init_passes": int(history["train/init_passes"][0]) if history["train/init_passes"] else 0, "params": params,
    }


def _mixture(params: dict, covariance_type: str) -> object:
    """A scikit-learn mixture holding labbook's fitted parameters in the data's units (parameters.npz)."""
    from sklearn.mixture import GaussianMixture
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    means = params.get("means_data_units", params["means"])
    covs = params.get("covariances_data_units", params["covariances"])
    ct = "diag" if covariance_type == "spherical" and covs.ndim == 2 else covariance_type
    g = GaussianMixture(len(params["weights"]), covariance_type=ct)
    g.weights_, g.means_, g.covariances_ = params["weights"], means, covs
    g.precisions_cholesky_ = _compute_precision_cholesky(covs, ct)
    return g


def end_to_end(args: argparse.Namespace) -> None:
    import pandas as pd
    from sklearn.mixture import GaussianMixture

    from labbook.datamodules.tabular import make_blobs

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gmm-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    csv = work / "data.csv"
    X, _ = make_blobs(args.n, args.d, args.k, args.cluster_std, args.seed)
    pd.DataFrame(X, columns=[f"x{i}" for i in range(args.d)]).to_csv(csv, index=False, float_format="%.6f")
    print(f"e2e: {csv} ({csv.stat().st_size / 1e6:.1f} MB): {args.n} x {args.d} blobs (cluster_std {args.cluster_std:g}), "
          f"{args.k} {args.covariance_type} components, tol {args.tol:g}, max_iter {args.max_iter}; "
          f"{args.repeats} repeats, medians", flush=True)
    command = ["datamodule=tabular", f"datamodule.path={csv}", f"model.n_components={args.k}",
               f"model.covariance_type={args.covariance_type}", f"model.tol={args.tol}",
               f"trainer.max_epochs={args.max_iter}", *args.extra]
    print("labbook train " + " ".join(command) + " debug=quiet")
    ours, theirs, reads = [], [], []
    g = None
    for rep in range(args.repeats):  # interleaved, so that a slow phase of a shared machine hits both
        ours.append(run_labbook(command, work / f"labbook-{rep}"))
        started = time.perf_counter()
        data = pd.read_csv(csv).to_numpy(dtype=np.float64)
        reads.append(time.perf_counter() - started)
        g = GaussianMixture(args.k, covariance_type=args.covariance_type, tol=args.tol, max_iter=args.max_iter,
                            random_state=args.seed)
        started = time.perf_counter()
        with threadpool_limits(limits=args.sklearn_threads):
            g.fit(data)
        theirs.append(time.perf_counter() - started)
        o = ours[-1]
        print(f"  repeat {rep + 1}: labbook process {o['wall']:.2f} s (peak {o['peak_mb']:.0f} MB; CSV read "
              f"{o['build']:.2f} s, run {o['run']:.2f} s: fit {o['fit']:.2f} s, test {o['test']:.2f} s), "
              f"scikit-learn fit {theirs[-1]:.2f} s (pandas read {reads[-1]:.2f} s)", flush=True)
    assert g is not None
    med = lambda key: statistics.median(o[key] for o in ours)  # noqa: E731
    n = args.n
    n_test = int(round(n * 0.2))
    test_rows = data[np.random.default_rng(0).permutation(n)[n - n_test:]]  # labbook's test split (seed 0)
    mine = _mixture(ours[-1]["params"], args.covariance_type)
    t_sk = statistics.median(theirs)
    print(f"labbook train, whole process: {med('wall'):.2f} s, peak memory {med('peak_mb'):.0f} MB")
    print(f"  the run (MLflow start to end): {med('run'):.2f} s (fit {med('fit'):.2f} s, test {med('test'):.2f} s); "
          f"reading the CSV before it: {med('build'):.2f} s; run + reading: {med('run') + med('build'):.2f} s")
    print(f"  EM iterations: {ours[-1]['em']} (epochs {ours[-1]['epochs']}; initialisation passes "
          f"{ours[-1]['init_passes']}), on the training split ({n - n_test - int(round(n * 0.1))} rows)")
    print(f"scikit-learn GaussianMixture.fit: {t_sk:.2f} s ({args.sklearn_threads} BLAS threads), "
          f"EM iterations {g.n_iter_}, on all {n} rows; pandas read_csv before it {statistics.median(reads):.2f} s")
    paired = lambda f: statistics.median(t / f(o) for t, o in zip(theirs, ours))  # noqa: E731
    print(f"  scikit-learn's fit time over labbook's, median of the {len(ours)} side-by-side repeats: run + CSV reading "
          f"{paired(lambda o: o['run'] + o['build']):.2f}x; run alone {paired(lambda o: o['run']):.2f}x; "
          f"whole process {paired(lambda o: o['wall']):.2f}x")
    for name, rows in (("all rows", data), ("labbook's test rows", test_rows)):
        a, b = mine.score(rows), g.score(rows)
        print(f"  mean log-likelihood on {name} ({len(rows)}): labbook {a:.5f}, scikit-learn {b:.5f} "
              f"(labbook − scikit-learn {a - b:+.5f})")
    print(f"  labbook's recorded test/log_likelihood {ours[-1]['metrics']['test/log_likelihood']:.5f} "
          f"(the same, read from its store)")


def scale(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gmm-scale-"))
    print(f"scale: blobs, {args.d} features, {args.k} full components, 5 EM epochs (model.tol=0), one process per size")
    print(f"{'rows':>10} {'float32 MB':>10} {'process s':>9} {'run s':>7} {'build s':>7} {'init':>4} "
          f"{'peak MB':>8} {'growth MB':>9} {'growth/data':>11}")
    previous = None
    for size in [int(v) for v in args.sizes.split(",")]:
        o = run_labbook(["datamodule=blobs", f"datamodule.n_samples={size}", f"datamodule.n_features={args.d}",
                         f"datamodule.n_centers={args.k}", f"model.n_components={args.k}", "model.tol=0",
                         "trainer.max_epochs=5", *args.extra], work / f"rows-{size}")
        data_mb = size * args.d * 4 / 2**20
        growth = o["peak_mb"] - previous if previous is not None else float("nan")
        print(f"{size:>10} {data_mb:>10.1f} {o['wall']:>9.2f} {o['run']:>7.2f} {o['build']:>7.2f} {o['init_passes']:>4} "
              f"{o['peak_mb']:>8.0f} {growth:>9.0f} {growth / data_mb:>11.2f}", flush=True)
        previous = o["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("iterations", "e2e", "scale"), default="iterations")
    parser.add_argument("--n", type=int, default=500_000, help="samples")
    parser.add_argument("--d", type=int, default=8, help="features")
    parser.add_argument("--k", type=int, default=12, help="components")
    parser.add_argument("--iters", type=int, default=20, help="EM iterations for both")
    parser.add_argument("--covariance-type", default="full")
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--dtypes", default="float64,float32", help="compute dtypes of ours to time")
    parser.add_argument("--repeats", type=int, default=3, help="timings per contender; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sklearn-threads", type=int, default=2,
        help="BLAS threads for scikit-learn; on a loaded machine 1 can be faster than 2, so try both",
    )
    parser.add_argument("--tol", type=float, default=1e-4, help="e2e: both models' tol")
    parser.add_argument("--max-iter", type=int, default=1000, help="e2e: scikit-learn's max_iter, labbook's max_epochs")
    parser.add_argument("--cluster-std", type=float, default=3.0, help="e2e: the blobs' spread (3: overlapping)")
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="scale: rows per run")
    parser.add_argument("--workdir", default=None, help="e2e/scale: where the CSV and the stores go (a temporary dir)")
    parser.add_argument("--extra", nargs="*", default=[], help="e2e/scale: more overrides for labbook train")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    if args.mode == "e2e":
        return end_to_end(args)
    if args.mode == "scale":
        return scale(args)

    dm = BlobsDataModule(
        n_samples=args.n, n_features=args.d, n_centers=args.k, cluster_std=1.0, seed=args.seed,
        batch_size=args.batch_size, val_fraction=0.0, test_fraction=0.0,
    )
    dm.setup("fit")
    x = dm.split("train")[0]
    X = x.double().numpy()  # the very float32 values our model sees, widened for scikit-learn

    start = GaussianMixtureEM(
        n_features=args.d, n_components=args.k, covariance_type=args.covariance_type, tol=0.0, seed=args.seed,
        init="kmeans++", n_init=1,  # the start the README's per-iteration figures were measured from
    )
    t0 = time.perf_counter()
    start.initialize_from(dm.train_dataloader())  # k-means++ means, data covariance, equal weights
    print(f"data: {args.n} x {args.d}, {args.k} components ({args.covariance_type}), {args.iters} iterations, "
          f"batch {args.batch_size}; shared init took {time.perf_counter() - t0:.2f}s (not timed below)")

    dtypes = [d for d in args.dtypes.split(",") if d]
    sk_times: list[float] = []
    ours_times: dict[str, list[float]] = {d: [] for d in dtypes}
    ours_models: dict[str, GaussianMixtureEM] = {}
    # One untimed 1-iteration fit each, so one-off costs (thread pools, Lightning's first Trainer)
    # are not billed to whoever happens to run first.
    for d in dtypes:
        _ours_fit(dm, start, 1, d)
    _sklearn_fit(X, start, 1, args.sklearn_threads)
    g = None
    for rep in range(args.repeats):
        # Interleaved so that slow phases of a loaded machine hit both contenders.
        for d in dtypes:
            elapsed, ours_models[d] = _ours_fit(dm, start, args.iters, d)
            ours_times[d].append(elapsed)
            print(f"  repeat {rep + 1}: ours[{d}] {elapsed:.2f}s", flush=True)
        elapsed, g = _sklearn_fit(X, start, args.iters, args.sklearn_threads)
        sk_times.append(elapsed)
        print(f"  repeat {rep + 1}: sklearn {elapsed:.2f}s", flush=True)

    assert g is not None
    t_sk = statistics.median(sk_times)
    sk_score = g.score(X)
    print(f"sklearn GaussianMixture ({args.sklearn_threads} BLAS threads): {t_sk:.2f}s  "
          f"(mean log-likelihood {sk_score:.10f})")
    for d in dtypes:
        model = ours_models[d]
        t = statistics.median(ours_times[d])
        score = model.score(x)
        lb = model.last_metrics["train/log_likelihood"]
        print(f"ours [{d}]: {t:.2f}s  (mean log-likelihood {score:.10f})")
        print(f"  speedup: {t_sk / t:.2f}x")
        print(f"  log-likelihood difference (ours - sklearn): final {score - sk_score:+.3e}, "
              f"last E-step {lb - g.lower_bound_:+.3e}")
        print(f"  max |means diff| {np.abs(model.means.numpy() - g.means_).max():.2e}, "
              f"max |covariances diff| {np.abs(model.covariances.numpy() - g.covariances_).max():.2e}")


if __name__ == "__main__":
    main()

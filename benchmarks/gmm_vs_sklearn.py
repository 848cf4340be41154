"""Time GaussianMixtureEM (through a real Lightning fit) against scikit-learn's GaussianMixture.

Both fit the same data from the same start (weights, means, precisions) for the same number
of EM iterations with convergence checks disabled, each limited to 2 threads, in one process
so that machine load affects both alike::

    python benchmarks/gmm_vs_sklearn.py [--n 500000 --d 8 --k 12 --iters 20 --repeats 3]

Prints both times, ``speedup: X.XXx`` per compute dtype and the log-likelihood differences.
On a loaded machine scikit-learn's OpenBLAS can be much slower with 2 threads than with 1;
``--sklearn-threads 1`` gives the conservative ratio.
scikit-learn's ``fit`` also runs one extra E-step after its last iteration (to make
``fit_predict`` consistent); that is part of its fit time and is about 1/(2·iters) of it.
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
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from datamodules.tabular import BlobsDataModule  # noqa: E402
from lightning_modules.gmm import GaussianMixtureEM  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)

    dm = BlobsDataModule(
        n_samples=args.n, n_features=args.d, n_centers=args.k, cluster_std=1.0, seed=args.seed,
        batch_size=args.batch_size, val_fraction=0.0, test_fraction=0.0,
    )
    dm.setup("fit")
    x = dm.split("train")[0]
    X = x.double().numpy()  # the very float32 values our model sees, widened for scikit-learn

    start = GaussianMixtureEM(
        n_features=args.d, n_components=args.k, covariance_type=args.covariance_type, tol=0.0, seed=args.seed
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

"""How many starts, and how much EM on a sample, does choosing a GMM's start take? The measurement behind
``GaussianMixtureEM``'s ``n_init``, ``init_iter`` and its screening rounds (docs/models.md, "Initialisation").

Per data set (``make_overlapping``, standardised as the CSV datamodule does, its 70 % training split, which is the
whole seeding sample at these sizes):

1. ``--pool`` k-means++ starts drawn as the model draws them: seeds from the screening rows (every j-th training
   row, ``_SCREEN_ROWS_PER_PARAMETER`` per free parameter), equal weights, the data covariance;
2. every start's EM on the screening rows for ``--iters`` iterations: the log-likelihood of those rows after each
   iteration, which is all the screening sees;
3. every start's EM on the whole training split until no start gains 1e-5 a row: where it ends. A start
   *reaches* when it ends within 0.01 nats a row of the best end among the pool.

Then, for each (S starts, init_iter), ``--trials`` random draws of S starts from the pool are screened as the model
screens them (all for ⌈init_iter/4⌉ iterations, the best ⌈S/3⌉ on to ⌈init_iter/2⌉, the best ⌈S/12⌉ on to
init_iter, the best of those chosen; ``init_iter=0``: the best starting likelihood), and the table gives how often
the chosen start reaches, over all data sets and in the worst one, and the screening's cost in start-iterations on
the screening rows. Both EMs run as the screening does (float32 arithmetic, float64 sums)::

    python benchmarks/gmm_screening.py [--sets "60000,8,12,2,1;…"] [--pool 192] [--trials 500]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import labbook.lightning_modules.gmm as gmm  # noqa: E402
from labbook.datamodules.tabular import make_overlapping  # noqa: E402
from labbook.lightning_modules.gmm import GaussianMixtureEM  # noqa: E402

SETS = ("60000,8,12,2,1;60000,6,10,2,4;60000,8,12,2,2;60000,4,16,1.5,6;60000,8,16,2,10;60000,12,12,2,12;"
        "60000,8,20,2.5,9;60000,8,12,1.5,1;60000,10,8,2,5;80000,16,8,2,8;60000,5,12,2.5,11")
SCHEDULES = "12:0,12:40,24:40,48:0,48:20,48:40,48:60,64:40,96:40"


def em_history(model: GaussianMixtureEM, X: torch.Tensor, starts: list, iterations: int, tol: float | None = None
               ) -> np.ndarray:
    """[iterations + 1, S] mean log-likelihoods of X along every start's EM (stopping early once none gains tol)."""
    W, MU, COV = (torch.stack([p[i] for p in starts]) for i in range(3))
    U, _ = model._precision_cholesky(COV, model.covariance_type)
    shift = X.mean(0)
    ll, moments = model._screen_e_step(X, W, MU, U, shift, torch.float32)
    history = [ll]
    for _ in range(iterations):
        W, MU, new_cov = model._m_step_params(moments, shift, MU, COV)
        new_U, ok = model._precision_cholesky(new_cov, model.covariance_type)
        kept = (~ok).reshape(ok.shape + (1,) * (new_cov.dim() - ok.dim()))
        COV, U = torch.where(kept, COV, new_cov), torch.where(kept, U, new_U)
        ll, moments = model._screen_e_step(X, W, MU, U, shift, torch.float32)
        history.append(ll)
        if tol is not None and bool(((history[-1] - history[-2]) < tol).all()):
            break
    return torch.stack(history).numpy()


def screened(history: np.ndarray, chosen: np.ndarray, S: int, init_iter: int) -> int:
    """The start the model's screening picks among ``chosen`` from their screening histories."""
    rounds = [(0, 1)] if init_iter == 0 else [
        (math.ceil(init_iter * t), max(1, math.ceil(S * n))) for t, n in gmm._SCREEN_ROUNDS]
    alive = chosen
    for until, keep in rounds:
        row = history[min(until, len(history) - 1)]
        alive = alive[np.argsort(-row[alive], kind="stable")][:keep]
    return int(alive[0])


def cost(S: int, init_iter: int) -> int:
    if init_iter == 0:
        return 0
    total, done, alive = 0, 0, S
    for t, n in gmm._SCREEN_ROUNDS:
        until = math.ceil(init_iter * t)
        total += alive * (until - done)
        done, alive = until, max(1, math.ceil(S * n))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=SETS, help="'N,D,K,SEPARATION,DATA_SEED;…' (make_overlapping)")
    parser.add_argument("--pool", type=int, default=192, help="starts drawn per data set")
    parser.add_argument("--iters", type=int, default=60, help="EM iterations on the screening rows")
    parser.add_argument("--trials", type=int, default=500, help="draws of S starts per data set and schedule")
    parser.add_argument("--schedules", default=SCHEDULES, help="'S:INIT_ITER,…'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    schedules = [tuple(int(v) for v in s.split(":")) for s in args.schedules.split(",")]
    results: dict[tuple[int, int], list[float]] = {s: [] for s in schedules}
    for spec in args.sets.split(";"):
        n, d, k, separation, data_seed = spec.split(",")
        n, d, k, data_seed = int(n), int(d), int(k), int(data_seed)
        X, _ = make_overlapping(n, d, k, float(separation), data_seed)
        n_train = n - int(round(n * 0.2)) - int(round(n * 0.1))
        X = X[np.random.default_rng(0).permutation(n)[:n_train]]  # the CSV datamodule's training split
        Z = torch.from_numpy(((X - X.mean(0)) / X.std(0)).astype(np.float32)).double()
        model = GaussianMixtureEM(n_features=d, n_components=k)
        model.initialize_from([(Z[:2000].float(),)])  # only for the helpers; the starts are made below
        m = min(n_train, max(gmm._SCREEN_MIN_ROWS, gmm._SCREEN_ROWS_PER_PARAMETER * model.n_parameters()))
        rows = Z[torch.arange(m) * n_train // m]
        Zc = Z - Z.mean(0)
        cov = (Zc.T @ Zc / n_train + model.hparams.reg_covar * torch.eye(d, dtype=torch.float64)).expand(k, d, d)
        generator = torch.Generator().manual_seed(data_seed)
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        starts = [(weights, GaussianMixtureEM.kmeans_plusplus(rows, k, generator), cov) for _ in range(args.pool)]
        started = time.perf_counter()
        history = em_history(model, rows, starts, args.iters)
        ends = em_history(model, Z, starts, 1000, tol=1e-5)[-1]
        reach = ends >= ends.max() - 0.01
        print(f"{n:,} x {d}, K={k}, separation {separation} (data seed {data_seed}): {len(rows):,} screening rows of "
              f"{n_train:,}; {reach.sum()}/{args.pool} starts reach the best end ({time.perf_counter() - started:.0f} s)",
              flush=True)
        for S, init_iter in schedules:
            picks = [screened(history, np.sort(rng.choice(args.pool, S, replace=False)), S, init_iter)
                     for _ in range(args.trials)]
            results[(S, init_iter)].append(float(reach[picks].mean()))
    print(f"\n| n_init | init_iter | chosen start reaches (all {len(results[schedules[0]])} data sets) | worst data set "
          f"| start-iterations on the screening rows |")
    print("|---|---|---|---|---|")
    for (S, init_iter), found in results.items():
        print(f"| {S} | {init_iter} | {np.mean(found):.3f} | {min(found):.2f} | {cost(S, init_iter)} |")


if __name__ == "__main__":
    main()

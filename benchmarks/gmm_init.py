"""Which initialisation reaches scikit-learn's log-likelihood in the fewest passes over the data?

For each data set (``blobs``, standardised as the CSV datamodule does by default) and seed, scikit-learn's
``GaussianMixture(n, covariance_type, tol, max_iter)`` with its default init (k-means, ``n_init=1``) is fitted
on the training rows in their own units, and labbook's ``GaussianMixtureEM`` is fitted through a Lightning
``Trainer`` on the same rows (standardised, as float32) with every ``init``/``n_init`` pair asked for::

    python benchmarks/gmm_init.py [--n 500000 --d 8 --k 12 --stds 1,2,3 --seeds 0,1,2 --tol 1e-4]

Counted passes over the training rows:

- labbook: ``init_passes`` (the pass collecting the seeding sample, then the Lloyd passes of ``kmeans``; the
  choice among ``n_init`` starts is made on that sample) plus the EM epochs (E-steps) until ``tol`` stopped it;
- scikit-learn: its k-means++ seeding (K passes: one distance pass per centre), its Lloyd iterations
  (``KMeans.n_iter_``, the same KMeans it runs inside), the M-step from the k-means labels, its EM
  iterations (``n_iter_``) and the final E-step ``fit`` adds.

Log-likelihoods: the mean log-likelihood of the training rows in their own units, ``score`` of each fitted
mixture (labbook reports in the data's units: see ``feature_std``). ``Δ`` is labbook − scikit-learn;
"reached" counts the fits with Δ ≥ −1e-3 (a millinat per row short at most, the scale of what ``tol`` leaves).
A config ``init:n_init:L`` also sets the most Lloyd passes to L (the default is ``_KMEANS_MAX_ITER``).
Data sets differ in ``cluster_std`` (1: separated blobs; 3: overlapping ones, where local optima differ).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "2"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from labbook.datamodules.tabular import BlobsDataModule  # noqa: E402
from labbook.lightning_modules.gmm import GaussianMixtureEM  # noqa: E402

REACHED = -1e-3


def fit_sklearn(X: np.ndarray, k: int, ct: str, tol: float, seed: int) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    g = GaussianMixture(k, covariance_type=ct, tol=tol, max_iter=10_000, random_state=seed).fit(X)
    # The KMeans GaussianMixture ran inside (same random state): how many Lloyd passes it made.
    lloyd = KMeans(k, n_init=1, random_state=np.random.RandomState(seed)).fit(X).n_iter_
    return {"passes": k + lloyd + 1 + g.n_iter_ + 1, "lloyd": lloyd, "em": g.n_iter_, "score": g.score(X)}


def fit_ours(dm: BlobsDataModule, k: int, ct: str, tol: float, seed: int, init: str, n_init: int,
             lloyd: int | None = None) -> dict:
    import labbook.lightning_modules.gmm as gmm

    default, gmm._KMEANS_MAX_ITER = gmm._KMEANS_MAX_ITER, lloyd or gmm._KMEANS_MAX_ITER
    try:
        return _fit_ours(dm, k, ct, tol, seed, init, n_init)
    finally:
        gmm._KMEANS_MAX_ITER = default


def _fit_ours(dm: BlobsDataModule, k: int, ct: str, tol: float, seed: int, init: str, n_init: int) -> dict:
    model = GaussianMixtureEM(n_components=k, covariance_type=ct, tol=tol, init=init, n_init=n_init, seed=seed,
                              **dm.dims)
    trainer = pl.Trainer(max_epochs=10_000, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    epochs = trainer.current_epoch
    x = dm.split("train")[0]
    return {"passes": model.init_passes + epochs, "init": model.init_passes, "em": epochs, "score": model.score(x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--covariance-type", default="full")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--stds", default="1,2,3", help="blobs' cluster_std values (3 overlaps most)")
    parser.add_argument("--seeds", default="0,1,2", help="data and model seeds")
    parser.add_argument("--cache", default=None,
                        help="a JSON file keeping scikit-learn's results (deterministic for a data set and seed) "
                             "between runs; they take most of the time")
    parser.add_argument("--configs", default="kmeans++:1,kmeans++:3,random:1,kmeans:1,kmeans:2,kmeans:3,kmeans:5",
                        help="init:n_init[:most Lloyd passes] of labbook to fit")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    configs = [c.split(":") for c in args.configs.split(",")]
    rows: dict[str, list[dict]] = {":".join(c): [] for c in configs}
    sk_rows: list[dict] = []
    cache = json.loads(open(args.cache).read()) if args.cache and os.path.exists(args.cache) else {}
    print(f"{args.n} x {args.d} blobs, {args.k} {args.covariance_type} components, tol {args.tol:g}; "
          f"passes (labbook: init + EM epochs; scikit-learn: k-means++ + Lloyd + 1 + EM + 1), "
          f"mean log-likelihood of the training rows, Δ = labbook − scikit-learn")
    for std in [float(s) for s in args.stds.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            dm = BlobsDataModule(n_samples=args.n, n_features=args.d, n_centers=args.k, cluster_std=std, seed=seed,
                                 standardize=True, batch_size=8192)
            dm.setup("fit")
            z = dm.split("train")[0].double()
            X = (dm.mean + dm.std * z).numpy()  # the training rows in their own units (as the model sees them)
            key = f"{args.n},{args.d},{args.k},{args.covariance_type},{args.tol:g},{std:g},{seed}"
            sk = cache.get(key) or fit_sklearn(X, args.k, args.covariance_type, args.tol, seed)
            if args.cache:
                cache[key] = sk
                with open(args.cache, "w") as fh:
                    json.dump(cache, fh, indent=1)
            sk_rows.append(sk)
            print(f"std {std:g} seed {seed}: scikit-learn {sk['passes']} passes (Lloyd {sk['lloyd']}, EM {sk['em']}), "
                  f"score {sk['score']:.5f}", flush=True)
            for config in configs:
                init, n_init, lloyd = config[0], int(config[1]), int(config[2]) if len(config) > 2 else None
                ours = fit_ours(dm, args.k, args.covariance_type, args.tol, seed, init, n_init, lloyd)
                ours["delta"] = ours["score"] - sk["score"]
                rows[":".join(config)].append(ours)
                print(f"  {':'.join(config):>12}: {ours['passes']:3d} passes (init {ours['init']}, EM {ours['em']}), "
                      f"Δ {ours['delta']:+.5f}", flush=True)
    print("\nsummary over all data sets and seeds")
    print(f"  scikit-learn: median {statistics.median(r['passes'] for r in sk_rows)} passes "
          f"(total {sum(r['passes'] for r in sk_rows)})")
    for name, found in rows.items():
        reached = sum(r["delta"] >= REACHED for r in found)
        print(f"  {name:>12}: median {statistics.median(r['passes'] for r in found)} passes "
              f"(total {sum(r['passes'] for r in found)}), reached scikit-learn's log-likelihood in {reached}/{len(found)}, "
              f"median Δ {statistics.median(r['delta'] for r in found):+.5f}, worst {min(r['delta'] for r in found):+.5f}")


if __name__ == "__main__":
    main()

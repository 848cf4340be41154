"""Fit GaussianMixtureEM on blobs with N CPU processes and save rank 0's result (used by test_gmm).

Run as ``python tests/gmm_ddp_fit.py --devices 2 --out result.npz``; Lightning's ``ddp``
strategy re-launches this script for the other ranks, which is why it is a script and not a
test function.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytorch_lightning as pl

from labbook.datamodules.tabular import BlobsDataModule
from labbook.lightning_modules.gmm import GaussianMixtureEM

# Shared with test_gmm so the in-process single-device fit sees the same problem.
DATA = dict(n_samples=3000, n_features=3, n_centers=4, batch_size=256, seed=3, cluster_std=2.5)
# init="kmeans" with n_init: Lloyd sums and the choice of start are all-reduced; every rank must take the same start.
MODEL = dict(n_components=4, covariance_type="full", tol=0.0, seed=5, init="kmeans", n_init=3)
EPOCHS = 5


def fit(devices: int) -> tuple[GaussianMixtureEM, pl.Trainer, BlobsDataModule]:
    dm = BlobsDataModule(**DATA)
    dm.setup("fit")
    model = GaussianMixtureEM(**MODEL, **dm.dims)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    return model, trainer, dm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    model, trainer, _ = fit(args.devices)
    if trainer.global_rank == 0:
        metrics = {k.replace("/", "__"): np.float64(v) for k, v in model.last_metrics.items()}
        params = model.parameters_dict()
        np.savez(args.out, **params, n_iter=int(model.n_iter), init_passes=model.init_passes,
                 world_size=trainer.world_size, **metrics)


if __name__ == "__main__":
    main()

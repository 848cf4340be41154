"""Quality benchmark for datamodule=dates: both models to >= 99.9% test exact-match, on CPU, in minutes.

For each model it trains with a plain ``pl.Trainer`` (CPU, no logger, no checkpoints) at the models'
default settings, printing per-epoch wall time and validation exact-match, then the test exact-match on
  - the generated data (split="random": 45,000 train (10% of it validation), 5,000 test), and
  - the book's own file with the book's split (train on its 45,000, test on its 5,000; the book has
    no validation set, so its per-epoch line is measured on the book's test set, as the book does).
and prints a summary table.

    python benchmarks/dates_quality.py                     # both models, both data sets
    python benchmarks/dates_quality.py --models seq2seq --data generated --epochs 2

Torch runs on 1 thread unless --threads says otherwise: with other jobs on the 2 cores, torch's default
of 2 OpenMP threads made the same transformer epoch 5x slower (264 s against 53 s).

Measured on 2 shared cores (1 thread, load average 2-3 from other jobs), seed 0, one epoch each:
    seq2seq      generated  81 s  test exact-match 100.00%   book split 102 s  99.98% (1 of 5,000 wrong)
    transformer  generated  53 s  test exact-match 100.00%   book split  58 s  100.00%
(the book: 0% after epoch 1, 51.7% after 2, 99.9% after 3). Seed 1: 100% in all four.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from labbook.datamodules.dates import DatesDataModule
from labbook.lightning_modules.seq2seq import AttentionSeq2Seq
from labbook.lightning_modules.transformer import Transformer

BOOK_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "dlfs2" / "date.txt"
MODELS = {"seq2seq": AttentionSeq2Seq, "transformer": Transformer}

# Trainer settings the presets seq2seq_dates / transformer_dates should use (model settings are the
# constructor defaults).
PRESETS = {
    "seq2seq": {"max_epochs": 1, "batch_size": 64, "gradient_clip_val": 5.0},
    "transformer": {"max_epochs": 1, "batch_size": 128, "gradient_clip_val": 1.0},
}


class EpochTimer(pl.Callback):
    """Prints wall time and validation exact-match after each training epoch (validation included)."""

    def __init__(self, tag: str) -> None:
        self.tag, self.rows, self._t0 = tag, [], 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dt = time.perf_counter() - self._t0
        em = float(trainer.callback_metrics.get("val/exact_match", float("nan")))
        loss = float(trainer.callback_metrics.get("train/loss_epoch", float("nan")))
        self.rows.append((trainer.current_epoch + 1, dt, em))
        print(f"  [{self.tag}] epoch {trainer.current_epoch + 1}: {dt:6.1f} s  train/loss {loss:.4f}  "
              f"val/exact_match {em:.4%}", flush=True)


def _parse(value: str) -> object:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def run(model_name: str, data: str, args: argparse.Namespace) -> dict[str, object]:
    preset = PRESETS[model_name]
    epochs = args.epochs or preset["max_epochs"]
    batch_size = args.batch_size or preset["batch_size"]
    pl.seed_everything(args.seed, workers=True, verbose=False)
    if data == "book":
        dm = DatesDataModule(path=str(BOOK_FILE), split="book", val_fraction=0.0, batch_size=batch_size,
                             seed=args.seed)
    else:
        dm = DatesDataModule(batch_size=batch_size, seed=args.seed)
    dm.setup("fit")
    kwargs = {}
    if args.lr is not None:
        opt_cls = torch.optim.Adam if model_name == "seq2seq" else torch.optim.AdamW
        kwargs["optimizer"] = functools.partial(opt_cls, lr=args.lr)
    for kv in args.set:
        key, value = kv.split("=", 1)
        kwargs[key] = _parse(value)
    model = MODELS[model_name](**dm.dims, **kwargs)
    timer = EpochTimer(f"{model_name}/{data}")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         gradient_clip_val=preset["gradient_clip_val"], num_sanity_val_steps=0,
                         callbacks=[timer], deterministic=False)
    val_loader = dm.test_dataloader() if data == "book" else dm.val_dataloader()
    t0 = time.perf_counter()
    trainer.fit(model, train_dataloaders=dm.train_dataloader(), val_dataloaders=val_loader)
    fit_time = time.perf_counter() - t0
    test = trainer.test(model, dataloaders=dm.test_dataloader(), verbose=False)[0]
    if args.plots:
        out_dir = Path(args.plots)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, fig in model.report().items():
            fig.savefig(out_dir / f"{model_name}_{data}_{name}.png", dpi=80)
    n_test = len(dm.test_idx)
    em = test["test/exact_match"]
    print(f"  [{model_name}/{data}] fit {fit_time:.1f} s, test/exact_match {em:.4%} "
          f"({round((1 - em) * n_test)} wrong of {n_test}), test/token_accuracy {test['test/token_accuracy']:.4%}",
          flush=True)
    return {"model": model_name, "data": data, "epochs": epochs, "batch": batch_size, "fit_s": fit_time,
            "val_em": [r[2] for r in timer.rows], "epoch_s": [r[1] for r in timer.rows], "test_em": em,
            "wrong": round((1 - em) * n_test), "n_test": n_test}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--data", nargs="+", default=["generated", "book"], choices=["generated", "book"])
    p.add_argument("--epochs", type=int, default=None, help="override the preset max_epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset batch size")
    p.add_argument("--lr", type=float, default=None, help="override the default peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override model constructor arguments, e.g. --set hidden_size=128 dropout=0")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with other jobs on the cores, 2 spinning OpenMP threads "
                        "ran 20x slower than 1; 0 = torch's choice)")
    p.add_argument("--plots", default=None, metavar="DIR", help="save the models' attention heatmaps here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "book" in args.data and not BOOK_FILE.is_file():
        print(f"book file {BOOK_FILE} not found: skipping the book split")
        args.data = [d for d in args.data if d != "book"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, load average {load:.2f} at start", flush=True)
    results = [run(m, d, args) for m in args.models for d in args.data]
    print("\n| model | data | epochs | batch | fit wall time | val exact-match per epoch | test exact-match |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        per_epoch = ", ".join(f"{v:.2%} ({t:.0f} s)" for v, t in zip(r["val_em"], r["epoch_s"]))
        print(f"| {r['model']} | {r['data']} | {r['epochs']} | {r['batch']} | {r['fit_s']:.0f} s | {per_epoch} | "
              f"{r['test_em']:.2%} ({r['wrong']}/{r['n_test']} wrong) |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} at end (other jobs on the machine inflate wall times)")


if __name__ == "__main__":
    main()

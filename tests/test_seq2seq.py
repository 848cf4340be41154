"""AttentionSeq2Seq: shapes, attention masking, greedy decoding, metrics, report, tiny overfit."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from labbook.datamodules.dates import DatesDataModule
from labbook.lightning_modules.seq2seq import AttentionSeq2Seq
from tests.conftest import python_script


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Other jobs share the 2 cores; several spinning OpenMP threads then run far slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dm() -> DatesDataModule:
    dm = DatesDataModule(n_samples=400, n_test=64, val_fraction=0.1, batch_size=32, seed=0)
    dm.setup("fit")
    return dm


def small_model(dm: DatesDataModule, **kw: object) -> AttentionSeq2Seq:
    torch.manual_seed(0)
    return AttentionSeq2Seq(**{**dm.dims, "wordvec_size": 16, "hidden_size": 64, **kw})


def quiet_trainer(**kw: object) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def test_shapes(dm: DatesDataModule) -> None:
    model = small_model(dm)
    src, tgt = next(iter(dm.train_dataloader()))
    hs, (h, c), mask = model.encode(src)
    assert hs.shape == (32, 29, 64) and h.shape == c.shape == (1, 32, 64) and mask.shape == (32, 29)
    assert model(src, tgt).shape == (32, 10, dm.dims["vocab_size"])
    assert model.attention_weights.shape == (32, 10, 29)
    out = model.generate(src)
    assert out.shape == (32, 10) and out.dtype == torch.long


def test_attention_gives_padding_zero_weight(dm: DatesDataModule) -> None:
    model = small_model(dm)
    src, tgt = next(iter(dm.train_dataloader()))
    model(src, tgt)
    a = model.attention_weights
    pad = src == dm.dims["pad_id"]
    assert pad.any()
    assert torch.all(a.masked_select(pad[:, None, :].expand_as(a)) == 0)
    assert torch.allclose(a.sum(-1), torch.ones(32, 10))


def test_padding_amount_does_not_change_anything(dm: DatesDataModule) -> None:
    # Packing stops the encoder at the last real character: hs at real positions and the handed-over
    # state do not depend on how long the padding is.
    model = small_model(dm)
    src, tgt = next(iter(dm.train_dataloader()))
    short = src[:, :27]
    assert (src[:, 27:] == dm.dims["pad_id"]).all()
    hs_full, (h_full, _), _ = model.encode(src)
    hs_short, (h_short, _), _ = model.encode(short)
    assert torch.allclose(hs_full[:, :27], hs_short, atol=1e-6) and torch.allclose(h_full, h_short, atol=1e-6)
    assert torch.allclose(model(src, tgt), model(short, tgt), atol=1e-5)


def test_greedy_generate_is_stepwise_argmax(dm: DatesDataModule) -> None:
    model = small_model(dm).eval()
    src, _ = next(iter(dm.train_dataloader()))
    out = model.generate(src)
    # Teacher-forcing the model's own output replays the same steps: each argmax must be that output.
    with torch.no_grad():
        assert torch.equal(model(src, out).argmax(-1), out)
    # and by hand, one step at a time
    hs, state, mask = model.encode(src)
    y = torch.full((32, 1), dm.dims["start_id"])
    for t in range(10):
        logits, state, _ = model.decode(y, hs, state, mask)
        y = logits.argmax(-1)
        assert torch.equal(y[:, 0], out[:, t])


def test_parse_predict_format_round_trip(dm: DatesDataModule) -> None:
    model = small_model(dm)
    model.train()
    x = dm.parse_inputs(["Aug 19, 2003", "TUESDAY, SEPTEMBER 25, 1984", "2/10/93"])
    y = model.predict(x)
    assert y.shape == (3, 10) and y.dtype == torch.long and model.training  # mode restored
    out = dm.format_outputs(y)
    assert len(out) == 3 and all(isinstance(s, str) and len(s) <= 10 for s in out)


def test_metrics_and_report(dm: DatesDataModule) -> None:
    model = small_model(dm, n_report=2)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=2,
                            limit_predict_batches=1)
    trainer.fit(model, dm)
    assert {"train/loss_step", "train/loss_epoch", "val/exact_match"} <= set(trainer.callback_metrics)
    val = trainer.validate(model, dm, verbose=False)[0]
    assert {"val/loss", "val/token_accuracy", "val/exact_match"} <= set(val)
    test = trainer.test(model, dm, verbose=False)[0]
    assert {"test/loss", "test/token_accuracy", "test/exact_match"} <= set(test)
    assert 0.0 <= test["test/exact_match"] <= test["test/token_accuracy"] <= 1.0
    preds = trainer.predict(model, dm.test_dataloader())
    assert preds[0].shape == (32, 10) and preds[0].dtype == torch.long
    figures = model.report()
    assert sorted(figures) == ["attention_0", "attention_1"]
    import matplotlib.figure
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figures.values())
    assert (model.monitor, model.monitor_mode, model.headline_metric) == \
        ("val/exact_match", "max", "test/exact_match")


def test_tiny_overfit(dm: DatesDataModule) -> None:
    src, tgt = dm._src[:32], dm._tgt[:32]
    loader = DataLoader(TensorDataset(src, tgt), batch_size=32)
    model = small_model(dm, optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    quiet_trainer(max_steps=250, gradient_clip_val=5.0).fit(model, loader)
    assert (model.predict(src) == tgt).all(1).float().mean().item() == 1.0


def test_checkpoint_loads_with_weights_only(dm: DatesDataModule, tmp_path: Path) -> None:
    # Hydra hands dims over as OmegaConf containers and the optimizer as a partial: neither may reach
    # the checkpoint, which labbook loads with torch.load(weights_only=True).
    dims = {**dm.dims, "itos": OmegaConf.create(dm.dims["itos"])}
    model = small_model(dm, **dims, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert "optimizer" not in ckpt["hyper_parameters"] and type(ckpt["hyper_parameters"]["itos"]) is list
    loaded = AttentionSeq2Seq.load_from_checkpoint(tmp_path / "m.ckpt")
    x = dm.parse_inputs(["Aug 19, 2003"])
    assert torch.equal(loaded.predict(x), model.predict(x))


# ---- exact_match and token_accuracy against a hand computation, in one process and over uneven DDP shards
N_TEST = 37  # odd: 2 processes get 19 and 18 questions; Lightning's default sampler would score one twice


def scored_dates(tmp_path: Path) -> tuple[DatesDataModule, AttentionSeq2Seq, float, float]:
    """A datamodule whose test answers are the model's own greedy output with ``i % 4`` of row i's ten
    characters changed: the true exact match and token accuracy follow by hand, whatever the weights."""
    dm = DatesDataModule(n_samples=400, n_test=N_TEST, val_fraction=0.1, batch_size=8, seed=0)
    dm.setup("fit")
    model = small_model(dm)
    idx = torch.as_tensor(dm.test_idx)
    tgt = model.predict(dm._src[idx])
    wrong = torch.arange(N_TEST) % 4
    for i, k in enumerate(wrong.tolist()):
        tgt[i, :k] = (tgt[i, :k] + 1) % dm.dims["vocab_size"]
    dm._tgt[idx] = tgt
    torch.save({"weights": model.state_dict(), "tgt": tgt}, tmp_path / "scored.pt")
    exact = (wrong == 0).sum().item() / N_TEST  # 10 of 37
    token = 1 - wrong.sum().item() / (10 * N_TEST)
    return dm, model, exact, token


def test_exact_match_and_token_accuracy_by_hand(tmp_path: Path) -> None:
    dm, model, exact, token = scored_dates(tmp_path)
    metrics = quiet_trainer().test(model, dm, verbose=False)[0]
    assert metrics["test/exact_match"] == pytest.approx(exact, rel=1e-6)
    assert metrics["test/token_accuracy"] == pytest.approx(token, rel=1e-6)


DDP_SCORE = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import pytorch_lightning as pl, torch
from labbook.datamodules.dates import DatesDataModule
from labbook.lightning_modules.seq2seq import AttentionSeq2Seq

out = sys.argv[1]
saved = torch.load(out + "/scored.pt")
dm = DatesDataModule(n_samples=400, n_test=%d, val_fraction=0.1, batch_size=8, seed=0)
dm.setup("fit")
dm._tgt[torch.as_tensor(dm.test_idx)] = saved["tgt"]
model = AttentionSeq2Seq(**{**dm.dims, "wordvec_size": 16, "hidden_size": 64})
model.load_state_dict(saved["weights"])
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)
metrics = trainer.test(model, dm, verbose=False)[0]
if trainer.global_rank == 0:
    json.dump(metrics, open(out + "/metrics.json", "w"))
""" % N_TEST


def test_exact_match_and_token_accuracy_over_uneven_ddp_shards(tmp_path: Path) -> None:
    _, _, exact, token = scored_dates(tmp_path)
    script = tmp_path / "ddp_score.py"
    script.write_text(DDP_SCORE)
    proc = python_script(script, str(tmp_path), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/exact_match"] == pytest.approx(exact, rel=1e-6)
    assert metrics["test/token_accuracy"] == pytest.approx(token, rel=1e-6)

"""Transformer: shapes, masks (padding, causal), explicit vs SDPA attention, decoding, overfit; DDP gradients."""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from labbook.datamodules.dates import DatesDataModule
from labbook.lightning_modules.transformer import MultiHeadAttention, Transformer, sinusoidal_encoding
from tests.conftest import python_script

REPO = Path(__file__).resolve().parents[1]


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


def small_model(dm: DatesDataModule, **kw: object) -> Transformer:
    torch.manual_seed(0)
    return Transformer(**{**dm.dims, "d_model": 32, "n_heads": 4, "d_ff": 64, "dropout": 0.0, **kw})


def quiet_trainer(**kw: object) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def batch(dm: DatesDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(dm.train_dataloader()))


def test_positional_encoding() -> None:
    pe = sinusoidal_encoding(29, 8)
    assert pe.shape == (29, 8)
    assert torch.allclose(pe[0], torch.tensor([0.0, 1.0] * 4))
    assert torch.isclose(pe[3, 2], torch.sin(torch.tensor(3 / 10000 ** (2 / 8))))


def test_shapes(dm: DatesDataModule) -> None:
    model = small_model(dm)
    src, tgt = batch(dm)
    memory, mask = model.encode(src)
    assert memory.shape == (32, 29, 32) and mask.shape == (32, 29)
    assert model(src, tgt).shape == (32, 10, dm.dims["vocab_size"])
    out = model.generate(src)
    assert out.shape == (32, 10) and out.dtype == torch.long
    weights = model.cross_attention_weights(src, out)
    assert len(weights) == 2 and weights[0].shape == (32, 4, 10, 29)


def _attention_rounding(mha: MultiHeadAttention, x_q: torch.Tensor, x_kv: torch.Tensor,
                        key_mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """A bound, per output element, on how far two float32 computations of ``mha``'s attention (SDPA's and the
    explicit softmax(q kᵀ/√d) v) can be apart: they share the projections q, k, v, so each differs from exact
    attention on those only by its own rounding. To first order in u = 2⁻²⁴, per head, query i and allowed key j:
    the score, a d-term dot product and a scaling, is within σ_j = γ_{d+2} Σ|q||k_j|/√d; the softmax weight w_j
    then within a relative ρ_j = σ_j + Σ_l w_l σ_l (the shift of log Σ e^s) + u|s_j − max| + (2c + n + 4) u (exps
    within c u, c = 2 × 20 ulps; a sum of n ≤ S terms; a division; an online softmax's rescaling by another exp and
    products); o = Σ_j w_j v_j within Σ_j w_j ρ_j |v_j| + γ_n Σ_j w_j |v_j|. Both computations' errors add, and
    the output projection passes them through |W_o| and adds its own rounding, γ_{D+1} (|W_o||o| + |b|), twice."""
    u, c = 2.0**-24, 2 * 20

    def gamma(n: torch.Tensor | int) -> torch.Tensor | float:
        return n * u / (1 - n * u)

    with torch.no_grad():
        B, T, D = x_q.shape
        S, h, d = x_kv.shape[1], mha.n_heads, mha.d_k
        q, k, v = (proj(x).double().view(B, -1, h, d).transpose(1, 2)
                   for proj, x in ((mha.w_q, x_q), (mha.w_k, x_kv), (mha.w_v, x_kv)))
        allowed = torch.ones(B, 1, T, S, dtype=torch.bool)
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(T, S, dtype=torch.bool).tril()
        n = allowed.sum(-1, keepdim=True)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(~allowed, -math.inf)
        w = scores.softmax(-1)
        sigma = gamma(d + 2) * (q.abs() @ k.abs().transpose(-2, -1)) / math.sqrt(d)
        shift = (scores - scores.amax(-1, keepdim=True)).abs()
        rho = sigma + (w * sigma).sum(-1, keepdim=True) + u * shift.nan_to_num(posinf=0.0) + (2 * c + n + 4) * u
        rho = rho.masked_fill(~allowed, 0.0)
        one = (w * rho) @ v.abs() + gamma(n) * (w @ v.abs())  # (B, h, T, d): one computation's o
        heads = lambda t: t.transpose(1, 2).reshape(B, T, h * d)
        W, b = mha.w_o.weight.double().abs(), mha.w_o.bias.double().abs()
        return 2 * heads(one) @ W.T + 2 * gamma(D + 1) * (heads(w @ v).abs() @ W.T + b)


def test_explicit_attention_equals_sdpa() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.0)
    x_q, x_kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    key_mask = torch.ones(3, 7, dtype=torch.bool)
    key_mask[0, 4:] = False
    for kv, km, causal in ((x_kv, key_mask, False), (x_q, None, True)):
        fast = mha(x_q, kv, key_mask=km, causal=causal)
        slow = mha(x_q, kv, key_mask=km, causal=causal, need_weights=True)
        # Two float32 algorithms for the same attention: equal to their rounding, bounded from the inputs.
        delta, bound = (fast - slow).abs().double(), _attention_rounding(mha, x_q, kv, km, causal)
        assert bool((delta <= bound).all()), (delta.max(), (delta / bound).max())
    assert torch.all(mha.weights.triu(1) == 0)  # the last call was causal


def test_padding_keys_get_zero_attention(dm: DatesDataModule) -> None:
    model = small_model(dm).eval()
    src, _ = batch(dm)
    out = model.generate(src)
    pad = src == dm.dims["pad_id"]
    assert pad.any()
    for w in model.cross_attention_weights(src, out):
        assert torch.all(w.masked_select(pad[:, None, None, :].expand_as(w)) == 0)
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]))


def test_changing_padded_source_positions_changes_nothing(dm: DatesDataModule) -> None:
    model = small_model(dm).eval()
    src, tgt = batch(dm)
    mask = src != dm.dims["pad_id"]
    # Perturb what sits at padded positions — the embedded input, then the encoder memory — and check
    # that no real position nor any decoder output notices.
    x = model._embed(src)
    x_noisy = torch.where(mask[..., None], x, torch.randn_like(x) * 10)
    for layer in model.encoder_layers:
        x, x_noisy = layer(x, mask), layer(x_noisy, mask)
    assert torch.allclose(x[mask], x_noisy[mask], atol=1e-5)
    memory, _ = model.encode(src)
    noisy_memory = torch.where(mask[..., None], memory, torch.randn_like(memory) * 10)
    tgt_in = torch.cat([torch.full_like(tgt[:, :1], dm.dims["start_id"]), tgt[:, :-1]], dim=1)
    assert torch.allclose(model.decode(tgt_in, memory, mask), model.decode(tgt_in, noisy_memory, mask), atol=1e-5)
    # and shortening the padding leaves the outputs as they were
    assert torch.allclose(model(src, tgt), model(src[:, :27], tgt), atol=1e-5)


def test_decoder_is_causal(dm: DatesDataModule) -> None:
    model = small_model(dm).eval()
    src, tgt = batch(dm)
    logits = model(src, tgt)
    t = 6  # tgt[:, 6] is the decoder input at position 7: outputs 0..6 must not see it
    changed = tgt.clone()
    changed[:, t] = (changed[:, t] + 1) % dm.dims["vocab_size"]
    logits_changed = model(src, changed)
    assert torch.allclose(logits[:, : t + 1], logits_changed[:, : t + 1], atol=1e-6)
    assert not torch.allclose(logits[:, t + 1:], logits_changed[:, t + 1:], atol=1e-3)


def test_greedy_generate_is_stepwise_argmax(dm: DatesDataModule) -> None:
    model = small_model(dm).eval()
    src, _ = batch(dm)
    out = model.generate(src)
    with torch.no_grad():
        assert torch.equal(model(src, out).argmax(-1), out)


def test_parse_predict_format_round_trip(dm: DatesDataModule) -> None:
    model = small_model(dm, dropout=0.1)
    x = dm.parse_inputs(["Aug 19, 2003", "TUESDAY, SEPTEMBER 25, 1984", "2/10/93"])
    y = model.predict(x)
    assert y.shape == (3, 10) and y.dtype == torch.long and model.training  # mode restored
    assert torch.equal(y, model.predict(x))  # eval mode: dropout off, deterministic
    out = dm.format_outputs(y)
    assert len(out) == 3 and all(isinstance(s, str) and len(s) <= 10 for s in out)


def test_metrics_and_report(dm: DatesDataModule) -> None:
    model = small_model(dm, n_report=3)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=2,
                            limit_predict_batches=1)
    trainer.fit(model, dm)
    assert {"train/loss_step", "train/loss_epoch", "val/exact_match"} <= set(trainer.callback_metrics)
    test = trainer.test(model, dm, verbose=False)[0]
    assert {"test/loss", "test/token_accuracy", "test/exact_match"} <= set(test)
    preds = trainer.predict(model, dm.test_dataloader())
    assert preds[0].shape == (32, 10) and preds[0].dtype == torch.long
    figures = model.report()
    assert sorted(figures) == ["attention_0", "attention_1", "attention_2"]
    assert len(figures["attention_0"].axes) == 2  # one panel per decoder layer
    assert (model.monitor, model.monitor_mode, model.headline_metric) == \
        ("val/exact_match", "max", "test/exact_match")


def test_tiny_overfit(dm: DatesDataModule) -> None:
    src, tgt = dm._src[:32], dm._tgt[:32]
    loader = DataLoader(TensorDataset(src, tgt), batch_size=32)
    model = small_model(dm, d_model=64, d_ff=128, optimizer=functools.partial(torch.optim.AdamW, lr=3e-3))
    quiet_trainer(max_steps=200, gradient_clip_val=1.0).fit(model, loader)
    assert (model.predict(src) == tgt).all(1).float().mean().item() == 1.0


# ---- DDP: 2 processes with batch B/2 each must take the same step as 1 process with batch B --------
DDP_SCRIPT = textwrap.dedent('''
    import functools, sys
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from labbook.datamodules.dates import DatesDataModule
    from labbook.lightning_modules.seq2seq import AttentionSeq2Seq
    from labbook.lightning_modules.transformer import Transformer

    def build(name, dims):
        torch.manual_seed(0)
        sgd = functools.partial(torch.optim.SGD, lr=0.5)
        if name == "seq2seq":
            return AttentionSeq2Seq(**dims, wordvec_size=8, hidden_size=16, optimizer=sgd, one_cycle=False)
        return Transformer(**dims, d_model=16, n_heads=2, d_ff=32, dropout=0.0, optimizer=sgd, one_cycle=False)

    class DestroyGroup(pl.Callback):
        # A spawned rank that exits with its gloo group still up can die of SIGABRT ("terminate called
        # without an active exception") when the other rank tore its group down first.
        def teardown(self, trainer, pl_module, stage):
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
                torch.distributed.destroy_process_group()

    def step(model, loader, devices):
        trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                             max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, callbacks=[DestroyGroup()])
        trainer.fit(model, loader)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    if __name__ == "__main__":
        torch.set_num_threads(1)
        dm = DatesDataModule(n_samples=100, n_test=10, seed=0)
        dm.setup("fit")
        B = 16
        data = TensorDataset(dm._src[:B], dm._tgt[:B])
        for name in ("seq2seq", "transformer"):
            start = build(name, dm.dims).state_dict()
            one = step(build(name, dm.dims), DataLoader(data, batch_size=B), 1)
            two = step(build(name, dm.dims), DataLoader(data, batch_size=B // 2), 2)
            moved = max((one[k] - start[k]).abs().max().item() for k in one)
            diff = max((one[k] - two[k]).abs().max().item() for k in one)
            print(f"{name}: moved {moved:.3g}, max |1 proc - 2 procs| {diff:.3g}", flush=True)
            assert moved > 1e-4, "the optimizer step did not change the weights"
            assert diff < 1e-6, f"{name}: DDP step differs from the single-process step by {diff}"
        print("OK")
''')


def test_ddp_step_matches_single_process(tmp_path: Path) -> None:
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    proc = python_script(script, cwd=REPO, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


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
    loaded = Transformer.load_from_checkpoint(tmp_path / "m.ckpt")
    x = dm.parse_inputs(["Aug 19, 2003"])
    assert torch.equal(loaded.predict(x), model.predict(x))

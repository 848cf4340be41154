"""Encoder-decoder Transformer (Vaswani et al. 2017, "Attention Is All You Need"), written out.

    x = Embed(src) · sqrt(d_model) + PE                    (B, S, d_model)
    encoder layer:  x = x + MHA(LN(x), LN(x))              key-padding mask on source keys
                    x = x + FFN(LN(x))
    y = Embed([start, tgt[:-1]]) · sqrt(d_model) + PE      (B, T, d_model)
    decoder layer:  y = y + MHA(LN(y), LN(y))              causal mask: position t sees only ≤ t
                    y = y + MHA(LN(y), memory)             cross-attention, key-padding mask
                    y = y + FFN(LN(y))
    logits = LN(y) · Embedᵀ                                (B, T, V)

Pre-LN (LayerNorm before each sublayer, one final LN per stack; Xiong et al. 2020): it trains stably
at a high learning rate without warm-up tricks, which is what makes a few-minute CPU run possible.
Attention is ``softmax(QKᵀ/sqrt(d_k) + mask) V`` through ``F.scaled_dot_product_attention``; the
explicit form is computed only when weights are asked for (``need_weights``, for plots).
Source and target share one character vocabulary, so they share one embedding, tied to the output
layer (paper §3.4).
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .char_seq2seq import CharSeq2SeqTask


def sinusoidal_encoding(n_positions: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...). -> (n_positions, d_model)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)
    return pe


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.d_k, self.dropout = n_heads, d_model // n_heads, dropout
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        self.weights: torch.Tensor | None = None  # (B, h, T, S), only after a need_weights call

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, key_mask: torch.Tensor | None = None,
                causal: bool = False, need_weights: bool = False) -> torch.Tensor:
        """x_q (B, T, d), x_kv (B, S, d), key_mask (B, S) True = real token -> (B, T, d)."""
        B, T, _ = x_q.shape
        S = x_kv.shape[1]
        q = self.w_q(x_q).view(B, T, self.n_heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)
        k = self.w_k(x_kv).view(B, S, self.n_heads, self.d_k).transpose(1, 2)  # (B, h, S, d_k)
        v = self.w_v(x_kv).view(B, S, self.n_heads, self.d_k).transpose(1, 2)
        mask = None  # boolean, True = may attend; broadcast to (B, h, T, S)
        if key_mask is not None:
            mask = key_mask[:, None, None, :]
        if causal:
            tri = torch.ones(T, S, dtype=torch.bool, device=x_q.device).tril()
            mask = tri if mask is None else mask & tri
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, h, T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            a = scores.softmax(dim=-1)
            self.weights = a.detach()
            out = F.dropout(a, self.dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.w_o(out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_k))


class FeedForward(nn.Module):
    """Position-wise FFN(x) = W2 · ReLU(W1 x + b1) + b2."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.dropout(self.self_attn(h, h, key_mask=src_mask))
        return x + self.dropout(self.ffn(self.ln_2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ln_3 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                need_weights: bool = False) -> torch.Tensor:
        h = self.ln_1(y)
        y = y + self.dropout(self.self_attn(h, h, causal=True))
        y = y + self.dropout(self.cross_attn(self.ln_2(y), memory, key_mask=src_mask, need_weights=need_weights))
        return y + self.dropout(self.ffn(self.ln_3(y)))


class Transformer(CharSeq2SeqTask):
    default_optimizer = functools.partial(torch.optim.AdamW, lr=3e-3)

    def __init__(
        self,
        vocab_size: int,
        pad_id: int,
        start_id: int,
        src_len: int = 29,
        tgt_len: int = 10,
        d_model: Annotated[int, ">= 1"] = 64,
        n_heads: Annotated[int, ">= 1"] = 4,
        n_encoder_layers: Annotated[int, ">= 1"] = 2,
        n_decoder_layers: Annotated[int, ">= 1"] = 2,
        d_ff: Annotated[int, ">= 1"] = 256,
        dropout: Annotated[float, ">= 0", "< 1"] = 0.0,  # each question is seen once: nothing to regularise against
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        one_cycle: bool = True,  # the optimizer's lr is the peak of a one-cycle schedule over the whole run
        itos: list[str] | None = None,
        src_reversed: bool = False,
        n_report: Annotated[int, ">= 0"] = 3,
    ) -> None:
        """``optimizer``: partial of a torch optimizer (default AdamW, lr 3e-3); with ``one_cycle`` its lr
        is the peak of a OneCycle schedule over the whole run. ``itos``/``src_reversed`` only label plots.

        The defaults reach >= 99.9% test exact-match in one epoch of 45,000 generated questions (batch 128,
        grad clip 1) in a few CPU minutes. Dropout is off: every question is seen once, nothing to overfit."""
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads!r} is not allowed: must divide d_model={d_model}")
        super().__init__(optimizer)
        # Plain types only in hparams (no optimizer partial, no OmegaConf ListConfig from Hydra), so
        # checkpoints load under torch.load(weights_only=True).
        itos = [str(c) for c in itos] if itos is not None else None
        self.save_hyperparameters(ignore=["optimizer"])
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)  # × sqrt(d_model) then gives unit scale
        self.register_buffer("pe", sinusoidal_encoding(max(src_len, tgt_len), d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.encoder_layers = nn.ModuleList(
            [EncoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(n_encoder_layers)])
        self.encoder_ln = nn.LayerNorm(d_model)
        self.decoder_layers = nn.ModuleList(
            [DecoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(n_decoder_layers)])
        self.decoder_ln = nn.LayerNorm(d_model)

    # ---- model ---------------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> (B, L, d_model)."""
        x = self.embed(ids) * math.sqrt(self.hparams.d_model) + self.pe[: ids.shape[1]]
        return self.dropout(x)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> memory (B, S, d_model), src_mask (B, S) True = real character."""
        src_mask = src != self.hparams.pad_id
        x = self._embed(src)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_ln(x), src_mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               need_weights: bool = False) -> torch.Tensor:
        """tgt_in (B, T) starting with the start symbol -> logits (B, T, V)."""
        y = self._embed(tgt_in)
        for layer in self.decoder_layers:
            y = layer(y, memory, src_mask, need_weights=need_weights)
        return self.decoder_ln(y) @ self.embed.weight.T

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. src (B, S), tgt (B, T) answer ids -> logits (B, T, V) predicting tgt."""
        memory, src_mask = self.encode(src)
        tgt_in = torch.cat([torch.full_like(tgt[:, :1], self.hparams.start_id), tgt[:, :-1]], dim=1)
        return self.decode(tgt_in, memory, src_mask)

    @torch.no_grad()
    def generate(self, src: torch.Tensor) -> torch.Tensor:
        """Greedy decoding. src (B, S) -> (B, tgt_len) LongTensor."""
        memory, src_mask = self.encode(src)
        y = torch.full((src.shape[0], 1), self.hparams.start_id, dtype=torch.long, device=src.device)
        for _ in range(self.hparams.tgt_len):
            # No KV cache: 10 steps over ≤ 10 positions cost little, and the code stays the math.
            next_id = self.decode(y, memory, src_mask)[:, -1].argmax(-1, keepdim=True)
            y = torch.cat([y, next_id], dim=1)
        return y[:, 1:]

    @torch.no_grad()
    def cross_attention_weights(self, src: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor]:
        """Cross-attention while producing ``out`` (B, T) from src (B, S): per layer (B, h, T, S).

        Re-running the decoder on [start, out[:-1]] gives the same weights as greedy decoding did,
        because the causal mask keeps every position blind to the later ones."""
        memory, src_mask = self.encode(src)
        tgt_in = torch.cat([torch.full_like(out[:, :1], self.hparams.start_id), out[:, :-1]], dim=1)
        self.decode(tgt_in, memory, src_mask, need_weights=True)
        return [layer.cross_attn.weights for layer in self.decoder_layers]

    # ---- report --------------------------------------------------------------------------------
    def report(self) -> dict[str, object]:
        """Per test example, one figure with one cross-attention heatmap per decoder layer (heads averaged)."""
        if self._report_src is None:
            return {}
        from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it was

        was_training = self.training
        self.eval()
        src = self._report_src.to(self.device)
        out = self.generate(src)
        weights = [w.mean(1).cpu() for w in self.cross_attention_weights(src, out)]  # (B, T, S) per layer
        self.train(was_training)
        out = out.cpu()
        itos = [c if c != " " else "␣" for c in self.hparams.itos or map(str, range(self.hparams.vocab_size))]
        figures: dict[str, object] = {}
        for k in range(src.shape[0]):
            ids = [i for i in src[k].tolist() if i != self.hparams.pad_id]
            n_layers = len(weights)
            fig = Figure(figsize=(n_layers * max(4.0, 0.3 * len(ids) + 1.0), 4.0))
            axes = fig.subplots(1, n_layers, squeeze=False)
            for layer, ax in enumerate(axes[0]):
                a = weights[layer][k, :, : len(ids)].numpy()  # padding is right of the real characters
                x_ids = ids
                if self.hparams.src_reversed:  # show the question in reading order
                    x_ids, a = ids[::-1], a[:, ::-1]
                ax.imshow(a, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto")
                ax.set_xticks(range(len(x_ids)), [itos[i] for i in x_ids])
                ax.set_yticks(range(a.shape[0]), [itos[i] for i in out[k].tolist()])
                ax.set_xlabel("input")
                ax.set_ylabel("output")
                ax.set_title(f"decoder layer {layer + 1} cross-attention (heads averaged)")
            fig.tight_layout()
            figures[f"attention_{k}"] = fig
        return figures

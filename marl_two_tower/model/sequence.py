"""Causal self-attention sequence encoder (SASRec; Kang & McAuley, ICDM 2018).

Input: the embeddings ``x [B, L, d]`` of a user's most recent items, right-aligned
(padding on the left, ``valid [B, L]``; see :mod:`marl_two_tower.data.sequences`).

    h^0 = dropout(sqrt(d) * x_t + P[k(t)])    (P: learned positions, k(t) = index of
                                               slot t among the row's items, from 0)
    for each of the n_blocks blocks:
        q   = LN(h)
        h   = q + MHA(q, h, h; causal mask)                    (n_heads heads)
        h   = LN(h)
        h   = h + FFN(h),  FFN = Linear-ReLU-Dropout-Linear-Dropout (width d, or ffn_dim)
        h   = h * valid
    out = LN(h)                                                [B, L, d]

The layout is SASRec's own (its TF code and the PyTorch port by Huang, the basis of
the CE-loss SASRec of Klenitskiy & Vasilev 2023): pre-LN queries whose normalised
value is the residual, a point-wise FFN of width d, dropout on the embeddings, the
attention weights and the FFN. Positions count from the first item of the window (as
in the current PyTorch port; SASRec's TF code counted slots of the left-padded array,
i.e. from the end): then the output at t depends on the items up to t and nothing
else, not on how many items follow or how much padding there is, so a training prefix
is encoded exactly as the same history at inference, and a batch trimmed to its
longest row gives the same outputs.

Mask: position t attends to positions s <= t that hold an item (and always to
itself, so a padding row has a defined output; padding outputs are zeroed). Hence
``out[:, t]`` depends on ``x[:, :t+1]`` only: the prediction for position t + 1 never
sees a later item. The user vector is ``out[:, -1]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# nn.Dropout's distribution, its CPU mask cheaper to draw (model/dropout.py)
from marl_two_tower.model.dropout import Dropout


class CausalSelfAttention(nn.Module):
    """Multi-head attention, queries from ``q``, keys/values from ``h``, boolean mask."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if n_heads < 1 or dim % n_heads:
            raise ValueError(f"model.n_heads: {n_heads} must divide the dimension {dim}")
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``q [B, Q, d]``, ``h [B, L, d]``, ``mask [B, 1, Q, L]`` (True = may attend) ->
        ``[B, Q, d]`` (Q = L, or fewer queries: the last ones, :meth:`SASRecEncoder.last`)."""
        b, n, d = q.shape
        heads = self.n_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)

        k, v = self.kv(h).chunk(2, dim=-1)
        a = F.scaled_dot_product_attention(
            split(self.q(q)), split(k), split(v), attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(a.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """One SASRec block: attention + point-wise feed-forward, each with layer norm."""

    def __init__(self, dim: int, n_heads: int, dropout: float, attn_dropout: float,
                 ffn_dim: int | None = None) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim, eps=1e-8)
        self.attn = CausalSelfAttention(dim, n_heads, attn_dropout)
        self.ln_ffn = nn.LayerNorm(dim, eps=1e-8)
        width = ffn_dim or dim
        self.ffn = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), Dropout(dropout),
                                 nn.Linear(width, dim), Dropout(dropout))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        """``[B, L, d]`` -> ``[B, L, d]``, or with ``last_only`` the last slot's output
        ``[B, 1, d]`` only: its query still attends to every key of ``h``, and every other
        op of the block is per position, so it equals ``forward(h, ...)[:, -1:]``."""
        if last_only:
            q = self.ln_attn(h[:, -1:])
            h = q + self.attn(q, h, mask[:, :, -1:])
            h = self.ln_ffn(h)
            return (h + self.ffn(h)) * keep[:, -1:]
        q = self.ln_attn(h)
        h = q + self.attn(q, h, mask)
        h = self.ln_ffn(h)
        return (h + self.ffn(h)) * keep


class SASRecEncoder(nn.Module):
    """SASRec's causal self-attention stack over embedded item sequences.

    Args:
        dim: width d (the item embeddings' size).
        max_len: longest window; learned positional embeddings ``[max_len, d]``.
        n_blocks: self-attention blocks.
        n_heads: attention heads (must divide ``dim``).
        dropout: dropout rate of the embeddings and the FFN.
        attn_dropout: dropout rate of the attention weights (None = ``dropout``, as in
            SASRec). It is the costliest dropout on CPU (one draw per (t, s) pair).
        ffn_dim: hidden width of the point-wise FFN (None = ``dim``, SASRec's; RecBole's
            SASRec uses 4 d = 256 with d = 64).
    """

    def __init__(self, dim: int, max_len: int, n_blocks: int = 2, n_heads: int = 1,
                 dropout: float = 0.2, attn_dropout: float | None = None,
                 ffn_dim: int | None = None) -> None:
        super().__init__()
        if max_len < 1 or n_blocks < 0:
            raise ValueError(f"max_len must be >= 1 and n_blocks >= 0, got {max_len}, {n_blocks}")
        self.dim, self.max_len = dim, max_len
        self.pos_emb = nn.Embedding(max_len, dim)
        self.emb_dropout = Dropout(dropout)
        a_drop = dropout if attn_dropout is None else attn_dropout
        self.blocks = nn.ModuleList(Block(dim, n_heads, dropout, a_drop, ffn_dim)
                                    for _ in range(n_blocks))
        self.ln_out = nn.LayerNorm(dim, eps=1e-8)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    @staticmethod
    def mask(valid: torch.Tensor) -> torch.Tensor:
        """``[B, 1, L, L]`` boolean: query t may attend key s iff s <= t and s holds an
        item, or s == t."""
        n = valid.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=valid.device)
        return ((causal & valid[:, None, None, :]) | eye)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden states ``[B, L, d]`` for embedded items ``x [B, L, d]`` (L <= max_len);
        ``out[:, t]`` is the representation of the prefix ending at slot t. With
        ``last_only``, ``[B, 1, d]``: the last slot's only (:meth:`last`)."""
        n = x.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len {self.max_len}")
        keep = valid[..., None].to(x.dtype)
        pos = self.pos_emb((valid.long().cumsum(1) - 1).clamp(min=0))  # index among the items
        h = self.emb_dropout(x * math.sqrt(self.dim) + pos) * keep
        mask = self.mask(valid)
        for i, block in enumerate(self.blocks):
            h = block(h, mask, keep, last_only=last_only and i == len(self.blocks) - 1)
        if last_only and not self.blocks:
            h = h[:, -1:]
        return self.ln_out(h)

    def last(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The user vector: the output at the last slot (the most recent item), ``[B, d]``.

        Only the last slot's query goes through the final block (the earlier blocks
        need every position, as keys): at inference that block costs one query per row
        instead of L (the RL state, validation, evaluation and serving read only it)."""
        return self.forward(x, valid, last_only=True)[:, 0]

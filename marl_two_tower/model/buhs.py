"""BUHS: Biased User History Synthesis (Balasubramanian et al., RecSys 2024).

**Biased history sampler.** For user u with train history H_u (time order) and item
train degree deg(i) (= train popularity), ``fanout`` items are drawn from H_u with

    p(i) = exp((1/deg(i) - max_{j in H_u} 1/deg(j)) / T) / Z_u,   i in H_u,

so a small temperature T favours the user's rarest items. The draw is without
replacement (sequential, i.e. Plackett-Luce: each next item from p renormalised
over what is left), unless the history is shorter than ``fanout``, in which case the
``fanout`` items are drawn i.i.d. from p (with replacement), as in the official
implementation. Vectorised over a batch with Gumbel noise on a padded history
tensor: the top-``fanout`` of log p(i) + Gumbel is exactly a sequential draw without
replacement; the arg-max of ``fanout`` independent perturbations is a draw with
replacement. The sampled items are returned in history (time) order.

During training the target item is excluded from the candidates before drawing:
a sampled target is thereby *replaced* by the next draw from the rest of the
history (the official code instead overwrites it with a copy of another sampled
item; excluding first keeps the distribution exactly p restricted to H_u \\ {target},
the same distribution the model sees at inference, where the target is not in the
train history). With the transformer tower a training row (u, t) predicts t from the
items before it; ``buhs.history = prefix`` makes BUHS draw from the items before t too
(the past only, as at inference), ``all`` (default, chosen on validation) from
H_u \\ {t}, the items after t included (docs/buhs.md).
At inference the sample is drawn once per user with a fixed seed
(``inference_seed``) and cached, so recommendations are reproducible and do not
depend on how users are batched.

**Synthesis model.** The sampled items' embeddings (item tower output) are turned
into a tail-aware vector h_u:

* ``attention`` (default): query W_q x_u from the user features x_u (id and
  demographic embeddings), keys W_k e_i, values e_i of the sampled items; one-head
  scaled dot-product attention, then MLP([x_u; W_o sum_i a_i e_i]).
* ``mean``: MLP([x_u; mean_i e_i]).
* ``gru``: MLP([x_u; last hidden state of a GRU over the time-ordered sample]).

h_u is fused into the user tower by the model's gated fusion
(:meth:`TwoTower.add_user_context`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from marl_two_tower.config import BUHSConfig
from marl_two_tower.data.split import Split
from marl_two_tower.model.two_tower import TwoTower, mlp

# Users per chunk when the inference sample is drawn for every user (fixed, so the
# cached sample does not depend on anything but the seed and the data).
_INFERENCE_CHUNK = 1024


def _gumbel(shape: tuple[int, ...], device: torch.device,
            generator: torch.Generator | None) -> torch.Tensor:
    return _gumbel_of(torch.rand(shape, device=device, generator=generator))


def _gumbel_of(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise -log(-log u) of uniforms ``u`` (clamped away from 0 and 1)."""
    return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))


class BiasedHistorySampler(nn.Module):
    """Draws ``fanout`` items per user from the train history with p(i) ∝ exp(1/deg(i) / T).

    Holds the train CSR as non-persistent buffers (derived from the data, not learned,
    so not in checkpoints).
    """

    def __init__(self, split: Split, fanout: int, temperature: float) -> None:
        super().__init__()
        if fanout < 1:
            raise ValueError(f"buhs.fanout must be >= 1, got {fanout}")
        if temperature <= 0:
            raise ValueError(f"buhs.temperature must be > 0, got {temperature}")
        self.fanout, self.temperature = int(fanout), float(temperature)
        deg = np.maximum(split.item_pop.astype(np.float64), 1.0)
        self.register_buffer("indptr", torch.from_numpy(split.train_indptr.astype(np.int64)),
                             persistent=False)
        self.register_buffer("items", torch.from_numpy(split.train_items.astype(np.int64)),
                             persistent=False)
        self.register_buffer("inv_deg", torch.from_numpy(1.0 / deg), persistent=False)
        # per train interaction: its log-weight up to the per-user constant, and the
        # sorted (user, item) keys that count a target's occurrences in a history
        self.register_buffer("logit", self.inv_deg[self.items] / self.temperature, persistent=False)
        rows = np.repeat(np.arange(split.n_users, dtype=np.int64), np.diff(split.train_indptr))
        self.register_buffer("pair_keys", torch.from_numpy(np.sort(rows * len(deg) + split.train_items)),
                             persistent=False)

    def probabilities(self, history: np.ndarray) -> np.ndarray:
        """p(i) for the items of one history (reference formula, float64)."""
        a = self.inv_deg.cpu().numpy()[history]
        w = np.exp((a - a.max()) / self.temperature)
        return w / w.sum()

    def forward(self, users: torch.Tensor, exclude: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled items ``[B, fanout]`` (time order) and their validity mask.

        ``exclude[b]`` (the training target) is never drawn for row b; ``prefix[b]``
        (optional) restricts row b to the first ``prefix[b]`` items of the history.
        Rows without any candidate (empty history, or only the target) are all invalid.
        """
        return draw_biased(self.indptr, self.items, self.inv_deg, self.fanout, self.temperature,
                           users, exclude, generator, logit=self.logit, pair_keys=self.pair_keys,
                           prefix=prefix)

    @torch.no_grad()
    def sample_all(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference sample of every user, drawn on CPU with ``seed`` in fixed chunks."""
        indptr, items, inv_deg = self.indptr.cpu(), self.items.cpu(), self.inv_deg.cpu()
        n_users = len(indptr) - 1
        gen = torch.Generator().manual_seed(int(seed))
        parts = [draw_biased(indptr, items, inv_deg, self.fanout, self.temperature,
                             torch.arange(s, min(s + _INFERENCE_CHUNK, n_users)), None, gen,
                             logit=self.logit.cpu())
                 for s in range(0, n_users, _INFERENCE_CHUNK)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def draw_biased(indptr: torch.Tensor, train_items: torch.Tensor, inv_deg: torch.Tensor, fanout: int,
                temperature: float, users: torch.Tensor, exclude: torch.Tensor | None = None,
                generator: torch.Generator | None = None, logit: torch.Tensor | None = None,
                pair_keys: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The BUHS draw on a CSR history (see module doc); returns (items, valid) ``[B, fanout]``.

    The noise is one ``[rows, max history length]`` uniform tensor (then one
    ``[rows, fanout, width]`` one for short histories), as for a padded batch, so the
    draw depends on the seed and the batch only; the keys are built and ranked per
    block of rows of similar length (at most :data:`_MAX_BLOCKS` blocks, from lengths
    in (2^(k-1), 2^k]), instead of computing the noise and the ranking over the whole
    ``B x max length`` rectangle (histories are heavy-tailed). Optional caches of the
    caller: ``logit`` = ``inv_deg[train_items] / temperature`` per interaction,
    ``pair_keys`` = sorted ``user * n_items + item`` of the interactions (counts a
    target's occurrences in a history by binary search). ``prefix [B]``: row b draws
    from the first ``prefix[b]`` items of its history only (the items before its
    target, in time order).
    """
    f, dev = fanout, train_items.device
    users = users.to(dev)
    b = len(users)
    start = indptr[users]
    length = indptr[users + 1] - start
    if prefix is not None:
        length = torch.minimum(length, prefix.to(dev).clamp(min=0))
        pair_keys = None  # they count occurrences in the whole history, not the prefix
    width = max(int(length.max()), 1) if b else 1
    excl = None if exclude is None else exclude.to(dev)
    n_avail = length
    if excl is not None and b and pair_keys is not None:  # the target's occurrences are not candidates
        key = users * len(inv_deg) + excl
        n_avail = length - (torch.searchsorted(pair_keys, key, right=True)
                            - torch.searchsorted(pair_keys, key))
    elif excl is not None and b:
        rows = torch.repeat_interleave(torch.arange(b, device=dev), length)
        first = torch.repeat_interleave(torch.cumsum(length, 0) - length, length)
        pos = torch.arange(len(rows), device=dev) - first + start[rows]
        hit = train_items[pos] == excl[rows]
        n_avail = length - torch.zeros(b, dtype=length.dtype, device=dev).index_add_(
            0, rows, hit.to(length.dtype))

    def block(r: torch.Tensor, w: int) -> torch.Tensor:
        """Rows ``r`` of the padded ``[B, w]`` logit tensor: log p(i) up to a per-row
        constant, -inf outside the candidates."""
        slot = torch.arange(w, device=dev)
        s0, ln = start[r], length[r]
        in_hist = slot[None, :] < ln[:, None]
        pos = (s0[:, None] + slot[None, :]).clamp(max=max(len(train_items) - 1, 0))
        avail = in_hist if excl is None else in_hist & (train_items[pos] != excl[r][:, None])
        lg = inv_deg[train_items[pos]] / temperature if logit is None else logit[pos]
        # subtract the per-user max over the candidates: p is unchanged, exp stays finite
        top = lg.masked_fill(~avail, -math.inf).amax(1, keepdim=True).clamp(min=-1e30)
        return (lg - top).masked_fill(~avail, -math.inf)

    out_pos = torch.zeros(b, f, dtype=torch.long, device=dev)
    valid = torch.zeros(b, f, dtype=torch.bool, device=dev)
    # enough candidates: Gumbel-top-f = sequential draw without replacement
    long_rows = torch.nonzero(n_avail >= f).squeeze(1)
    if len(long_rows):
        noise = torch.rand((len(long_rows), width), device=dev, generator=generator)
        ln = length[long_rows]
        level = _length_blocks(torch.ceil(torch.log2(ln.double())).long())
        for k in torch.unique(level).tolist():
            j = torch.nonzero(level == k).squeeze(1)
            w = int(ln[j].max())
            keys = block(long_rows[j], w) + _gumbel_of(noise[j, :w])
            out_pos[long_rows[j]] = keys.topk(f, dim=1).indices.sort(dim=1).values
        valid[long_rows] = True
    # short history: f independent Gumbel-max draws = i.i.d. draws with replacement
    short_rows = torch.nonzero((n_avail > 0) & (n_avail < f)).squeeze(1)
    if len(short_rows):
        w = max(int(length[short_rows].max()), 1)
        keys = block(short_rows, w)[:, None, :] + _gumbel((len(short_rows), f, w), dev, generator)
        out_pos[short_rows] = keys.argmax(2).sort(dim=1).values
        valid[short_rows] = True
    if not len(train_items):
        return torch.zeros(b, f, dtype=torch.long, device=dev), valid
    items = train_items[(start[:, None] + out_pos).clamp(max=len(train_items) - 1)]
    return items.masked_fill(~valid, 0), valid


# most blocks of rows the BUHS draw ranks separately (each block costs a few dozen
# small ops; more blocks save padding on very heavy-tailed batches only)
_MAX_BLOCKS = 4


def _length_blocks(level: torch.Tensor) -> torch.Tensor:
    """Merge length levels (ceil log2 length per row) into at most :data:`_MAX_BLOCKS`
    blocks: repeatedly fold the level whose rows pad least when widened to the next
    level up (rows x (2^next - 2^level)) into that level."""
    lv, counts = torch.unique(level, return_counts=True)
    lv, counts = lv.tolist(), counts.tolist()
    target = {v: v for v in lv}
    while len(lv) > _MAX_BLOCKS:
        cost = [counts[i] * (2 ** lv[i + 1] - 2 ** lv[i]) for i in range(len(lv) - 1)]
        i = cost.index(min(cost))
        for v, t in target.items():
            if t == lv[i]:
                target[v] = lv[i + 1]
        counts[i + 1] += counts[i]
        del lv[i], counts[i]
    table = torch.zeros(max(lv) + 1, dtype=level.dtype)
    for v, t in target.items():
        table[v] = t
    return table.to(level.device)[level]


class Synthesis(nn.Module):
    """Turns a sampled history into a d-dim vector: attention | mean | gru (see module doc)."""

    def __init__(self, kind: str, user_dim: int, item_dim: int, dim: int, hidden: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in ("attention", "mean", "gru"):
            raise ValueError(f"buhs.synthesis must be attention, mean or gru, got {kind!r}")
        self.kind = kind
        agg_dim = item_dim
        if kind == "attention":
            self.proj_dim = item_dim
            # no user features (model.user_features=none): one learned query for everyone
            self.w_q = (nn.Linear(user_dim, self.proj_dim, bias=False) if user_dim else None)
            self.query = (nn.Parameter(torch.randn(self.proj_dim) * self.proj_dim ** -0.5)
                          if not user_dim else None)
            self.w_k = nn.Linear(item_dim, self.proj_dim, bias=False)
            self.w_o = nn.Linear(item_dim, item_dim)
        elif kind == "gru":
            self.gru = nn.GRU(item_dim, hidden, batch_first=True)
            agg_dim = hidden
        self.mlp = mlp(user_dim + agg_dim, hidden, dim, dropout)

    def forward(self, user_feats: torch.Tensor, item_embs: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """``user_feats [B, du]``, ``item_embs [B, F, di]``, ``valid [B, F]`` -> ``[B, dim]``."""
        w = valid.to(item_embs.dtype)
        nonempty = valid.any(1, keepdim=True)
        if self.kind == "attention":
            q = (self.w_q(user_feats) if self.w_q is not None
                 else self.query.expand(len(item_embs), -1))
            k = self.w_k(item_embs)
            att = torch.einsum("bp,bfp->bf", q, k) / math.sqrt(self.proj_dim)
            att = att.masked_fill(~valid, -math.inf).masked_fill(~nonempty, 0.0)
            a = torch.softmax(att, dim=1) * w
            agg = self.w_o(torch.einsum("bf,bfd->bd", a, item_embs))
        elif self.kind == "mean":
            agg = torch.einsum("bf,bfd->bd", w, item_embs) / w.sum(1, keepdim=True).clamp(min=1.0)
        else:
            _, h = self.gru(item_embs * w[..., None])
            agg = h[-1]
        agg = agg * nonempty.to(agg.dtype)
        return self.mlp(torch.cat([user_feats, agg], dim=-1))


class BUHS(nn.Module):
    """The BUHS user context: ``module(users, model, exclude) -> [B, d]`` (see module doc)."""

    def __init__(self, split: Split, cfg: BUHSConfig, model: TwoTower) -> None:
        super().__init__()
        mcfg = model.cfg
        self.sampler = BiasedHistorySampler(split, cfg.fanout, cfg.temperature)
        user_dim = model.user_tower.feature_dim  # x_u: the user tower's own features, shared
        self.synthesis = Synthesis(cfg.synthesis, user_dim, mcfg.dim, mcfg.dim, mcfg.hidden,
                                   mcfg.dropout)
        self.inference_seed = int(cfg.inference_seed)
        # draw index d at inference: seed inference_seed + d (TwoTower.scorer averages
        # over eval.inference_samples draws); one cached sample per draw seen
        self.inference_draw = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # training rows draw from the items before their target (buhs.history)
        positions = getattr(model.user_tower, "positions", None)
        if cfg.history == "prefix" and positions is None:
            raise ValueError("buhs.history='prefix' needs a user tower that reads time-ordered "
                             "prefixes (model.user_encoder=transformer); the pooled tower reads "
                             "the whole history: use buhs.history=all")
        self._positions = positions if cfg.history == "prefix" else None

    def sample(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor,
                                                                                         torch.Tensor]:
        """Training (or ``exclude`` given): a fresh draw from torch's RNG (from the items
        before the target with ``buhs.history = prefix``).
        Inference (eval mode, no exclusion): the per-user sample of seed
        ``inference_seed + inference_draw``, drawn once and cached."""
        if self.training or exclude is not None:
            prefix = None
            if exclude is not None and self._positions is not None:
                pos = self._positions(users.cpu().numpy(), exclude.cpu().numpy())
                # an unseen (user, item) pair (position -1) reads the whole history
                prefix = torch.from_numpy(np.where(pos < 0, np.iinfo(np.int64).max, pos))
            return self.sampler(users, exclude, prefix=prefix)
        seed = self.inference_seed + self.inference_draw
        if seed not in self._cache:
            self._cache[seed] = self.sampler.sample_all(seed)
        items, valid = self._cache[seed]
        dev = users.device
        idx = users.cpu()
        return items[idx].to(dev), valid[idx].to(dev)

    def forward(self, users: torch.Tensor, model: TwoTower,
                exclude: torch.Tensor | None = None) -> torch.Tensor:
        items, valid = self.sample(users, exclude)
        uniq, inv = torch.unique(items, return_inverse=True)
        embs = model.item_tower(uniq)[inv]
        return self.synthesis(model.user_tower.features(users), embs, valid)


def build_buhs(split: Split, cfg: BUHSConfig, model: TwoTower) -> BUHS:
    """The BUHS context module for ``model`` (register with ``model.add_user_context``)."""
    return BUHS(split, cfg, model)


__all__ = ["BUHS", "BiasedHistorySampler", "Synthesis", "build_buhs", "draw_biased"]

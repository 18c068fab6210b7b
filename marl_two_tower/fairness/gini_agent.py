"""GINI agent: differentiable exposure Gini and its dual-ascent weight (DESIGN §3, §4).

**Soft exposure.** For a batch of users U and a candidate set C (all items, or
``n_candidates`` items drawn uniformly without replacement on large catalogues),

    x_j = sum_{u in U} softmax_{j' in C}(s(u, j') / tau)_j,    j in C,

the expected number of times item j would be the user's pick if each user picked
one item from a softmax policy: a smooth stand-in for top-K exposure. With
``mask_seen`` (default) u's own train items are left out of u's softmax, as they
are never recommended to u (the evaluation masks them too).

**Differentiable Gini.** With x sorted ascending, x_(1) <= ... <= x_(n),

    G(x) = sum_{k=1..n} (2k - n - 1) x_(k) / (n sum_k x_k).

Sorting is a permutation, so G is piecewise smooth in x and the gradient flows
through the sorted values (to each x_j, through its rank's weight):

    dG/dx_(k) = ((2k - n - 1) / n - G) / sum x,

negative for the least-exposed items: a descent step moves exposure towards them.

**Dual ascent.** L_GINI = G enters the objective with weight l_fair * lambda, and after
each step lambda is adapted towards a target Gini g*:

    lambda <- max(0, lambda + lr_dual * (G_batch - g*)),

so lambda grows while the batch is more unequal than the target and decays to 0
once it is below (the Lagrangian of "minimise L_rec subject to G <= g*").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from marl_two_tower.config import GiniConfig
from marl_two_tower.metrics.gini import gini
from marl_two_tower.utils.numerics import floor_logits


def soft_exposure(scores: torch.Tensor, tau: float, mask: torch.Tensor | None = None,
                  full_rows_cleared: bool = False) -> torch.Tensor:
    """x_j = sum_u softmax(s(u, .) / tau)_j over the columns of ``scores [U, n]``.

    ``mask [U, n]`` (True = not recommendable to u, e.g. already seen) removes those
    entries from u's softmax; a row with every entry masked is left unmasked
    (``full_rows_cleared``: the caller has already cleared such rows, so the
    ``[U, n]`` check is skipped).
    """
    raw = scores.float() / tau
    s = raw
    if mask is not None:
        s = raw.masked_fill(mask if full_rows_cleared else mask & ~mask.all(1, keepdim=True),
                            float("-inf"))
    # floor: utils/numerics.py; its cheap check reads the unmasked scores
    return torch.softmax(floor_logits(s, dim=1, raw=raw), dim=1).sum(0)


def seen_mask(indptr: torch.Tensor, items: torch.Tensor, users: torch.Tensor, n_items: int,
              cand: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``[U, C]``: candidate c is in user u's train history (CSR ``indptr``/``items``).

    C = all ``n_items`` items when ``cand`` is None, else the columns of ``cand``.
    Vectorised: the batch's CSR rows are flattened with ``repeat_interleave``.
    """
    start = indptr[users]
    length = indptr[users + 1] - start
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), length)
    first = torch.repeat_interleave(torch.cumsum(length, 0) - length, length)
    pos = torch.arange(int(length.sum()), device=users.device) - first + \
        torch.repeat_interleave(start, length)
    cols = items[pos]
    width = n_items
    if cand is not None:
        col_of = torch.full((n_items,), -1, dtype=torch.long, device=users.device)
        col_of[cand] = torch.arange(len(cand), device=users.device)
        cols = col_of[cols]
        rows, cols = rows[cols >= 0], cols[cols >= 0]
        width = len(cand)
    mask = torch.zeros(len(users), width, dtype=torch.bool, device=users.device)
    mask[rows, cols] = True
    return mask


# most (user, item) cells of the dense seen table GiniAgent.seen keeps (bool: 64 MiB)
SEEN_TABLE_BUDGET = 1 << 26


class GiniAgent(nn.Module):
    """The dual-ascent controller of lambda_fair and the L_GINI term.

    ``lam`` is a buffer (state, not a parameter), so it is saved and resumed with the
    trainer's checkpoint; ``log`` keeps (step, G_batch, lambda) of every update. Given
    the train CSR (``train_indptr``, ``train_items``) and ``cfg.mask_seen``, each user's
    own train items are left out of its softmax: exposure is then over what could be
    recommended to u, as in the evaluation (train items masked).
    """

    def __init__(self, cfg: GiniConfig, n_items: int, train_indptr: np.ndarray | None = None,
                 train_items: np.ndarray | None = None) -> None:
        super().__init__()
        if cfg.tau <= 0:
            raise ValueError(f"gini.tau must be > 0, got {cfg.tau}")
        if cfg.n_candidates < 0:
            raise ValueError(f"gini.n_candidates must be >= 0, got {cfg.n_candidates}")
        self.tau, self.target, self.lr_dual = float(cfg.tau), float(cfg.target), float(cfg.lr_dual)
        self.n_items = int(n_items)
        self.n_candidates = int(cfg.n_candidates)
        self.register_buffer("lam", torch.tensor(float(cfg.init_lambda)))
        self.mask_seen = bool(cfg.mask_seen) and train_indptr is not None and train_items is not None
        if self.mask_seen:  # derived from the data: not saved in checkpoints
            self.register_buffer("indptr", torch.as_tensor(train_indptr, dtype=torch.long),
                                 persistent=False)
            self.register_buffer("items", torch.as_tensor(train_items, dtype=torch.long),
                                 persistent=False)
        self.log: list[tuple[int, float, float]] = []
        # the seen mask of every user as one dense table when it is small (built on first
        # use; a batch's mask is then a row gather instead of a CSR scatter each step)
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None
        # DDP: maps this rank's exposure to the global batch's (distributed.DistContext.sum_exposure)
        self.exposure_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def lambda_fair(self) -> float:
        return float(self.lam)

    def candidates(self, device: torch.device, generator: torch.Generator | None = None
                   ) -> torch.Tensor | None:
        """None (all items) or ``n_candidates`` items drawn uniformly without replacement."""
        if self.n_candidates == 0 or self.n_candidates >= self.n_items:
            return None
        perm = torch.randperm(self.n_items, device=device, generator=generator)
        return perm[: self.n_candidates]

    def loss(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, users: torch.Tensor | None = None,
             cand: torch.Tensor | None = None) -> torch.Tensor:
        """G(soft exposure) of the batch: ``user_vecs [U, k]``, ``item_vecs [C, k]`` (the
        candidates' vectors; ``cand`` their ids, None = all items), scores
        s = user_vecs @ item_vecs^T; ``users`` (ids) for masking their train items."""
        mask, cleared = None, False
        if self.mask_seen and users is not None:
            mask, cleared = self.seen(users, cand)
        x = soft_exposure(user_vecs @ item_vecs.T, self.tau, mask, full_rows_cleared=cleared)
        return gini(x if self.exposure_reduce is None else self.exposure_reduce(x))

    def seen(self, users: torch.Tensor, cand: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        """(:func:`seen_mask` of ``users`` over ``cand``, whether rows that mask every
        candidate are already cleared). With at most :data:`SEEN_TABLE_BUDGET` (user,
        item) cells, rows of a dense table of all users (built once) are gathered and,
        over all items, the rows to clear are known from each user's count of seen items."""
        n_users = len(self.indptr) - 1
        if n_users * self.n_items > SEEN_TABLE_BUDGET:
            return seen_mask(self.indptr, self.items, users, self.n_items, cand), False
        dev = self.indptr.device
        if self._seen is None or self._seen[0].device != dev:
            table = seen_mask(self.indptr, self.items, torch.arange(n_users, device=dev), self.n_items)
            self._seen = (table, table.sum(1))
        table, n_seen = self._seen
        users = users.to(dev)
        if cand is not None:
            return table[users[:, None], cand[None, :].to(dev)], False
        mask = table[users]
        full = n_seen[users] == self.n_items
        if bool(full.any()):
            mask = mask & ~full[:, None]
        return mask, True

    @torch.no_grad()
    def update(self, g_batch: float, step: int = -1) -> float:
        """lambda <- max(0, lambda + lr_dual (G_batch - target)); returns the new lambda."""
        if math.isfinite(g_batch):
            self.lam.add_(self.lr_dual * (g_batch - self.target)).clamp_(min=0.0)
        self.log.append((int(step), float(g_batch), float(self.lam)))
        return float(self.lam)

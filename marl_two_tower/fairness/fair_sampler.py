"""Fair Sampler: popularity-debiased training positives under a per-batch cap (DESIGN §3).

Each train interaction k = (u, i) is drawn with probability

    P(k) = pop(i)^(-beta) / sum_k' pop(i_k')^(-beta),

so the probability that one draw is item j is the item marginal

    p(j) = pop(j) * pop(j)^(-beta) / Z = pop(j)^(1 - beta) / Z.

``beta = 0`` is the uniform sampler over interactions (p(j) ∝ pop(j)); ``beta = 1``
gives every item with train interactions the same chance; in between, tail items
are up-weighted. Within an item the user is uniform over its interactions.

An epoch has as many draws as there are train interactions (so epochs of the base
and fair samplers are the same number of steps), in batches of ``batch_size``.
Draws are independent with replacement, except that one item may appear at most
``max_per_batch`` times in one batch: a draw that would exceed the cap is rejected
and redrawn, i.e. a batch is a sequence of i.i.d. draws conditioned on the cap.
Everything is vectorised over the whole epoch: over-draw a candidate matrix, rank
each candidate among earlier candidates of the same item in its row, keep the ranks
below the cap, take the first ``batch_size`` survivors per row, redraw the (rare)
rows that ran short.

``prob`` is the item marginal p(j) above corrected for the cap (:func:`capped_marginal`);
the trainer uses it for the logQ correction of in-batch negatives (Yi et al., RecSys
2019), so the candidate-set log-probabilities match what the sampler really draws.

The Gini of the item counts drawn in the epoch (over the whole catalogue, items
never drawn count as zeros) is ``last_epoch_gini``; the training component
(:class:`marl_two_tower.model.components.FairSamplerComponent`) logs it as
``sampler/gini``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import scipy.stats

from marl_two_tower.data.split import Split
from marl_two_tower.metrics.gini import gini

# Candidates drawn per batch slot before capping; rows that still run short are
# redrawn with this factor doubled, at most _ROUNDS times, then completed sequentially.
_OVERDRAW = 1.25
_ROUNDS = 3


def first_under_cap(cand: np.ndarray, items: np.ndarray, cap: int, n_items: int) -> np.ndarray:
    """Mask of the candidates ``[R, M]`` drawn while their item was below ``cap`` in the row.

    The rank of a candidate among the earlier candidates of the same item in its row
    comes from one stable sort of the keys (row, item): no loop over rows.
    """
    key = (np.arange(cand.shape[0])[:, None] * n_items + items).ravel()
    order = np.argsort(key, kind="stable")
    sk = key[order]
    start = np.r_[0, np.flatnonzero(sk[1:] != sk[:-1]) + 1]
    run_len = np.diff(np.r_[start, len(sk)])
    rank = np.empty(len(sk), dtype=np.int64)
    rank[order] = np.arange(len(sk)) - np.repeat(start, run_len)
    return rank.reshape(cand.shape) < cap


def capped_marginal(p: np.ndarray, batch_size: int, cap: int) -> np.ndarray:
    """Per-draw item probabilities once the per-batch cap is applied (approximation).

    Uncapped, item j appears X_j ~ Poisson(B p_j) times in a batch of B draws. The cap
    truncates it to min(X_j, cap), and the rejected draws go to the other items in
    proportion to p: with a common inflation c, the expected count of j is
    E[min(Poisson(c B p_j), cap)] = sum_{k<cap} P(Poisson(c B p_j) > k), and c solves
    sum_j E[...] = B (bisection). Returns the expected counts divided by B.
    """
    if cap >= batch_size or not p.any():
        return p
    ks = np.arange(cap)

    def expected(c: float) -> np.ndarray:
        lam = c * batch_size * p
        return scipy.stats.poisson.sf(ks[None, :], lam[:, None]).sum(1)

    lo, hi = 1.0, 2.0
    while expected(hi).sum() < batch_size and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(mid).sum() < batch_size else (lo, mid)
    e = expected(hi)
    return e / e.sum()


class FairSampler:
    """Positives ~ pop(i)^-beta per interaction, at most ``max_per_batch`` per item per batch.

    Same interface as :class:`marl_two_tower.data.samplers.PositiveSampler`: ``len`` is the
    number of batches per epoch, ``batches(epoch)`` yields interaction indices into
    ``split.train_items`` (seeded by ``(seed, epoch)``, so resumed runs replay the
    same batches), ``prob[j]`` is the probability that one draw is item j.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, beta: float,
                 max_per_batch: int) -> None:
        if max_per_batch < 1:
            raise ValueError(f"fair_sampler.max_per_batch must be >= 1, got {max_per_batch}")
        self.split, self.seed, self.beta, self.cap = split, seed, float(beta), int(max_per_batch)
        self.n = len(split.train_items)
        pop = split.item_pop.astype(np.float64)
        active = int(np.count_nonzero(pop))
        # A batch cannot hold more distinct draws than cap * (items with interactions).
        self.batch_size = min(int(batch_size), self.cap * max(active, 1))
        w = np.zeros_like(pop)
        w[pop > 0] = pop[pop > 0] ** -self.beta
        inter_w = w[split.train_items]
        self._cdf = np.cumsum(inter_w)
        self._cdf /= self._cdf[-1] if self.n else 1.0
        mass = pop * w
        self._item_mass = mass
        # interactions grouped by item, for the sequential completion of short rows
        self._by_item = np.argsort(split.train_items, kind="stable")
        self._item_ptr = np.r_[0, np.cumsum(split.item_pop)]
        p = mass / mass.sum() if mass.sum() > 0 else mass
        self.prob = capped_marginal(p, self.batch_size, self.cap)
        self.last_epoch_gini: float = math.nan

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def _draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        idx = np.searchsorted(self._cdf, rng.random(shape), side="right")
        return np.minimum(idx, self.n - 1)

    def capped_rows(self, n_rows: int, rng: np.random.Generator) -> np.ndarray:
        """``[n_rows, batch_size]`` draws with no item more than ``cap`` times in a row.

        A row is the first ``batch_size`` i.i.d. draws that were under the cap when
        drawn: over-draw, mask with :func:`first_under_cap`, keep the first
        ``batch_size`` survivors. Rows still short after ``_ROUNDS`` redraws (only
        when cap * active items is close to the batch size) continue the same process
        one draw at a time, from the item distribution restricted to the items below
        the cap (which is what rejecting over-cap draws amounts to).
        """
        width, items = self.batch_size, self.split.train_items
        out = np.empty((n_rows, width), dtype=np.int64)
        todo = np.arange(n_rows)
        cand = keep = np.empty((0, 0), dtype=np.int64)
        factor = _OVERDRAW
        for _ in range(_ROUNDS):
            if not len(todo):
                break
            m = max(int(math.ceil(width * factor)), width + 8)
            cand = self._draw(rng, (len(todo), m))
            keep = first_under_cap(cand, items[cand], self.cap, self.split.n_items)
            pos = np.cumsum(keep, axis=1)
            full = pos[:, -1] >= width
            out[todo[full]] = cand[keep & (pos <= width) & full[:, None]].reshape(-1, width)
            todo, cand, keep = todo[~full], cand[~full], keep[~full]
            factor *= 2
        for r in range(len(todo)):
            out[todo[r]] = self._complete(cand[r][keep[r]], rng)
        return out

    def _complete(self, prefix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Continue a row of under-cap draws one draw at a time up to ``batch_size``."""
        items = self.split.train_items
        counts = np.bincount(items[prefix], minlength=self.split.n_items)
        row = list(prefix)
        while len(row) < self.batch_size:
            m = self._item_mass * (counts < self.cap)
            j = rng.choice(len(m), p=m / m.sum())
            row.append(self._by_item[rng.integers(self._item_ptr[j], self._item_ptr[j + 1])])
            counts[j] += 1
        return np.asarray(row, dtype=np.int64)

    def epoch_indices(self, epoch: int) -> list[np.ndarray]:
        """All batches of ``epoch`` (the last one shorter, as in the uniform sampler)."""
        rng = np.random.default_rng([self.seed, epoch, 3])
        n_batches, b = len(self), self.batch_size
        rows = self.capped_rows(n_batches, rng)
        last = self.n - (n_batches - 1) * b
        batches = [rows[r] for r in range(n_batches - 1)] + [rows[-1, :last]]
        counts = np.bincount(self.split.train_items[np.concatenate(batches)],
                             minlength=self.split.n_items)
        self.last_epoch_gini = gini(counts)
        return batches

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """Interaction indices (into ``split.train_items``), one array per batch."""
        yield from self.epoch_indices(epoch)

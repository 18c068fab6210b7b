"""Exposure budget: top-K lists allocated under a per-item exposure cap.

The inference-time arm of the GINI agent. The training-time arm (:mod:`gini`)
flattens the model's *soft* exposure; this one bounds the *hard* exposure of the
lists actually shown: every item may appear in at most

    C = ceil(factor * K * U / N)

of the U users' top-K lists (K * U / N is the exposure every item would get under a
perfectly flat allocation, so ``factor`` is "how many times the fair share"). The
lists are allocated jointly, slot by slot, as a greedy b-matching on the model's
own log-probabilities (FairRec, Patro et al., WWW 2020, allocates round-robin under
an exposure guarantee in the same spirit; greedy b-matching is a 1/2-approximation
of the maximum-likelihood allocation):

1. every user proposes its best candidate that is not in its list yet and whose
   item still has budget;
2. an item with budget b receives the b proposals of highest log p(i | u) (the
   user who wants it most, by the model's softmax), the others propose their next
   candidate;
3. when every user has filled slot p (or run out of candidates), slot p + 1 starts.

Slots are filled in order, so the first K slots of every list are allocated before
any later slot takes budget: the top-10 lists are what a K = 10 allocation would
give. With ``factor`` large enough no item reaches its cap and the lists equal the
plain top-K (tested). Candidates are each user's ``n_candidates`` best unmasked
items; a user who exhausts them keeps empty slots (-1), which never happens with
a budget of at least one fair share (``factor >= 1``) and enough candidates.

Users are ranked against each other by log-softmax over their own unmasked
catalogue, log p(i | u) = s(u, i) - logsumexp_j s(u, j): a sampled-softmax model
with logQ correction estimates exactly this next-item probability, so a contested
item goes to the user most likely to consume it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from marl_two_tower.config import Config, ConfigError, GiniConfig


def fair_share_cap(factor: float, k: int, n_lists: int, n_items: int) -> int:
    """ceil(factor * k * n_lists / n_items), at least 1: ``factor`` times the slots every
    item would get if the ``n_lists`` top-``k`` lists spread exposure evenly."""
    return max(1, math.ceil(factor * k * n_lists / n_items - 1e-9))


@dataclass(frozen=True)
class ExposureBudget:
    """Per-item cap on top-K exposure, in multiples of the uniform share.

    Attributes:
        factor: cap C = ceil(factor * k * n_users / n_items); must be >= 1.
        k: list length the fair share is measured at (10 = the headline K).
        n_candidates: best unmasked items per user the allocation may choose from.
        floor: after the capped allocation, each user may give up to this many of
            its top-``k`` slots to candidate items no list holds
            (:func:`cover_unexposed`); 0 = off.

    No field has a default: the configured budget is :meth:`from_config`
    (``gini.exposure_cap``, ``cap_k``, ``cap_candidates``, ``cover_floor``), so the
    config is the one place the defaults live.
    """

    factor: float
    k: int
    n_candidates: int
    floor: int

    @classmethod
    def from_config(cls, g: GiniConfig) -> ExposureBudget:
        """The budget of the GINI section: factor ``exposure_cap``, k ``cap_k``,
        ``cap_candidates`` candidates, floor ``cover_floor``."""
        return cls(factor=g.exposure_cap, k=g.cap_k, n_candidates=g.cap_candidates,
                   floor=g.cover_floor)

    def __post_init__(self) -> None:
        if not self.factor >= 1.0:
            raise ValueError(f"exposure budget factor must be >= 1 (one fair share), got {self.factor}")
        if self.floor < 0 or self.floor > self.k:
            raise ValueError(f"floor must be in [0, k={self.k}], got {self.floor}")
        if self.k < 1 or self.n_candidates < 1:
            raise ValueError(f"k and n_candidates must be >= 1, got {self.k}, {self.n_candidates}")

    def capacity(self, n_users: int, n_items: int) -> int:
        """C = ceil(factor * k * n_users / n_items): the most lists one item may enter."""
        return fair_share_cap(self.factor, self.k, n_users, n_items)


def allocate(cand: np.ndarray, priority: np.ndarray, k: int, capacity: int | np.ndarray,
             n_items: int) -> np.ndarray:
    """Fill ``k`` slots per user under per-item capacities (greedy b-matching).

    Args:
        cand: int64 ``[U, M]`` candidate items per user, best first; -1 pads.
        priority: float ``[U, M]`` comparable across users (higher wins a contested
            item); log p(i | u) in :func:`rerank_with_budget`.
        k: slots per user.
        capacity: scalar or int ``[n_items]``: how many lists each item may enter.
        n_items: catalogue size.

    Returns:
        int64 ``[U, k]`` lists, slot order = fill order, -1 = unfilled slot.

    Each round is whole-array work over the users still filling the current slot:
    the next available candidate of every such user is found with one masked
    ``argmax`` over its candidate row, and the proposals are accepted per item by a
    ``lexsort`` on (item, -priority) and the rank within each item's group.
    """
    n_users, m = cand.shape
    remaining = np.broadcast_to(np.asarray(capacity, dtype=np.int64), (n_items,)).copy()
    out = np.full((n_users, k), -1, dtype=np.int64)
    used = np.zeros((n_users, m), dtype=bool)  # candidate already in the user's list
    valid = cand >= 0
    safe = np.where(valid, cand, 0)
    for slot in range(k):
        active = np.arange(n_users)
        while active.size:
            open_ = valid[active] & ~used[active] & (remaining[safe[active]] > 0)
            has = open_.any(axis=1)
            active = active[has]  # the others ran out of candidates: slot stays empty
            if not active.size:
                break
            col = open_[has].argmax(axis=1)  # best open candidate (rows are sorted)
            items = cand[active, col]
            pri = priority[active, col]
            order = np.lexsort((-pri, items))
            it_sorted = items[order]
            first = np.r_[True, it_sorted[1:] != it_sorted[:-1]]
            starts = np.flatnonzero(first)
            within = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            accepted = np.zeros(len(order), dtype=bool)
            accepted[order] = within < remaining[it_sorted]
            win_u, win_c = active[accepted], col[accepted]
            out[win_u, slot] = items[accepted]
            used[win_u, win_c] = True
            remaining -= np.bincount(items[accepted], minlength=n_items)
            # a rejected user's item is now full: its next round skips it
            active = active[~accepted]
    return out


def cover_unexposed(recs: np.ndarray, cand: np.ndarray, logp: np.ndarray, k: int, floor: int,
                    n_items: int) -> np.ndarray:
    """Give items absent from every top-``k`` list one slot each (coverage floor).

    Every candidate item that no top-``k`` list holds proposes itself to the users
    whose candidates hold it, best log p(i | u) first; each user accepts at most
    ``floor`` such items (the same greedy b-matching as :func:`allocate`, with the
    roles swapped: items fill one slot, users have capacity ``floor``). A user with
    g accepted items shows them at slots k-g+1..k (best first) and its former
    slots k-g+1.. move down by g; the list keeps ``recs.shape[1]`` slots. This is
    the minimum-exposure guarantee of FairRec (Patro et al., 2020) restricted to the
    items that would otherwise get none.
    """
    n_users, k_max = recs.shape
    top = recs[:, :k]
    exposed = np.zeros(n_items, dtype=bool)
    exposed[top[top >= 0]] = True
    valid = cand >= 0
    u_idx, c_idx = np.nonzero(valid & ~exposed[np.where(valid, cand, 0)])
    if floor < 1 or not len(u_idx):
        return recs
    items, lp = cand[u_idx, c_idx], logp[u_idx, c_idx]
    order = np.lexsort((-lp, items))
    items, users, lp = items[order], u_idx[order], lp[order]
    _, start, counts = np.unique(items, return_index=True, return_counts=True)
    row = np.repeat(np.arange(len(start)), counts)
    col = np.arange(len(items)) - np.repeat(start, counts)
    ucand = np.full((len(start), counts.max()), -1, dtype=np.int64)
    upri = np.full(ucand.shape, -np.inf)
    ucand[row, col], upri[row, col] = users, lp
    owner = allocate(ucand, upri, 1, floor, n_users)[:, 0]  # user of each unexposed item
    got = owner >= 0
    new_items, new_users = items[start][got], owner[got]
    new_lp = lp[start[got] + np.argmax(ucand[got] == owner[got, None], axis=1)]
    # place the new items (best first) at slots k-g..k-1 and shift the rest down:
    # sort keys = old slot p (p < k - g) or p + g (p >= k - g), new item j -> k - g + j
    g = np.bincount(new_users, minlength=n_users)
    o = np.lexsort((-new_lp, new_users))
    new_users, new_items = new_users[o], new_items[o]
    j = np.arange(len(o)) - np.repeat(np.cumsum(g) - g, g)[np.arange(len(o))]
    extra = np.full((n_users, floor), -1, dtype=np.int64)
    extra_key = np.full((n_users, floor), np.inf)
    extra[new_users, j] = new_items
    extra_key[new_users, j] = k - g[new_users] + j
    pos = np.arange(k_max)[None, :]
    old_key = np.where(pos < k - g[:, None], pos, pos + g[:, None]).astype(float)
    old_key[(recs[:, :, None] == extra[:, None, :]).any(axis=2) | (recs < 0)] = np.inf
    both = np.concatenate([recs, extra], axis=1)
    keys = np.concatenate([old_key, extra_key], axis=1)
    out = np.take_along_axis(both, np.argsort(keys, axis=1, kind="stable"), axis=1)[:, :k_max]
    return np.where(np.isinf(np.sort(keys, axis=1)[:, :k_max]), -1, out)


def rerank_with_budget(cand: np.ndarray, logp: np.ndarray, k_max: int, budget: ExposureBudget,
                       n_items: int) -> np.ndarray:
    """Top-``k_max`` lists of every user under ``budget`` (see the module docstring)."""
    cap = budget.capacity(len(cand), n_items)
    recs = allocate(cand, logp, k_max, cap, n_items)
    return cover_unexposed(recs, cand, logp, budget.k, budget.floor, n_items)


def allocate_in_order(cand: np.ndarray, k_max: int, capacity: int, n_items: int,
                      k: int) -> np.ndarray:
    """The lists :class:`OnlineExposureBudget` serves when the users of ``cand`` request
    once each, in row order, within one window (``window`` >= number of users).

    Request r takes its ``k_max`` best candidates among the items that hold fewer than
    ``capacity`` slots so far, then its first ``k`` items are counted, exactly as
    ``Recommender.recommend`` does (blocked items are excluded before the search; an
    item one below its cap may enter the list and reach it). First come, first served:
    unlike :func:`allocate` (slot by slot, contested items to the highest log p), an
    earlier request fills all its slots before a later one starts and wins every item
    it wants. A Python loop over requests, because each list depends on all earlier
    ones; O(n_users * M) numpy work in total.
    """
    counts = np.zeros(n_items, dtype=np.int64)
    out = np.full((len(cand), k_max), -1, dtype=np.int64)
    for r, row in enumerate(cand):
        row = row[row >= 0]
        take = row[counts[row] < capacity][:k_max]
        out[r, : len(take)] = take
        counts[take[:k]] += 1
    return out


def _priced_order(cand: np.ndarray, logp: np.ndarray, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys log p(i | u) - lambda_i ``[U, M]``, -inf on pads; each row's column order by
    descending key, stable so ties keep the candidate order)."""
    valid = cand >= 0
    keys = np.where(valid, logp - prices[np.where(valid, cand, 0)], -np.inf)
    return keys, np.argsort(-keys, axis=1, kind="stable")


def priced_lists(cand: np.ndarray, logp: np.ndarray, prices: np.ndarray, k_max: int) -> np.ndarray:
    """Top-``k_max`` lists when every user ranks its candidates by log p(i | u) - lambda_i:
    per-item prices, the same for every user (stateless: a served list needs no other)."""
    keys, order = _priced_order(cand, logp, prices)
    order = order[:, :k_max]
    recs = np.take_along_axis(cand, order, axis=1)
    recs = np.where(np.isfinite(np.take_along_axis(keys, order, axis=1)), recs, -1)
    if recs.shape[1] < k_max:
        recs = np.pad(recs, ((0, 0), (0, k_max - recs.shape[1])), constant_values=-1)
    return recs


def fit_item_prices(cand: np.ndarray, logp: np.ndarray, k: int, capacity: int, n_items: int,
                    iters: int = 60, damping: float = 0.5, eps: float = 1e-3) -> np.ndarray:
    """Per-item prices lambda_i >= 0 under which every user's own top-``k`` by
    log p(i | u) - lambda_i puts each item in at most about ``capacity`` lists.

    lambda are the dual variables of the capacity constraints of the max-likelihood
    allocation LP (max sum log p over top-k lists, each item in <= C lists): with the
    right prices the users' independent choices are the capacitated allocation
    (Lagrangian relaxation; the auction view of Bertsekas 1988), so a server that
    subtracts lambda_i from the scores (an item bias, ANN-compatible) gets budgeted
    lists without state or a window. Found by damped best responses: given the others'
    prices, user u keeps item i in its top-k iff lambda_i < m_ui = log p(i | u) - tau_ui,
    tau_ui = u's k-th best key among its other candidates (the (k+1)-th key if i is in
    the top-k now, the k-th otherwise); the smallest price that leaves i in at most C
    lists is the (C+1)-th largest m_ui over users (0 if i has at most C candidates
    rows) plus ``eps`` nats (the auction's bid increment: the (C+1)-th row then ranks i
    strictly below its alternative), and every item moves ``damping`` of the way to it
    at once. Stops when no item exceeds C or after ``iters`` rounds (the last prices are
    returned: users that move together can leave some items a slot or two over C).
    """
    n_users, m = cand.shape
    prices = np.zeros(n_items, dtype=np.float64)
    if n_users == 0 or m == 0:
        return prices
    valid = cand >= 0
    safe = np.where(valid, cand, 0)
    lp = np.where(valid, logp.astype(np.float64), -np.inf)
    rows = np.arange(n_users)[:, None]
    for _ in range(iters):
        keys, order = _priced_order(cand, lp, prices)
        top = np.take_along_axis(cand, order[:, :k], axis=1)
        counts = np.bincount(top[top >= 0], minlength=n_items)
        if counts.max(initial=0) <= capacity:
            break
        sk = np.take_along_axis(keys, order, axis=1)
        kth = sk[:, k - 1] if m >= k else np.full(n_users, -np.inf)
        k1th = sk[:, k] if m > k else np.full(n_users, -np.inf)
        rank = np.empty_like(order)
        rank[rows, order] = np.arange(m)[None, :]
        margin = lp - np.where(rank < k, k1th[:, None], kth[:, None])
        # per item, the (C+1)-th largest margin over its rows; margins <= 0 never set a
        # price (the target is at least 0), so only the positive ones are ranked
        ok = valid & (margin > 0)
        it, mg = safe[ok], margin[ok]
        srt = np.lexsort((-mg, it))
        it_s, mg_s = it[srt], mg[srt]
        starts = np.searchsorted(it_s, np.arange(n_items))
        ends = np.searchsorted(it_s, np.arange(n_items), side="right")
        has = ends - starts > capacity
        target = np.zeros(n_items)
        target[has] = np.maximum(mg_s[starts[has] + capacity] + eps, 0.0)
        prices += damping * (target - prices)
    return prices


def budget_from_config(cfg: Config) -> ExposureBudget | None:
    """The configured budget: on when ``exposure_budget.enabled`` and ``gini.exposure_cap``
    > 0 (the GINI training loss, ``gini.enabled``, is a separate switch)."""
    g = cfg.gini
    if not cfg.exposure_budget.enabled or g.exposure_cap == 0:
        return None
    if g.exposure_cap < 1:
        raise ConfigError(f"gini.exposure_cap: expected 0 (off) or a float >= 1 (multiples of the "
                          f"fair share), got {g.exposure_cap}")
    return ExposureBudget.from_config(g)


class OnlineExposureBudget:
    """The exposure cap for real-time serving, over a sliding window of served lists.

    Offline, all users' lists are allocated jointly (:func:`allocate`); a server sees
    one request at a time, so it keeps the items of the last ``window`` lists it
    served (a ring buffer) and their counts, and an item that already holds
    ``C_w = ceil(factor * k * window / n_items)`` of those slots is left out of the
    next lists until older lists leave the window. Same fair-share units as
    :class:`ExposureBudget`; no coverage floor (that needs the whole population).
    """

    def __init__(self, n_items: int, factor: float, k: int, window: int) -> None:
        if not factor >= 1.0 or window < 1:
            raise ValueError(f"factor must be >= 1 and window >= 1, got {factor}, {window}")
        self.n_items, self.k = n_items, k
        self.capacity = fair_share_cap(factor, k, window, n_items)
        self.counts = np.zeros(n_items, dtype=np.int64)
        self.ring = np.full((window, k), -1, dtype=np.int64)
        self.next = 0

    def blocked(self) -> np.ndarray:
        """Item indices at their cap: excluded from the next list."""
        return np.flatnonzero(self.counts >= self.capacity)

    def record(self, items: np.ndarray) -> None:
        """Count one served list's first ``k`` items; the oldest list leaves the window."""
        old = self.ring[self.next]
        np.subtract.at(self.counts, old[old >= 0], 1)
        row = np.full(self.k, -1, dtype=np.int64)
        top = np.asarray(items, dtype=np.int64)[: self.k]
        row[: len(top)] = top
        self.ring[self.next] = row
        np.add.at(self.counts, top[top >= 0], 1)
        self.next = (self.next + 1) % len(self.ring)

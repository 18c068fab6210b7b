"""Evaluation harness: full and sampled ranking protocols (DESIGN §5).

A model is evaluated through a :data:`ScoreFn`, a function from a batch of user
indices to a ``[B, n_items]`` score tensor (higher = better), so the harness knows
nothing about the model. Two protocols:

* **full** (headline): the target is ranked against the whole catalogue with the
  user's train items (and, for test, the validation item) masked;
* **sampled** (NCF-era tables only): the target is ranked against 99 negatives,
  drawn uniformly from items the user never interacted with (fixed seed) or taken
  from the data's own negative file (``split.test_negatives``).

Every entry point is shard-aware: without a process group one process ranks all
users; under DDP (:mod:`marl_two_tower.utils.distributed`) each rank ranks a run of
whole evaluation batches and the rows are all-gathered, so the metrics are identical.
Lists produced by other systems are scored by :mod:`marl_two_tower.eval.external`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from marl_two_tower.data.split import Split
from marl_two_tower.fairness.exposure import ExposureBudget, rerank_with_budget
from marl_two_tower.metrics import ranking as M
from marl_two_tower.utils.csr import expand_ranges
from marl_two_tower.utils.distributed import batch_shards, current

__all__ = [
    "RankResult",
    "ScoreFn",
    "evaluate",
    "evaluate_per_user",
    "full_candidates",
    "rank_full",
    "reallocated",
    "rank_sampled",
    "sample_negatives",
    "summarize",
]

ScoreFn = Callable[[np.ndarray], torch.Tensor]
"""Scores of a batch of users: int64 user indices ``[B]`` -> tensor ``[B, n_items]``."""

Protocol = Literal["full", "sampled", "both"]


@dataclass
class RankResult:
    """Ranking outcome of one protocol, one row per evaluated user.

    Attributes:
        users: int64 ``[n]`` evaluated user indices.
        targets: int64 ``[n]`` held-out target item of each user.
        recs: int64 ``[n, k_max]`` top-``k_max`` items, best first, -1 = empty slot
            (fewer than ``k_max`` rankable items).
        ranks: int64 ``[n]`` r_u = 1 + a_u, a_u the number of ranked items (whole
            unmasked catalogue for ``full``, the candidates for ``sampled``) scoring
            strictly above the target: its best possible rank.
        ties: int64 ``[n]`` b_u, the number of other ranked items scoring exactly as
            the target. Ties are broken uniformly at random, so the target's rank is
            uniform on {r_u, ..., r_u + b_u}; every hit-based metric is the
            expectation over that draw (:func:`marl_two_tower.metrics.per_user`).
            None at construction means no ties (zeros).
    """

    users: np.ndarray
    targets: np.ndarray
    recs: np.ndarray
    ranks: np.ndarray
    ties: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.ties is None:
            self.ties = np.zeros(len(self.ranks), dtype=np.int64)


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------


def _scores(score_fn: ScoreFn, users: np.ndarray, n_items: int) -> torch.Tensor:
    """Call the model and return a private copy (we write -inf into it).

    Half-precision scores are upcast to float32 (topk and comparisons on CPU);
    float64 stays float64 so that no ties are created by rounding.
    """
    with torch.no_grad():
        out = torch.as_tensor(score_fn(users)).detach()
    dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
    scores = out.to(dtype, copy=True)
    if scores.shape != (len(users), n_items):
        raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected ({len(users)}, {n_items})")
    if torch.isnan(scores).any():
        raise ValueError("score_fn returned NaN scores; ranks would be meaningless")
    return scores


def _eval_users(split: Split, part: str, users: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if part not in ("val", "test"):
        raise ValueError(f"part must be 'val' or 'test', got {part!r}")
    targets_all = split.targets(part)
    # contiguous int64: score functions may hand the array straight to torch.from_numpy
    users = np.ascontiguousarray(split.eval_users(part) if users is None else users, np.int64)
    targets = targets_all[users]
    if (targets < 0).any():
        bad = users[targets < 0][:5].tolist()
        raise ValueError(f"users without a {part} target cannot be evaluated: {bad}")
    return users, targets


def _rank_full_local(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    k_max: int = 20,
    batch_size: int = 1024,
    users: np.ndarray | None = None,
    budget: ExposureBudget | None = None,
) -> RankResult:
    """Full-catalogue ranking of each user's target (the headline protocol).

    For user u with scores s_u in R^n, the masked set E_u is u's train items (plus
    the validation item when ``part='test'``), whatever the target is: masking
    must not depend on the label. A re-consumed target (also a train item) is
    masked like every train item (with ``data.repeats=drop``, the default, the
    split holds no such target). Masked scores are set to -inf; a target at -inf
    can be in no list and gets rank max(n_items, k_max) + 1 (a miss at every K).
    Then
    recs_u = top-``k_max`` items by score (``torch.topk``; slots whose score is
    -inf are left empty, -1) and, with s'_u the masked scores,

        rank_u = 1 + |{ i != t_u : s'_u(i) > s'_u(t_u) }|,
        ties_u = |{ i != t_u : s'_u(i) = s'_u(t_u) }|.

    Ties cost the target: the metrics take its rank as uniform on
    {rank_u, ..., rank_u + ties_u} (random tie-breaking, docs/metrics.md), and in
    the lists the target is placed after every item it ties with (its score is
    lowered to the next float below for ``torch.topk``), so it never wins a tie.
    Users are processed ``batch_size`` at a time with whole-batch tensor ops.

    With an exposure ``budget`` (the GINI agent's inference-time arm,
    :mod:`marl_two_tower.exposure`) the lists of all evaluated users are allocated
    jointly from each user's ``budget.n_candidates`` best unmasked items, ranked
    across users by log p(i | u) = s_u(i) - logsumexp over u's unmasked items. The
    target's rank is then its slot in the allocated list (ties 0), or the part of
    {rank_u, ..., rank_u + ties_u} beyond k_max (at least k_max + 1) when the
    allocation left it out (MRR beyond the list is the unconstrained one).
    """
    if budget is None:
        return _full_scan(split, score_fn, part, k_max, batch_size, users)[0]
    plain, cand, logp = _full_scan(split, score_fn, part, k_max, batch_size, users,
                                   budget.n_candidates)
    return reallocated(plain, rerank_with_budget(cand, logp, k_max, budget, split.n_items))


def _full_scan(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    k_max: int = 20,
    batch_size: int = 1024,
    users: np.ndarray | None = None,
    n_candidates: int = 0,
) -> tuple[RankResult, np.ndarray | None, np.ndarray | None]:
    """One scoring pass of :func:`_rank_full_local`: the plain ranking, plus (when
    ``n_candidates`` > 0) every user's best unmasked items and their log p(i | u)."""
    users, targets = _eval_users(split, part, users)
    n, n_items = len(users), split.n_items
    excl = split.exclusion_matrix(part)
    k = min(k_max, n_items)
    recs = np.full((n, k_max), -1, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int64)
    ties = np.empty(n, dtype=np.int64)
    cand = logp = None
    if n_candidates:
        m = min(max(n_candidates, k_max), n_items)
        cand = np.full((n, m), -1, dtype=np.int64)
        logp = np.full((n, m), -np.inf)
    for start in range(0, n, batch_size):
        ub, tb = users[start : start + batch_size], targets[start : start + batch_size]
        scores = _scores(score_fn, ub, n_items)
        dev = scores.device
        rows, pos = expand_ranges(excl.indptr[ub], excl.indptr[ub + 1])
        ar = torch.arange(len(ub), device=dev)
        t = torch.from_numpy(tb).to(dev)
        scores[torch.from_numpy(rows).to(dev), torch.from_numpy(excl.indices[pos]).to(dev)] = -math.inf
        sl = slice(start, start + len(ub))
        ts = scores[ar, t]
        # A target at -inf (masked, or so scored) is never listed: rank beyond any list.
        gone = torch.isneginf(ts)
        r = torch.where(gone, max(n_items, k_max) + 1, 1 + (scores > ts[:, None]).sum(dim=1))
        b = torch.where(gone, 0, (scores == ts[:, None]).sum(dim=1) - 1)  # not the target itself
        ranks[sl], ties[sl] = r.cpu().numpy(), b.cpu().numpy()
        # Lists: the target goes after the items it ties with (next float below).
        scores[ar, t] = torch.nextafter(ts, torch.full_like(ts, -math.inf))
        if n_candidates:
            vals, idx = torch.topk(scores, m, dim=1)
            idx[torch.isneginf(vals)] = -1
            cand[start : start + len(ub)] = idx.cpu().numpy()
            lse = torch.logsumexp(scores, 1, keepdim=True)  # over u's unmasked items
            logp[start : start + len(ub)] = (vals - lse).double().cpu().numpy()
        vals, idx = torch.topk(scores, k, dim=1)
        idx[torch.isneginf(vals)] = -1
        recs[start : start + len(ub), :k] = idx.cpu().numpy()
    return RankResult(users=users, targets=targets, recs=recs, ranks=ranks, ties=ties), cand, logp


def reallocated(plain: RankResult, recs: np.ndarray) -> RankResult:
    """The :class:`RankResult` of lists ``recs`` ``[n, k_max]`` re-allocated from the
    plain ranking ``plain`` (the exposure budget, a re-ranker): the target's rank is
    its slot in the new list (ties 0), or, when the list left it out, the part of its
    plain tie range {rank_u, ..., rank_u + ties_u} beyond k_max (at least k_max + 1;
    MRR beyond the list is the unconstrained one)."""
    n, k_max = recs.shape
    ranks, ties, targets = plain.ranks, plain.ties, plain.targets
    slot = np.argmax(recs == targets[:, None], axis=1)
    hit = recs[np.arange(n), slot] == targets
    beyond = np.maximum(ranks, k_max + 1)  # the tie range cut to ranks > k_max
    return RankResult(users=plain.users, targets=targets, recs=recs,
                      ranks=np.where(hit, slot + 1, beyond),
                      ties=np.where(hit, 0, np.maximum(ranks + ties - beyond, 0)))


def full_candidates(split: Split, score_fn: ScoreFn, part: str = "test", n_candidates: int = 1000,
                    k_max: int = 20, batch_size: int = 1024, users: np.ndarray | None = None
                    ) -> tuple[RankResult, np.ndarray, np.ndarray]:
    """The plain full ranking (as :func:`rank_full` without a budget) and, from the same
    pass, each user's min(max(``n_candidates``, k_max), n_items) best unmasked items
    ``cand`` ``[n, M]`` (best first, -1 = none left) with log p(i | u) ``logp`` (float64,
    -inf on pads): the inputs of the exposure budget, for re-allocating under many
    knob values without re-scoring (:mod:`marl_two_tower.eval.frontier`). One process
    (not sharded), like the budget."""
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    return _full_scan(split, score_fn, part, k_max, batch_size, users, n_candidates)


def _interaction_keys(split: Split) -> np.ndarray:
    """Sorted unique keys u * n_items + i of every (user, item) pair in train/val/test."""
    n_items = split.n_items
    parts = [split.train_users * n_items + split.train_items]
    for target in (split.val_items, split.test_items):
        u = np.flatnonzero(target >= 0)
        parts.append(u * n_items + target[u])
    return np.unique(np.concatenate(parts))


def unseen_counts(split: Split, users: np.ndarray) -> np.ndarray:
    """|N_u| = n_items - |train_u union val_u union test_u| per user: how many items
    the sampled protocol can draw negatives from."""
    users = np.asarray(users, dtype=np.int64)
    keys = _interaction_keys(split)
    n_items = split.n_items
    return n_items - (np.searchsorted(keys, (users + 1) * n_items) - np.searchsorted(keys, users * n_items))


def sampled_protocol_shortage(split: Split, n_neg: int, part: str = "test") -> tuple[int, int] | None:
    """(user, |N_u|) of the ``part`` user with the fewest unseen items when some
    |N_u| < ``n_neg`` (the sampled protocol of :func:`rank_sampled` cannot draw its
    negatives), else None; None too when the data ship the test negatives."""
    if part == "test" and split.test_negatives is not None:
        return None
    users = split.eval_users(part)
    if not len(users):
        return None
    avail = unseen_counts(split, users)
    j = int(np.argmin(avail))
    return (int(users[j]), int(avail[j])) if avail[j] < n_neg else None


def sample_negatives(split: Split, users: np.ndarray, n_neg: int = 99, seed: int = 12345) -> np.ndarray:
    """Uniform negatives without replacement, ``[len(users), n_neg]``.

    For each user u, a uniformly random ``n_neg``-subset of N_u = I \\ (train_u
    union val_u union test_u), the items u never interacted with. Drawn by
    vectorised rejection (items drawn i.i.d. uniformly over I; seen items and
    repeats are dropped and the first ``n_neg`` survivors kept, which is uniform
    sampling without replacement from N_u); users whose N_u is too small for
    rejection to be efficient get a dense random-key draw instead. Deterministic
    for a given ``seed`` and ``users`` array. Raises ValueError when some
    |N_u| < ``n_neg``.
    """
    users = np.asarray(users, dtype=np.int64)
    n, n_items = len(users), split.n_items
    keys = _interaction_keys(split)
    key_start = np.searchsorted(keys, users * n_items)
    key_end = np.searchsorted(keys, (users + 1) * n_items)
    avail = n_items - (key_end - key_start)
    if (avail < n_neg).any():
        u = int(users[np.argmin(avail)])
        raise ValueError(
            f"user {u} has only {int(avail.min())} non-interacted items, {n_neg} negatives needed "
            "(eval.sampled_negatives; the sampled protocol needs that many unseen items per user)"
        )
    rng = np.random.default_rng(seed)
    out = np.full((n, n_neg), -1, dtype=np.int64)
    todo = np.arange(n)
    for _ in range(4):
        if not todo.size or n_neg == 0:
            break
        # Enough draws that a row of median density expects ~1.3 n_neg survivors.
        # Rows that fall short are redrawn from scratch: success does not depend on
        # which unseen items were drawn, so the kept subsets stay uniform.
        frac = float(np.median(avail[todo])) / n_items
        m = int(math.ceil(1.3 * n_neg / frac)) + 8
        if m >= n_items:
            break  # the dense draw below is cheaper than this many rejections
        cand = rng.integers(0, n_items, size=(len(todo), m))
        ck = users[todo, None] * n_items + cand
        hit = np.searchsorted(keys, ck)
        seen = keys[np.minimum(hit, len(keys) - 1)] == ck if len(keys) else np.zeros_like(ck, bool)
        # Repeats within a row: after a stable sort, later copies of a value follow
        # its first draw, so the first draw is the one kept.
        order = np.argsort(cand, axis=1, kind="stable")
        srt = np.take_along_axis(cand, order, axis=1)
        dup_sorted = np.zeros_like(srt, dtype=bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = np.empty_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        keep = ~seen & ~dup
        csum = np.cumsum(keep, axis=1)
        ok = csum[:, -1] >= n_neg
        take = keep[ok] & (csum[ok] <= n_neg)
        out[todo[ok]] = cand[ok][take].reshape(-1, n_neg)
        todo = todo[~ok]
    if todo.size and n_neg:
        out[todo] = _dense_negatives(users[todo], keys, key_start[todo], key_end[todo], n_items, n_neg, rng)
    return out


def _dense_negatives(
    users: np.ndarray,
    keys: np.ndarray,
    key_start: np.ndarray,
    key_end: np.ndarray,
    n_items: int,
    n_neg: int,
    rng: np.random.Generator,
    chunk: int = 256,
) -> np.ndarray:
    """Exact uniform subsets for dense users: the n_neg smallest i.i.d. random keys
    among the unseen items (seen items get key 2 > any uniform key)."""
    out = np.empty((len(users), n_neg), dtype=np.int64)
    for s in range(0, len(users), chunk):
        sl = slice(s, s + chunk)
        r = rng.random((len(users[sl]), n_items))
        rows, pos = expand_ranges(key_start[sl], key_end[sl])
        r[rows, keys[pos] % n_items] = 2.0
        out[sl] = np.argpartition(r, n_neg - 1, axis=1)[:, :n_neg]
    return out


def _rank_sampled_local(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    n_neg: int = 99,
    seed: int = 12345,
    k_max: int = 20,
    batch_size: int = 1024,
) -> RankResult:
    """Sampled ranking: each target against ``n_neg`` negatives (NCF protocol).

    Candidates C_u = {t_u} union Neg_u, where Neg_u is ``split.test_negatives[u]``
    when the data ship negatives and ``part='test'`` (then ``n_neg`` is their
    number), else :func:`sample_negatives` (uniform over never-interacted items,
    ``seed``). Negatives are by construction not interacted; the masking rule of
    :func:`rank_full` applies to the target too (a target that is also a train or,
    for test, the validation item scores -inf), so no label decides what is masked.

        rank_u = 1 + |{ j in Neg_u : s_u(j) > s_u(t_u) }|   (in 1..|C_u|)
        ties_u = |{ j in Neg_u : s_u(j) = s_u(t_u) }|

    Ties cost the target as in :func:`rank_full`: the metrics take its rank as
    uniform on {rank_u, ..., rank_u + ties_u}, and ``recs`` (top-``k_max``
    candidates, stable sort with the target last) place it after its ties.
    """
    users, targets = _eval_users(split, part, None)
    if part == "test" and split.test_negatives is not None:
        negs = split.test_negatives[users]
        if (negs < 0).any():
            raise ValueError("split.test_negatives has no negatives for some test users")
    else:
        negs = sample_negatives(split, users, n_neg, seed)
    cands = np.concatenate([targets[:, None], negs], axis=1)
    # 1 where the target is in the user's masked set E_u (re-consumed items)
    target_masked = np.asarray(split.exclusion_matrix(part)[users, targets]).ravel() > 0
    n, c = cands.shape
    k = min(k_max, c)
    recs = np.full((n, k_max), -1, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int64)
    ties = np.empty(n, dtype=np.int64)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        scores = _scores(score_fn, users[sl], split.n_items)
        cb = torch.from_numpy(cands[sl]).to(scores.device)
        cs = torch.gather(scores, 1, cb)
        cs[torch.from_numpy(target_masked[sl]).to(cs.device), 0] = -math.inf
        ranks[sl] = (1 + (cs[:, 1:] > cs[:, :1]).sum(dim=1)).cpu().numpy()
        ties[sl] = (cs[:, 1:] == cs[:, :1]).sum(dim=1).cpu().numpy()
        # The target last, so that the stable sort puts it after its ties.
        cb, cs = cb.roll(-1, dims=1), cs.roll(-1, dims=1)
        order = torch.sort(cs, dim=1, descending=True, stable=True).indices[:, :k]
        recs[sl, :k] = torch.gather(cb, 1, order).cpu().numpy()
    return RankResult(users=users, targets=targets, recs=recs, ranks=ranks, ties=ties)


# Shard-aware entry points: one process scores everything; under DDP each rank
# scores its run of whole evaluation batches and the rows are all-gathered.

def _concat(parts: list[RankResult]) -> RankResult:
    return RankResult(users=np.concatenate([p.users for p in parts]),
                      targets=np.concatenate([p.targets for p in parts]),
                      recs=np.concatenate([p.recs for p in parts]),
                      ranks=np.concatenate([p.ranks for p in parts]),
                      ties=np.concatenate([p.ties for p in parts]))


def rank_full(split: Split, score_fn: ScoreFn, part: str = "test", k_max: int = 20,
              batch_size: int = 1024, users: np.ndarray | None = None,
              budget: ExposureBudget | None = None) -> RankResult:
    """:func:`marl_two_tower.evaluation.rank_full`, sharded over the ranks and gathered.

    Identical result: the shards are runs of whole evaluation batches, so every
    batch a rank scores is a batch the single-process loop scores. An exposure
    ``budget`` allocates all users' lists jointly, so it is not sharded: every rank
    runs the whole (cheap) ranking and gets the same lists.
    """
    ctx = current()
    if ctx is None or budget is not None:
        return _rank_full_local(split, score_fn, part, k_max, batch_size, users, budget)
    all_users = np.ascontiguousarray(split.eval_users(part) if users is None else users, np.int64)
    lo, hi = batch_shards(len(all_users), batch_size, ctx.world_size)[ctx.rank]
    mine = _rank_full_local(split, score_fn, part, k_max, batch_size, all_users[lo:hi])
    return _concat(ctx.all_gather_object(mine))


class _OwnedBatches:
    """A score function that scores only this rank's batches (zeros elsewhere)."""

    def __init__(self, score_fn: ScoreFn, n_items: int, owned: range) -> None:
        self.score_fn, self.n_items, self.owned, self.calls = score_fn, n_items, owned, 0

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        b, self.calls = self.calls, self.calls + 1
        if b in self.owned:
            return self.score_fn(users)
        return torch.zeros(len(users), self.n_items)


def rank_sampled(split: Split, score_fn: ScoreFn, part: str = "test", n_neg: int = 99,
                 seed: int = 12345, k_max: int = 20, batch_size: int = 1024) -> RankResult:
    """:func:`marl_two_tower.evaluation.rank_sampled`, sharded by evaluation batch.

    The negatives are drawn for all users on every rank (same seed, so the same
    draw); each rank scores only its own batches and the rows are gathered.
    """
    ctx = current()
    if ctx is None:
        return _rank_sampled_local(split, score_fn, part, n_neg, seed, k_max, batch_size)
    n = len(split.eval_users(part))
    shards = batch_shards(n, batch_size, ctx.world_size)
    lo, hi = shards[ctx.rank]
    owned = range(lo // batch_size, -(-hi // batch_size))  # batch indices of [lo, hi)
    res = _rank_sampled_local(split, _OwnedBatches(score_fn, split.n_items, owned), part, n_neg, seed,
                          k_max, batch_size)
    mine = RankResult(res.users[lo:hi], res.targets[lo:hi], res.recs[lo:hi], res.ranks[lo:hi],
                      res.ties[lo:hi])
    return _concat(ctx.all_gather_object(mine))


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------


def _user_groups(split: Split, users: np.ndarray) -> dict[str, tuple[np.ndarray, list[str]]]:
    ds = split.dataset
    return {
        name: (np.asarray(codes)[users], list(ds.user_feature_labels.get(name, [])))
        for name, codes in ds.user_features.items()
    }


def summarize(
    result: RankResult,
    split: Split,
    ks: Sequence[int] = (5, 10, 20),
    protocol: Literal["full", "sampled"] = "full",
    groups: bool = True,
) -> dict[str, Any]:
    """Metrics of one ranking (JSON-serialisable; see :func:`metrics.compute_metrics`).

    ``full``: every list metric @K, MRR over the full ranking, and (``groups``) HR@K
    per demographic group of ``split.dataset.user_features``. ``sampled``: only
    HR@K, NDCG@K and MRR over the candidates; list-level metrics over 100
    candidates would be meaningless. Both protocols take every hit-based metric
    from the one rank of :class:`RankResult` (expectation over random tie-breaking:
    :func:`marl_two_tower.metrics.expected_hits`, ``expected_ndcg``, ``expected_rr``).
    """
    if protocol == "sampled":
        r, b = result.ranks, result.ties
        out: dict[str, Any] = {}
        for k in sorted(ks):
            out[f"HR@{k}"] = float(np.mean(M.expected_hits(r, b, k))) if len(r) else None
            out[f"NDCG@{k}"] = float(np.mean(M.expected_ndcg(r, b, k))) if len(r) else None
        out["MRR"] = float(np.mean(M.expected_rr(r, b))) if len(r) else None
        return out
    return M.compute_metrics(
        result.recs,
        result.targets,
        ks=ks,
        n_items=split.n_items,
        item_pop=split.item_pop,
        tail_mask=split.tail_mask,
        ranks=result.ranks,
        ties=result.ties,
        groups=_user_groups(split, result.users) if groups else None,
    )


def _tail_info(split: Split) -> dict[str, Any]:
    return {
        "by": split.tail_by,
        "fraction": split.tail_fraction,
        "n_tail_items": int(split.tail_mask.sum()),
    }


def evaluate(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    protocol: Protocol = "full",
    batch_size: int = 1024,
    groups: bool = True,
    n_neg: int = 99,
    seed: int = 12345,
    budget: ExposureBudget | None = None,
) -> dict[str, Any]:
    """Evaluate a scorer on ``part`` ('val' or 'test'); JSON-serialisable result.

    Returns ``{"part", "n_users", "n_items", "tail": {"by", "fraction",
    "n_tail_items"}, "full": {...}, "sampled": {...}, "sampled_protocol":
    {"n_negatives", "negatives"}}`` with the protocols asked for (``both`` = full
    and sampled), and ``"groups": "n/a: ..."`` when group metrics are asked for but
    the data have no demographics. Metric definitions: :mod:`marl_two_tower.metrics`; undefined
    values (e.g. TailHR with no tail targets) are None. ``budget`` allocates the
    full-protocol lists under an exposure cap (:func:`rank_full`); the sampled
    protocol ranks 100 candidates per user and is never capped.
    """
    if protocol not in ("full", "sampled", "both"):
        raise ValueError(f"protocol must be full, sampled or both, got {protocol!r}")
    k_max = max(ks)
    out: dict[str, Any] = {
        "part": part,
        "n_users": int(len(split.eval_users(part))),
        "n_items": split.n_items,
        "tail": _tail_info(split),
    }
    if protocol in ("full", "both"):
        res = rank_full(split, score_fn, part, k_max=k_max, batch_size=batch_size, budget=budget)
        out["full"] = summarize(res, split, ks, "full", groups)
        if groups and not split.dataset.user_features:
            out["groups"] = "n/a: the data have no user demographics (no user table)"
    if protocol in ("sampled", "both"):
        res = rank_sampled(split, score_fn, part, n_neg, seed, k_max, batch_size)
        given = part == "test" and split.test_negatives is not None
        out["sampled"] = summarize(res, split, ks, "sampled")
        out["sampled_protocol"] = {
            "n_negatives": int(split.test_negatives.shape[1] if given else n_neg),
            "negatives": "given" if given else f"uniform(seed={seed})",
        }
    return out


def evaluate_per_user(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    protocol: Literal["full", "sampled"] = "full",
    batch_size: int = 1024,
    n_neg: int = 99,
    seed: int = 12345,
    budget: ExposureBudget | None = None,
) -> tuple[RankResult, dict[str, np.ndarray]]:
    """Per-user values for paired significance tests and user bootstraps.

    Returns the :class:`RankResult` (its ``users`` align the rows; its ``recs``
    allow bootstrapping list-level metrics such as Coverage and Gini) and
    :func:`metrics.per_user` arrays ``hit@K``, ``ndcg@K``, ``tailhit@K`` (NaN for
    head targets), ``is_tail`` and ``rr`` = 1/rank_u. Same seed and split give the
    same users in the same order, so two models' arrays pair up.
    """
    if protocol == "full":
        res = rank_full(split, score_fn, part, k_max=max(ks), batch_size=batch_size, budget=budget)
    elif protocol == "sampled":
        res = rank_sampled(split, score_fn, part, n_neg, seed, max(ks), batch_size)
    else:
        raise ValueError(f"protocol must be full or sampled, got {protocol!r}")
    return res, M.per_user(res.recs, res.targets, split.tail_mask, ks, ranks=res.ranks, ties=res.ties)






















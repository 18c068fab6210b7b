"""Top-K ranking, coverage, exposure and fairness metrics (DESIGN §5).

Every function is a pure function of numpy arrays. Notation used in the docstrings:

* ``U`` evaluated users, one held-out **target** item ``t_u`` each (leave-one-out,
  so there is exactly one relevant item per user);
* ``L_u`` the top-K list of user ``u``: row ``u`` of ``recs[:, :K]``, item indices,
  best first, ``-1`` marks an empty slot (a list shorter than K);
* ``pos_u`` the 1-based position of ``t_u`` in the *untruncated* list, ``rank_u``
  the 1-based rank of ``t_u`` in the *full* ranking of the catalogue (from the
  evaluation harness);
* with score ties (harness results carry them): ``r_u = 1 + a_u`` and ``b_u``, where
  a_u / b_u count the ranked items scoring strictly above / exactly as ``t_u``. Ties
  are broken uniformly at random, so the target's rank R_u is uniform on
  {r_u, ..., r_u + b_u} and every hit-based metric is its expectation over that
  draw (:func:`expected_hits`, :func:`expected_ndcg`, :func:`expected_rr`): a
  constant scorer scores exactly what a random ranking scores;
* ``I`` the catalogue, ``n = |I|``; ``pop(i)`` train interaction count of item i;
  ``T`` the tail set, ``H = I \\ T`` the head set (train popularity, see
  :func:`marl_two_tower.data.split.tail_items`).

Lists are computed once, at the longest K, and each metric @K reads the first K
columns, so the lists at every K are prefixes of one ranking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import digamma

from marl_two_tower.metrics.gini import gini

__all__ = [
    "avg_popularity",
    "compute_metrics",
    "expected_hits",
    "expected_ndcg",
    "expected_rr",
    "coverage",
    "exposure",
    "gini",
    "group_hit_rate",
    "head_hit_rate",
    "hit_positions",
    "hit_rate",
    "mrr",
    "ndcg",
    "per_user",
    "redundancy",
    "tail_hit_rate",
]


def _check_lists(recs: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
    recs = np.asarray(recs)
    if recs.ndim != 2:
        raise ValueError(f"recs must be 2-D [n_users, K], got shape {recs.shape}")
    if not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recs must hold integer item indices, got dtype {recs.dtype}")
    if targets is not None and np.shape(targets) != (recs.shape[0],):
        raise ValueError(f"targets must have shape ({recs.shape[0]},), got {np.shape(targets)}")
    return recs


def _mean(x: np.ndarray) -> float:
    """Mean that is NaN (not a warning) on an empty array."""
    return float(x.mean()) if x.size else math.nan


def hit_positions(recs: np.ndarray, targets: np.ndarray, k: int | None = None) -> np.ndarray:
    """1-based position of each user's target in its list, 0 when absent.

    pos_u = min{ j <= K : L_u[j] = t_u }, or 0 if t_u is not in L_u. Empty slots
    (-1) never match, so a target of -1 is never a hit.
    """
    recs = _check_lists(recs, targets)
    if k is not None:
        recs = recs[:, :k]
    targets = np.asarray(targets)
    match = (recs == targets[:, None]) & (recs >= 0)
    found = match.any(axis=1)
    # argmax returns the first True column; +1 turns it into a 1-based position.
    return np.where(found, match.argmax(axis=1) + 1, 0).astype(np.int64)


def hit_rate(recs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """HR@K = (1/|U|) sum_u 1[t_u in L_u[:K]] (NaN when there are no users)."""
    return _mean((hit_positions(recs, targets, k) > 0).astype(np.float64))


def _ndcg_per_user(pos: np.ndarray) -> np.ndarray:
    # With one relevant item the ideal DCG is 1/log2(1+1) = 1, so NDCG = DCG.
    out = np.zeros(pos.shape, dtype=np.float64)
    hit = pos > 0
    out[hit] = 1.0 / np.log2(pos[hit] + 1.0)
    return out


def ndcg(recs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item per user.

    NDCG@K = (1/|U|) sum_u 1[pos_u <= K] / log2(pos_u + 1), pos_u 1-based; the
    ideal DCG is 1 (the target at position 1), so no further normalisation.
    """
    return _mean(_ndcg_per_user(hit_positions(recs, targets, k)))


def mrr(ranks: np.ndarray) -> float:
    """MRR = (1/|U|) sum_u 1 / rank_u, rank_u the 1-based rank in the full ranking.

    Given list positions instead (0 = not in the list), it is MRR@K: absent
    targets contribute 0.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    rr = np.zeros(ranks.shape, dtype=np.float64)
    np.divide(1.0, ranks, out=rr, where=ranks > 0)
    return _mean(rr)


def _tie_args(ranks: np.ndarray, ties: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(ranks, dtype=np.int64)
    b = np.zeros_like(r) if ties is None else np.asarray(ties, dtype=np.int64)
    if r.shape != b.shape:
        raise ValueError(f"ranks {r.shape} and ties {b.shape} must align")
    if r.size and (r.min() < 1 or b.min() < 0):
        raise ValueError("ranks must be >= 1 and ties >= 0")
    return r, b


def expected_hits(ranks: np.ndarray, ties: np.ndarray | None, k: int) -> np.ndarray:
    """Per-user hit@K under uniformly random tie-breaking.

    With R_u uniform on {r_u, ..., r_u + b_u} (``ranks`` = r_u, ``ties`` = b_u):
    P(R_u <= K) = clip(K - r_u + 1, 0, b_u + 1) / (b_u + 1). Without ties this is
    1[r_u <= K].
    """
    r, b = _tie_args(ranks, ties)
    return np.clip(k - r + 1, 0, b + 1) / (b + 1.0)


def expected_ndcg(ranks: np.ndarray, ties: np.ndarray | None, k: int) -> np.ndarray:
    """Per-user NDCG@K under uniformly random tie-breaking (one relevant item).

    E[1[R_u <= K] / log2(R_u + 1)] = (1 / (b_u + 1)) sum_{p = r_u}^{min(r_u + b_u, K)}
    1 / log2(p + 1), computed from prefix sums of 1/log2(p + 1) over p = 1..K
    (exactly 1[r_u <= K] / log2(r_u + 1) when b_u = 0).
    """
    r, b = _tie_args(ranks, ties)
    c = np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))))
    lo = np.minimum(r, k + 1)  # c[lo - 1] = sum over p < r_u (capped at K)
    hi = np.minimum(r + b, k)
    spread = np.where(r <= k, c[np.maximum(hi, 0)] - c[lo - 1], 0.0) / (b + 1.0)
    # no tie: the plain 1/log2(r + 1), bit for bit (not a difference of prefix sums)
    return np.where(b == 0, np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0), spread)


def expected_rr(ranks: np.ndarray, ties: np.ndarray | None) -> np.ndarray:
    """Per-user reciprocal rank under uniformly random tie-breaking.

    E[1 / R_u] = (1 / (b_u + 1)) sum_{p = r_u}^{r_u + b_u} 1/p
    = (H_{r_u + b_u} - H_{r_u - 1}) / (b_u + 1), with harmonic numbers
    H_n = psi(n + 1) + gamma (digamma); exactly 1 / r_u when b_u = 0.
    """
    r, b = _tie_args(ranks, ties)
    rf, bf = r.astype(np.float64), b.astype(np.float64)
    spread = (digamma(rf + bf + 1.0) - digamma(rf)) / (bf + 1.0)
    return np.where(b == 0, 1.0 / rf, spread)


def exposure(recs: np.ndarray, k: int, n_items: int) -> np.ndarray:
    """Exposure count per catalogue item: x_i = sum_u 1[i in L_u[:K]], shape [n_items].

    Items never recommended have x_i = 0 (they are part of the catalogue).
    """
    top = _check_lists(recs)[:, :k]
    top = top[top >= 0]
    if top.size and top.max() >= n_items:
        raise ValueError(f"item index {int(top.max())} out of range for n_items={n_items}")
    return np.bincount(top, minlength=n_items).astype(np.int64)


def coverage(recs: np.ndarray, k: int, n_items: int) -> float:
    """Coverage@K = |union_u L_u[:K]| / n (catalogue coverage, in [0, 1])."""
    if n_items <= 0:
        return math.nan
    return float(np.count_nonzero(exposure(recs, k, n_items))) / n_items




def _tail_hits(
    recs: np.ndarray, targets: np.ndarray, tail_mask: np.ndarray, k: int, want_tail: bool
) -> float:
    targets = np.asarray(targets)
    in_group = np.asarray(tail_mask, dtype=bool)[targets] == want_tail
    hits = hit_positions(recs, targets, k) > 0
    return _mean(hits[in_group].astype(np.float64))


def tail_hit_rate(recs: np.ndarray, targets: np.ndarray, tail_mask: np.ndarray, k: int) -> float:
    """TailHR@K = HR@K over U_T = {u : t_u in T}; NaN when U_T is empty."""
    return _tail_hits(recs, targets, tail_mask, k, want_tail=True)


def head_hit_rate(recs: np.ndarray, targets: np.ndarray, tail_mask: np.ndarray, k: int) -> float:
    """HeadHR@K = HR@K over U_H = {u : t_u in H}; NaN when U_H is empty."""
    return _tail_hits(recs, targets, tail_mask, k, want_tail=False)


def redundancy(recs: np.ndarray, tail_mask: np.ndarray, k: int) -> float:
    """Redundancy@K = share of filled list slots holding head items.

    Redundancy@K = sum_u |{j <= K : L_u[j] in H}| / sum_u |{j <= K : L_u[j] != -1}|;
    NaN when no slot is filled. Empty slots are not counted, so a short list is
    not rewarded for its emptiness.
    """
    top = _check_lists(recs)[:, :k]
    filled = top[top >= 0]
    return _mean((~np.asarray(tail_mask, dtype=bool)[filled]).astype(np.float64))


def avg_popularity(recs: np.ndarray, item_pop: np.ndarray, k: int) -> float:
    """AvgPop@K = mean train popularity of recommended items over filled slots.

    AvgPop@K = sum_u sum_{i in L_u[:K]} pop(i) / sum_u |L_u[:K]| (raw train
    interaction counts; lower means less popularity-biased lists).
    """
    top = _check_lists(recs)[:, :k]
    filled = top[top >= 0]
    return _mean(np.asarray(item_pop, dtype=np.float64)[filled])


def group_hit_rate(hits: np.ndarray, codes: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """HR per group of a categorical user feature, with its spread across groups.

    For group g with users U_g = {u : code_u = g} (code -1 = unknown, excluded):
    HR_g = (1/|U_g|) sum_{u in U_g} hit_u. Over the groups with |U_g| >= 1:
    std = sqrt((1/m) sum_g (HR_g - mean_g HR_g)^2) (population std, ddof = 0) and
    gap = max_g HR_g - min_g HR_g. Groups without users are left out (no HR), and
    std/gap are NaN when no group has users.

    Returns ``{"HR": {label: HR_g}, "n_users": {label: |U_g|}, "std": .., "gap": ..}``.
    """
    hits = np.asarray(hits, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    if hits.shape != codes.shape:
        raise ValueError(f"hits {hits.shape} and codes {codes.shape} must align")
    known = codes >= 0
    n_groups = len(labels)
    if known.any() and codes[known].max() >= n_groups:
        raise ValueError(f"group code {int(codes[known].max())} has no label")
    counts = np.bincount(codes[known], minlength=n_groups)
    sums = np.bincount(codes[known], weights=hits[known], minlength=n_groups)
    present = np.flatnonzero(counts > 0)
    rates = sums[present] / counts[present]
    return {
        "HR": {str(labels[g]): float(r) for g, r in zip(present, rates, strict=True)},
        "n_users": {str(labels[g]): int(counts[g]) for g in present},
        "std": float(rates.std()) if rates.size else math.nan,
        "gap": float(rates.max() - rates.min()) if rates.size else math.nan,
    }


def per_user(
    recs: np.ndarray,
    targets: np.ndarray,
    tail_mask: np.ndarray,
    ks: Sequence[int],
    ranks: np.ndarray | None = None,
    ties: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-user metric values, aligned with the rows of ``recs`` (for paired tests).

    For every K in ``ks``: ``hit@K`` (1[pos_u <= K], float), ``ndcg@K``
    (1[pos_u <= K] / log2(pos_u + 1)) and ``tailhit@K`` (= hit@K for users whose
    target is tail, NaN otherwise, so ``nanmean`` gives TailHR@K); ``is_tail``
    (bool); ``rr`` = 1/rank_u when ``ranks`` is given. Means over users reproduce
    :func:`hit_rate`, :func:`ndcg`, :func:`tail_hit_rate` and :func:`mrr`.

    With ``ties`` (and ``ranks``; the harness's results) every value comes from the
    rank instead of the list, as its expectation under random tie-breaking
    (:func:`expected_hits`, :func:`expected_ndcg`, :func:`expected_rr`), so hit@K
    may be fractional for a target tied across the cut-off.
    """
    recs = _check_lists(recs, targets)
    targets = np.asarray(targets)
    is_tail = np.asarray(tail_mask, dtype=bool)[targets]
    if ties is not None and ranks is None:
        raise ValueError("ties need ranks")
    pos = hit_positions(recs, targets)
    out: dict[str, np.ndarray] = {"is_tail": is_tail}
    for k in ks:
        if ties is not None:
            hit, gain = expected_hits(ranks, ties, k), expected_ndcg(ranks, ties, k)
        else:
            pos_k = np.where(pos <= k, pos, 0)
            hit, gain = (pos_k > 0).astype(np.float64), _ndcg_per_user(pos_k)
        out[f"hit@{k}"] = hit
        out[f"ndcg@{k}"] = gain
        out[f"tailhit@{k}"] = np.where(is_tail, hit, np.nan)
    if ranks is not None:
        out["rr"] = expected_rr(ranks, ties)
    return out


def _none_if_nan(v: float) -> float | None:
    # JSON has no NaN; "no such users" is reported as null.
    return None if isinstance(v, float) and math.isnan(v) else v


def compute_metrics(
    recs: np.ndarray,
    targets: np.ndarray,
    *,
    ks: Sequence[int],
    n_items: int,
    item_pop: np.ndarray,
    tail_mask: np.ndarray,
    ranks: np.ndarray | None = None,
    ties: np.ndarray | None = None,
    groups: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """All list metrics for every K in ``ks``, as a JSON-serialisable dict.

    Keys: ``HR@K``, ``NDCG@K``, ``Coverage@K``, ``Gini@K`` (Gini of
    :func:`exposure` over all n items), ``TailHR@K``, ``HeadHR@K``,
    ``Redundancy@K``, ``AvgPop@K``; ``MRR`` (full-ranking 1/rank) when ``ranks``
    is given, otherwise ``MRR@K`` for the largest K (reciprocal list position, 0
    beyond the list). ``groups`` maps a feature name to (codes aligned with the
    users, labels) and adds ``groups[name] = {"HR@K": {label: HR}, "std@K", "gap@K",
    "n_users": {label: count}}``. Undefined values (NaN) are reported as None.

    With ``ties`` (the harness passes ``ranks`` and ``ties``) HR, NDCG, MRR,
    TailHR, HeadHR and group HR all come from the one rank r_u (expected values
    under random tie-breaking, see :func:`per_user`); the lists then only feed
    Coverage, Gini, Redundancy and AvgPop.
    """
    recs = _check_lists(recs, targets)
    targets = np.asarray(targets)
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    if max(ks) > recs.shape[1]:
        raise ValueError(f"lists have {recs.shape[1]} columns, cannot compute @{max(ks)}")
    out: dict[str, Any] = {}
    pu = per_user(recs, targets, tail_mask, ks, ranks=ranks, ties=ties)
    is_tail = pu["is_tail"]
    for k in sorted(ks):
        hit = pu[f"hit@{k}"]
        out[f"HR@{k}"] = _mean(hit)
        out[f"NDCG@{k}"] = _mean(pu[f"ndcg@{k}"])
        out[f"Coverage@{k}"] = coverage(recs, k, n_items)
        out[f"Gini@{k}"] = gini(exposure(recs, k, n_items))
        out[f"TailHR@{k}"] = _mean(hit[is_tail])
        out[f"HeadHR@{k}"] = _mean(hit[~is_tail])
        out[f"Redundancy@{k}"] = redundancy(recs, tail_mask, k)
        out[f"AvgPop@{k}"] = avg_popularity(recs, item_pop, k)
    if ranks is not None:
        out["MRR"] = _mean(pu["rr"])
    else:
        k = max(ks)
        out[f"MRR@{k}"] = mrr(hit_positions(recs, targets, k))
    out = {key: _none_if_nan(v) for key, v in out.items()}
    if groups:
        out["groups"] = {}
        for name, (codes, labels) in groups.items():
            entry: dict[str, Any] = {}
            for k in sorted(ks):
                g = group_hit_rate(pu[f"hit@{k}"], codes, labels)
                entry[f"HR@{k}"] = g["HR"]
                entry[f"std@{k}"] = _none_if_nan(g["std"])
                entry[f"gap@{k}"] = _none_if_nan(g["gap"])
                entry["n_users"] = g["n_users"]
            out["groups"][name] = entry
    return out

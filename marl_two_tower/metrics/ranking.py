"""Top-K ranking, coverage, exposure and fairness metrics (DESIGN §5).

Every function is a pure function of numpy arrays. Notation used in the docstrings:

* ``U`` evaluated users, one held-out **target** item ``t_u`` each (leave-one-out,
  so there is exactly one relevant item per user);
* ``L_u`` the top-K list of user ``u``: row ``u`` of ``recs[:, :K]``, item indices,
  best first, ``-1`` marks an empty slot (a list shorter than K);
* ``pos_u`` the 1-based position of ``t_u`` in the *untruncated* list, ``rank_u``
  the 1-based rank of ``t_u`` in the *full* ranking of the catalogue (from the
  evaluation harness);
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

from marl_two_tower.metrics.gini import gini

__all__ = [
    "avg_popularity",
    "compute_metrics",
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
) -> dict[str, np.ndarray]:
    """Per-user metric values, aligned with the rows of ``recs`` (for paired tests).

    For every K in ``ks``: ``hit@K`` (1[pos_u <= K], float), ``ndcg@K``
    (1[pos_u <= K] / log2(pos_u + 1)) and ``tailhit@K`` (= hit@K for users whose
    target is tail, NaN otherwise, so ``nanmean`` gives TailHR@K); ``is_tail``
    (bool); ``rr`` = 1/rank_u when ``ranks`` is given. Means over users reproduce
    :func:`hit_rate`, :func:`ndcg`, :func:`tail_hit_rate` and :func:`mrr`.
    """
    recs = _check_lists(recs, targets)
    targets = np.asarray(targets)
    is_tail = np.asarray(tail_mask, dtype=bool)[targets]
    pos = hit_positions(recs, targets)
    out: dict[str, np.ndarray] = {"is_tail": is_tail}
    for k in ks:
        pos_k = np.where(pos <= k, pos, 0)
        hit = (pos_k > 0).astype(np.float64)
        out[f"hit@{k}"] = hit
        out[f"ndcg@{k}"] = _ndcg_per_user(pos_k)
        out[f"tailhit@{k}"] = np.where(is_tail, hit, np.nan)
    if ranks is not None:
        out["rr"] = 1.0 / np.asarray(ranks, dtype=np.float64)
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
    """
    recs = _check_lists(recs, targets)
    targets = np.asarray(targets)
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    if max(ks) > recs.shape[1]:
        raise ValueError(f"lists have {recs.shape[1]} columns, cannot compute @{max(ks)}")
    out: dict[str, Any] = {}
    pos = hit_positions(recs, targets)
    for k in sorted(ks):
        pos_k = np.where(pos <= k, pos, 0)
        out[f"HR@{k}"] = _mean((pos_k > 0).astype(np.float64))
        out[f"NDCG@{k}"] = _mean(_ndcg_per_user(pos_k))
        out[f"Coverage@{k}"] = coverage(recs, k, n_items)
        out[f"Gini@{k}"] = gini(exposure(recs, k, n_items))
        out[f"TailHR@{k}"] = tail_hit_rate(recs, targets, tail_mask, k)
        out[f"HeadHR@{k}"] = head_hit_rate(recs, targets, tail_mask, k)
        out[f"Redundancy@{k}"] = redundancy(recs, tail_mask, k)
        out[f"AvgPop@{k}"] = avg_popularity(recs, item_pop, k)
    if ranks is not None:
        out["MRR"] = mrr(ranks)
    else:
        k = max(ks)
        out[f"MRR@{k}"] = mrr(np.where(pos <= k, pos, 0))
    out = {key: _none_if_nan(v) for key, v in out.items()}
    if groups:
        out["groups"] = {}
        for name, (codes, labels) in groups.items():
            entry: dict[str, Any] = {}
            for k in sorted(ks):
                g = group_hit_rate((pos > 0) & (pos <= k), codes, labels)
                entry[f"HR@{k}"] = g["HR"]
                entry[f"std@{k}"] = _none_if_nan(g["std"])
                entry[f"gap@{k}"] = _none_if_nan(g["gap"])
                entry["n_users"] = g["n_users"]
            out["groups"][name] = entry
    return out

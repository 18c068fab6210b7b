"""Structure statistics of an interaction dataset: what makes data "look like MovieLens".

:func:`data_profile` measures, on any :class:`Dataset`, the statistics the synthetic
generator is calibrated against (``benchmarks/synthetic_realism.py``, docs/data.md):

* **Popularity**: Gini of the item interaction counts (every catalogue item, zeros
  included; :func:`marl_two_tower.metrics.gini.gini`), the share of interactions held
  by the top 10% and top 1% items, the share of items with fewer than 5 interactions.
* **History lengths**: min, median, mean, 90th percentile, max of interactions per user.
* **Genres**: genres per item, and the share of interactions by genre (an item with k
  genres counts 1/k for each), sorted descending.
* **Order** (histories in time order, ties by file order):
  ``successor_hit`` = for the users of one random half, the share of consecutive pairs
  (a, b) whose b is among a's 10 most frequent successors in the other half's
  histories; ``successor_hit_shuffled`` = the same with each user's history shuffled
  (same items, order destroyed); their ratio ``sequential_lift`` is 1 when order
  carries no item-to-item signal.
  ``drift_gap`` = mean cosine between a user's genre vectors (the items' genre shares
  summed) over adjacent quarters of the history (1st-2nd and 3rd-4th, averaged) minus
  over the first and last quarter: > 0 when tastes drift slowly (far parts of a
  history differ more than near parts; short-range transitions barely touch it).
  ``pop_first_decile`` / ``pop_last_decile`` = mean popularity percentile of the items
  in the first / last tenth of the histories.
* **Segment affinity** (from the ``gender``/``age`` and ``occupation`` user features):
  for the items of a popularity band, the mean KL divergence of the item's consumers
  over the segments from the population's interaction mix, minus the same for
  randomly permuted segments (the small-sample bias), for bands of 5-19, 20-99 and
  >= 100 interactions: ``agegender_excess_kl`` (14 segments, gender x age bucket) and
  ``occupation_excess_kl`` (one segment per occupation). > 0 when items have a
  consumer segment of their own.

Everything is vectorised; the random choices (the user halves, the shuffles, the
permutations) use a fixed seed, so a profile is a deterministic function of the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.split import time_order
from marl_two_tower.metrics.gini import gini

BANDS = {"5-19": (5, 20), "20-99": (20, 100), "100+": (100, np.inf)}


def _top_successors(key: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """Sorted pair keys ``a * n_items + b`` of the ``k`` most frequent successors b of
    every a (ties: smaller b first)."""
    pairs, counts = np.unique(key, return_counts=True)
    a = pairs // n_items
    order = np.lexsort((pairs, -counts, a))
    pairs, a = pairs[order], a[order]
    rank = np.arange(len(a)) - np.searchsorted(a, a)
    return np.sort(pairs[rank < k])


def _successor_hit(users: np.ndarray, items: np.ndarray, n_items: int, half: np.ndarray,
                   k: int = 10) -> float:
    same = users[1:] == users[:-1]
    key = items[:-1][same] * n_items + items[1:][same]
    who = half[users[:-1][same]]
    top = _top_successors(key[who], n_items, k)
    test = key[~who]
    if not len(test) or not len(top):
        return 0.0
    pos = np.minimum(np.searchsorted(top, test), len(top) - 1)
    return float((top[pos] == test).mean())


def _genre_cosine(users: np.ndarray, gvec: np.ndarray, n_users: int, first: np.ndarray,
                  second: np.ndarray) -> float:
    """Mean over users of cos(genre sum over the ``first`` slots, over the ``second``)."""
    a = np.zeros((n_users, gvec.shape[1]))
    b = np.zeros_like(a)
    np.add.at(a, users[first], gvec[first])
    np.add.at(b, users[second], gvec[second])
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    return float(((a * b).sum(1)[ok] / (na[ok] * nb[ok])).mean()) if ok.any() else 0.0


def _segment_kl(items: np.ndarray, seg: np.ndarray, n_items: int, n_seg: int) -> np.ndarray:
    """Per item: KL(item's consumer mix over segments || the interaction mix)."""
    counts = np.zeros((n_items, n_seg))
    np.add.at(counts, (items, seg), 1.0)
    mix = np.bincount(seg, minlength=n_seg) / len(seg)
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / np.where(mix > 0, mix, 1.0)), 0.0)
    return terms.sum(1)


def _excess_kl(users: np.ndarray, items: np.ndarray, n_items: int, seg_user: np.ndarray,
               rng: np.random.Generator, permutations: int) -> dict[str, float | None]:
    """Per popularity band: mean over its items of KL(consumer mix || interaction mix)
    minus the same with the users' segments permuted (users of unknown segment left out)."""
    known = seg_user >= 0
    if not known.any():
        return dict.fromkeys(BANDS)
    n_seg = int(seg_user.max()) + 1
    keep = known[users]
    it = items[keep]
    kl = _segment_kl(it, seg_user[users[keep]], n_items, n_seg)

    def permuted() -> np.ndarray:
        perm = seg_user.copy()
        perm[known] = rng.permutation(seg_user[known])
        return _segment_kl(it, perm[users[keep]], n_items, n_seg)

    excess = kl - np.mean([permuted() for _ in range(permutations)], axis=0)
    pop = np.bincount(it, minlength=n_items)
    out: dict[str, float | None] = {}
    for name, (lo, hi) in BANDS.items():
        band = (pop >= lo) & (pop < hi)
        out[name] = float(excess[band].mean()) if band.any() else None
    return out


def data_profile(ds: Dataset, seed: int = 0, permutations: int = 5) -> dict[str, Any]:
    """The structure statistics of ``ds`` (see the module docstring); JSON-ready."""
    rng = np.random.default_rng(seed)
    order = time_order(ds)
    users, items = ds.users[order], ds.items[order]
    n_users, n_items = ds.n_users, ds.n_items
    length = np.bincount(users, minlength=n_users)
    length = length[length > 0]
    pop = np.bincount(items, minlength=n_items)
    desc = np.sort(pop)[::-1]
    total = max(int(pop.sum()), 1)
    out: dict[str, Any] = {
        "n_users": int(n_users), "n_items": int(n_items), "n_interactions": int(len(users)),
        "density": len(users) / max(n_users * n_items, 1),
        "pop_gini": float(gini(pop.astype(np.float64))),
        "top10_share": float(desc[: int(np.ceil(0.1 * n_items))].sum() / total),
        "top1_share": float(desc[: int(np.ceil(0.01 * n_items))].sum() / total),
        "items_under_5": float((pop < 5).mean()),
        "len_min": int(length.min()), "len_median": float(np.median(length)),
        "len_mean": float(length.mean()), "len_p90": float(np.percentile(length, 90)),
        "len_max": int(length.max()),
    }
    g = ds.item_genres.astype(np.float64)
    out["genres_per_item"] = float(g.sum(1).mean()) if g.shape[1] else 0.0
    gvec = g[items] / np.maximum(g[items].sum(1, keepdims=True), 1.0)
    share = gvec.sum(0) / max(gvec.sum(), 1.0)
    out["genre_shares"] = [float(x) for x in np.sort(share)[::-1]]

    # order: next-item successors (one half of the users predicts the other)
    half = rng.random(n_users) < 0.5
    out["successor_hit"] = _successor_hit(users, items, n_items, half)
    shuffled = items[np.lexsort((rng.random(len(users)), users))]
    out["successor_hit_shuffled"] = _successor_hit(users, shuffled, n_items, half)
    out["sequential_lift"] = out["successor_hit"] / max(out["successor_hit_shuffled"], 1e-12)
    counts = np.bincount(users, minlength=n_users)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.arange(len(users)) - start
    n_of = np.repeat(counts, counts)
    quarter = np.minimum((4 * pos) // np.maximum(n_of, 1), 3)
    q = [quarter == k for k in range(4)]
    near = (_genre_cosine(users, gvec, n_users, q[0], q[1])
            + _genre_cosine(users, gvec, n_users, q[2], q[3])) / 2
    far = _genre_cosine(users, gvec, n_users, q[0], q[3])
    out["genre_cos_adjacent_quarters"], out["genre_cos_first_last_quarter"] = near, far
    out["drift_gap"] = near - far
    pct = np.argsort(np.argsort(pop, kind="stable"), kind="stable") / max(n_items - 1, 1)
    decile = np.minimum((10 * pos / np.maximum(n_of - 1, 1)).astype(np.int64), 9)
    out["pop_first_decile"] = float(pct[items][decile == 0].mean())
    out["pop_last_decile"] = float(pct[items][decile == 9].mean())

    # segment affinity of items by popularity band
    feats = ds.user_features
    segments = {}
    if "gender" in feats and "age" in feats:
        segments["agegender_excess_kl"] = np.where((feats["age"] >= 0) & (feats["gender"] >= 0),
                                                   2 * feats["age"] + feats["gender"], -1)
    if "occupation" in feats:
        segments["occupation_excess_kl"] = feats["occupation"]
    for name, seg_user in segments.items():
        out[name] = _excess_kl(users, items, n_items, np.asarray(seg_user), rng, permutations)
    return out

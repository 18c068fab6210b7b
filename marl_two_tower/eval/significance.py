"""Significance of a variant against a base (DESIGN §5 "Significance").

Two kinds of metrics, two kinds of tests:

* **Per-user metrics** (HR@K, NDCG@K, TailHR@K, HeadHR@K, MRR) are means of one value
  per user, so variant and base pair up user by user. With d_u = x_u - y_u
  (variant minus base, users whose value is undefined in either dropped, e.g. head
  targets for TailHR):

  - paired t-test (``scipy.stats.ttest_rel``): t = mean(d) / (sd(d) / sqrt(n));
  - Wilcoxon signed-rank (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: zero
    differences are discarded, two-sided, scipy's exact/normal choice);
  - effect sizes: Cohen's d for paired samples d_z = mean(d) / sd(d) (sd with
    ddof = 1), and the matched-pairs rank-biserial correlation
    r = (W+ - W-) / (W+ + W-) (Kerby 2014), W+/W- the rank sums of the positive /
    negative non-zero differences (ranks of |d|, ties averaged).

  When every difference is zero (identical runs) scipy's statistics are undefined
  (0/0); we return the known answer explicitly: delta 0, p = 1, effect 0. When all
  differences are equal and non-zero, t and d_z are +-inf (reported as null in
  JSON) and the t-test p is 0.

* **List-level metrics** (Coverage@K, Gini@K, Redundancy@K, AvgPop@K) are functions
  of the whole set of top-K lists: no per-user value exists. They get a paired
  **user bootstrap**: B resamples of the evaluated users with replacement (the same
  resamples for every variant, so deltas are paired), the metric recomputed on each
  resample's lists (a user drawn m times contributes its list m times), then

  - the B values (or deltas) are re-centred on the full-sample estimate: a resample
    holds only ~63% distinct users, which shrinks Coverage and inflates Gini
    systematically; the shift removes that bias and keeps the spread
    (:func:`recentre`);
  - 95% CI: the 2.5% and 97.5% percentiles of the re-centred values;
  - p-value of H0 "delta = 0" by inverting the percentile interval:
    p = min(1, 2 min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1))).
    Identical runs give d* = 0 for every resample, hence p = 1.

  Per-user metrics get the same bootstrap CIs (for plots and delta CIs).

**Several seeds.** All seeds of a variant use the same split, hence the same users.
Per-user values are averaged over seeds before the paired tests (the unit of
analysis stays the user); a bootstrap resample recomputes each seed's metric on the
same resampled users and averages over seeds. :func:`seed_summary` gives the
multi-seed mean and sample std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import stats

from marl_two_tower.eval.arrays import EvalArrays
from marl_two_tower.metrics.gini import gini

__all__ = [
    "PER_USER_METRICS",
    "LIST_METRICS",
    "bootstrap_p_value",
    "bootstrap_samples",
    "bootstrap_weights",
    "compare",
    "recentre",
    "metric_names",
    "paired_tests",
    "point_values",
    "rank_biserial",
    "seed_summary",
]

PER_USER_METRICS = ("HR", "NDCG", "TailHR", "HeadHR")  # @K; plus "MRR"
LIST_METRICS = ("Coverage", "Gini", "Redundancy", "AvgPop")  # @K


def metric_names(ks: Sequence[int]) -> list[str]:
    """Metric names handled here, in report order: per-user, MRR, then list-level."""
    names = [f"{m}@{k}" for k in sorted(ks) for m in PER_USER_METRICS]
    names.append("MRR")
    names += [f"{m}@{k}" for k in sorted(ks) for m in LIST_METRICS]
    return names


def _split_name(name: str) -> tuple[str, int | None]:
    if "@" in name:
        base, k = name.split("@")
        return base, int(k)
    return name, None


def is_list_metric(name: str) -> bool:
    """True for metrics of the whole set of lists (bootstrap only)."""
    return _split_name(name)[0] in LIST_METRICS


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------


def seed_summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample std (ddof = 1) over seeds; std is None with one seed.

    Undefined (None/NaN) values are left out; ``n`` counts the values used.
    """
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None,
            "n": int(v.size), "values": [None if x is None else float(x) for x in values]}


# ---------------------------------------------------------------------------
# Paired per-user tests
# ---------------------------------------------------------------------------


def rank_biserial(d: np.ndarray) -> float:
    """Matched-pairs rank-biserial r = (W+ - W-) / (W+ + W-) over non-zero d."""
    nz = d[d != 0]
    if nz.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(nz))
    w_plus, w_minus = ranks[nz > 0].sum(), ranks[nz < 0].sum()
    return float((w_plus - w_minus) / (w_plus + w_minus))


def paired_tests(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Paired t-test, Wilcoxon signed-rank and effect sizes of x (variant) vs y (base).

    Pairs where either value is NaN are dropped. Returns ``n``, ``mean_x``,
    ``mean_y``, ``delta`` (= mean of d), ``t_stat``, ``p_ttest``, ``wilcoxon_stat``
    (scipy's statistic: the smaller of W+ and W- for two-sided tests), ``p_wilcoxon``,
    ``cohen_d`` and ``rank_biserial`` (see the module docstring).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired arrays must align: {x.shape} vs {y.shape}")
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    d = x - y
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "mean_x": float(x.mean()) if n else None,
                           "mean_y": float(y.mean()) if n else None,
                           "delta": float(d.mean()) if n else None}
    if n == 0:
        return out | {"t_stat": None, "p_ttest": None, "wilcoxon_stat": None,
                      "p_wilcoxon": None, "cohen_d": None, "rank_biserial": None}
    if not d.any():
        # Identical values: scipy's statistics are 0/0 here; the answer is known.
        return out | {"t_stat": 0.0, "p_ttest": 1.0, "wilcoxon_stat": 0.0, "p_wilcoxon": 1.0,
                      "cohen_d": 0.0, "rank_biserial": 0.0}
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if sd == 0.0:
        # Every difference equal and non-zero: no sampling variability at all.
        sign = math.copysign(math.inf, float(d[0]))
        t_stat, p_t, cohen = sign, 0.0, sign
    else:
        t = stats.ttest_rel(x, y)
        t_stat, p_t, cohen = float(t.statistic), float(t.pvalue), float(d.mean() / sd)
    w = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return out | {"t_stat": t_stat, "p_ttest": p_t, "wilcoxon_stat": float(w.statistic),
                  "p_wilcoxon": float(w.pvalue), "cohen_d": cohen,
                  "rank_biserial": rank_biserial(d)}


# ---------------------------------------------------------------------------
# User bootstrap
# ---------------------------------------------------------------------------


def bootstrap_weights(n_users: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Multiplicities ``[n_boot, n_users]`` of B resamples of n users with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_users, size=(n_boot, n_users))
    w = np.zeros((n_boot, n_users), dtype=np.float64)
    np.add.at(w, (np.repeat(np.arange(n_boot), n_users), draws.ravel()), 1.0)
    return w




def _list_matrix(recs: np.ndarray, k: int, n_items: int) -> sp.csr_matrix:
    """Indicator [n_users, n_items] of the filled slots of the top-K lists."""
    top = recs[:, :k]
    rows, cols = np.nonzero(top >= 0)
    return sp.csr_matrix((np.ones(rows.size), (rows, top[rows, cols])),
                         shape=(recs.shape[0], n_items))


def _per_user_value(arr: EvalArrays, name: str) -> np.ndarray:
    base, k = _split_name(name)
    pu = arr.per_user([k] if k else [max(arr.ks)])
    if base == "HR":
        return pu[f"hit@{k}"]
    if base == "NDCG":
        return pu[f"ndcg@{k}"]
    if base == "TailHR":
        return pu[f"tailhit@{k}"]
    if base == "HeadHR":
        return np.where(pu["is_tail"], np.nan, pu[f"hit@{k}"])
    if base == "MRR":
        return pu["rr"]
    raise ValueError(f"{name} is not a per-user metric")


def _list_metric_weighted(arr: EvalArrays, name: str, w: np.ndarray, chunk: int = 256) -> np.ndarray:
    """List-level metric for each row of user weights ``w`` ``[B, n_users]``.

    With multiplicities w_u, exposure x_i = sum_u w_u 1[i in L_u]; Coverage =
    |{i : x_i > 0}| / n, Gini = gini(x); Redundancy = sum_u w_u h_u / sum_u w_u f_u
    and AvgPop = sum_u w_u p_u / sum_u w_u f_u with h_u, f_u, p_u the head slots,
    filled slots and popularity sum of L_u. All-ones weights reproduce
    :func:`metrics.compute_metrics` exactly.
    """
    base, k = _split_name(name)
    assert k is not None
    top = arr.recs[:, :k]
    filled = top >= 0
    f_u = filled.sum(axis=1).astype(np.float64)
    if base in ("Redundancy", "AvgPop"):
        safe = np.where(filled, top, 0)
        if base == "Redundancy":
            num_u = ((~arr.tail_mask[safe]) & filled).sum(axis=1).astype(np.float64)
        else:
            num_u = np.where(filled, arr.item_pop[safe], 0).sum(axis=1).astype(np.float64)
        den = w @ f_u
        return np.divide(w @ num_u, den, out=np.full(w.shape[0], np.nan), where=den > 0)
    lists = _list_matrix(arr.recs, k, arr.n_items)
    out = np.empty(w.shape[0])
    for s in range(0, w.shape[0], chunk):
        expo = np.asarray((lists.T @ w[s : s + chunk].T).T)  # [chunk, n_items]
        if base == "Coverage":
            out[s : s + chunk] = np.count_nonzero(expo, axis=1) / arr.n_items
        elif base == "Gini":
            out[s : s + chunk] = gini(expo)
        else:
            raise ValueError(f"{name} is not a list metric")
    return out


def _metric_weighted(arr: EvalArrays, name: str, w: np.ndarray) -> np.ndarray:
    if is_list_metric(name):
        return _list_metric_weighted(arr, name, w)
    v = _per_user_value(arr, name)
    valid = ~np.isnan(v)
    den = w @ valid.astype(np.float64)
    return np.divide(w @ np.where(valid, v, 0.0), den, out=np.full(w.shape[0], np.nan),
                     where=den > 0)


def _check_aligned(runs: Sequence[EvalArrays]) -> None:
    first = runs[0]
    for r in runs[1:]:
        if not (np.array_equal(r.users, first.users) and np.array_equal(r.targets, first.targets)):
            raise ValueError("runs were evaluated on different users or targets (different "
                             "data or split?); paired comparisons need the same users")


def point_values(runs: Sequence[EvalArrays], name: str) -> list[float]:
    """The metric of each run (seed), computed from its stored lists."""
    ones = np.ones((1, len(runs[0].users)))
    return [float(_metric_weighted(r, name, ones)[0]) for r in runs]


def bootstrap_samples(runs: Sequence[EvalArrays], name: str, weights: np.ndarray) -> np.ndarray:
    """Bootstrap values ``[B]`` of a metric averaged over the runs (seeds)."""
    _check_aligned(runs)
    return np.mean([_metric_weighted(r, name, weights) for r in runs], axis=0)


def recentre(samples: np.ndarray, estimate: float) -> np.ndarray:
    """Shift bootstrap values so that their mean is the full-sample ``estimate``.

    A resample holds ~63% distinct users, which shrinks Coverage and raises Gini
    systematically; the shift removes that bias and keeps the spread. For means of
    per-user values (unbiased under the bootstrap) it changes almost nothing.
    """
    ok = ~np.isnan(samples)
    if not ok.any() or estimate is None or math.isnan(estimate):
        return samples
    return samples - float(np.mean(samples[ok])) + estimate


def bootstrap_p_value(deltas: np.ndarray) -> float:
    """Two-sided p of H0 delta = 0 from bootstrap deltas (percentile-interval inversion)."""
    d = deltas[~np.isnan(deltas)]
    if d.size == 0:
        return math.nan
    b = d.size
    lo = (1 + np.count_nonzero(d <= 0)) / (b + 1)
    hi = (1 + np.count_nonzero(d >= 0)) / (b + 1)
    return float(min(1.0, 2 * min(lo, hi)))


def _ci(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    s = samples[~np.isnan(samples)]
    if s.size == 0:
        return None
    a = (1 - level) / 2
    return [float(np.quantile(s, a)), float(np.quantile(s, 1 - a))]


def compare(variant: Sequence[EvalArrays], base: Sequence[EvalArrays] | None,
            names: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every metric of ``names`` for a variant (its seeds), with CIs and tests vs ``base``.

    Per metric: ``value`` (mean over seeds), ``ci95`` (user bootstrap of the
    seed-mean), and when ``base`` is given ``base_value``, ``delta``,
    ``delta_ci95``, ``p_bootstrap``, ``p_value`` with ``test`` naming the test behind
    it (``wilcoxon`` for per-user metrics, ``bootstrap`` for list metrics), and for
    per-user metrics ``p_wilcoxon``, ``p_ttest``, ``t_stat``, ``wilcoxon_stat``,
    ``cohen_d``, ``rank_biserial``, ``n_users``. The same ``seed`` gives the same
    resamples for every variant, so deltas are paired.
    """
    runs = list(variant) + list(base or [])
    _check_aligned(runs)
    w = bootstrap_weights(len(runs[0].users), n_boot, seed)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        sv = bootstrap_samples(variant, name, w)
        value = float(np.mean(point_values(variant, name)))
        entry: dict[str, Any] = {"value": value, "ci95": _ci(recentre(sv, value)),
                                 "n_boot": n_boot}
        if base is not None:
            sb = bootstrap_samples(base, name, w)
            entry |= {"base_value": float(np.mean(point_values(base, name)))}
            entry["delta"] = value - entry["base_value"]
            ds = recentre(sv - sb, entry["delta"])
            entry |= {"delta_ci95": _ci(ds), "p_bootstrap": bootstrap_p_value(ds)}
            if is_list_metric(name):
                entry |= {"test": "bootstrap", "p_value": entry["p_bootstrap"]}
            else:
                x = np.mean([_per_user_value(r, name) for r in variant], axis=0)
                y = np.mean([_per_user_value(r, name) for r in base], axis=0)
                t = paired_tests(x, y)
                entry |= {"test": "wilcoxon", "p_value": t["p_wilcoxon"],
                          "p_wilcoxon": t["p_wilcoxon"], "p_ttest": t["p_ttest"],
                          "t_stat": t["t_stat"], "wilcoxon_stat": t["wilcoxon_stat"],
                          "cohen_d": t["cohen_d"], "rank_biserial": t["rank_biserial"],
                          "n_users": t["n"]}
        out[name] = entry
    return out

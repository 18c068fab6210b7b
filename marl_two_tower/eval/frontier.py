"""Accuracy-fairness frontiers: HR@10 / NDCG@10 against Gini@10 as an inference-time
exposure knob is swept, and HR@10 at matched Gini (DESIGN §5-§6, docs/frontier.md).

A fairness component that *moves the frontier outward* gives more accuracy at the
same exposure inequality; a knob that *slides along it* only trades one for the
other. A point evaluation cannot tell the two apart, a frontier can.

**Candidates once per split.** For a scorer and a split (val or test) we rank once,
under the full protocol of :func:`marl_two_tower.eval.protocols.rank_full`, and keep

* the plain evaluation (its lists, ranks and ties: the knob's "off" point, which is
  therefore the plain evaluation exactly), and
* each user's ``n_candidates`` best unmasked items with log p(i | u) =
  s(u, i) - logsumexp_j s(u, j) over u's unmasked items (exactly the candidates the
  exposure budget of :mod:`marl_two_tower.fairness.exposure` allocates from).

Every knob value then re-allocates these arrays (numpy only, no model call).

**Arms** (:class:`Setting`), each applied to the same candidates:

* ``budget``: the exposure budget (:func:`~marl_two_tower.fairness.exposure.rerank_with_budget`),
  cap factor f (an item enters at most ceil(f K U / N) top-K lists) with a fixed
  coverage floor; swept over f from loose to tight;
* ``popularity``: the one-knob popularity-penalty re-ranker, the simplest peer,

      s'(u, i) = s(u, i) - w * log(1 + pop(i))

  (pop = train interactions of i; 1 + so that items without train interactions get
  no penalty), i.e. p'(i | u) ∝ p(i | u) / (1 + pop(i))^w, each user's candidates
  sorted by s' (equivalently by log p(i | u) - w log(1 + pop(i)): the per-user
  logsumexp does not change a user's order); swept over w from 0 upwards;
* ``online``: what ``serve`` returns under ``serving.exposure_cap`` = f when the
  evaluated users request once each, in index order, inside one window of
  ``serving.exposure_window`` = U lists (:func:`~marl_two_tower.fairness.exposure.allocate_in_order`:
  first come, first served, no coverage floor; docs/serving.md says where this differs
  from the offline budget); swept over f like the budget;
* ``prices``: per-item prices lambda_i (:func:`~marl_two_tower.fairness.exposure.fit_item_prices`,
  the dual variables of the budget's capacity constraints at cap factor f, fitted on the
  evaluated users' candidates, no labels) and every user's own top-K by
  log p(i | u) - lambda_i: a stateless item bias a server applies to each request
  alone (no window, ANN-compatible); swept over f like the budget;
* ``off``: the plain evaluation. Every curve starts at it.

**Matched Gini** (:func:`match_gini`). A curve is the sequence of settings in knob
order, off first. On the *validation* curve we take the first neighbouring pair of
settings (j, j + 1) whose Gini@10 brackets the target g* (G_j >= g* >= G_{j+1})
and the interpolation weight t = (G_j - g*) / (G_j - G_{j+1}). On *test* the matched
point is the mixture of the two settings with weight t: for every per-user value
(hit@10, ndcg@10) and for HR, NDCG, Gini and Coverage alike,

    m(t) = (1 - t) m_j + t m_{j+1},

the expected outcome of showing setting j + 1 with probability t (for HR and NDCG
exactly; for Gini and Coverage the linear interpolation of the two settings'
values). If the curve starts at or below g* (off is already as equal), the matched
point is off itself (status ``off_below_target``); if no setting reaches g* it is
undefined (``not_reached``). Test is never used for a choice.

**Uncertainty.** User bootstrap (:mod:`marl_two_tower.eval.significance`): B
resamples of the test users, the metrics of both neighbouring settings recomputed on
each resample and interpolated with the validation t, re-centred on the full-sample
estimate; 95% percentile interval. **Several seeds**: each seed gets its own t from
its own validation curve; values are seed means, a bootstrap resample averages the
seeds' values on the same resampled users, and per-user values are averaged over
seeds before paired tests (the unit of analysis is the user, as in
:func:`~marl_two_tower.eval.significance.compare`). **Paired comparison** of two
models at matched Gini (:func:`paired_matched`): per-user hit@10 at each model's own
matched setting, Wilcoxon signed-rank over users
(:func:`~marl_two_tower.eval.significance.paired_tests`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from marl_two_tower.data.split import Split
from marl_two_tower.eval.arrays import EvalArrays
from marl_two_tower.eval.protocols import RankResult, ScoreFn, full_candidates, reallocated
from marl_two_tower.eval.significance import (
    _ci,
    bootstrap_samples,
    bootstrap_weights,
    paired_tests,
    point_values,
    recentre,
)
from marl_two_tower.fairness.exposure import (
    ExposureBudget,
    allocate_in_order,
    fair_share_cap,
    fit_item_prices,
    priced_lists,
    rerank_with_budget,
)
from marl_two_tower.metrics import ranking as M
from marl_two_tower.utils.io import atomic_write

__all__ = [
    "BUDGET_FACTORS",
    "CURVE_METRICS",
    "Candidates",
    "CurvePoint",
    "FRONTIER_FILE",
    "FRONTIER_VERSION",
    "GINI_TARGETS",
    "MatchedPoint",
    "POPULARITY_WEIGHTS",
    "Setting",
    "Frontier",
    "budget_curve",
    "compute_candidates",
    "crossing",
    "curve",
    "frontier_of",
    "frontier_summary",
    "lists_for",
    "load_candidates",
    "online_curve",
    "match_gini",
    "matched_summary",
    "paired_matched",
    "plain_metrics",
    "popularity_curve",
    "price_curve",
    "save_candidates",
]

FRONTIER_FILE = "frontier.npz"
FRONTIER_VERSION = 1
GINI_TARGETS = (0.70, 0.60, 0.50)
# Cap factors from loose to tight (1 = every item at most one fair share): dense where
# the Gini of our models crosses 0.7-0.5 on ML-100K, so the interpolation is local.
BUDGET_FACTORS = (64.0, 32.0, 16.0, 12.0, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.0, 1.75, 1.5,
                  1.25, 1.0)
POPULARITY_WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0)
CURVE_METRICS = ("HR", "NDCG", "Gini", "Coverage", "TailHR")  # @K on every curve point
Arm = Literal["off", "budget", "popularity", "online", "prices"]


# ---------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------


@dataclass
class Candidates:
    """One scorer's rankings of one split, enough to re-allocate under any knob.

    Attributes:
        part: 'val' or 'test'.
        plain: the plain full-protocol :class:`RankResult` (lists, ranks, ties).
        cand: int ``[n, M]`` each user's M best unmasked items, best first, -1 pads.
        logp: float32 ``[n, M]`` log p(i | u) of ``cand`` (-inf on pads).
        item_pop: int64 ``[n_items]`` train popularity.
        tail_mask: bool ``[n_items]`` tail items of the split.
    """

    part: str
    plain: RankResult
    cand: np.ndarray
    logp: np.ndarray
    item_pop: np.ndarray
    tail_mask: np.ndarray

    @property
    def n_items(self) -> int:
        return int(len(self.item_pop))

    @property
    def k_max(self) -> int:
        return int(self.plain.recs.shape[1])


def compute_candidates(split: Split, score_fn: ScoreFn, part: str, n_candidates: int = 1000,
                       k_max: int = 20, batch_size: int = 1024) -> Candidates:
    """Score ``part`` once: the plain evaluation plus the budget's candidate arrays."""
    plain, cand, logp = full_candidates(split, score_fn, part, n_candidates=n_candidates,
                                        k_max=k_max, batch_size=batch_size)
    return Candidates(part=part, plain=plain, cand=cand, logp=logp.astype(np.float32),
                      item_pop=np.asarray(split.item_pop, dtype=np.int64),
                      tail_mask=np.asarray(split.tail_mask, dtype=bool))


def save_candidates(run_dir: str | Path, cands: dict[str, Candidates]) -> Path:
    """Write ``run_dir/frontier.npz`` (keys ``<part>_<field>``) atomically.

    logp is stored as float32, which is lossless: the harness computes it in the
    scores' float32 precision. ~6 bytes per (user, candidate) per split before
    compression (ML-100K, M = 1000: ~11 MB raw for val + test).
    """
    arrays: dict[str, np.ndarray] = {"format_version": np.int64(FRONTIER_VERSION)}
    first = next(iter(cands.values()))
    arrays["item_pop"], arrays["tail_mask"] = first.item_pop, first.tail_mask
    arrays["parts"] = np.array(list(cands), dtype="U4")
    for part, c in cands.items():
        p = c.plain
        arrays |= {f"{part}_users": p.users, f"{part}_targets": p.targets,
                   f"{part}_recs": p.recs.astype(np.int32), f"{part}_ranks": p.ranks,
                   f"{part}_ties": p.ties, f"{part}_cand": c.cand.astype(np.int32),
                   f"{part}_logp": c.logp.astype(np.float32)}
    path = Path(run_dir) / FRONTIER_FILE
    with atomic_write(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_candidates(run_dir: str | Path) -> dict[str, Candidates] | None:
    """Read ``run_dir/frontier.npz``; None when the run has none (it predates it)."""
    path = Path(run_dir) / FRONTIER_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format_version"])
        if version > FRONTIER_VERSION:
            raise ValueError(f"{path}: format version {version} is newer than this package "
                             f"understands ({FRONTIER_VERSION})")
        out = {}
        for part in (str(p) for p in z["parts"]):
            plain = RankResult(z[f"{part}_users"], z[f"{part}_targets"],
                               z[f"{part}_recs"].astype(np.int64), z[f"{part}_ranks"],
                               z[f"{part}_ties"])
            out[part] = Candidates(part=part, plain=plain, cand=z[f"{part}_cand"].astype(np.int64),
                                   logp=z[f"{part}_logp"], item_pop=z["item_pop"],
                                   tail_mask=z["tail_mask"].astype(bool))
    return out


# ---------------------------------------------------------------------------
# Knob settings and their lists
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One knob value: ``arm`` off, budget (``value`` = cap factor, ``floor`` = coverage
    floor, ``k`` = the K of the fair share), online (``value`` = cap factor, ``k``) or
    popularity (``value`` = weight w)."""

    arm: Arm
    value: float = math.nan
    floor: int = 0
    k: int = 10

    @property
    def label(self) -> str:
        if self.arm == "off":
            return "off"
        if self.arm == "budget":
            return f"cap {self.value:g}" + (f" + floor {self.floor}" if self.floor else "")
        if self.arm == "online":
            return f"online cap {self.value:g}"
        if self.arm == "prices":
            return f"prices for cap {self.value:g}"
        return f"w {self.value:g}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"arm": self.arm, "label": self.label}
        if self.arm in ("budget", "online", "prices"):
            d |= {"factor": self.value, "floor": self.floor, "k": self.k}
        elif self.arm == "popularity":
            d["weight"] = self.value
        return d


def budget_curve(factors: Sequence[float] = BUDGET_FACTORS, floor: int = 1,
                 k: int = 10) -> list[Setting]:
    """off, then the budget at each cap factor from loose (large) to tight (small)."""
    return [Setting("off")] + [Setting("budget", float(f), floor, k)
                               for f in sorted(set(factors), reverse=True)]


def online_curve(factors: Sequence[float] = BUDGET_FACTORS, k: int = 10) -> list[Setting]:
    """off, then the online budget (served lists, one window) at each factor, loose to tight."""
    return [Setting("off")] + [Setting("online", float(f), 0, k) for f in sorted(set(factors), reverse=True)]


def price_curve(factors: Sequence[float] = BUDGET_FACTORS, k: int = 10) -> list[Setting]:
    """off, then item prices fitted for each cap factor, loose to tight."""
    return [Setting("off")] + [Setting("prices", float(f), 0, k) for f in sorted(set(factors), reverse=True)]


def popularity_curve(weights: Sequence[float] = POPULARITY_WEIGHTS) -> list[Setting]:
    """off (w = 0), then the popularity penalty at each weight w > 0, ascending."""
    return [Setting("off")] + [Setting("popularity", float(w)) for w in sorted(set(weights)) if w > 0]


def lists_for(c: Candidates, s: Setting) -> RankResult:
    """The top-``k_max`` lists of every user of ``c`` under setting ``s``.

    off: the plain evaluation itself. budget: :func:`rerank_with_budget` on the
    candidates with log p(i | u) as the cross-user priority. prices: item prices fitted
    for the cap on these candidates, then each user's own top by log p - lambda.
    popularity: each user's
    candidates sorted by log p(i | u) - w log(1 + pop(i)) (stable, so ties keep the
    candidate order).
    """
    if s.arm == "off":
        return c.plain
    k_max = c.k_max
    if s.arm == "budget":
        budget = ExposureBudget(factor=s.value, k=s.k, n_candidates=c.cand.shape[1], floor=s.floor)
        recs = rerank_with_budget(c.cand, c.logp.astype(np.float64), k_max, budget, c.n_items)
    elif s.arm == "online":
        cap = fair_share_cap(s.value, s.k, len(c.cand), c.n_items)  # window = the U users
        recs = allocate_in_order(c.cand, k_max, cap, c.n_items, s.k)
    elif s.arm == "prices":
        cap = fair_share_cap(s.value, s.k, len(c.cand), c.n_items)
        prices = fit_item_prices(c.cand, c.logp, s.k, cap, c.n_items)
        recs = priced_lists(c.cand, c.logp.astype(np.float64), prices, k_max)
    elif s.arm == "popularity":
        valid = c.cand >= 0
        pen = np.log1p(c.item_pop[np.where(valid, c.cand, 0)].astype(np.float64))
        key = np.where(valid, c.logp.astype(np.float64) - s.value * pen, -np.inf)
        order = np.argsort(-key, axis=1, kind="stable")[:, :k_max]
        recs = np.take_along_axis(c.cand, order, axis=1)
        recs = np.where(np.take_along_axis(valid, order, axis=1), recs, -1)
        if recs.shape[1] < k_max:
            recs = np.pad(recs, ((0, 0), (0, k_max - recs.shape[1])), constant_values=-1)
    else:
        raise ValueError(f"unknown knob arm {s.arm!r} (expected off, budget, online, prices or popularity)")
    # target ranks as for the budget in rank_full: its slot, or beyond the list
    return reallocated(c.plain, recs.astype(np.int64))


def _arrays(c: Candidates, res: RankResult, k: int) -> EvalArrays:
    """An :class:`EvalArrays` view of one setting's lists (for the shared metrics and
    bootstrap code of :mod:`significance`)."""
    return EvalArrays(users=res.users, targets=res.targets, recs=res.recs, ranks=res.ranks,
                      ties=res.ties, item_pop=c.item_pop, tail_mask=c.tail_mask, ks=(k,))


@dataclass
class CurvePoint:
    """One setting on one split: its metrics @K and its lists."""

    setting: Setting
    metrics: dict[str, float]
    arrays: EvalArrays = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting.to_dict(), **self.metrics}


def curve(c: Candidates, settings: Sequence[Setting], k: int = 10) -> list[CurvePoint]:
    """Every setting's lists and its HR, NDCG, Gini, Coverage and TailHR @``k``."""
    out = []
    for s in settings:
        a = _arrays(c, lists_for(c, s), k)
        out.append(CurvePoint(s, {f"{m}@{k}": point_values([a], f"{m}@{k}")[0]
                                  for m in CURVE_METRICS}, a))
    return out


# ---------------------------------------------------------------------------
# Matched Gini
# ---------------------------------------------------------------------------


def crossing(gini_values: Sequence[float], target: float) -> tuple[str, int, float]:
    """(status, j, t): the first j with G_j >= target >= G_{j+1} and
    t = (G_j - target) / (G_j - G_{j+1}) (0 when G_j = G_{j+1}); ``off_below_target``
    with (0, 0.0) when G_0 <= target; ``not_reached`` with (-1, nan) when no pair
    brackets the target."""
    g = [float(x) for x in gini_values]
    if not g:
        return "not_reached", -1, math.nan
    if g[0] <= target:
        return "off_below_target", 0, 0.0
    for j in range(len(g) - 1):
        if g[j] >= target >= g[j + 1]:
            gap = g[j] - g[j + 1]
            return "matched", j, (g[j] - target) / gap if gap > 0 else 0.0
    return "not_reached", -1, math.nan


@dataclass
class MatchedPoint:
    """A model (one seed) at a target Gini: the validation choice and the test lists."""

    target: float
    status: str
    j: int = -1
    t: float = math.nan
    lower: Setting | None = None
    upper: Setting | None = None
    val_gini: float | None = None
    test: dict[str, float | None] = field(default_factory=dict)
    arrays: tuple[EvalArrays, EvalArrays] | None = field(default=None, repr=False)
    k: int = 10

    @property
    def ok(self) -> bool:
        return self.arrays is not None

    def per_user(self, metric: str = "hit") -> np.ndarray:
        """Per-user ``hit@K`` / ``ndcg@K`` of the mixture (1 - t) * lower + t * upper."""
        assert self.arrays is not None
        key = f"{metric}@{self.k}"
        lo, hi = (a.per_user([self.k])[key] for a in self.arrays)
        return (1 - self.t) * lo + self.t * hi

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "t": _none(self.t),
                "lower": self.lower.to_dict() if self.lower else None,
                "upper": self.upper.to_dict() if self.upper else None,
                "knob_value": _knob_value(self), "val_gini": self.val_gini, "test": self.test}


def _none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _knob_value(p: MatchedPoint) -> float | None:
    """The interpolated knob value (factor or weight) when both neighbours have one."""
    if p.lower is None or p.upper is None:
        return None
    if p.lower.arm == "off":
        # popularity: off is w = 0; budget: off is an infinite cap (no number)
        return p.t * p.upper.value if p.upper.arm == "popularity" else None
    return (1 - p.t) * p.lower.value + p.t * p.upper.value


def match_gini(val: Sequence[CurvePoint], test: Sequence[CurvePoint], target: float,
               k: int = 10) -> MatchedPoint:
    """The test point of the curve at validation Gini@``k`` = ``target`` (module docstring).

    ``val`` and ``test`` are the same settings in the same order on the two splits.
    """
    if [p.setting for p in val] != [p.setting for p in test]:
        raise ValueError("validation and test curves must have the same settings in the same order")
    gname = f"Gini@{k}"
    status, j, t = crossing([p.metrics[gname] for p in val], target)
    if status == "not_reached":
        return MatchedPoint(target, status, k=k)
    hi = j + 1 if status == "matched" else j
    lo_p, hi_p = test[j], test[hi]
    values = {name: (1 - t) * lo_p.metrics[name] + t * hi_p.metrics[name]
              for name in lo_p.metrics if lo_p.metrics[name] is not None
              and hi_p.metrics[name] is not None and not math.isnan(lo_p.metrics[name])}
    val_g = (1 - t) * val[j].metrics[gname] + t * val[hi].metrics[gname]
    return MatchedPoint(target, status, j, t, val[j].setting, val[hi].setting, float(val_g),
                        values, (lo_p.arrays, hi_p.arrays), k)


def _interp_samples(p: MatchedPoint, name: str, w: np.ndarray) -> np.ndarray:
    assert p.arrays is not None
    lo, hi = (bootstrap_samples([a], name, w) for a in p.arrays)
    return (1 - p.t) * lo + p.t * hi


def matched_summary(points: Sequence[MatchedPoint], n_boot: int = 1000, seed: int = 0,
                    metrics: Sequence[str] = ("HR", "NDCG", "Gini", "Coverage")) -> dict[str, Any]:
    """Seed mean of one model's matched points at one target, with user-bootstrap CIs.

    Returns ``{"target", "status", "n_seeds", "<metric>@K": {"value", "ci95",
    "per_seed"}, "settings": [per-seed choice]}``; values are None when some seed did
    not reach the target (a mean over a subset of seeds would not be comparable).
    """
    k = points[0].k
    out: dict[str, Any] = {"target": points[0].target, "n_seeds": len(points),
                           "status": sorted({p.status for p in points}),
                           "choices": [p.to_dict() for p in points]}
    if not all(p.ok for p in points):
        for m in metrics:
            out[f"{m}@{k}"] = {"value": None, "ci95": None, "per_seed": [p.test.get(f"{m}@{k}")
                                                                        for p in points]}
        return out
    w = bootstrap_weights(len(points[0].arrays[0].users), n_boot, seed)
    for m in metrics:
        name = f"{m}@{k}"
        per_seed = [p.test.get(name) for p in points]
        value = float(np.mean(per_seed))
        samples = np.mean([_interp_samples(p, name, w) for p in points], axis=0)
        out[name] = {"value": value, "ci95": _ci(recentre(samples, value)), "per_seed": per_seed}
    return out


def paired_matched(a: Sequence[MatchedPoint], b: Sequence[MatchedPoint],
                   metric: str = "hit") -> dict[str, Any] | None:
    """Model ``a`` vs model ``b`` at the same target Gini: per-user ``metric``@K at each
    model's own matched setting (seed-averaged), paired t-test and Wilcoxon signed-rank
    over users (:func:`paired_tests`). None when either did not reach the target."""
    if not a or not b or not all(p.ok for p in [*a, *b]):
        return None
    ua, ub = a[0].arrays[0], b[0].arrays[0]
    if not (np.array_equal(ua.users, ub.users) and np.array_equal(ua.targets, ub.targets)):
        raise ValueError("paired comparison needs the same evaluated users and targets")
    x = np.mean([p.per_user(metric) for p in a], axis=0)
    y = np.mean([p.per_user(metric) for p in b], axis=0)
    return paired_tests(x, y)


# ---------------------------------------------------------------------------
# One model's frontier
# ---------------------------------------------------------------------------


@dataclass
class Frontier:
    """One model's curves (per seed) and matched points for one arm."""

    name: str
    arm: str
    settings: list[Setting]
    val: list[list[CurvePoint]]  # [seed][setting]
    test: list[list[CurvePoint]]
    matched: dict[float, list[MatchedPoint]]  # target -> [seed]
    k: int = 10


def frontier_of(name: str, runs: Sequence[dict[str, Candidates]], settings: Sequence[Setting],
                targets: Sequence[float] = GINI_TARGETS, k: int = 10) -> Frontier:
    """Curves on val and test of every run (seed) and the matched points at ``targets``."""
    settings = list(settings)
    arm = next((s.arm for s in settings if s.arm != "off"), "off")
    val = [curve(r["val"], settings, k) for r in runs]
    test = [curve(r["test"], settings, k) for r in runs]
    matched = {g: [match_gini(v, t, g, k) for v, t in zip(val, test, strict=True)] for g in targets}
    return Frontier(name, arm, settings, val, test, matched, k)


def _mean_curve(points: Sequence[Sequence[CurvePoint]]) -> list[dict[str, Any]]:
    """Seed-mean metrics per setting (all seeds share the settings)."""
    out = []
    for j, first in enumerate(points[0]):
        row: dict[str, Any] = {"setting": first.setting.to_dict()}
        for name in first.metrics:
            vals = [p[j].metrics[name] for p in points]
            ok = [v for v in vals if v is not None and not math.isnan(v)]
            row[name] = float(np.mean(ok)) if len(ok) == len(vals) else None
        out.append(row)
    return out


def frontier_summary(f: Frontier, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """JSON-ready: seed-mean curves on val and test, and matched-Gini summaries."""
    return {"name": f.name, "arm": f.arm, "k": f.k, "n_seeds": len(f.val),
            "val": _mean_curve(f.val), "test": _mean_curve(f.test),
            "matched": {f"{g:.2f}": matched_summary(pts, n_boot, seed)
                        for g, pts in f.matched.items()}}


def plain_metrics(c: Candidates, ks: Sequence[int] = (10,)) -> dict[str, np.ndarray]:
    """Per-user arrays of the plain evaluation (:func:`metrics.per_user`, with ties)."""
    p = c.plain
    return M.per_user(p.recs, p.targets, c.tail_mask, ks, ranks=p.ranks, ties=p.ties)

"""Significance tests: against scipy on fixtures and against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from marl_two_tower.eval.arrays import EvalArrays, load_eval_arrays, save_eval_arrays
from marl_two_tower.eval.significance import (
    bootstrap_p_value,
    bootstrap_weights,
    compare,
    metric_names,
    paired_tests,
    point_values,
    rank_biserial,
    seed_summary,
)
from marl_two_tower.metrics import ranking as M
from marl_two_tower.metrics.gini import gini


def make_arrays(recs, targets, n_items=8, tail=(5, 6, 7)) -> EvalArrays:
    recs = np.asarray(recs, dtype=np.int32)
    n = len(recs)
    pop = np.arange(n_items, 0, -1, dtype=np.int64)  # item 0 most popular
    tail_mask = np.zeros(n_items, dtype=bool)
    tail_mask[list(tail)] = True
    # full-catalogue rank = list position when present, beyond the list otherwise
    targets = np.asarray(targets, dtype=np.int64)
    pos = M.hit_positions(recs.astype(np.int64), targets)
    ranks = np.where(pos > 0, pos, recs.shape[1] + 1)
    return EvalArrays(users=np.arange(n), targets=targets, recs=recs, ranks=ranks,
                      item_pop=pop, tail_mask=tail_mask, ks=(2, 3))


def random_arrays(rng, n_users=60, n_items=30, k=5, p_hit=0.3) -> EvalArrays:
    """Random lists; a share p_hit of users has its target inside the list."""
    perms = np.stack([rng.permutation(n_items) for _ in range(n_users)])
    hit = rng.random(n_users) < p_hit
    col = np.where(hit, rng.integers(0, k, n_users), rng.integers(k, n_items, n_users))
    targets = perms[np.arange(n_users), col]
    recs = perms[:, :k].copy()
    recs[:3, k - 2:] = -1  # a few short lists
    a = make_arrays(recs, targets, n_items=n_items, tail=tuple(range(n_items - 10, n_items)))
    a.ks = (3, 5)
    return a


def test_paired_tests_match_scipy_on_fixture():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.0, 40)
    y = x - rng.normal(0.2, 0.5, 40)
    y[:3] = x[:3]  # a few zero differences
    r = paired_tests(x, y)
    t = stats.ttest_rel(x, y)
    w = stats.wilcoxon(x, y, zero_method="wilcox")
    assert r["t_stat"] == pytest.approx(t.statistic)
    assert r["p_ttest"] == pytest.approx(t.pvalue)
    assert r["wilcoxon_stat"] == pytest.approx(w.statistic)
    assert r["p_wilcoxon"] == pytest.approx(w.pvalue)
    d = x - y
    assert r["cohen_d"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert r["delta"] == pytest.approx(d.mean())
    assert r["n"] == 40


def test_rank_biserial_hand_computed():
    # |d| = 1, 2, 3, 4 -> ranks 1..4; positives hold ranks 2, 3, 4 -> W+ = 9, W- = 1
    assert rank_biserial(np.array([-1.0, 2.0, 3.0, 4.0, 0.0])) == pytest.approx((9 - 1) / 10)
    assert rank_biserial(np.array([1.0, 2.0])) == 1.0
    assert rank_biserial(np.zeros(3)) == 0.0


def test_identical_inputs_give_p_one_and_no_difference():
    x = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    r = paired_tests(x, x.copy())
    assert r["p_wilcoxon"] == 1.0 and r["p_ttest"] == 1.0
    assert r["delta"] == 0.0 and r["cohen_d"] == 0.0 and r["rank_biserial"] == 0.0
    rng = np.random.default_rng(1)
    a = random_arrays(rng)
    res = compare([a, a], [a, a], metric_names(a.ks), n_boot=200, seed=3)
    for name, e in res.items():
        assert e["delta"] == 0.0, name
        assert e["p_value"] == 1.0, name
        if e["delta_ci95"] is not None:
            assert e["delta_ci95"] == [0.0, 0.0], name


def test_nan_pairs_are_dropped():
    x = np.array([1.0, np.nan, 0.0, 1.0])
    y = np.array([0.0, 1.0, np.nan, 0.0])
    r = paired_tests(x, y)
    assert r["n"] == 2 and r["delta"] == 1.0
    assert r["p_ttest"] == 0.0 and math.isinf(r["t_stat"])  # constant non-zero difference


def test_planted_improvement_is_detected():
    rng = np.random.default_rng(2)
    n = 300
    base_hit = rng.random(n) < 0.2
    better_hit = base_hit | (rng.random(n) < 0.3)  # strictly more hits
    r = paired_tests(better_hit.astype(float), base_hit.astype(float))
    assert r["p_wilcoxon"] < 1e-6 and r["p_ttest"] < 1e-6
    assert r["delta"] > 0.2 and r["rank_biserial"] == 1.0
    # list level: the better system spreads its lists over the catalogue
    n_items, k = 50, 5
    narrow = np.tile(np.arange(k), (n, 1))
    wide = np.stack([rng.permutation(n_items)[:k] for _ in range(n)])
    targets = rng.integers(0, n_items, n)
    a, b = make_arrays(wide, targets, n_items, (45,)), make_arrays(narrow, targets, n_items, (45,))
    a.ks = b.ks = (5,)
    res = compare([a], [b], ["Coverage@5", "Gini@5"], n_boot=500, seed=0)
    assert res["Coverage@5"]["delta"] > 0.8 and res["Coverage@5"]["p_value"] < 0.01
    assert res["Gini@5"]["delta"] < -0.5 and res["Gini@5"]["p_value"] < 0.01
    assert res["Coverage@5"]["test"] == "bootstrap"


def test_point_values_reproduce_compute_metrics():
    rng = np.random.default_rng(4)
    a = random_arrays(rng, n_users=80, n_items=40)
    ref = M.compute_metrics(a.recs.astype(np.int64), a.targets, ks=a.ks, n_items=a.n_items,
                            item_pop=a.item_pop, tail_mask=a.tail_mask, ranks=a.ranks)
    for name in metric_names(a.ks):
        assert point_values([a], name)[0] == pytest.approx(ref[name], abs=1e-12), name


def test_bootstrap_weights_and_p_value():
    w = bootstrap_weights(7, 50, seed=1)
    assert w.shape == (50, 7) and np.all(w.sum(axis=1) == 7)
    assert np.array_equal(w, bootstrap_weights(7, 50, seed=1))
    assert bootstrap_p_value(np.zeros(99)) == 1.0
    # all deltas positive: p = 2 * (1 + 0) / (B + 1)
    assert bootstrap_p_value(np.ones(99)) == pytest.approx(2 / 100)
    # 10 of 99 deltas <= 0: p = 2 * 11 / 100
    d = np.r_[-np.ones(10), np.ones(89)]
    assert bootstrap_p_value(d) == pytest.approx(0.22)


def test_gini_of_each_row_matches_the_1d_gini():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 5, size=(6, 11)).astype(float)
    x[0] = 0
    assert np.allclose(gini(x), [M.gini(r) for r in x])


def test_bootstrap_ci_of_a_known_mean():
    # HR of 0/1 values with p = 0.5 over 400 users: CI half-width ~ 1.96 * 0.025
    n = 400
    recs = np.full((n, 2), -1)
    targets = np.arange(n) % 7
    recs[: n // 2, 0] = targets[: n // 2]
    a = make_arrays(recs, targets)
    res = compare([a], None, ["HR@2"], n_boot=2000, seed=0)["HR@2"]
    lo, hi = res["ci95"]
    assert res["value"] == 0.5
    assert hi - lo == pytest.approx(2 * 1.96 * 0.025, rel=0.15)


def test_seed_summary():
    s = seed_summary([0.1, 0.2, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    one = seed_summary([0.4, None])
    assert one["mean"] == 0.4 and one["std"] is None and one["n"] == 1


def test_eval_arrays_round_trip(tmp_path):
    a = make_arrays([[0, 1, 2], [3, -1, -1]], [1, 7])
    save_eval_arrays(tmp_path, a)
    b = load_eval_arrays(tmp_path)
    assert b is not None
    for f in ("users", "targets", "recs", "ranks", "item_pop", "tail_mask"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert b.ks == (2, 3)
    assert load_eval_arrays(tmp_path / "missing") is None


def test_misaligned_runs_are_refused():
    a = make_arrays([[0, 1]], [1])
    b = make_arrays([[0, 1]], [2])
    with pytest.raises(ValueError, match="different users"):
        compare([a], [b], ["HR@2"], n_boot=10)


def test_recentred_coverage_ci_contains_the_estimate():
    # Resampling users shrinks Coverage; the re-centred CIs still hold the estimate.
    rng = np.random.default_rng(6)
    n, n_items, k = 200, 400, 5
    wide = np.stack([rng.permutation(n_items)[:k] for _ in range(n)])
    narrow = np.stack([rng.permutation(40)[:k] for _ in range(n)])
    targets = rng.integers(0, n_items, n)
    a, b = make_arrays(wide, targets, n_items, (0,)), make_arrays(narrow, targets, n_items, (0,))
    a.ks = b.ks = (5,)
    res = compare([a], [b], ["Coverage@5"], n_boot=300, seed=0)["Coverage@5"]
    lo, hi = res["ci95"]
    assert lo <= res["value"] <= hi
    dlo, dhi = res["delta_ci95"]
    assert dlo <= res["delta"] <= dhi

"""Frontier evaluation (eval/frontier.py): interpolation, the off point, the knobs and
matched-Gini comparisons against hand-computed cases and planted fixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_evaluation import make_dataset, matrix_scorer

from marl_two_tower.data.split import Split, leave_one_out
from marl_two_tower.eval import frontier as F
from marl_two_tower.eval.protocols import RankResult, evaluate, rank_full
from marl_two_tower.fairness.exposure import ExposureBudget


@pytest.fixture(scope="module")
def split() -> Split:
    """80 users, 200 Zipf-popular items, 5..14 distinct items each (leave-one-out by
    position): 800 top-10 slots for 200 items, so one fair share is 4 lists."""
    rng = np.random.default_rng(3)
    pop = 1.0 / np.arange(1, 201) ** 0.8
    hist = [rng.choice(200, size=int(rng.integers(5, 15)), replace=False, p=pop / pop.sum()).tolist()
            for _ in range(80)]
    return leave_one_out(make_dataset(hist, 200))


def popular_scores(split: Split, seed: int, noise: float = 1.0) -> np.ndarray:
    """A popularity-collapsed scorer: everyone prefers the same head items (high Gini)."""
    rng = np.random.default_rng(seed)
    return np.log1p(split.item_pop)[None, :] * 2.0 + noise * rng.normal(size=(split.n_users, split.n_items))


def planted(split: Split, share: float, seed: int) -> np.ndarray:
    """``popular_scores`` plus a boost of the val and test targets for a ``share`` of the
    users: a model that knows what those users will consume."""
    s = popular_scores(split, seed)
    rng = np.random.default_rng(100 + seed)
    know = rng.random(split.n_users) < share
    for part in ("val", "test"):
        tgt = split.targets(part)
        u = np.flatnonzero(know & (tgt >= 0))
        s[u, tgt[u]] += 6.0
    return s


def cands(split: Split, scores: np.ndarray, m: int = 100) -> dict[str, F.Candidates]:
    return {p: F.compute_candidates(split, matrix_scorer(scores), p, n_candidates=m, k_max=10)
            for p in ("val", "test")}


# ---------------------------------------------------------------------------
# Interpolation (hand-computed)
# ---------------------------------------------------------------------------


def test_crossing_hand_cases() -> None:
    g = [0.80, 0.72, 0.64, 0.55]
    status, j, t = F.crossing(g, 0.70)
    assert (status, j) == ("matched", 1) and t == pytest.approx((0.72 - 0.70) / (0.72 - 0.64))  # 0.25
    assert F.crossing(g, 0.80) == ("off_below_target", 0, 0.0)  # off already at the target
    assert F.crossing(g, 0.85) == ("off_below_target", 0, 0.0)
    assert F.crossing(g, 0.55)[:2] == ("matched", 2) and F.crossing(g, 0.55)[2] == pytest.approx(1.0)
    assert F.crossing(g, 0.50)[:2] == ("not_reached", -1)
    # non-monotone curve: the first crossing from off counts
    assert F.crossing([0.8, 0.6, 0.7, 0.4], 0.65)[:2] == ("matched", 0)
    # flat pair at the target: t = 0
    assert F.crossing([0.8, 0.7, 0.7], 0.7) == ("matched", 0, 1.0)
    assert F.crossing([0.7, 0.7], 0.7) == ("off_below_target", 0, 0.0)


def _point(setting: F.Setting, gini: float, hits: list[float]) -> F.CurvePoint:
    """A curve point whose lists give exactly ``hits`` (1 = target in slot 1)."""
    n = len(hits)
    targets = np.arange(n, dtype=np.int64)
    recs = np.full((n, 10), -1, dtype=np.int64)
    recs[:, 0] = np.where(np.asarray(hits) > 0, targets, (targets + 1) % n)
    ranks = np.where(np.asarray(hits) > 0, 1, 11)
    a = F._arrays(F.Candidates("val", RankResult(targets, targets, recs, ranks), recs, recs.astype(float),
                               np.ones(n, np.int64), np.zeros(n, bool)),
                  RankResult(targets, targets, recs, ranks), 10)
    return F.CurvePoint(setting, {"HR@10": float(np.mean(hits)), "Gini@10": gini}, a)


def test_match_gini_chooses_on_val_and_interpolates_test() -> None:
    s = [F.Setting("off"), F.Setting("budget", 8.0), F.Setting("budget", 4.0)]
    val = [_point(s[0], 0.80, [1, 1, 0, 0]), _point(s[1], 0.72, [1, 0, 0, 0]),
           _point(s[2], 0.64, [0, 0, 0, 0])]
    test = [_point(s[0], 0.78, [1, 1, 1, 0]), _point(s[1], 0.70, [1, 1, 0, 0]),
            _point(s[2], 0.60, [0, 1, 0, 0])]
    p = F.match_gini(val, test, 0.70)
    # val: 0.72 -> 0.64 brackets 0.70, t = 0.25; test is never used for the choice
    assert p.status == "matched" and p.lower == s[1] and p.upper == s[2]
    assert p.t == pytest.approx(0.25)
    assert p.val_gini == pytest.approx(0.70)
    assert p.test["HR@10"] == pytest.approx(0.75 * 0.50 + 0.25 * 0.25)  # 0.4375
    assert p.test["Gini@10"] == pytest.approx(0.75 * 0.70 + 0.25 * 0.60)  # 0.675
    assert p.per_user().tolist() == pytest.approx([0.75, 1.0, 0.0, 0.0])
    assert F._knob_value(p) == pytest.approx(0.75 * 8 + 0.25 * 4)  # 7
    d = p.to_dict()
    assert d["knob_value"] == pytest.approx(7.0) and d["lower"]["factor"] == 8.0
    # off already below the target: the matched point is off itself
    q = F.match_gini(val, test, 0.90)
    assert q.status == "off_below_target" and q.test["HR@10"] == pytest.approx(0.75)
    r = F.match_gini(val, test, 0.30)
    assert r.status == "not_reached" and not r.ok
    assert F.matched_summary([r])["HR@10"]["value"] is None
    with pytest.raises(ValueError, match="same settings"):
        F.match_gini(val, test[::-1], 0.7)


# ---------------------------------------------------------------------------
# The knobs on real candidates
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["val", "test"])
def test_off_reproduces_the_plain_evaluation_exactly(split: Split, part: str) -> None:
    scores = popular_scores(split, 0)
    c = F.compute_candidates(split, matrix_scorer(scores), part, n_candidates=30, k_max=20)
    plain = rank_full(split, matrix_scorer(scores), part, k_max=20)
    off = F.lists_for(c, F.Setting("off"))
    for name in ("users", "targets", "recs", "ranks", "ties"):
        assert np.array_equal(getattr(off, name), getattr(plain, name)), name
    ref = evaluate(split, matrix_scorer(scores), part, ks=(10,), groups=False)["full"]
    (pt,) = F.curve(c, [F.Setting("off")], k=10)
    for name in ("HR@10", "NDCG@10", "Gini@10", "Coverage@10"):
        assert pt.metrics[name] == pytest.approx(ref[name], abs=1e-12), name
    # a cap nobody reaches (no floor) and a zero popularity weight give the same lists
    for s in (F.Setting("budget", 1e6, 0), F.Setting("popularity", 0.0)):
        assert np.array_equal(F.lists_for(c, s).recs, plain.recs), s.label


def test_budget_setting_equals_evaluate_with_the_budget(split: Split) -> None:
    scores = popular_scores(split, 1)
    c = F.compute_candidates(split, matrix_scorer(scores), "test", n_candidates=30, k_max=10)
    for factor, floor in ((2.0, 0), (1.5, 1)):
        budget = ExposureBudget(factor=factor, k=10, n_candidates=30, floor=floor)
        ref = rank_full(split, matrix_scorer(scores), "test", k_max=10, budget=budget)
        got = F.lists_for(c, F.Setting("budget", factor, floor))
        for name in ("recs", "ranks", "ties"):
            assert np.array_equal(getattr(got, name), getattr(ref, name)), name


def test_popularity_penalty_hand_case() -> None:
    # one user, candidates a=0, b=1, c=2 with log p = -1, -1.5, -3 and train pops 100, 1, 0:
    # w = 1: -1 - ln 101 = -5.62, -1.5 - ln 2 = -2.19, -3 - ln 1 = -3 -> order b, c, a
    plain = RankResult(np.array([0]), np.array([2]), np.array([[0, 1, 2]]), np.array([3]))
    c = F.Candidates("test", plain, np.array([[0, 1, 2]]), np.array([[-1.0, -1.5, -3.0]], np.float32),
                     np.array([100, 1, 0]), np.zeros(3, bool))
    assert F.lists_for(c, F.Setting("popularity", 1.0)).recs.tolist() == [[1, 2, 0]]
    assert F.lists_for(c, F.Setting("popularity", 1.0)).ranks.tolist() == [2]  # target c in slot 2
    # w = 0.1: -1.46, -1.57, -3 -> unchanged order
    assert F.lists_for(c, F.Setting("popularity", 0.1)).recs.tolist() == [[0, 1, 2]]


def test_gini_falls_monotonically_as_the_cap_tightens(split: Split) -> None:
    c = cands(split, popular_scores(split, 2))["test"]
    pts = F.curve(c, F.budget_curve((64, 16, 8, 4, 3, 2, 1.5, 1.25, 1), floor=0), k=10)
    g = [p.metrics["Gini@10"] for p in pts]
    assert all(b <= a + 1e-12 for a, b in zip(g, g[1:], strict=False)), g
    assert g[0] > 0.8 and g[-1] < 0.15  # off is concentrated, one fair share is nearly flat
    # and the coverage floor only lowers it further at a loose cap
    floor = F.curve(c, [F.Setting("budget", 64.0, 1)], k=10)[0]
    assert floor.metrics["Coverage@10"] >= pts[1].metrics["Coverage@10"]


# ---------------------------------------------------------------------------
# Matched Gini on planted models
# ---------------------------------------------------------------------------


def test_a_dominating_model_has_higher_hr_at_matched_gini(split: Split) -> None:
    settings = F.budget_curve((64, 16, 8, 6, 4, 3, 2.5, 2, 1.5, 1.25, 1), floor=0)
    strong = F.frontier_of("strong", [cands(split, planted(split, 0.6, s)) for s in (0, 1)], settings)
    weak = F.frontier_of("weak", [cands(split, planted(split, 0.25, s)) for s in (0, 1)], settings)
    for g in (0.6, 0.5):
        a, b = strong.matched[g], weak.matched[g]
        assert all(p.status == "matched" for p in (*a, *b))
        # chosen on validation: the validation Gini is the target
        assert all(p.val_gini == pytest.approx(g) for p in (*a, *b))
        sa, sb = F.matched_summary(a, n_boot=200), F.matched_summary(b, n_boot=200)
        assert sa["HR@10"]["value"] > sb["HR@10"]["value"] + 0.15
        lo, hi = sa["HR@10"]["ci95"]
        assert lo <= sa["HR@10"]["value"] <= hi and hi - lo < 0.3
        t = F.paired_matched(a, b)
        assert t["delta"] == pytest.approx(sa["HR@10"]["value"] - sb["HR@10"]["value"])
        assert t["delta"] > 0 and t["p_wilcoxon"] < 0.01
    # the same model against itself: no difference at all
    same = F.paired_matched(strong.matched[0.6], strong.matched[0.6])
    assert same["delta"] == 0.0 and same["p_wilcoxon"] == 1.0


def test_popularity_arm_and_seed_means(split: Split) -> None:
    runs = [cands(split, planted(split, 0.4, s)) for s in (0, 1)]
    f = F.frontier_of("m", runs, F.popularity_curve(), targets=(0.6,))
    one = [F.frontier_of("m", [r], F.popularity_curve(), targets=(0.6,)) for r in runs]
    summ = F.frontier_summary(f, n_boot=100)
    per_seed = [o.matched[0.6][0].test["HR@10"] for o in one]
    assert summ["matched"]["0.60"]["HR@10"]["value"] == pytest.approx(np.mean(per_seed))
    assert summ["matched"]["0.60"]["HR@10"]["per_seed"] == pytest.approx(per_seed)
    assert summ["test"][0]["setting"]["arm"] == "off" and summ["arm"] == "popularity"
    assert summ["test"][0]["HR@10"] == pytest.approx(np.mean([o.test[0][0].metrics["HR@10"] for o in one]))
    assert not math.isnan(summ["matched"]["0.60"]["Gini@10"]["value"])


def test_candidates_round_trip(split: Split, tmp_path) -> None:
    c = cands(split, popular_scores(split, 3), m=20)
    F.save_candidates(tmp_path, c)
    back = F.load_candidates(tmp_path)
    assert set(back) == {"val", "test"}
    for part in c:
        for name in ("users", "targets", "recs", "ranks", "ties"):
            assert np.array_equal(getattr(back[part].plain, name), getattr(c[part].plain, name))
        assert np.array_equal(back[part].cand, c[part].cand)
        assert np.array_equal(back[part].logp, c[part].logp)
        s = F.Setting("budget", 2.0, 1)
        assert np.array_equal(F.lists_for(back[part], s).recs, F.lists_for(c[part], s).recs)
    assert F.load_candidates(tmp_path / "nothing") is None


def test_prices_arm_lowers_gini_and_is_plain_when_loose(split: Split) -> None:
    """The stateless price arm: a cap nothing reaches gives the plain lists exactly; as
    the cap tightens the Gini falls, ending far below off (within the few slots over
    cap that simultaneous best responses leave), and every list is a user's own
    candidates re-ordered (no item outside them)."""
    c = cands(split, popular_scores(split, 2))["test"]
    loose = F.lists_for(c, F.Setting("prices", 1e6))
    np.testing.assert_array_equal(loose.recs, c.plain.recs)
    pts = F.curve(c, F.price_curve((16, 4, 2, 1.25)), k=10)
    g = [p.metrics["Gini@10"] for p in pts]
    assert g[0] > 0.8 and g[-1] < g[0] - 0.4, g
    assert all(b <= a + 0.02 for a, b in zip(g, g[1:], strict=False)), g
    recs = F.lists_for(c, F.Setting("prices", 2.0)).recs
    for r, cand in zip(recs, c.cand, strict=True):
        assert set(r[r >= 0]) <= set(cand[cand >= 0])

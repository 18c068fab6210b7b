"""Exposure budget (the GINI agent's inference-time arm): capped allocation and
coverage floor against hand-computed cases, properties and the plain ranking."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluation import make_dataset, matrix_scorer

from marl_two_tower.config import ConfigError, load_config
from marl_two_tower.data.split import leave_one_out
from marl_two_tower.eval.protocols import evaluate, rank_full
from marl_two_tower.fairness.exposure import ExposureBudget, allocate, budget_from_config, cover_unexposed


def random_candidates(seed: int, n_users: int = 60, n_items: int = 40, m: int = 25):
    """Per-user candidate rows (distinct items, best first) with log-prob priorities."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_users, n_items)) + np.linspace(3, 0, n_items)  # popular head
    cand = np.argsort(-scores, axis=1)[:, :m]
    pri = np.take_along_axis(scores, cand, axis=1)
    return cand, pri


def test_allocate_hand_case() -> None:
    # three users, three items, every item in at most one list, two slots each:
    # slot 1: u0 and u1 both want item 0, u1 wants it more (-0.5 > -1) and gets it;
    # u0 falls back to item 1; u2's best is item 0 (taken) -> item 2. Slot 2: all full.
    cand = np.array([[0, 1, 2], [0, 1, 2], [0, 2, 1]])
    pri = np.array([[-1, -2, -3], [-0.5, -2, -3], [-2, -2.5, -3]])
    assert allocate(cand, pri, 2, 1, 3).tolist() == [[1, -1], [0, -1], [2, -1]]
    # room for everyone: each user's own order
    assert allocate(cand, pri, 2, 3, 3).tolist() == [[0, 1], [0, 1], [0, 2]]


@pytest.mark.parametrize("seed", range(5))
def test_allocate_respects_capacity_and_candidates(seed: int) -> None:
    cand, pri = random_candidates(seed)
    cap = 7
    out = allocate(cand, pri, 10, cap, 40)
    filled = out[out >= 0]
    assert np.bincount(filled, minlength=40).max() <= cap
    for u in range(len(out)):
        row = out[u][out[u] >= 0]
        assert len(set(row.tolist())) == len(row)  # distinct
        assert set(row.tolist()) <= set(cand[u].tolist())
    # total budget 40 * 7 = 280 < 600 slots: every unit of capacity reachable is used
    assert len(filled) == min(600, sum(min(cap, int((cand == i).any(axis=1).sum())) for i in range(40)))


@pytest.mark.parametrize("seed", range(3))
def test_allocate_without_binding_cap_is_plain_top_k(seed: int) -> None:
    cand, pri = random_candidates(seed)
    out = allocate(cand, pri, 10, len(cand), 40)  # no item can reach its cap
    assert np.array_equal(out, cand[:, :10])


def test_allocate_fills_slots_in_order() -> None:
    # slot order: the first 5 slots of a 10-slot allocation are the 5-slot allocation
    cand, pri = random_candidates(7)
    assert np.array_equal(allocate(cand, pri, 10, 9, 40)[:, :5], allocate(cand, pri, 5, 9, 40))


def test_cover_unexposed_hand_case() -> None:
    # top-2 lists hold items 0 and 1 only; items 2..5 are unexposed candidates.
    recs = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    cand = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 5, 4]])
    lp = np.array([[-1, -2, -3, -4, -5, -6], [-1, -2, -3, -4, -4.5, -7.0]])
    # floor 1: u0 takes item 2 (its best unexposed, -3 beats items 3 and 4), u1 item 5
    # (-4.5); the new item sits at slot 2 and the old slot 2 moves down; item 2 leaves
    # u0's later slots (no duplicates)
    assert cover_unexposed(recs, cand, lp, 2, 1, 6).tolist() == [[0, 2, 1, 3], [0, 5, 1, 2]]
    # floor 2: u0 accepts items 2 and 3, u1 items 5 and then 4 (u0 is full)
    assert cover_unexposed(recs, cand, lp, 2, 2, 6).tolist() == [[2, 3, 0, 1], [5, 4, 0, 1]]
    assert cover_unexposed(recs, cand, lp, 2, 0, 6).tolist() == recs.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_budget_raises_coverage_and_keeps_the_cap(seed: int) -> None:
    cand, pri = random_candidates(seed, n_users=80, n_items=60, m=60)
    plain = cand[:, :10]
    budget = ExposureBudget(factor=1.5, k=10, n_candidates=60, floor=1)
    cap = budget.capacity(80, 60)
    capped = allocate(cand, pri, 10, cap, 60)
    covered = cover_unexposed(capped, cand, pri, 10, 1, 60)
    n_cov = [len(np.unique(x[x >= 0])) for x in (plain, capped, covered)]
    assert n_cov[0] < n_cov[1] <= n_cov[2] and n_cov[2] == 60
    assert np.bincount(covered[covered >= 0], minlength=60).max() <= cap
    for row in covered:
        assert len(set(row.tolist())) == 10


def random_split():
    rng = np.random.default_rng(3)
    histories = [rng.integers(0, 30, rng.integers(3, 25)).tolist() for _ in range(40)]
    return leave_one_out(make_dataset(histories, 30))


def test_rank_full_with_loose_budget_equals_plain_ranking() -> None:
    split = random_split()
    scores = np.random.default_rng(4).normal(size=(split.n_users, split.n_items))
    plain = rank_full(split, matrix_scorer(scores), "test", k_max=10)
    loose = rank_full(split, matrix_scorer(scores), "test", k_max=10,
                      budget=ExposureBudget(factor=100.0, k=10, n_candidates=30, floor=0))
    assert np.array_equal(plain.recs, loose.recs)
    hit = (plain.recs == plain.targets[:, None]).any(axis=1)
    assert np.array_equal(plain.ranks[hit], loose.ranks[hit])
    assert (loose.ranks[~hit] > 10).all()


def test_evaluate_with_budget_lowers_gini_masks_seen_items() -> None:
    split = random_split()
    # every user prefers the same items: a popularity-collapsed scorer
    scores = np.tile(np.linspace(5, 0, split.n_items), (split.n_users, 1))
    plain = evaluate(split, matrix_scorer(scores), "test", ks=(5,), groups=False)["full"]
    fair = evaluate(split, matrix_scorer(scores), "test", ks=(5,), groups=False,
                    budget=ExposureBudget(factor=1.0, k=5, n_candidates=30, floor=1))["full"]
    assert fair["Gini@5"] < plain["Gini@5"] - 0.3
    assert fair["Coverage@5"] > plain["Coverage@5"]
    res = rank_full(split, matrix_scorer(scores), "test", k_max=5,
                    budget=ExposureBudget(factor=1.0, k=5, n_candidates=30, floor=0))
    excl = split.exclusion_matrix("test")
    for row, u, t in zip(res.recs, res.users, res.targets, strict=True):
        seen = set(excl.indices[excl.indptr[u]:excl.indptr[u + 1]].tolist()) - {int(t)}
        assert not seen & set(row[row >= 0].tolist())
    cap = ExposureBudget(factor=1.0, k=5, n_candidates=1000, floor=0).capacity(len(res.users), split.n_items)
    assert np.bincount(res.recs[res.recs >= 0]).max() <= cap


def test_budget_from_config() -> None:
    # the budget has its own switch: the GINI training loss alone allocates nothing
    assert budget_from_config(load_config("base.yaml", ["gini.enabled=true"])) is None
    on = ["exposure_budget.enabled=true"]
    b = budget_from_config(load_config("base.yaml", on + ["gini.exposure_cap=3", "gini.cover_floor=1"]))
    assert b == ExposureBudget(factor=3.0, k=10, n_candidates=1000, floor=1)
    # ... and needs no GINI loss
    assert not load_config("base.yaml", on).gini.enabled and budget_from_config(load_config("base.yaml", on))
    assert budget_from_config(load_config("base.yaml", on + ["gini.exposure_cap=0"])) is None
    assert budget_from_config(load_config("base.yaml", on + ["exposure_budget.enabled=false"])) is None
    with pytest.raises(ConfigError, match="gini.exposure_cap"):
        budget_from_config(load_config("base.yaml", on + ["gini.exposure_cap=0.5"]))


def test_configs_from_before_the_switch_evaluate_as_they_did() -> None:
    from marl_two_tower.config import Config, config_from_dict, fingerprint_config

    # a stored config of the old layout (every key, no exposure_budget section):
    # gini.enabled switched the loss and the budget, so it still does for that config
    old = Config().to_dict()
    del old["exposure_budget"]
    old["gini"]["enabled"] = True
    assert config_from_dict(old).exposure_budget.enabled
    assert budget_from_config(config_from_dict(old)) == ExposureBudget(6.0, 10, 1000, 1)
    old["gini"]["enabled"] = False
    assert not config_from_dict(old).exposure_budget.enabled
    # a config that names the section is read as written
    new = Config().to_dict()
    new["gini"]["enabled"] = True
    assert not config_from_dict(new).exposure_budget.enabled
    # an evaluation-time switch: never blocks resuming or reusing a checkpoint
    a, b = Config(), Config()
    b.exposure_budget.enabled = True
    assert fingerprint_config(a) == fingerprint_config(b) == fingerprint_config(config_from_dict(old))
    with pytest.raises(ValueError, match="floor"):
        ExposureBudget(factor=2.0, k=10, n_candidates=1000, floor=11)


# ---------------------------------------------------------------------------
# Item prices: the stateless, per-request form of the budget
# ---------------------------------------------------------------------------


def test_item_prices_hand_case() -> None:
    """Two users, two items, k = 1, capacity 1; both prefer item 0: user 0 by 1 nat
    (log p -1 vs -2), user 1 by 0.5 (-1 vs -1.5). Item 0's margins are 1 and 0.5; the
    price that leaves it one list is the 2nd largest, 0.5, plus the bid increment eps.
    Then user 1 takes item 1 (-1.5 > -1 - 0.5 - eps), user 0 keeps item 0, item 1 needs
    no price, and the next round stops."""
    from marl_two_tower.fairness.exposure import fit_item_prices, priced_lists

    cand = np.array([[0, 1], [0, 1]])
    logp = np.array([[-1.0, -2.0], [-1.0, -1.5]])
    prices = fit_item_prices(cand, logp, k=1, capacity=1, n_items=2, damping=1.0, eps=1e-3)
    np.testing.assert_allclose(prices, [0.501, 0.0])
    assert priced_lists(cand, logp, prices, k_max=2).tolist() == [[0, 1], [1, 0]]
    # damping 0.5 gets there in steps (0.2505, then 0.37575, ...) and stops once it holds
    half = fit_item_prices(cand, logp, k=1, capacity=1, n_items=2, damping=0.5, eps=1e-3)
    assert 0.5 < half[0] <= 0.501 and half[1] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_item_prices_bring_exposure_down_to_about_the_cap(seed: int) -> None:
    """Random users with a popular head: the plain top-5 puts the head items in half the
    lists; priced lists hold every item within two slots of the cap (here: exactly at
    it), full and without repeats; a cap nothing reaches gives zero prices and the plain
    lists."""
    from marl_two_tower.fairness.exposure import fit_item_prices, priced_lists

    cand, pri = random_candidates(seed, n_users=200, n_items=40, m=40)
    logp = pri - np.log(np.exp(pri).sum(1, keepdims=True))
    k, cap = 5, 40
    plain = np.bincount(cand[:, :k].ravel(), minlength=40)
    assert plain.max() > 90
    prices = fit_item_prices(cand, logp, k, cap, 40, iters=200)
    recs = priced_lists(cand, logp, prices, k)
    counts = np.bincount(recs.ravel(), minlength=40)
    assert counts.max() <= cap + 2 and counts.max() < plain.max() / 2
    assert (recs >= 0).all() and all(len(set(r)) == k for r in recs.tolist())  # full, no repeats
    loose = fit_item_prices(cand, logp, k, 10_000, 40)
    assert not loose.any()
    np.testing.assert_array_equal(priced_lists(cand, logp, loose, k), cand[:, :k])

"""Metric definitions against hand-computed fixtures and a second Gini formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marl_two_tower.metrics import ranking as M

# Fixture: 4 users, catalogue of 6 items, lists of length 3 (-1 = empty slot).
#   u0: [0, 2, 1]   target 2 -> position 2
#   u1: [1, 0, 3]   target 3 -> position 3
#   u2: [0, 1, -1]  target 4 -> not in the list
#   u3: [0, 5, 2]   target 0 -> position 1
# Full ranks (from a harness): [2, 3, 7, 1].
# Tail = {2, 3, 4, 5}, head = {0, 1}; train popularity = [10, 6, 3, 1, 0, 0].
RECS = np.array([[0, 2, 1], [1, 0, 3], [0, 1, -1], [0, 5, 2]])
TARGETS = np.array([2, 3, 4, 0])
RANKS = np.array([2, 3, 7, 1])
N_ITEMS = 6
TAIL = np.array([False, False, True, True, True, True])
POP = np.array([10, 6, 3, 1, 0, 0])
L3 = 1 / math.log2(3)  # NDCG gain at position 2


def test_hit_positions_and_padding_never_matches() -> None:
    assert M.hit_positions(RECS, TARGETS).tolist() == [2, 3, 0, 1]
    assert M.hit_positions(RECS, TARGETS, k=2).tolist() == [2, 0, 0, 1]
    # a target of -1 must not "hit" an empty slot
    assert M.hit_positions(np.array([[3, -1]]), np.array([-1])).tolist() == [0]


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 1 / 4),  # u3 only
        (2, 2 / 4),  # u0 (pos 2), u3
        (3, 3 / 4),  # u0, u1 (pos 3), u3
    ],
)
def test_hit_rate(k: int, expected: float) -> None:
    assert M.hit_rate(RECS, TARGETS, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 1 / 4),  # u3: 1/log2(2) = 1
        (2, (1 + L3) / 4),  # + u0: 1/log2(3)
        (3, (1 + L3 + 0.5) / 4),  # + u1: 1/log2(4) = 0.5
    ],
)
def test_ndcg(k: int, expected: float) -> None:
    assert M.ndcg(RECS, TARGETS, k) == pytest.approx(expected)


def test_mrr_full_ranks_and_list_positions() -> None:
    # 1/2 + 1/3 + 1/7 + 1/1 = 83/42, over 4 users
    assert M.mrr(RANKS) == pytest.approx(83 / 168)
    # MRR@3 from list positions [2, 3, 0, 1]: (1/2 + 1/3 + 0 + 1) / 4 = 11/24
    assert M.mrr(M.hit_positions(RECS, TARGETS)) == pytest.approx(11 / 24)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 2 / 6),  # {0, 1}
        (2, 4 / 6),  # {0, 1, 2, 5}
        (3, 5 / 6),  # {0, 1, 2, 3, 5}; item 4 never recommended
    ],
)
def test_coverage(k: int, expected: float) -> None:
    assert M.coverage(RECS, k, N_ITEMS) == pytest.approx(expected)


def test_exposure_counts_every_catalogue_item() -> None:
    # @3: item0 in all 4 lists, item1 in u0,u1,u2, item2 in u0,u3, item3 u1, item5 u3
    assert M.exposure(RECS, 3, N_ITEMS).tolist() == [4, 3, 2, 1, 0, 1]
    assert M.exposure(RECS, 1, N_ITEMS).tolist() == [3, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="out of range"):
        M.exposure(RECS, 3, 4)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # x = [3,1,0,0,0,0] -> sorted [0,0,0,0,1,3], weights 2k-7 = [-5,-3,-1,1,3,5]
        # sum = 1*3 + 3*5 = 18; / (n * sum x) = 18 / (6 * 4) = 0.75
        (1, 18 / 24),
        # x = [4,2,1,0,0,1] -> sorted [0,0,1,1,2,4]: -1 + 1 + 6 + 20 = 26; / (6 * 8)
        (2, 26 / 48),
        # x = [4,3,2,1,0,1] -> sorted [0,1,1,2,3,4]: -3 - 1 + 2 + 9 + 20 = 27; / (6 * 11)
        (3, 27 / 66),
    ],
)
def test_gini_at_k_includes_never_recommended_items(k: int, expected: float) -> None:
    assert M.gini(M.exposure(RECS, k, N_ITEMS)) == pytest.approx(expected)


def test_gini_hand_values() -> None:
    # one item takes everything: weights [-3,-1,1,3], 3*4 / (4*4) = (n-1)/n = 0.75
    assert M.gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    assert M.gini(np.array([2, 2, 2, 2])) == 0.0
    # [0,1,2,3]: -1*1 + 1*2 + 3*3 = 10; / (4 * 6) = 5/12
    assert M.gini(np.array([3, 0, 2, 1])) == pytest.approx(5 / 12)
    assert M.gini(np.zeros(5)) == 0.0  # nothing exposed: defined as 0
    assert M.gini(np.array([])) == 0.0
    with pytest.raises(ValueError):
        M.gini(np.array([1.0, -1.0]))


def _gini_mean_abs_difference(x: np.ndarray) -> float:
    """Independent formula: sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))."""
    x = x.astype(np.float64)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


def test_gini_agrees_with_mean_absolute_difference_formula() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50, 301):
        for x in (rng.random(n), rng.integers(0, 5, n) + 0.0, rng.pareto(1.5, n)):
            if x.sum() == 0:
                continue
            assert M.gini(x) == pytest.approx(_gini_mean_abs_difference(x), abs=1e-12)


@pytest.mark.parametrize(
    ("k", "tail_hr", "head_hr"),
    [
        # tail-target users u0 (2), u1 (3), u2 (4); head-target user u3 (0)
        (1, 0 / 3, 1.0),
        (2, 1 / 3, 1.0),  # u0
        (3, 2 / 3, 1.0),  # u0, u1
    ],
)
def test_tail_and_head_hit_rate(k: int, tail_hr: float, head_hr: float) -> None:
    assert M.tail_hit_rate(RECS, TARGETS, TAIL, k) == pytest.approx(tail_hr)
    assert M.head_hit_rate(RECS, TARGETS, TAIL, k) == pytest.approx(head_hr)


def test_tail_hit_rate_is_nan_without_such_users() -> None:
    all_head = np.zeros(N_ITEMS, dtype=bool)
    assert math.isnan(M.tail_hit_rate(RECS, TARGETS, all_head, 3))
    assert M.head_hit_rate(RECS, TARGETS, all_head, 3) == pytest.approx(3 / 4)
    out = M.compute_metrics(RECS, TARGETS, ks=[3], n_items=N_ITEMS, item_pop=POP, tail_mask=all_head)
    assert out["TailHR@3"] is None  # JSON null, not NaN


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 4 / 4),  # first slots 0,1,0,0: all head
        (2, 6 / 8),  # u0 [0,2]:1, u1 [1,0]:2, u2 [0,1]:2, u3 [0,5]:1
        (3, 7 / 11),  # 11 filled slots (u2 has 2); head: 2 + 2 + 2 + 1
    ],
)
def test_redundancy(k: int, expected: float) -> None:
    assert M.redundancy(RECS, TAIL, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, (10 + 6 + 10 + 10) / 4),
        # u0 10+3+6, u1 6+10+1, u2 10+6, u3 10+0+3 over 11 filled slots
        (3, (19 + 17 + 16 + 13) / 11),
    ],
)
def test_avg_popularity(k: int, expected: float) -> None:
    assert M.avg_popularity(RECS, POP, k) == pytest.approx(expected)


def test_group_hit_rate() -> None:
    # gender codes: u0 F, u1 M, u2 F, u3 unknown (-1); label "X" has no users
    codes = np.array([0, 1, 0, -1])
    hits3 = M.hit_positions(RECS, TARGETS, 3) > 0  # [1, 1, 0, 1]
    g = M.group_hit_rate(hits3, codes, ["F", "M", "X"])
    # F: (1 + 0)/2 = 0.5, M: 1/1; mean 0.75, pop. std = sqrt((0.25^2 + 0.25^2)/2) = 0.25
    assert g["HR"] == {"F": 0.5, "M": 1.0}
    assert g["n_users"] == {"F": 2, "M": 1}
    assert g["std"] == pytest.approx(0.25)
    assert g["gap"] == pytest.approx(0.5)
    three = M.group_hit_rate(np.array([1, 0, 1, 1, 0, 0]), np.array([0, 0, 1, 1, 2, 2]), "abc")
    # HR = [0.5, 1, 0], mean 0.5, var = (0 + 0.25 + 0.25)/3
    assert three["std"] == pytest.approx(math.sqrt(0.5 / 3))
    assert three["gap"] == pytest.approx(1.0)
    empty = M.group_hit_rate(np.array([1.0]), np.array([-1]), ["F"])
    assert empty["HR"] == {} and math.isnan(empty["std"])


def test_per_user_arrays_reproduce_the_aggregates() -> None:
    pu = M.per_user(RECS, TARGETS, TAIL, [2, 3], ranks=RANKS)
    assert pu["hit@2"].tolist() == [1, 0, 0, 1]
    assert pu["ndcg@3"] == pytest.approx([L3, 0.5, 0.0, 1.0])
    # u0..u2 have tail targets, u3 a head target (NaN)
    np.testing.assert_array_equal(pu["tailhit@2"], [1.0, 0.0, 0.0, np.nan])
    assert pu["is_tail"].tolist() == [True, True, True, False]
    assert pu["rr"] == pytest.approx([1 / 2, 1 / 3, 1 / 7, 1.0])
    for k in (2, 3):
        assert pu[f"hit@{k}"].mean() == pytest.approx(M.hit_rate(RECS, TARGETS, k))
        assert pu[f"ndcg@{k}"].mean() == pytest.approx(M.ndcg(RECS, TARGETS, k))
        assert np.nanmean(pu[f"tailhit@{k}"]) == pytest.approx(M.tail_hit_rate(RECS, TARGETS, TAIL, k))
    assert pu["rr"].mean() == pytest.approx(M.mrr(RANKS))


def test_compute_metrics_truncates_the_longest_list() -> None:
    groups = {"gender": (np.array([0, 1, 0, -1]), ["F", "M"])}
    out = M.compute_metrics(
        RECS,
        TARGETS,
        ks=[2, 1],
        n_items=N_ITEMS,
        item_pop=POP,
        tail_mask=TAIL,
        ranks=RANKS,
        groups=groups,
    )
    assert out["HR@1"] == pytest.approx(0.25) and out["HR@2"] == pytest.approx(0.5)
    assert out["NDCG@2"] == pytest.approx((1 + L3) / 4)
    assert out["Coverage@2"] == pytest.approx(4 / 6)
    assert out["Gini@2"] == pytest.approx(26 / 48)
    assert out["TailHR@2"] == pytest.approx(1 / 3) and out["HeadHR@2"] == 1.0
    assert out["Redundancy@2"] == pytest.approx(0.75)
    assert out["AvgPop@2"] == pytest.approx((10 + 3 + 6 + 10 + 10 + 6 + 10 + 0) / 8)
    assert out["MRR"] == pytest.approx(83 / 168)
    # @2 hits [1,0,0,1]: F = (1 + 0)/2, M = 0
    gender = out["groups"]["gender"]
    assert gender["HR@2"] == {"F": 0.5, "M": 0.0}
    assert gender["std@2"] == pytest.approx(0.25) and gender["gap@2"] == pytest.approx(0.5)
    assert gender["HR@1"] == {"F": 0.0, "M": 0.0} and gender["gap@1"] == 0.0
    # without full ranks, the reciprocal list position at the largest K is reported
    no_ranks = M.compute_metrics(RECS, TARGETS, ks=[2], n_items=N_ITEMS, item_pop=POP, tail_mask=TAIL)
    assert "MRR" not in no_ranks and no_ranks["MRR@2"] == pytest.approx((1 / 2 + 1) / 4)
    with pytest.raises(ValueError, match="@5"):
        M.compute_metrics(RECS, TARGETS, ks=[5], n_items=N_ITEMS, item_pop=POP, tail_mask=TAIL)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="2-D"):
        M.hit_rate(np.array([1, 2]), np.array([1, 2]), 1)
    with pytest.raises(ValueError, match="integer"):
        M.hit_rate(np.array([[1.0]]), np.array([1]), 1)
    with pytest.raises(ValueError, match="targets"):
        M.hit_rate(RECS, TARGETS[:2], 1)

"""Fair Sampler: item marginals, the per-batch cap, determinism and its effect on ML-100K."""

from __future__ import annotations

import numpy as np
import pytest

from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.samplers import PositiveSampler
from marl_two_tower.data.split import leave_one_out
from marl_two_tower.fairness.fair_sampler import FairSampler, capped_marginal
from marl_two_tower.metrics.gini import gini


def toy_split(users, items, n_users=None, n_items=None):
    """A Split whose train part is exactly (users, items): every user (each must have a
    train interaction) gets two extra last interactions on item 0, which LOO removes."""
    users, items = np.asarray(users), np.asarray(items)
    n_users = n_users or int(users.max()) + 1
    assert len(np.unique(users)) == n_users
    n_items = n_items or int(items.max()) + 1
    extra_u = np.repeat(np.arange(n_users), 2)
    u = np.r_[users, extra_u]
    i = np.r_[items, np.zeros(len(extra_u), dtype=np.int64)]
    ds = Dataset(name="toy", users=u, items=i, timestamps=np.arange(len(u), dtype=float),
                 n_users=n_users, n_items=n_items, user_ids=np.arange(n_users),
                 item_ids=np.arange(n_items), item_genres=np.zeros((n_items, 0), dtype=bool),
                 genre_names=[], item_year=np.zeros(n_items, dtype=np.int32))
    return leave_one_out(ds)


def zipf_split(n_items: int, n_inter: int, seed: int, exponent: float = 1.0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** exponent
    items = rng.choice(n_items, n_inter, p=p / p.sum())
    users = rng.permutation(np.arange(n_inter) % max(n_inter // 20, 1))
    return toy_split(users, items, n_items=n_items)


def test_item_marginal_is_pop_to_one_minus_beta():
    # pops 1, 2, 4, 8 (item 0 also has the val/test rows, which LOO removes)
    items = np.r_[[1], [2] * 2, [3] * 4, [4] * 8]
    split = toy_split(np.zeros(len(items), dtype=np.int64), items, n_items=5)
    assert split.item_pop.tolist() == [0, 1, 2, 4, 8]
    for beta, expect in ((0.0, [0, 1, 2, 4, 8]), (1.0, [0, 1, 1, 1, 1]),
                         (0.5, [0, 1, 2 ** 0.5, 2, 8 ** 0.5])):
        s = FairSampler(split, batch_size=1000, seed=0, beta=beta, max_per_batch=10_000)
        np.testing.assert_allclose(s.prob, np.array(expect) / sum(expect), atol=1e-12)


def test_empirical_frequencies_match_prob_with_cap():
    split = zipf_split(60, 6000, seed=1, exponent=1.2)
    s = FairSampler(split, batch_size=64, seed=3, beta=0.3, max_per_batch=2)
    counts = np.zeros(split.n_items)
    for epoch in range(20):
        idx = np.concatenate(list(s.batches(epoch)))
        counts += np.bincount(split.train_items[idx], minlength=split.n_items)
    emp = counts / counts.sum()
    # the cap binds hard for the head here: the uncapped marginal is far off ...
    uncapped = capped_marginal(s.prob, 10**9, 10**9)
    p = split.item_pop ** 0.7
    p = p / p.sum()
    np.testing.assert_allclose(uncapped, s.prob)  # identity when the cap cannot bind
    assert 0.5 * np.abs(emp - p).sum() > 0.05
    # ... while the cap-corrected marginal matches to sampling noise (measured TV
    # 0.005-0.006 over seeds 0-4)
    assert 0.5 * np.abs(emp - s.prob).sum() < 0.012


def test_cap_never_exceeded_property():
    rng = np.random.default_rng(0)
    for case in range(40):
        n_items = int(rng.integers(1, 80))
        exponent = float(rng.uniform(0.0, 2.5))
        split = zipf_split(n_items, int(rng.integers(50, 3000)), seed=case, exponent=exponent)
        cap = int(rng.integers(1, 6))
        batch = int(rng.integers(1, 300))
        beta = float(rng.uniform(-0.5, 1.5))
        s = FairSampler(split, batch, seed=case, beta=beta, max_per_batch=cap)
        batches = list(s.batches(case))
        assert len(batches) == len(s)
        idx = np.concatenate(batches)
        assert len(idx) == len(split.train_items)  # one epoch = one pass worth of draws
        assert idx.min() >= 0 and idx.max() < len(split.train_items)
        for b in batches:
            assert len(b) <= batch
            assert np.bincount(split.train_items[b]).max() <= cap, (case, cap)


def test_tight_cap_fills_every_item_exactly_cap_times():
    # 7 items with interactions, cap 3, batch 21: every full batch must hold each item
    # exactly 3 times; rejection alone rarely gets there, so this exercises the
    # sequential completion of short rows.
    items = np.r_[[1] * 200, [2] * 50, [3] * 20, [4] * 5, [5] * 2, [6], [7]]
    split = toy_split(np.arange(len(items)) % 20, items, n_items=8)
    s = FairSampler(split, 21, seed=0, beta=0.0, max_per_batch=3)
    for b in list(s.batches(0))[:-1]:
        assert np.bincount(split.train_items[b], minlength=8).tolist() == [0] + [3] * 7


def test_same_seed_and_epoch_same_batches():
    split = zipf_split(50, 2000, seed=4)
    a = FairSampler(split, 100, seed=5, beta=0.5, max_per_batch=3)
    b = FairSampler(split, 100, seed=5, beta=0.5, max_per_batch=3)
    for x, y in zip(a.batches(2), b.batches(2), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.concatenate(list(a.batches(3))), np.concatenate(list(a.batches(2))))


def test_last_epoch_gini_is_gini_of_drawn_items():
    split = zipf_split(40, 3000, seed=2)
    s = FairSampler(split, 128, seed=0, beta=0.7, max_per_batch=4)
    idx = np.concatenate(list(s.batches(0)))
    assert s.last_epoch_gini == pytest.approx(
        gini(np.bincount(split.train_items[idx], minlength=split.n_items)), abs=1e-12)


def test_ml100k_fair_sampler_lowers_sampled_gini(ml100k_dir):
    from marl_two_tower.data.movielens import load_ml100k

    split = leave_one_out(load_ml100k(ml100k_dir))
    uni = PositiveSampler(split, 512, seed=42)
    idx = np.concatenate(list(uni.batches(0)))
    g_uniform = gini(np.bincount(split.train_items[idx], minlength=split.n_items))
    fair = FairSampler(split, 512, seed=42, beta=0.5, max_per_batch=4)
    list(fair.batches(0))
    # measured: uniform 0.630, fair (beta 0.5, cap 4) 0.402
    assert g_uniform == pytest.approx(0.630, abs=0.005)
    assert fair.last_epoch_gini < g_uniform - 0.2
    for b in fair.batches(1):
        assert np.bincount(split.train_items[b]).max() <= 4

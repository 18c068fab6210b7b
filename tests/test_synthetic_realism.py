"""The synthetic generator has the structure of real data (issue 16, point 1).

* Calibration: at ML-100K's size (943 users, 1682 items, 106 interactions per user)
  the default generator reproduces ML-100K's statistics within stated tolerances.
* The planted mechanisms exist: next-item transitions (P(next in successors(a) | a)
  far above chance), niche items over-consumed by their home segment, taste drift,
  and switching one mechanism leaves the others' random streams intact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from marl_two_tower.config import SyntheticConfig
from marl_two_tower.data import synthetic as S
from marl_two_tower.metrics.data_profile import data_profile

ML100K_SIZE = {"n_users": 943, "n_items": 1682, "interactions_per_user": 106.0}

# ML-100K's statistics: `.venv/bin/python benchmarks/synthetic_realism.py --stats-only`,
# section profiles["ml-100k"] of benchmarks/results/synthetic_realism.json (rounded).
# statistic: (ML-100K value, tolerance of |generated - ML-100K|)
ML100K = {
    "pop_gini": (0.629, 0.04),
    "top10_share": (0.429, 0.04),
    "top1_share": (0.076, 0.025),
    "items_under_5": (0.198, 0.06),
    "len_min": (20, 2),
    "len_median": (65.0, 12.0),
    "len_p90": (244.4, 45.0),
    "genres_per_item": (1.72, 0.1),
    "successor_hit": (0.092, 0.03),
    "sequential_lift": (3.05, 1.0),
    "drift_gap": (0.033, 0.02),
    "pop_first_decile": (0.888, 0.05),
    "pop_last_decile": (0.754, 0.05),
}
ML100K_GENRE_TOP5 = [0.246, 0.183, 0.096, 0.094, 0.081]  # profiles["ml-100k"]["genre_shares"]
ML100K_EXCESS_KL = {  # profiles["ml-100k"][...]: band -> value, tolerance 0.04 each
    "agegender_excess_kl": {"5-19": 0.067, "20-99": 0.085, "100+": 0.042},
    "occupation_excess_kl": {"5-19": 0.095, "20-99": 0.055, "100+": 0.026},
}


@pytest.fixture(scope="module")
def calibrated():
    """The default generator at ML-100K's size, its world and its profile."""
    ds, world = S.generate_with_world(SyntheticConfig(**ML100K_SIZE))
    return ds, world, data_profile(ds)


@pytest.mark.parametrize("key", list(ML100K))
def test_statistic_matches_ml100k(calibrated, key):
    real, tol = ML100K[key]
    got = calibrated[2][key]
    assert abs(got - real) <= tol, f"{key}: generated {got:.4f}, ML-100K {real} (tolerance {tol})"


def test_genre_mix_matches_ml100k(calibrated):
    shares = calibrated[2]["genre_shares"]
    assert len(shares) == 18
    assert np.allclose(shares[:5], ML100K_GENRE_TOP5, atol=0.02), shares[:5]


@pytest.mark.parametrize("kind", list(ML100K_EXCESS_KL))
def test_segment_affinity_matches_ml100k(calibrated, kind):
    got = calibrated[2][kind]
    for band, real in ML100K_EXCESS_KL[kind].items():
        assert abs(got[band] - real) <= 0.04, f"{kind}[{band}]: generated {got[band]:.3f}, ML-100K {real}"


def _pairs(ds):
    """Consecutive (previous, next) items of every history, in time order."""
    same = ds.users[1:] == ds.users[:-1]
    return ds.items[:-1][same], ds.items[1:][same]


def _shuffled_within_users(ds, seed=0):
    order = np.lexsort((np.random.default_rng(seed).random(ds.n_interactions), ds.users))
    return dataclasses.replace(ds, items=ds.items[order])


def test_planted_transitions_exist(calibrated):
    ds, world, _ = calibrated
    succ = world.successors
    k = succ.shape[1]
    assert k == SyntheticConfig().transition_successors

    def p_successor(d):
        a, b = _pairs(d)
        return (succ[a] == b[:, None]).any(1).mean()

    p = p_successor(ds)
    chance = k / ds.n_items
    p_shuffled = p_successor(_shuffled_within_users(ds))
    # planted: about transition_prob of the draws (a few are repeats and removed)
    assert p > 0.6 * SyntheticConfig().transition_prob
    assert p > 20 * chance and p > 4 * p_shuffled, (p, chance, p_shuffled)
    # successors are related: same primary genre, never the item itself
    assert (world.primary[succ] == world.primary[:, None]).mean() > 0.95
    assert not (succ == np.arange(ds.n_items)[:, None]).any()


def test_no_transitions_no_order_signal(calibrated):
    ds, world = S.generate_with_world(SyntheticConfig(**ML100K_SIZE, transition_prob=0.0))
    assert world.successors.shape[1] == 0
    assert data_profile(ds)["sequential_lift"] < 1.5 < calibrated[2]["sequential_lift"]


def test_niche_items_are_overconsumed_by_their_segment(calibrated):
    ds, world, _ = calibrated
    home = world.niche_home[ds.items]
    niche = home >= 0
    assert niche.any()
    occupation = ds.user_features["occupation"][ds.users]
    in_home = (occupation[niche] == home[niche]).mean()
    chance = 1 / S.N_SEGMENTS  # occupations are equally common
    assert in_home > 2.5 * chance, (in_home, chance)  # measured: 0.141 vs 0.048
    # the niche items are the least popular by base weight
    n_niche = int(round(SyntheticConfig().niche_fraction * ds.n_items))
    assert (world.niche_home >= 0).sum() == n_niche
    assert world.weight[world.niche_home >= 0].max() <= world.weight[world.niche_home < 0].min()
    # without the mechanism, occupation says nothing about the items
    off, w_off = S.generate_with_world(SyntheticConfig(**ML100K_SIZE, niche_rate=0.0))
    assert (w_off.niche_home < 0).all()
    occ_off = off.user_features["occupation"][off.users]
    home_off = world.niche_home[off.items]
    assert abs((occ_off[home_off >= 0] == home_off[home_off >= 0]).mean() - chance) < 0.01


def test_taste_drift_separates_far_parts_of_a_history():
    size = {**ML100K_SIZE, "n_users": 500, "transition_prob": 0.0, "niche_rate": 0.0}
    still = data_profile(S.generate(SyntheticConfig(**size, taste_drift=0.0)))
    drifting = data_profile(S.generate(SyntheticConfig(**size, taste_drift=2.0)))
    # without drift the gap is small but not 0: a long history exhausts its favourite
    # genres' items, so its last items spread wider (sampling without replacement)
    assert drifting["drift_gap"] > still["drift_gap"] + 0.015 and drifting["drift_gap"] > 0.03


def test_mechanisms_draw_from_their_own_streams():
    # a catalogue large enough for every history to reach its drawn length
    base = SyntheticConfig(n_users=300, n_items=3000, interactions_per_user=25, seed=3)
    ref = S.generate(base)
    for knob in ("transition_prob", "niche_rate", "taste_drift"):
        other = S.generate(dataclasses.replace(base, **{knob: 0.0}))
        # demographics and history lengths come from the untouched legacy streams
        for key in ("gender", "age", "occupation"):
            assert np.array_equal(other.user_features[key], ref.user_features[key]), (knob, key)
        assert np.array_equal(np.bincount(other.users, minlength=300),
                              np.bincount(ref.users, minlength=300)), knob
        assert other.fingerprint() != ref.fingerprint()


def test_deterministic_and_seeded():
    cfg = SyntheticConfig(n_users=200, n_items=300, interactions_per_user=25)
    assert S.generate(cfg).fingerprint() == S.generate(cfg).fingerprint()
    assert S.generate(dataclasses.replace(cfg, seed=8)).fingerprint() != S.generate(cfg).fingerprint()


def test_chunks_are_the_same_data_as_generate():
    cfg = SyntheticConfig(n_users=250, n_items=300, interactions_per_user=20, seed=2)
    chunks = list(S.iter_chunks(cfg, chunk_users=100))[1:]
    assert [len(c["gender"]) for c in chunks] == [100, 100, 50]
    users = np.concatenate([c["users"] for c in chunks])
    assert (np.diff(users) >= 0).all() and users.max() == 249
    # each chunk is self-contained: a chunk's transitions never start from another's items
    for c in chunks:
        assert len(np.unique(c["users"] * cfg.n_items + c["items"])) == len(c["users"])


@pytest.mark.parametrize("key,value", [("transition_prob", 0.99), ("niche_rate", -0.1),
                                       ("history_spread", -1.0), ("min_history", 0),
                                       ("transition_successors", 0), ("genre_mix", "zipf")])
def test_bad_knob_is_refused_naming_it(key, value):
    with pytest.raises(ValueError, match=f"data.synthetic.{key}"):
        S.generate(SyntheticConfig(n_users=20, n_items=30, **{key: value}))


def test_genre_profile_resamples_the_ml100k_shares():
    assert np.allclose(S.genre_profile(18), np.asarray(S.ML100K_GENRE_SHARES) / sum(S.ML100K_GENRE_SHARES))
    five = S.genre_profile(5)
    assert five.shape == (5,) and abs(five.sum() - 1) < 1e-12 and (np.diff(five) <= 0).all()

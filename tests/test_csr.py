"""utils.csr.expand_ranges: the one CSR range expansion (evaluation masks, MARL
observations, ContextGNN sampling)."""

from __future__ import annotations

import numpy as np

from marl_two_tower.utils.csr import expand_ranges


def test_expand_ranges_hand_case():
    rows, pos = expand_ranges(np.array([3, 0, 7, 5]), np.array([5, 1, 7, 8]))
    assert rows.tolist() == [0, 0, 1, 3, 3, 3]  # range 2 is empty
    assert pos.tolist() == [3, 4, 0, 5, 6, 7]


def test_expand_ranges_matches_a_loop_on_csr_rows():
    rng = np.random.default_rng(0)
    indptr = np.r_[0, np.cumsum(rng.integers(0, 5, size=40))]
    users = rng.integers(0, 40, size=25)
    rows, pos = expand_ranges(indptr[users], indptr[users + 1])
    want = [(r, p) for r, u in enumerate(users) for p in range(indptr[u], indptr[u + 1])]
    assert list(zip(rows.tolist(), pos.tolist(), strict=True)) == want


def test_expand_ranges_empty():
    rows, pos = expand_ranges(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert rows.shape == pos.shape == (0,)

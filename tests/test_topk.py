"""utils.topk: the one deterministic top-k (ties to the lower index), used by the
baselines' recommend and the serving index's exact search."""

from __future__ import annotations

import numpy as np
import torch

from marl_two_tower.serving.index import ItemIndex
from marl_two_tower.utils.topk import topk_lowest_index_ties


def oracle(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row: indices sorted by (-score, index), the first k."""
    return np.stack([sorted(range(len(r)), key=lambda j: (-r[j], j))[:k] for r in scores])


def test_topk_breaks_ties_by_lower_index() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 5.0]])
    idx, val = topk_lowest_index_ties(scores, 2)
    assert idx.tolist() == [[1, 2], [4, 0]]
    assert val.tolist() == [[3.0, 3.0], [5.0, 2.0]]
    idx, _ = topk_lowest_index_ties(scores, 9)  # k larger than the catalogue
    assert idx.tolist() == [[1, 2, 4, 0, 3], [4, 0, 1, 2, 3]]
    idx, val = topk_lowest_index_ties(scores, 0)
    assert idx.shape == val.shape == (2, 0)


def test_topk_equals_the_oracle_on_heavy_ties() -> None:
    scores = np.random.default_rng(0).integers(0, 3, size=(30, 50)).astype(np.float32)
    idx, val = topk_lowest_index_ties(torch.from_numpy(scores), 10)
    want = oracle(scores, 10)
    np.testing.assert_array_equal(idx.numpy(), want)
    np.testing.assert_array_equal(val.numpy(), np.take_along_axis(scores, want, 1))


def test_index_exact_search_breaks_ties_by_lower_index() -> None:
    """Items with equal vectors tie exactly: the exact search (recall oracle and
    fallback of the served lists) must give them to the lower item index."""
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(6, 4)).astype(np.float32)[rng.integers(0, 6, size=80)]
    queries = rng.normal(size=(20, 4)).astype(np.float32)
    scores, ids = ItemIndex(vectors).exact_search(queries, 12)
    s = queries @ vectors.T
    np.testing.assert_array_equal(ids, oracle(s, 12))
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(scores, np.take_along_axis(s, ids, 1))

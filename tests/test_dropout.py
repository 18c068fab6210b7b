"""model/dropout.py: nn.Dropout's distribution from raw random bits."""

from __future__ import annotations

import math

import pytest
import torch

from marl_two_tower.model.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.2, 0.5, 0.03])
def test_keep_rate_is_one_minus_p_within_sampling_error(p: float) -> None:
    torch.manual_seed(0)
    n = 600_000
    rate = float(keep_mask((n,), p).float().mean())
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


def test_mask_entries_are_independent_across_the_three_lanes_of_a_word() -> None:
    """The three 16-bit lanes of one random word and neighbouring words: the keep
    indicators of entries 0/1/2 (same word) and 0/3 (next word) are uncorrelated, and a
    lane-3 (top, non-uniform) read would show as a biased keep rate of one lane."""
    torch.manual_seed(1)
    m = keep_mask((300_000, 6), 0.5).float()
    lanes = m.reshape(-1, 3)  # entry k of a word is lane k % 3
    assert (lanes.mean(0) - 0.5).abs().max() < 0.005
    c = torch.corrcoef(m.reshape(-1, 6).T)
    off = c - torch.eye(6)
    assert off.abs().max() < 0.01


def test_dropout_scales_kept_entries_and_its_gradient_is_the_same_mask() -> None:
    torch.manual_seed(2)
    x = torch.full((50, 40), 2.0, requires_grad=True)
    y = dropout(x, 0.25, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.tensor(1 / 0.75))


def test_one_seed_fixes_the_mask_and_eval_or_zero_rate_is_the_identity() -> None:
    x = torch.randn(7, 9)
    torch.manual_seed(3)
    a = dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    b = dropout(x, 0.3, training=True)
    assert torch.equal(a, b)
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))


def test_state_dict_matches_nn_dropout_and_bad_rates_are_refused() -> None:
    assert Dropout(0.2).state_dict() == torch.nn.Dropout(0.2).state_dict() == {}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Dropout(1.5)

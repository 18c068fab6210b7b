"""utils/numerics.py: logits floored below the row maximum keep softmax and CE values
and gradients, and masked (-inf) entries stay masked."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from marl_two_tower.fairness.gini_agent import soft_exposure
from marl_two_tower.model.losses import softmax_rows
from marl_two_tower.utils.numerics import LOGIT_MARGIN, floor_logits

NEG_INF = float("-inf")


def test_floor_by_hand():
    z = torch.tensor([[100.0, 50.0, 10.0, NEG_INF, -5.0], [0.0, -69.0, -71.0, -200.0, NEG_INF]])
    out = floor_logits(z, dim=1)
    floor0, floor1 = 100.0 - LOGIT_MARGIN, 0.0 - LOGIT_MARGIN
    assert out.tolist() == [[100.0, 50.0, floor0, NEG_INF, floor0],
                            [0.0, -69.0, floor1, floor1, NEG_INF]]
    assert floor_logits(torch.full((2, 3), NEG_INF), dim=1).isneginf().all()  # all-masked row
    same = torch.randn(4, 6)
    assert floor_logits(same, dim=1) is same  # nothing to raise: the input itself
    cols = floor_logits(z.T.contiguous(), dim=0)
    assert torch.equal(cols, out.T)
    kept = floor_logits(z, dim=1, keep=torch.tensor([2, 3]))
    assert kept.tolist() == [[100.0, 50.0, 10.0, NEG_INF, floor0], [0.0, -69.0, floor1, -200.0, NEG_INF]]


def test_softmax_and_ce_unchanged_but_masked_entries_stay_zero():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(64, 300, generator=g) * 40).requires_grad_()  # gaps beyond the margin
    mask = torch.rand(64, 300, generator=g) < 0.2
    mask[:, 0] = False
    mask[:8] = False
    zm = z.masked_fill(mask, NEG_INF)
    with torch.no_grad():
        ref = torch.softmax(zm, dim=1)
        got = torch.softmax(floor_logits(zm, dim=1), dim=1)
    assert (got[mask] == 0).all()
    assert bool((floor_logits(zm, dim=1) != zm).any())  # the floor did raise entries
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-30)  # raised: < exp(-70) each
    target = torch.randint(0, 300, (64,), generator=g)
    target[mask[torch.arange(64), target]] = 0  # a target is never masked
    target[:8] = z.detach()[:8].argmin(1)  # and some lie far below the maximum
    want = F.cross_entropy(zm.double(), target, reduction="none")
    rows = softmax_rows(zm, target)
    torch.testing.assert_close(rows.double(), want, rtol=1e-6, atol=1e-5)
    g_ref, = torch.autograd.grad(want.sum(), z, retain_graph=True)
    g_got, = torch.autograd.grad(rows.sum(), z)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-6)


def test_soft_exposure_with_wide_scores_matches_double_precision():
    scores = torch.tensor([[0.0, -75.0, -300.0], [10.0, 10.0 - math.log(3.0), -90.0]])
    x = soft_exposure(scores, tau=1.0)
    ref = torch.softmax(scores.double(), dim=1).sum(0)
    torch.testing.assert_close(x.double(), ref, rtol=1e-6, atol=1e-12)
    assert x[2] < 1e-29  # the floored entries carry ~exp(-70), not a visible share


def test_fast_path_by_spread_of_the_unmasked_logits():
    raw = torch.tensor([[30.0, -39.0, 0.0], [100.0, 0.0, -5.0], [0.0, -71.0, 5.0]])
    z = raw.masked_fill(torch.tensor([[False, False, True], [True, False, False],
                                      [False, False, False]]), NEG_INF)
    # rows 0 and 1 alone: spreads 69 and 105 of raw, but after masking nothing lies more
    # than 70 below its row's maximum, so either path returns z's values
    z0 = z[:1]
    assert floor_logits(z0, dim=1, raw=raw[:1]) is z0  # spread <= margin: no pass
    assert floor_logits(z[:2], dim=1, raw=raw[:2]).tolist() == z[:2].tolist()
    out = floor_logits(z, dim=1, raw=raw)  # row 2: -71 is 76 below 5, raised to -65
    assert out.tolist() == [[30.0, -39.0, NEG_INF], [NEG_INF, 0.0, -5.0], [0.0, 5.0 - LOGIT_MARGIN, 5.0]]
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(32, 50, generator=g) * 12  # spread < 70 in every row
    assert bool((wide.amax(1) - wide.amin(1) <= LOGIT_MARGIN).all())
    masked = wide.masked_fill(torch.rand(32, 50, generator=g) < 0.3, NEG_INF)
    assert floor_logits(masked, dim=1, raw=wide) is masked
    assert torch.equal(floor_logits(masked, dim=1), masked)  # the full pass agrees

"""GINI agent: differentiable Gini against an independent formula, its gradient, the
dual-ascent controller, and its wiring in the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marl_two_tower.config import GiniConfig, load_config
from marl_two_tower.data import load_split
from marl_two_tower.fairness.gini_agent import GiniAgent, seen_mask, soft_exposure
from marl_two_tower.metrics.gini import gini
from marl_two_tower.train.trainer import Trainer


def gini_mean_abs_diff(x: np.ndarray) -> float:
    """Independent reference: G = sum_i sum_j |x_i - x_j| / (2 n sum x), no sorting."""
    x = np.asarray(x, dtype=np.float64)
    if x.sum() == 0:
        return 0.0
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) * x.sum()))


def test_gini_matches_reference_on_random_vectors_with_zeros():
    rng = np.random.default_rng(0)
    for case in range(200):
        n = int(rng.integers(1, 300))
        x = rng.exponential(size=n) ** rng.uniform(0.2, 4)
        x[rng.random(n) < rng.uniform(0, 0.9)] = 0.0  # many zeros
        for dtype in (torch.float64, torch.float32):
            got = float(gini(torch.tensor(x, dtype=dtype)))
            assert got == pytest.approx(gini_mean_abs_diff(x), abs=1e-6), (case, dtype)
    assert float(gini(torch.zeros(7))) == 0.0
    assert float(gini(torch.tensor([0.0, 0.0, 5.0]))) == pytest.approx(2 / 3)  # (n-1)/n
    assert float(gini(torch.ones(9))) == pytest.approx(0.0)


def test_gini_gradient_matches_closed_form_and_gradcheck():
    x = torch.tensor([3.0, 0.5, 1.0, 7.0, 2.0], dtype=torch.float64, requires_grad=True)
    g = gini(x)
    g.backward()
    n, s = 5, float(x.detach().sum())
    rank = torch.argsort(torch.argsort(x.detach())) + 1  # 1-based ascending rank
    expect = ((2 * rank - n - 1) / n - float(g.detach())) / s
    torch.testing.assert_close(x.grad, expect.to(torch.float64))
    assert torch.autograd.gradcheck(gini, (x.detach().clone().requires_grad_(),))


def test_gradient_step_moves_exposure_towards_least_exposed_items():
    torch.manual_seed(0)
    logits = torch.randn(64, 30) * 2 + torch.linspace(3, -3, 30)  # head items favoured
    logits.requires_grad_(True)
    x0 = soft_exposure(logits, tau=1.0).detach()
    g0 = gini(soft_exposure(logits, 1.0))
    g0.backward()
    with torch.no_grad():  # a step of 0.3 in the largest logit coordinate
        logits -= 0.3 * logits.grad / logits.grad.abs().max()
    x1 = soft_exposure(logits, 1.0).detach()
    assert float(gini(x1)) < float(g0.detach()) - 0.015  # measured 0.610 -> 0.589
    low, high = torch.argsort(x0)[:5], torch.argsort(x0)[-5:]
    assert bool((x1[low] > x0[low]).all())  # the flattest items gain exposure
    assert bool((x1[high] < x0[high]).all())  # the most exposed lose it
    torch.testing.assert_close(x1.sum(), x0.sum())  # one unit per user either way


def test_dual_ascent_raises_lambda_above_target_and_decays_to_zero_below():
    agent = GiniAgent(GiniConfig(enabled=True, target=0.3, lr_dual=0.1, init_lambda=0.5), 10)
    for t in range(10):
        lam = agent.update(0.8, step=t)
        assert lam == pytest.approx(0.5 + 0.1 * 0.5 * (t + 1))
    assert agent.lambda_fair == pytest.approx(1.0)
    lams = [agent.update(0.1, step=10 + t) for t in range(60)]
    assert lams[0] == pytest.approx(0.98)
    assert all(b <= a for a, b in zip(lams, lams[1:], strict=False))
    assert lams[-1] == 0.0 and min(lams) == 0.0  # clamped at 0, never negative
    assert agent.update(0.3) == 0.0  # at the target it stays put
    assert len(agent.log) == 71 and agent.log[0] == (0, 0.8, pytest.approx(0.55))


def test_candidate_set_option():
    agent = GiniAgent(GiniConfig(enabled=True, n_candidates=12), n_items=40)
    c = agent.candidates(torch.device("cpu"), torch.Generator().manual_seed(0))
    assert c is not None and len(c) == 12 and len(torch.unique(c)) == 12 and int(c.max()) < 40
    assert GiniAgent(GiniConfig(enabled=True, n_candidates=0), 40).candidates(torch.device("cpu")) is None
    with pytest.raises(ValueError):
        GiniAgent(GiniConfig(enabled=True, tau=0.0), 40)


def test_seen_mask_and_masked_exposure():
    # CSR: user 0 saw items [1, 3], user 1 saw nothing, user 2 saw [0, 1, 2, 3]
    indptr = torch.tensor([0, 2, 2, 6])
    items = torch.tensor([1, 3, 0, 1, 2, 3])
    users = torch.tensor([2, 0, 1])
    m = seen_mask(indptr, items, users, n_items=4)
    assert m.tolist() == [[True] * 4, [False, True, False, True], [False] * 4]
    # on a candidate subset: columns follow cand
    mc = seen_mask(indptr, items, users, n_items=4, cand=torch.tensor([3, 2]))
    assert mc.tolist() == [[True, True], [True, False], [False, False]]
    scores = torch.zeros(3, 4)
    x = soft_exposure(scores, 1.0, m)
    # row 0 fully masked -> left unmasked (1/4 each); row 1 -> items 0, 2 (1/2 each); row 2 -> 1/4
    torch.testing.assert_close(x, torch.tensor([1.0, 0.5, 1.0, 0.5]))
    agent = GiniAgent(GiniConfig(enabled=True, mask_seen=True), 4, indptr.numpy(), items.numpy())
    z, y = torch.zeros(3, 2), torch.zeros(4, 2)
    assert float(agent.loss(z, y, users)) == pytest.approx(gini_mean_abs_diff(np.array([1, .5, 1, .5])))
    off = GiniAgent(GiniConfig(enabled=True, mask_seen=False), 4, indptr.numpy(), items.numpy())
    assert float(off.loss(z, y, users)) == 0.0  # unmasked uniform softmax: equal exposure


def test_trainer_adds_weighted_gini_term_and_logs_lambda(tmp_path):
    cfg = load_config(None, [
        "data.synthetic.n_users=150", "data.synthetic.n_items=100", "model.dim=16",
        "model.id_dim=16", "model.hidden=32", "train.batch_size=128", "train.epochs=2",
        "gini.enabled=true", "gini.target=0.1", "gini.lr_dual=0.05", "gini.init_lambda=0.2",
        "loss.l_fair=0.5", f"checkpoint_dir={tmp_path}"])
    split = load_split(cfg.data)
    tr = Trainer(cfg, split, progress=False)
    gini = tr.component("gini")
    assert gini is not None
    tr.fit()
    steps = tr.state.step
    log = gini.agent.log
    assert len(log) == steps
    lam = 0.2  # replay the controller from the logged batch Ginis
    for _, g, logged in log:
        lam = max(0.0, lam + 0.05 * (g - 0.1))
        assert logged == pytest.approx(lam, abs=1e-5)
    for rec in tr.state.history:
        assert {"gini/value", "gini/lambda", "loss/gini"} <= set(rec)
        assert 0.0 < rec["gini/value"] < 1.0
    # the loss term is l_fair * lambda * G: lambda went up (G > target), so did the term
    assert tr.state.history[-1]["gini/lambda"] > 0.2

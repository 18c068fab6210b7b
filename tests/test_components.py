"""The composite objective and the component switches: L_Tail, disabled components
cost nothing, CLI flags, resume with every fairness component on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marl_two_tower.cli.main import _component_overrides, build_parser
from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.data.samplers import PositiveSampler
from marl_two_tower.fairness import fair_sampler as fair_mod
from marl_two_tower.fairness import gini_agent as gini_mod
from marl_two_tower.model import buhs as buhs_mod
from marl_two_tower.model.build import build_model
from marl_two_tower.model.components import TrainBatch
from marl_two_tower.model.losses import rec_loss
from marl_two_tower.model.two_tower import TwoTower
from marl_two_tower.train.trainer import StopTraining, Trainer

# the pooled tower: the uniform PositiveSampler and the Fair Sampler's own draws
TINY = ["model.user_encoder=pooled",
        "data.synthetic.n_users=150", "data.synthetic.n_items=100", "model.dim=16",
        "model.id_dim=16", "model.hidden=32", "train.batch_size=128", "train.epochs=2",
        "train.patience=10", "buhs.fanout=5"]
ALL_ON = ["fair_sampler.enabled=true", "buhs.enabled=true", "gini.enabled=true",
          "tail_loss.enabled=true"]


def cfg_for(tmp_path, *extra):
    return load_config(None, TINY + [f"checkpoint_dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def split():
    return load_split(load_config(None, TINY).data)


def test_tail_loss_is_the_softmax_loss_of_tail_rows_only():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0]], requires_grad=True)
    tail = torch.tensor([1.0, 0.0, 1.0])
    # hand: row 0: -log(e^2 / (e^2 + 1 + e)), row 2: -log(e^3 / (2e + e^3))
    r0 = -math.log(math.e ** 2 / (math.e ** 2 + 1 + math.e))
    r2 = -math.log(math.e ** 3 / (2 * math.e + math.e ** 3))
    loss = rec_loss(logits, "softmax", weight=tail)
    assert float(loss.detach()) == pytest.approx((r0 + r2) / 2, abs=1e-6)
    loss.backward()
    assert torch.equal(logits.grad[1], torch.zeros(3))  # head rows give no gradient
    assert float(rec_loss(logits.detach(), "softmax", weight=torch.zeros(3))) == 0.0


def test_trainer_tail_term_scales_with_l_tail_and_counts_tail_positives(tmp_path, split):
    idx = np.arange(128)
    terms = {}
    for w in (0.5, 1.0):
        tr = Trainer(cfg_for(tmp_path, "tail_loss.enabled=true", f"loss.l_tail={w}"), split,
                     progress=False)
        users = torch.as_tensor(split.train_users[idx])
        pos = torch.as_tensor(split.train_items[idx])
        terms[w] = {k: float(v.detach()) for k, v in tr.losses(users, pos,
                                                              np.random.default_rng(0)).items()}
    assert set(terms[1.0]) == {"rec", "tail"}
    assert terms[1.0]["tail"] == pytest.approx(2 * terms[0.5]["tail"], rel=1e-6)
    assert terms[1.0]["rec"] == pytest.approx(terms[0.5]["rec"], rel=1e-6)
    assert split.tail_mask[split.train_items[idx]].any()


def test_tail_only_candidates_rank_each_tail_positive_among_the_tail(tmp_path, split):
    """tail_loss.candidates=tail: oracle = the CE of <z_b, y_j> over the tail items j,
    row by row, averaged over the tail rows; head rows give no gradient."""
    tr = Trainer(cfg_for(tmp_path, "tail_loss.enabled=true", "tail_loss.candidates=tail",
                         "loss.l_tail=0.5"), split, progress=False)
    (comp,) = [c for c in tr.components if c.name == "tail_loss"]
    idx = np.arange(128)
    users = torch.as_tensor(split.train_users[idx])
    pos = torch.as_tensor(split.train_items[idx])
    z = tr.model.user_vectors(users, exclude=pos).detach().requires_grad_(True)
    batch = TrainBatch(users=users, pos=pos, z=z, row_losses=torch.zeros(len(idx)))
    got = comp.loss_terms(batch)["tail"]
    tail = np.flatnonzero(split.tail_mask)
    y = tr.model.item_vectors().detach()
    rows = [b for b in range(len(idx)) if split.tail_mask[int(pos[b])]]
    assert 0 < len(rows) < len(idx)
    oracle = []
    for b in rows:
        s = (z[b].detach() @ y[tail].T).double()
        col = int(np.flatnonzero(tail == int(pos[b]))[0])
        oracle.append(float(torch.logsumexp(s, 0) - s[col]))
    assert float(got.detach()) == pytest.approx(0.5 * np.mean(oracle), rel=1e-5)
    got.backward()
    head_rows = [b for b in range(len(idx)) if b not in rows]
    assert torch.equal(z.grad[head_rows], torch.zeros_like(z.grad[head_rows]))
    assert z.grad[rows].abs().sum() > 0


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_disabled_components_add_no_parameters_and_no_compute(tmp_path, split, monkeypatch):
    cfg = cfg_for(tmp_path)
    base = TwoTower(split, cfg.model)
    model = build_model(cfg, split)
    assert n_params(model) == n_params(base) and len(model.contexts) == 0

    def boom(*a, **k):
        raise AssertionError("a disabled component was computed")

    monkeypatch.setattr(buhs_mod, "draw_biased", boom)
    monkeypatch.setattr(gini_mod, "gini", boom)
    monkeypatch.setattr(fair_mod.FairSampler, "epoch_indices", boom)
    tr = Trainer(cfg, split, progress=False)
    assert type(tr.sampler) is PositiveSampler and tr.component("gini") is None
    idx = next(iter(tr.sampler.batches(0)))
    out = tr.train_step(idx, np.random.default_rng(0))
    assert set(out) == {"rec", "total"}
    tr.model.scorer()(np.arange(10))
    # each hook is really on the component's path: enabling it trips the hook
    for on in ("buhs.enabled=true", "gini.enabled=true", "fair_sampler.enabled=true"):
        tr = Trainer(cfg_for(tmp_path, on), split, progress=False)
        with pytest.raises(AssertionError, match="disabled component"):
            tr.train_step(next(iter(tr.sampler.batches(0))), np.random.default_rng(0))


def test_enabled_components_parameters(tmp_path, split):
    base = n_params(build_model(cfg_for(tmp_path), split))
    assert n_params(build_model(cfg_for(tmp_path, "buhs.enabled=true"), split)) > base
    for on in ("gini.enabled=true", "fair_sampler.enabled=true", "tail_loss.enabled=true"):
        assert n_params(build_model(cfg_for(tmp_path, on), split)) == base


def test_cli_flags_switch_components_off():
    parser = build_parser()
    args = parser.parse_args(["train", "--mode", "full", "--no-fair-sampling", "--no-gini-agent"])
    cfg = load_config(None, _component_overrides(args))
    assert cfg.buhs.enabled and cfg.tail_loss.enabled
    assert not cfg.fair_sampler.enabled and not cfg.gini.enabled
    args = parser.parse_args(["train", "--mode", "full", "--no-buhs"])
    cfg = load_config(None, _component_overrides(args))
    assert cfg.fair_sampler.enabled and cfg.gini.enabled and not cfg.buhs.enabled


def test_all_components_record_history_and_resume_exactly(tmp_path, split):
    full = Trainer(cfg_for(tmp_path / "a", *ALL_ON), split, progress=False)
    full.fit()
    users = np.arange(split.n_users)
    ref = full.model.scorer()(users)
    rec = full.state.history[-1]
    assert {"sampler/gini", "gini/value", "gini/lambda", "loss/tail", "loss/gini"} <= set(rec)
    assert 0.0 < rec["sampler/gini"] < 1.0

    def kill(trainer):
        if trainer.state.epoch == 1:
            raise StopTraining

    first = Trainer(cfg_for(tmp_path / "b", *ALL_ON), split, progress=False)
    first.callbacks.append(kill)
    with pytest.raises(StopTraining):
        first.fit()
    resumed = Trainer(cfg_for(tmp_path / "b", *ALL_ON), split, progress=False)
    resumed.fit(resume=True)
    assert resumed.component("gini").agent.lambda_fair == \
        pytest.approx(full.component("gini").agent.lambda_fair, abs=0)
    assert torch.equal(ref, resumed.model.scorer()(users))
    assert [h["val/NDCG@10"] for h in resumed.state.history] == \
        [h["val/NDCG@10"] for h in full.state.history]

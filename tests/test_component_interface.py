"""A training component plugs in through :class:`TrainingComponent` alone.

The component below is defined here, not in the package: an L2 penalty on the item id
embeddings that also drops one item's interactions from the positives, counts its
steps and carries that count in checkpoints. The trainer is used as is; the test
checks its loss term, positives, history entries and checkpoint state, and that the
built-in components run in the documented order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.model.build import TRAINING_ORDER, build_model
from marl_two_tower.model.components import TrainBatch, TrainingComponent
from marl_two_tower.model.two_tower import TwoTower
from marl_two_tower.train.trainer import StopTraining, Trainer

# the pooled tower: uniform positives, so the Fair Sampler is the positive sampler
TINY = ["model.user_encoder=pooled",
        "data.synthetic.n_users=150", "data.synthetic.n_items=100", "model.dim=16",
        "model.id_dim=16", "model.hidden=32", "train.batch_size=128", "train.epochs=2",
        "train.patience=10", "train.max_steps_per_epoch=4"]
WEIGHT = 0.01


class ItemL2(TrainingComponent):
    """L_l2 = WEIGHT * ||E_items||^2; never trains on its ``dropped`` item (the most
    popular train item, so there is something to drop); counts its steps."""

    name = "item_l2"
    state_key = "item_l2"

    def __init__(self, model: TwoTower, split) -> None:
        self.model, self.items = model, split.train_items
        self.dropped = int(np.argmax(np.bincount(split.train_items)))
        self.steps = 0  # optimiser steps seen (checkpointed)
        self.seen: list[float] = []  # the logged l2 term of every step this epoch

    def filter_positives(self, idx: np.ndarray) -> np.ndarray:
        return idx[self.items[idx] != self.dropped]

    def loss_terms(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        return {"l2": WEIGHT * self.model.item_tower.id_emb.weight.pow(2).sum()}

    def after_step(self, step: int, terms: dict[str, float]) -> None:
        self.steps += 1
        self.seen.append(terms["l2"])

    def epoch_summary(self, epoch: int) -> dict:
        out = {"item_l2/steps": float(self.steps), "item_l2/epoch_mean": float(np.mean(self.seen))}
        self.seen = []
        return out

    def state_dict(self) -> dict:
        return {"steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


@pytest.fixture(scope="module")
def split():
    return load_split(load_config(None, TINY).data)


def trainer(tmp_path, split, *extra: str) -> tuple[Trainer, ItemL2]:
    cfg = load_config(None, [*TINY, f"checkpoint_dir={tmp_path}", *extra])
    model = build_model(cfg, split)
    comp = ItemL2(model, split)
    return Trainer(cfg, split, model=model, progress=False, extra_components=[comp]), comp


def test_loss_term_enters_the_objective_after_the_builtin_ones(tmp_path, split):
    tr, _ = trainer(tmp_path, split, "tail_loss.enabled=true")
    idx = np.arange(64)
    users = torch.as_tensor(split.train_users[idx])
    pos = torch.as_tensor(split.train_items[idx])
    terms = tr.losses(users, pos, np.random.default_rng(0))
    assert list(terms) == ["rec", "tail", "l2"]
    hand = WEIGHT * float((tr.model.item_tower.id_emb.weight.detach().double() ** 2).sum())
    assert float(terms["l2"].detach()) == pytest.approx(hand, rel=1e-6)
    # and its gradient reaches the parameters: d L_l2 / dE = 2 WEIGHT E
    tr.model.zero_grad()
    terms["l2"].backward()
    emb = tr.model.item_tower.id_emb.weight
    torch.testing.assert_close(emb.grad, 2 * WEIGHT * emb.detach())


def test_positives_history_and_checkpoint_state(tmp_path, split):
    tr, comp = trainer(tmp_path, split)
    seen: list[np.ndarray] = []
    step = tr.train_step
    tr.train_step = lambda idx, rng: (seen.append(idx), step(idx, rng))[1]
    state = tr.fit()
    used = np.concatenate(seen)
    assert len(used) and not (split.train_items[used] == comp.dropped).any()
    assert (split.train_items == comp.dropped).any()  # there was something to drop
    assert comp.steps == state.step == 8
    for epoch, rec in enumerate(state.history, 1):
        assert rec["item_l2/steps"] == 4.0 * epoch
        # the trainer's epoch mean of the term is the mean of the values the component saw
        assert rec["loss/l2"] == pytest.approx(rec["item_l2/epoch_mean"], rel=1e-12)
        assert rec["loss/total"] == pytest.approx(rec["loss/rec"] + rec["loss/l2"], rel=1e-5)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert int(ck["item_l2"]["steps"]) == 8


def test_resume_restores_the_component_state(tmp_path, split):
    full, comp_full = trainer(tmp_path / "a", split)
    full.fit()

    def kill(t):
        if t.state.epoch == 1:
            raise StopTraining

    first, _ = trainer(tmp_path / "b", split)
    first.callbacks.append(kill)
    with pytest.raises(StopTraining):
        first.fit()
    resumed, comp = trainer(tmp_path / "b", split)
    resumed.fit(resume=True)
    assert comp.steps == comp_full.steps == 8  # 4 restored from last.pt + 4 trained
    assert [h["loss/l2"] for h in resumed.state.history] == [h["loss/l2"] for h in full.state.history]


def test_builtin_components_run_in_training_order(tmp_path, split):
    tr, _ = trainer(tmp_path, split, "fair_sampler.enabled=true", "tail_loss.enabled=true",
                    "gini.enabled=true")
    assert [c.name for c in tr.components] == ["fair_sampler", "tail_loss", "gini", "item_l2"]
    assert [n for n in TRAINING_ORDER if n != "marl"] == [c.name for c in tr.components[:3]]
    assert tr.sampler is tr.component("fair_sampler").positive_sampler


def test_clashing_terms_or_state_keys_are_refused(tmp_path, split):
    class Clash(TrainingComponent):
        name = "clash"

        def loss_terms(self, batch):
            return {"rec": batch.z.sum()}

    cfg = load_config(None, [*TINY, f"checkpoint_dir={tmp_path}"])
    tr = Trainer(cfg, split, progress=False, extra_components=[Clash()])
    with pytest.raises(ValueError, match="rec"):
        tr.train_step(np.arange(32), np.random.default_rng(0))

    class BadKey(TrainingComponent):
        name, state_key = "bad", "optimizer"

    with pytest.raises(ValueError, match="optimizer"):
        Trainer(cfg, split, progress=False, extra_components=[BadKey()])
    with pytest.raises(ValueError, match="name"):
        Trainer(cfg, split, progress=False, extra_components=[Clash(), Clash()])

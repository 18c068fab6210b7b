"""Learning-rate schedules (train/schedule.py): hand-computed factors, the trainer's
per-step lr, and a resumed run continuing the schedule exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marl_two_tower.config import ConfigError, load_config
from marl_two_tower.data import load_split
from marl_two_tower.train.schedule import lr_factor
from marl_two_tower.train.trainer import StopTraining, Trainer

TINY = ["model.user_encoder=pooled", "data.synthetic.n_users=120", "data.synthetic.n_items=90",
        "model.dim=8", "model.id_dim=8", "model.hidden=16", "train.batch_size=256",
        "train.epochs=3", "train.patience=10", "train.tensorboard=false"]


def test_factors_by_hand():
    # warm-up over 4 steps: 1/4, 2/4, 3/4, 4/4
    assert [lr_factor(s, 14, 4, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # after it, progress p = (step - 4) / 10
    assert lr_factor(4, 14, 4, "cosine") == 1.0
    assert lr_factor(9, 14, 4, "cosine") == pytest.approx(0.5)            # cos(pi/2) = 0
    assert lr_factor(14, 14, 4, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(99, 14, 4, "cosine", 0.1) == pytest.approx(0.1)      # held past the end
    assert lr_factor(6, 14, 4, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * (1 + math.cos(0.2 * math.pi)) / 2)
    assert lr_factor(6, 14, 4, "linear") == pytest.approx(0.8)
    assert lr_factor(6, 14, 0, "linear", 0.5) == pytest.approx(0.5 + 0.5 * (1 - 6 / 14))
    assert lr_factor(10**6, 14, 0, "constant") == 1.0
    assert lr_factor(1, 14, 4, "constant") == 0.5  # warm-up applies to the constant schedule too
    with pytest.raises(ValueError, match="step"):
        lr_factor(0, 10, 0, "step")


def test_bad_schedule_settings_are_config_errors():
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_config(None, ["train.lr_schedule=exponential"])
    with pytest.raises(ConfigError, match="lr_final_ratio"):
        load_config(None, ["train.lr_final_ratio=1.5"])
    with pytest.raises(ConfigError, match="lr_warmup_epochs"):
        load_config(None, ["train.lr_warmup_epochs=-1"])


def _cfg(tmp_path, *extra):
    return load_config(None, TINY + [f"checkpoint_dir={tmp_path}", *extra])


def test_trainer_sets_the_scheduled_lr_each_step(tmp_path):
    cfg = _cfg(tmp_path, "train.lr=0.01", "train.lr_schedule=linear", "train.lr_warmup_epochs=1")
    split = load_split(cfg.data)
    tr = Trainer(cfg, split, progress=False)
    per_epoch = tr.steps_per_epoch()
    assert per_epoch >= 2
    seen = []
    step = tr.train_step

    def spy(idx, rng):
        out = step(idx, rng)
        seen.append(tr.optimizer.param_groups[0]["lr"])
        return out

    tr.train_step = spy
    tr.fit()
    total, warm = 3 * per_epoch, per_epoch
    expected = [0.01 * lr_factor(s, total, warm, "linear") for s in range(total)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.01 / per_epoch) and seen[-1] == pytest.approx(0.01 / (2 * per_epoch))
    assert [h["lr"] for h in tr.state.history] == pytest.approx(expected[per_epoch - 1::per_epoch])


def test_constant_schedule_leaves_lr_and_results_unchanged(tmp_path):
    split = load_split(_cfg(tmp_path).data)
    scores = []
    for i, extra in enumerate([[], ["train.lr_schedule=constant", "train.lr_warmup_epochs=0"]]):
        tr = Trainer(_cfg(tmp_path / str(i), *extra), split, progress=False)
        tr.fit()
        assert {h["lr"] for h in tr.state.history} == {tr.cfg.train.lr}
        scores.append(tr.model.scorer()(np.arange(split.n_users)))
    assert torch.equal(*scores)
    # and the schedule does change training
    tr = Trainer(_cfg(tmp_path / "cos", "train.lr_schedule=cosine"), split, progress=False)
    tr.fit()
    assert not torch.equal(scores[0], tr.model.scorer()(np.arange(split.n_users)))


def test_resumed_run_continues_the_schedule(tmp_path):
    extra = ("train.lr_schedule=cosine", "train.lr_warmup_epochs=0.5", "train.lr_final_ratio=0.1")
    split = load_split(_cfg(tmp_path).data)
    full = Trainer(_cfg(tmp_path / "a", *extra), split, progress=False)
    full.fit()

    def kill_after_first_epoch(trainer):
        if trainer.state.epoch == 1:
            raise StopTraining

    first = Trainer(_cfg(tmp_path / "b", *extra), split, progress=False)
    first.callbacks.append(kill_after_first_epoch)
    with pytest.raises(StopTraining):
        first.fit()
    resumed = Trainer(_cfg(tmp_path / "b", *extra), split, progress=False)
    resumed.fit(resume=True)
    assert [h["lr"] for h in resumed.state.history] == [h["lr"] for h in full.state.history]
    assert torch.equal(full.model.scorer()(np.arange(split.n_users)),
                       resumed.model.scorer()(np.arange(split.n_users)))

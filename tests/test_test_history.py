"""eval.test_history: at test, models read the validation item as the latest history
item (train + val) without being retrained on it; validation reads train only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from marl_two_tower.baselines import EASE, SASRec
from marl_two_tower.config import load_config
from marl_two_tower.data.sequences import append_items
from marl_two_tower.eval.scorers import part_scorers
from marl_two_tower.model.build import build_model
from tests.test_sequence_tower import cfg_for, planted_split


def test_two_tower_test_scorer_reads_the_validation_item_and_restores(tmp_path: Path) -> None:
    split = planted_split(40)
    cfg = cfg_for(tmp_path, "transformer")
    model = build_model(cfg, split).eval()
    users = np.arange(40)
    before = model.scorer()(users)
    fns = part_scorers(model, split, cfg)
    torch.testing.assert_close(fns["val"](users), before)  # validation: train histories
    test = fns["test"](users)
    # oracle: the same model with its history buffers replaced for good
    ptr, items = append_items(split.train_indptr, split.train_items, split.val_items)
    other = build_model(cfg, split).eval()
    other.load_state_dict(model.state_dict())
    other.user_tower.use_history(ptr, items)
    torch.testing.assert_close(test, other.scorer()(users))
    assert (test - before).abs().max() > 1e-3  # the validation item changes the score
    torch.testing.assert_close(model.scorer()(users), before)  # buffers restored
    # test_history=train: the test scorer is the validation one
    train_only = load_config(None, ["eval.test_history=train"])
    torch.testing.assert_close(part_scorers(model, split, train_only)["test"](users), before)


def test_baselines_read_train_plus_validation_rows_at_test() -> None:
    split = planted_split(60)
    cfg = load_config(None, [])
    ease = EASE(lam=10.0).fit(split)
    fns = part_scorers(ease, split, cfg)
    users = np.arange(60)
    x = split.exclusion_matrix("test").toarray().astype(np.float32)
    torch.testing.assert_close(fns["test"](users), torch.from_numpy(x @ ease.weights.numpy()))
    torch.testing.assert_close(fns["val"](users), ease.score(users))
    assert ease.train_matrix.nnz == split.train_matrix.nnz  # not refit, matrix restored
    sas = SASRec(dim=8, max_len=8, n_blocks=1, epochs=1, eval_every=1).fit(split)
    ptr, items = append_items(split.train_indptr, split.train_items, split.val_items)
    torch.testing.assert_close(part_scorers(sas, split, cfg)["test"](users),
                               sas._score_from(users, ptr, items))

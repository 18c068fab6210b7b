"""Score functions per split part: what a trained model reads when it scores val or test.

Leave-one-out by time: the validation item precedes the test item, so when test is
scored the validation interaction is part of the user's past. ``eval.test_history``
says whether models read it (``"train+val"``, the default and SASRec's protocol) or not
(``"train"``). No model is retrained on it; validation always reads train only, so model
selection never sees more than training did.
"""

from __future__ import annotations

from typing import Any

from marl_two_tower.baselines.base import BaselineRecommender
from marl_two_tower.config import Config
from marl_two_tower.data.sequences import append_items
from marl_two_tower.data.split import Split


def part_scorers(model: Any, split: Split, cfg: Config, device: Any = "cpu") -> dict[str, Any]:
    """``{"val": fn, "test": fn}`` for a trained two-tower ``model`` (its user tower reads
    the histories: :meth:`TwoTower.scorer` ``history=``) or a fitted baseline
    (:meth:`BaselineRecommender.history_scorer`)."""
    if isinstance(model, BaselineRecommender):
        return {part: model.history_scorer(split, part, cfg.eval.test_history)
                for part in ("val", "test")}
    hist = None
    if cfg.eval.test_history == "train+val":
        hist = append_items(split.train_indptr, split.train_items, split.val_items)
    return {"val": model.scorer(device), "test": model.scorer(device, history=hist)}

"""Baseline recommenders measured by the same harness as the two-tower model.

Every model implements :class:`BaselineRecommender` (``fit``, ``score``, ``recommend``,
``save``/``load``); ``BASELINES`` maps the names used in configs and reports to the
classes, and ``load_recommender`` restores any saved baseline from its checkpoint.
"""

from __future__ import annotations

import os

from marl_two_tower.baselines.base import BaselineRecommender, loo_ndcg, read_checkpoint
from marl_two_tower.baselines.bpr import BPR, UnseenItemSampler
from marl_two_tower.baselines.ease import EASE, ease_weights, tune_ease
from marl_two_tower.baselines.itemknn import ItemKNN, cosine_topk
from marl_two_tower.baselines.mostpop import MostPop
from marl_two_tower.baselines.sasrec import SASRec

BASELINES: dict[str, type[BaselineRecommender]] = {
    "mostpop": MostPop,
    "itemknn": ItemKNN,
    "bpr": BPR,
    "ease": EASE,
    "sasrec": SASRec,
}


def load_recommender(path: str | os.PathLike[str]) -> BaselineRecommender:
    """Load any baseline checkpoint, dispatching on the model name stored in it."""
    name = read_checkpoint(path)["model"]
    if name not in BASELINES:
        raise ValueError(f"{path}: unknown baseline {name!r} (known: {sorted(BASELINES)})")
    return BASELINES[name].load(path)


__all__ = [
    "BASELINES",
    "BPR",
    "EASE",
    "BaselineRecommender",
    "ItemKNN",
    "MostPop",
    "SASRec",
    "UnseenItemSampler",
    "cosine_topk",
    "ease_weights",
    "load_recommender",
    "loo_ndcg",
    "tune_ease",
]

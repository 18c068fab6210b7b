"""MostPop: recommend the items most often interacted with in train.

score(u, i) = pop(i) = |{(v, i) in train}|, the same for every user. It is the
non-personalised floor every model must beat, and the most exposure-concentrated
list possible (Gini@K close to 1), which makes it the reference point for the
fairness metrics (see e.g. Cremonesi, Koren & Turrin, "Performance of recommender
algorithms on top-N recommendation tasks", RecSys 2010).
"""

from __future__ import annotations

import numpy as np
import torch

from marl_two_tower.baselines.base import BaselineRecommender
from marl_two_tower.data.split import Split


class MostPop(BaselineRecommender):
    """Train popularity ``split.item_pop`` (plus validation counts when fitted with
    ``include_val``) as the score of every item for every user."""

    name = "mostpop"

    def __init__(self) -> None:
        super().__init__()
        self.popularity: torch.Tensor | None = None

    def _fit(self, split: Split) -> None:
        pop = split.item_pop.astype(np.float64)
        if self.include_val:
            val = split.val_items[split.val_items >= 0]
            pop = pop + np.bincount(val, minlength=split.n_items)
        self.popularity = torch.as_tensor(pop, dtype=torch.float32)

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.popularity is None:
            raise RuntimeError("MostPop is not fitted: call fit(split) first")
        return self.popularity.expand(len(users), -1).clone()

    def _state(self) -> dict[str, torch.Tensor]:
        assert self.popularity is not None
        return {"popularity": self.popularity}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.popularity = state["popularity"]

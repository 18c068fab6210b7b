"""Training positives: each epoch is one pass over the train interactions.

:class:`PositiveSampler` is the uniform sampler; the Fair Sampler
(:mod:`marl_two_tower.fairness.fair_sampler`) draws positives with probability
proportional to pop(i)^(-beta) under a per-batch cap instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from marl_two_tower.data.split import Split
from marl_two_tower.utils.runtime import epoch_rng


class PositiveSampler:
    """Uniform over train interactions: each epoch is one shuffled pass.

    ``prob`` is the probability that one positive draw is item j, p(j) = pop(j)/N;
    the trainer uses it for the logQ correction of in-batch negatives.
    """

    def __init__(self, split: Split, batch_size: int, seed: int) -> None:
        self.split, self.batch_size, self.seed = split, batch_size, seed
        n = len(split.train_items)
        self.prob = split.item_pop / max(n, 1)

    def __len__(self) -> int:
        return math.ceil(len(self.split.train_items) / self.batch_size)

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """Interaction indices (into ``split.train_items``), one array per batch."""
        perm = epoch_rng(self.seed, epoch, 1).permutation(len(self.split.train_items))
        for s in range(0, len(perm), self.batch_size):
            yield perm[s : s + self.batch_size]

"""Sequence batches for the transformer user tower (``model.user_encoder=transformer``).

SASRec is trained with one forward pass per user sequence that gives a next-item
prediction at every position. :class:`SequenceBatches` is the training component
that makes the trainer do that: it installs
:class:`marl_two_tower.data.sequences.SequenceSampler` as the positive sampler, so a
batch is the last ``model.history_len`` train interactions of each of a set of users
(or, with ``model.train_positions=all``, every train interaction in blocks of that
length), and :class:`marl_two_tower.model.two_tower.SequenceUserTower` encodes each user's
window once for all of its rows. The objective is the trainer's own L_rec (with
``model.full_softmax_max_items``, the full-softmax CE over the catalogue); other
components' positive filters (the MARL reward targets) apply to these batches too.
"""

from __future__ import annotations

from marl_two_tower.config import Config
from marl_two_tower.data.sequences import SequenceSampler
from marl_two_tower.data.split import Split
from marl_two_tower.model.components import TrainingComponent


class SequenceBatches(TrainingComponent):
    """Installs :class:`SequenceSampler` as the trainer's positive sampler when the user
    tower is the transformer, so each step trains on every position of whole user
    sequences (``train.batch_size`` = rows per step, about)."""

    name = "sequence_batches"

    def __init__(self, cfg: Config, split: Split) -> None:
        self.positive_sampler = SequenceSampler(
            split, cfg.train.batch_size, cfg.model.history_len, cfg.seed,
            all_positions=cfg.model.train_positions == "all")

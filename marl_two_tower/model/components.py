"""How a component plugs into training: :class:`TrainingComponent` and the adapters.

The trainer (:mod:`marl_two_tower.train.trainer`) knows one objective, L_rec on the
sampled-softmax logits of the fused score, and a list of training components that it
calls through the hooks below, in list order. A component owns its loss terms, its
per-epoch statistics and its checkpoint state (RecBole style: the component, not
the loop, knows its loss), so a new component needs no trainer edit: build it in
:func:`marl_two_tower.model.build.build_components` (or pass it to the trainer's
``extra_components``).

One supervised step, with the hooks in the order the trainer calls them::

    idx = c.filter_positives(idx)          for c in components   (drop interactions)
    terms = {"rec": l_sup L_rec} | c.loss_terms(batch)          (objective = sum, in order)
    backward, clip, optimiser step
    c.after_step(step, logged_terms)       (only when the step was not skipped)
    c.after_batch(i, rng)                  (every batch; rng = the epoch's stream 3)

and once per epoch ``record |= c.epoch_summary(epoch)``; checkpoints hold
``c.state_dict()`` under ``c.state_key``.

Components that change the model itself (ContextGNN's context and familiar head,
BUHS, the genre agents' features) act through the :class:`TwoTower` extension
points and need no hook; ContextGNN's training logits come from
:meth:`TwoTower.training_logits`. The adapters here connect the fairness pieces of
:mod:`marl_two_tower.fairness` (which sit below the model and know nothing about
it) to training: :class:`FairSamplerComponent`, :class:`TailLoss`, :class:`GiniTerm`.
The genre agents' RL loop (:class:`marl_two_tower.model.marl.agents.MARLTrainer`)
is one too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from marl_two_tower.config import Config
from marl_two_tower.data.samplers import PositiveSampler
from marl_two_tower.data.split import Split
from marl_two_tower.fairness.fair_sampler import FairSampler
from marl_two_tower.fairness.gini_agent import GiniAgent
from marl_two_tower.metrics.gini import gini
from marl_two_tower.model.losses import weighted_mean
from marl_two_tower.model.two_tower import TwoTower
from marl_two_tower.utils.distributed import DistContext
from marl_two_tower.utils.numerics import floor_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainBatch:
    """What a component's loss sees of one supervised batch (B rows, C candidates)."""

    users: torch.Tensor  # [B] user ids
    pos: torch.Tensor  # [B] positive item ids
    z: torch.Tensor  # [B, d'] user vectors z_u (with gradient)
    # [B] per-row L_rec of the fused score (TwoTower.training_row_losses: sampled or
    # full softmax, or BCE), with gradient; L_rec is their mean
    row_losses: torch.Tensor


class TrainingComponent:
    """Base of everything that adds to training; every hook defaults to "nothing".

    Attributes:
        name: the name :meth:`Trainer.component` finds it by (a COMPONENTS name for
            the built-in ones).
        state_key: checkpoint key of :meth:`state_dict`; None = no state is saved.
        global_terms: loss terms computed over the global batch rather than as a
            mean over rows: under DDP they are neither rescaled nor summed over ranks
            (:meth:`marl_two_tower.utils.distributed.DistContext.local_objective`).
        positive_sampler: the sampler of training positives, if this component
            replaces the uniform one (at most one component may).
    """

    name: str = ""
    state_key: str | None = None
    global_terms: frozenset[str] = frozenset()
    positive_sampler: PositiveSampler | FairSampler | None = None

    def filter_positives(self, idx: np.ndarray) -> np.ndarray:
        """Interaction indices of a batch that stay supervised positives (default: all)."""
        return idx

    def loss_terms(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Weighted loss terms (scalars) added to the objective, in dict order."""
        return {}

    def row_weights(self, users: torch.Tensor, pos: torch.Tensor) -> torch.Tensor | None:
        """Per-row weights ``[B]`` of L_rec on the batch (None = uniform); the trainer
        multiplies the weights of every component that gives them."""
        return None

    def term_weights(self, users: torch.Tensor, pos: torch.Tensor) -> dict[str, float]:
        """Total row weight of each of this component's mean terms on the batch (DDP
        rescales a rank's mean by weight / global weight); default: the row count."""
        return {}

    def after_step(self, step: int, terms: dict[str, float]) -> None:
        """Called after optimiser step ``step`` (1-based) with the step's logged terms."""

    def after_batch(self, index: int, rng: np.random.Generator) -> None:
        """Called after batch ``index`` of the epoch, skipped or not; ``rng`` is the
        epoch's component stream ``epoch_rng(seed, epoch, 3)``, shared in list order."""

    def epoch_summary(self, epoch: int) -> dict[str, Any]:
        """Entries for the history record of epoch ``epoch`` (1-based); resets per-epoch
        accumulators. Float values (and dicts of them) also go to TensorBoard."""
        return {}

    def after_fit(self, seed: int, validate: Callable[[], dict[str, float]]) -> dict[str, Any] | None:
        """Called once after the epoch loop, on the validation-selected weights; a
        component that then changes the model (the genre agents' second stage) returns
        a history record (the trainer saves the model as ``model_best.pt`` again),
        otherwise None. ``seed`` is the run's seed; ``validate()`` gives the model's
        validation metrics @10 (:meth:`Trainer.validate`, the only data selection sees)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (saved under :attr:`state_key`)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


class FairSamplerComponent(TrainingComponent):
    """The Fair Sampler as the trainer's positive sampler; logs the Gini of the item
    counts it drew in the epoch (``sampler/gini``).

    With the sequence tower (``model.user_encoder=transformer``) the batches are whole
    user windows (every position is a positive), so the sampler cannot choose the
    positives. It reweights them instead, with the same distribution: drawing
    interaction k with probability P(k) ∝ pop(i_k)^(-beta) and averaging L_rec is,
    in expectation, L_rec over all interactions weighted by w_k = pop(i_k)^(-beta)
    (importance weighting); the weights are normalised to mean 1 over each batch
    (self-normalised, so l_sup keeps its scale). The per-batch cap has no weighted
    counterpart and is not applied there (whole windows hold an item at most once per
    user); ``sampler/gini`` is then the Gini of the weighted item exposure of the epoch.
    """

    name = "fair_sampler"

    def __init__(self, cfg: Config, split: Split, device: torch.device | None = None) -> None:
        fs = cfg.fair_sampler
        self.weighted = cfg.model.user_encoder == "transformer"
        if self.weighted:
            pop = np.maximum(np.asarray(split.item_pop, dtype=np.float64), 1.0)
            self.item_weight = torch.as_tensor(pop ** -fs.beta, dtype=torch.float32,
                                               device=device)
            self._mass = torch.zeros(split.n_items, dtype=torch.float64, device=device)
        else:
            self.sampler = FairSampler(split, cfg.train.batch_size, cfg.seed, fs.beta,
                                       fs.max_per_batch)
            self.positive_sampler = self.sampler

    def row_weights(self, users: torch.Tensor, pos: torch.Tensor) -> torch.Tensor | None:
        if not self.weighted:
            return None
        w = self.item_weight[pos]
        w = w / w.mean().clamp(min=1e-12)
        self._mass.index_add_(0, pos, w.double())
        return w

    def epoch_summary(self, epoch: int) -> dict[str, Any]:
        if not self.weighted:
            return {"sampler/gini": self.sampler.last_epoch_gini}
        value = float(gini(self._mass.cpu().numpy()))
        self._mass.zero_()
        return {"sampler/gini": value}


class TailLoss(TrainingComponent):
    """L_Tail = l_tail * a recommendation loss over the rows whose positive is a tail
    item (DESIGN §4), in one of two forms (``tail_loss.candidates``):

    * ``all``: the rows' own L_rec (same candidates, same per-row losses), averaged
      over the tail rows, i.e. tail positives up-weighted in L_rec;
    * ``tail``: a softmax over the tail items only,
      L = mean over tail rows b of -log softmax_{j in T}(<z_b, y_j>)[pos_b]: it trains
      the order *within* the tail (which tail item u wants), not the tail against the
      head, which is the part an exposure budget that pushes tail items into lists
      draws on. The dot product only (ContextGNN's adjusted items keep their L_rec).
    """

    name = "tail_loss"

    def __init__(self, cfg: Config, split: Split, device: torch.device,
                 model: TwoTower | None = None) -> None:
        self.weight = cfg.loss.l_tail
        self.kind = cfg.tail_loss.candidates
        if self.kind == "tail" and model is None:
            raise ValueError("tail_loss.candidates='tail' needs the model (its item vectors)")
        self.model = model
        self.tail = torch.as_tensor(split.tail_mask, device=device)
        self.tail_items = torch.nonzero(self.tail, as_tuple=True)[0]
        # column of each tail item in the tail-only logits (-1 for head items)
        self.tail_col = torch.full((split.n_items,), -1, dtype=torch.long, device=device)
        self.tail_col[self.tail_items] = torch.arange(len(self.tail_items), device=device)

    def loss_terms(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        rows = self.tail[batch.pos]
        if self.kind == "all":  # the same per-row losses as L_rec, averaged over the tail rows
            return {"tail": self.weight * weighted_mean(batch.row_losses, rows.float())}
        if not bool(rows.any()):
            return {"tail": batch.z.sum() * 0.0}  # keeps the graph and the term's key
        assert self.model is not None
        logits = batch.z[rows] @ self.model.item_vectors(self.tail_items).T
        target = self.tail_col[batch.pos[rows]]
        logits = floor_logits(logits.float(), dim=1, keep=target)
        return {"tail": self.weight * F.cross_entropy(logits, target)}

    def term_weights(self, users: torch.Tensor, pos: torch.Tensor) -> dict[str, float]:
        return {"tail": float(self.tail[pos].sum())}  # L_Tail is a mean over tail rows


class GiniTerm(TrainingComponent):
    """L_GINI = l_fair * lambda * G(soft exposure of the batch) and the dual ascent of
    lambda after every step (:class:`marl_two_tower.fairness.gini_agent.GiniAgent`).

    Logs ``gini/value`` (mean batch G over the epoch's batches) and ``gini/lambda``;
    checkpoints lambda under ``gini_agent``. Under DDP, G is over the global batch's
    exposure and every rank uses rank 0's candidate set.
    """

    name = "gini"
    state_key = "gini_agent"
    global_terms = frozenset({"gini"})

    def __init__(self, cfg: Config, split: Split, model: TwoTower, device: torch.device,
                 dist: DistContext | None = None) -> None:
        self.agent = GiniAgent(cfg.gini, split.n_items, split.train_indptr,
                               split.train_items).to(device)
        if dist is not None:  # G over the global batch's exposure (distributed.py)
            self.agent.exposure_reduce = dist.sum_exposure
        self.model, self.device, self.dist, self.weight = model, device, dist, cfg.loss.l_fair
        self._g = math.nan  # G of the last batch, for the dual update after the step
        self._sum, self._updates, self._batches = 0.0, 0, 0

    def loss_terms(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        cand = self.agent.candidates(self.device)
        if cand is not None and self.dist is not None:  # one candidate set for all ranks
            self.dist.broadcast_(cand)
        g = self.agent.loss(batch.z, self.model.item_vectors(cand), batch.users, cand)
        self._g = float(g.detach())
        return {"gini": self.weight * self.agent.lam * g}

    def after_step(self, step: int, terms: dict[str, float]) -> None:
        lam = self.agent.update(self._g, step)
        log.debug("step %d gini %.4f lambda %.4f", step, self._g, lam)
        self._sum += self._g
        self._updates += 1

    def after_batch(self, index: int, rng: np.random.Generator) -> None:
        self._batches += 1

    def epoch_summary(self, epoch: int) -> dict[str, Any]:
        value = self._sum / max(self._batches, 1) if self._updates else math.nan
        self._sum, self._updates, self._batches = 0.0, 0, 0
        return {"gini/value": value, "gini/lambda": self.agent.lambda_fair}

    def state_dict(self) -> dict[str, Any]:
        return self.agent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state)


def component_names(components: Iterable[TrainingComponent]) -> list[str]:
    """The names of ``components``, checked to be unique (and their state keys too)."""
    names = [c.name for c in components]
    keys = [c.state_key for c in components if c.state_key is not None]
    for what, seq in (("name", names), ("state_key", keys)):
        dup = sorted({x for x in seq if seq.count(x) > 1})
        if dup:
            raise ValueError(f"training components share a {what}: {dup}")
    return names

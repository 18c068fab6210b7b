"""Reward of the genre agents (DESIGN §3 "Reward" and "Jaccard term").

For a batch B of users with top-K lists L_u (train items masked) the per-user reward is

    R_u = alpha * HR@K(u) + beta * Coverage(B) + gamma * (1 - Gini(B))
          + delta * TailHR@K(u) - eta * Redundancy(u) - jaccard_weight * J_u

* HR@K(u) = 1[t_u in L_u] against the **reward target** t_u, u's most recent *train*
  interaction (:func:`reward_targets`). It is removed from the history that builds
  u's RL state and from the supervised positives, so it is an unseen item for the
  agents; validation and test items are never used.
* TailHR@K(u) = HR@K(u) * 1[t_u in tail].
* Coverage(B) = |union_u L_u| / n_items; Gini(B) = Gini of the exposure counts
  x_i = sum_u 1[i in L_u] over **all** items (zeros included), as in
  :func:`marl_two_tower.metrics.gini`.
* Redundancy(u) = share of L_u's slots taken by head items.
* J_u = mean pairwise Jaccard overlap |L^g ∩ L^h| / |L^g ∪ L^h| of the per-agent
  lists L^g (only agent g's action applied) over u's active genres
  (:func:`pairwise_jaccard`).

Credit assignment of the batch terms. Coverage(B) and Gini(B) are the same number
for every user of the batch; after the critic baseline and advantage normalisation
such a shared term carries almost no per-user signal. With ``credit="difference"``
(default) each user instead receives its *difference reward* (Wolpert & Tumer,
"Optimal payoff functions for members of collectives", 2001):

    beta  * |B| * (Coverage(B) - Coverage(B \\ u))
    gamma * |B| * ((1 - Gini(B)) - (1 - Gini(B \\ u)))

The subtracted term does not depend on u's action, so the policy gradient of the
batch objective mean_u(per-user terms) + beta Coverage(B) + gamma (1 - Gini(B)) is
unchanged (it is a baseline) while its variance drops; the |B| factor makes the mean
of the per-user rewards estimate that objective's gradient scale.
``credit="shared"`` gives every user the literal batch values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from marl_two_tower.config import MARLConfig
from marl_two_tower.data.split import Split
from marl_two_tower.metrics.gini import gini


@dataclass(frozen=True)
class RewardWeights:
    """Weights of R_u (one source: :class:`marl_two_tower.config.MARLConfig`)."""

    alpha: float  # HR@K
    beta: float  # Coverage(B)
    gamma: float  # 1 - Gini(B)
    delta: float  # TailHR@K
    eta: float  # Redundancy
    jaccard: float  # mean pairwise Jaccard of per-agent lists
    k: int  # list length
    credit: Literal["difference", "shared"]  # batch terms: difference rewards or shared values

    @classmethod
    def from_config(cls, cfg: MARLConfig) -> RewardWeights:
        return cls(alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma, delta=cfg.delta, eta=cfg.eta,
                   jaccard=cfg.jaccard_weight, k=cfg.k, credit=cfg.credit)


def reward_targets(split: Split) -> np.ndarray:
    """Interaction index (into ``split.train_items``) of each user's reward target, or -1.

    t_u is u's most recent train interaction, ``train_items[train_indptr[u+1] - 1]``;
    only users with >= 2 train interactions get one (u's RL state must keep a
    non-empty history). It is a train interaction by construction, so no validation
    or test item can become a reward target.
    """
    lengths = np.diff(split.train_indptr)
    out = np.full(split.n_users, -1, dtype=np.int64)
    ok = lengths >= 2
    out[ok] = split.train_indptr[1:][ok] - 1
    return out


def masked_topk(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` item indices of ``scores [..., B, n]`` with ``mask [B, n]`` items removed.

    Masked items get -inf; slots that would hold a masked item are -1 (only when a
    user has fewer than k unmasked items).
    """
    s = scores.masked_fill(mask, float("-inf"))
    vals, idx = torch.topk(s, k, dim=-1)
    return idx.masked_fill(torch.isneginf(vals), -1)




def list_rewards(lists: torch.Tensor, targets: torch.Tensor, tail_mask: torch.Tensor,
                 n_items: int, w: RewardWeights) -> dict[str, torch.Tensor]:
    """Per-user reward terms of one batch (without the Jaccard term).

    Args:
        lists: ``[B, K]`` top-K item indices (distinct per row; -1 = empty slot).
        targets: ``[B]`` reward-target item of each user.
        tail_mask: bool ``[n_items]``.

    Returns float64 tensors: ``hr``, ``tail_hr``, ``redundancy`` ``[B]``;
    ``coverage``, ``gini`` (batch values, scalars); ``coverage_term``, ``fairness_term``
    ``[B]`` (difference rewards or the batch values, see module docstring) and
    ``reward`` = alpha hr + beta coverage_term + gamma fairness_term + delta tail_hr
    - eta redundancy.
    """
    b, k = lists.shape
    valid = lists >= 0
    safe = lists.clamp(min=0)
    hr = ((lists == targets[:, None]) & valid).any(1).double()
    tail_hr = hr * tail_mask[targets].double()
    redundancy = ((~tail_mask[safe]) & valid).double().sum(1) / k
    counts = torch.zeros(n_items, dtype=torch.float64, device=lists.device)
    counts.index_add_(0, safe[valid], torch.ones(int(valid.sum()), dtype=torch.float64,
                                                 device=lists.device))
    support = torch.nonzero(counts > 0, as_tuple=True)[0]
    coverage = (counts > 0).double().sum() / n_items
    batch_gini = gini(counts[support].to(torch.float64), n_items)
    if w.credit == "difference":
        # Items only u recommends leave the union when u is removed.
        unique = ((counts[safe] == 1) & valid).double().sum(1)
        coverage_term = b * unique / n_items
        # Exposure of B \ u on the batch support: counts minus u's own list.
        pos = torch.searchsorted(support, safe)
        own = torch.zeros(b, len(support), dtype=torch.float64, device=lists.device)
        own.scatter_add_(1, pos, valid.double())
        gini_without = gini((counts[support][None, :] - own).to(torch.float64), n_items)
        fairness_term = b * (gini_without - batch_gini)
    elif w.credit == "shared":
        coverage_term = coverage.expand(b)
        fairness_term = (1.0 - batch_gini).expand(b)
    else:
        raise ValueError(f"credit must be 'difference' or 'shared', got {w.credit!r}")
    reward = (w.alpha * hr + w.beta * coverage_term + w.gamma * fairness_term
              + w.delta * tail_hr - w.eta * redundancy)
    return {"hr": hr, "tail_hr": tail_hr, "redundancy": redundancy, "coverage": coverage,
            "gini": batch_gini, "coverage_term": coverage_term, "fairness_term": fairness_term,
            "reward": reward}


def pairwise_jaccard(lists: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean pairwise Jaccard overlap of per-agent lists.

    Args:
        lists: ``[A, B, K]`` list of agent slot a for user b (distinct items per list).
        active: bool ``[A, B]``, which slots hold an active agent of user b.

    Returns (J ``[B]``, J_agent ``[A, B]``): J_u = mean over ordered pairs a != a' of
    active slots of |L^a ∩ L^a'| / |L^a ∪ L^a'| (0 with fewer than two active agents);
    J_agent[a, u] = mean over the other active slots a' of the same overlap (0 when
    inactive), so the mean of J_agent over active slots is J_u.
    """
    a = lists.shape[0]
    inter = ((lists[:, None, :, :, None] == lists[None, :, :, None, :])
             & (lists[:, None, :, :, None] >= 0)).sum((-1, -2)).double()  # [A, A, B]
    size = (lists >= 0).sum(-1).double()  # [A, B]
    union = size[:, None, :] + size[None, :, :] - inter
    jac = inter / union.clamp(min=1.0)
    pair = active[:, None, :] & active[None, :, :]
    pair &= ~torch.eye(a, dtype=torch.bool, device=lists.device)[:, :, None]
    n_other = pair.sum(1).double()  # [A, B]
    j_agent = torch.where(n_other > 0, (jac * pair).sum(1) / n_other.clamp(min=1.0),
                          torch.zeros_like(n_other))
    n_act = active.sum(0).double()
    j_user = torch.where(n_act >= 2, (j_agent * active).sum(0) / n_act.clamp(min=1.0),
                         torch.zeros_like(n_act))
    return j_user, j_agent

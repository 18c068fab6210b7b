"""Recommendation losses (DESIGN §4, L_rec and L_Tail).

Sampled softmax with logQ correction (Yi et al., "Sampling-Bias-Corrected Neural
Modeling for Large Corpus Item Recommendations", RecSys 2019): for a batch of
(user b, positive p_b) pairs, the candidates are the batch's positives (in-batch
negatives) plus M uniformly sampled items. With q_j the probability that candidate
j enters the candidate set, the corrected logit is

    l_bj = s(u_b, j) - log q_j

and L_rec = mean_b CE(softmax_j l_bj, target = b's own positive). Candidates that
equal b's positive (accidental hits) are masked out except b's own slot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from marl_two_tower.utils.numerics import floor_logits


def sampled_softmax_logits(
    user_vecs: torch.Tensor,
    pos_items: torch.Tensor,
    neg_items: torch.Tensor,
    item_vecs_pos: torch.Tensor,
    item_vecs_neg: torch.Tensor,
    log_q_pos: torch.Tensor | None,
    log_q_neg: torch.Tensor | None,
) -> torch.Tensor:
    """Corrected logits ``[B, B + M]``; column b is user b's positive.

    ``log_q_*`` are the log inclusion probabilities of the candidates (None = no
    correction). Accidental hits (a candidate equal to the row's positive, other
    than its own column) are set to -inf.
    """
    cand_items = torch.cat([pos_items, neg_items])
    logits = user_vecs @ torch.cat([item_vecs_pos, item_vecs_neg]).T
    if log_q_pos is not None and log_q_neg is not None:
        logits = logits - torch.cat([log_q_pos, log_q_neg])[None, :]
    hit = pos_items[:, None] == cand_items[None, :]
    own = torch.zeros_like(hit)
    own[:, : len(pos_items)] = torch.eye(len(pos_items), dtype=torch.bool, device=hit.device)
    return logits.float().masked_fill(hit & ~own, float("-inf"))


def _target(logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Column of each row's positive: ``target``, or the diagonal when None."""
    return torch.arange(logits.shape[0], device=logits.device) if target is None else target


def softmax_rows(logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row CE ``[B]`` against the positive's column (``target [B]``, None = the
    diagonal). The logits other than the positive's are floored first (utils/numerics.py:
    the same losses, without exp's subnormal slow path on CPU)."""
    target = _target(logits, target)
    return F.cross_entropy(floor_logits(logits, dim=1, keep=target), target, reduction="none")


def bce_rows(logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row BCE ``[B]``: softplus(-s_pos) + mean over the row's finite other columns
    of softplus(s_neg); the positive's column is ``target`` (None = the diagonal)."""
    b = logits.shape[0]
    rows, cols = torch.arange(b, device=logits.device), _target(logits, target)
    pos = logits[rows, cols]
    finite = torch.isfinite(logits)
    neg = logits.masked_fill(~finite, 0.0)
    neg_mask = finite.clone()
    neg_mask[rows, cols] = False
    return F.softplus(-pos) + (F.softplus(neg) * neg_mask).sum(1) / neg_mask.sum(1).clamp(min=1)


def row_losses(logits: torch.Tensor, kind: str = "softmax",
               target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row L_rec ``[B]`` of the configured kind ('softmax' | 'bce')."""
    return softmax_rows(logits, target) if kind == "softmax" else bce_rows(logits, target)


def weighted_mean(per_row: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """mean_b l_b, or sum_b w_b l_b / max(sum_b w_b, 1) with row weights ``w``."""
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def rec_loss(logits: torch.Tensor, kind: str = "softmax",
             weight: torch.Tensor | None = None,
             target: torch.Tensor | None = None) -> torch.Tensor:
    """L_rec of the configured kind ('softmax' | 'bce'), optionally row-weighted, with
    each row's positive in column ``target[b]`` (None = column b: the sampled layout).

    With ``weight`` = tail indicator of each row's positive this is L_Tail.
    """
    return weighted_mean(row_losses(logits, kind, target), weight)

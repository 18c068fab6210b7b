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


def softmax_loss(logits: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row CE against the diagonal target; mean over rows (weighted if given)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    per_row = F.cross_entropy(logits, target, reduction="none")
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def bce_loss(logits: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with the diagonal as positives and the finite rest as negatives."""
    b = logits.shape[0]
    pos = logits[torch.arange(b), torch.arange(b)]
    finite = torch.isfinite(logits)
    neg = logits.masked_fill(~finite, 0.0)
    neg_mask = finite.clone()
    neg_mask[torch.arange(b), torch.arange(b)] = False
    per_row = F.softplus(-pos) + (F.softplus(neg) * neg_mask).sum(1) / neg_mask.sum(1).clamp(min=1)
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def rec_loss(logits: torch.Tensor, kind: str = "softmax",
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_rec of the configured kind ('softmax' | 'bce'), optionally row-weighted.

    With ``weight`` = tail indicator of each row's positive this is L_Tail.
    """
    return softmax_loss(logits, weight) if kind == "softmax" else bce_loss(logits, weight)

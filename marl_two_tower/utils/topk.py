"""The one deterministic top-k: ties broken by the lower index.

``torch.topk`` (and ``np.argpartition``) leave the order of equal values
unspecified, so a list of popularity-style scores (many ties) could depend on the
batch or the backend. Baseline recommendations and the serving index's exact search
both rank with :func:`topk_lowest_index_ties`, so equal scores always go to the
lower item index.
"""

from __future__ import annotations

import torch


def topk_lowest_index_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-``k`` of ``scores [n_rows, n_cols]`` with ties broken by the lower column index.

    Every value strictly above the row's k-th largest value v_k is taken, and the
    remaining slots go to the lowest-index columns equal to v_k; the k winners are
    then stably sorted by score (descending), so equal scores stay in index order.
    Returns ``(indices int64, values)``, both ``[n_rows, min(k, n_cols)]``.
    """
    k = min(k, scores.shape[1])
    if k <= 0:
        empty = torch.empty((scores.shape[0], 0), dtype=torch.int64, device=scores.device)
        return empty, scores.new_empty((scores.shape[0], 0))
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    # Among the tied items, keep the first (k - #above) in index order.
    room = k - above.sum(dim=1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, dim=1) <= room))
    idx = keep.nonzero()[:, 1].view(-1, k)  # row-major: ascending item index per row
    val = torch.gather(scores, 1, idx)
    order = torch.sort(val, dim=1, descending=True, stable=True).indices
    return torch.gather(idx, 1, order), torch.gather(val, 1, order)

"""The one Gini coefficient of the package, for numpy arrays and torch tensors.

For a non-negative vector x of length n, sorted ascending x_(1) <= ... <= x_(n),

    G(x) = sum_{k=1..n} (2k - n - 1) x_(k) / (n sum_k x_k),

equivalently sum_i sum_j |x_i - x_j| / (2 n sum x) (the mean absolute difference
over twice the mean); G = 0 when sum x = 0 (nothing to be unequal about), 0 is
perfect equality and (n - 1)/n everything on one item.

Used for the exposure Gini@K of the evaluation (numpy), the bootstrap of list
metrics (numpy, one Gini per row), the batch Gini of the MARL reward and the
differentiable L_GINI of the GINI agent (torch: the gradient flows through the
sorted values, dG/dx_(k) = ((2k - n - 1)/n - G) / sum x).
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch


@overload
def gini(x: torch.Tensor, n: int | None = None) -> torch.Tensor: ...
@overload
def gini(x: np.ndarray, n: int | None = None) -> float | np.ndarray: ...


def gini(x, n=None):
    """Gini of ``x`` along its last axis (one value per row of a matrix).

    ``n`` is the length of the full vector when ``x`` holds only its support (the
    other n - m entries are zero: with values sorted ascending the zeros take ranks
    1..n-m, so the weight of the j-th smallest given value is 2 (n - m + j) - n - 1).

    numpy input: a float for a 1-D array, an array of per-row values otherwise
    (float64; negative values are an error). torch input: a tensor in ``x``'s dtype,
    differentiable through the sorted values.
    """
    if isinstance(x, torch.Tensor):
        m = x.shape[-1]
        n = m if n is None else n
        if n == 0:
            return x.sum(-1)
        v = torch.sort(x, dim=-1).values
        j = torch.arange(1, m + 1, device=x.device, dtype=v.dtype)
        total = v.sum(-1)
        g = ((2 * (n - m + j) - n - 1) * v).sum(-1) / (n * total.clamp(min=torch.finfo(v.dtype).tiny))
        return torch.where(total > 0, g, torch.zeros_like(g))
    arr = np.sort(np.asarray(x, dtype=np.float64), axis=-1)
    m = arr.shape[-1]
    n = m if n is None else n
    if arr.size and arr[..., 0].min() < 0:
        raise ValueError("gini needs non-negative values")
    total = arr.sum(axis=-1)
    w = 2.0 * (n - m + np.arange(1, m + 1)) - n - 1
    g = np.divide(arr @ w, n * total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)
    return float(g) if arr.ndim == 1 else g

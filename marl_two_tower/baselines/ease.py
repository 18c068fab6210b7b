"""EASE: Embarrassingly Shallow Autoencoder (Steck, "Embarrassingly Shallow
Autoencoders for Sparse Data", WWW 2019).

An item-item weight matrix B is learned by ridge regression of every item column of
the binary train matrix X on all the others, with the trivial solution excluded:

    min_B ||X - X B||_F^2 + lambda ||B||_F^2   s.t.  diag(B) = 0.

The constrained problem has the closed form

    P = (X^T X + lambda I)^{-1},   B = I - P diag(1 / diag(P)),

i.e. B_ij = -P_ij / P_jj for i != j and B_jj = 0; scores are score(u, .) = X_u B.
The only hyperparameter is lambda. The default, 500, is the value Steck used on
ML-20M; smaller data want less regularisation, and on ML-100K leave-one-out by time
``tune_ease`` picks 100 by validation NDCG@10. Cost is one dense I x I inversion
(O(I^3) time, O(I^2) memory), so EASE suits catalogues up to tens of thousands of
items.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch

from marl_two_tower.baselines.base import BaselineRecommender, loo_ndcg
from marl_two_tower.data.split import Split


def ease_weights(x: sp.spmatrix, lam: float) -> np.ndarray:
    """Closed-form EASE matrix ``B`` (float64 ``[n_items, n_items]``, zero diagonal).

    ``X^T X + lambda I`` is symmetric positive definite for lambda > 0, so the inverse
    is taken through a Cholesky factorisation (faster and better conditioned than a
    general inverse).
    """
    if lam <= 0:
        raise ValueError(f"EASE lambda must be > 0, got {lam}")
    gram = np.asarray((x.T @ x).toarray(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram), np.eye(len(gram)))
    b = -p / np.diag(p)[None, :]  # B_ij = -P_ij / P_jj
    np.fill_diagonal(b, 0.0)
    return b


class EASE(BaselineRecommender):
    """Closed-form item-item autoencoder; see the module docstring for the math.

    Args:
        lam: L2 regularisation lambda of the ridge regression (> 0).
    """

    name = "ease"
    param_names = ("lam",)

    def __init__(self, lam: float = 500.0) -> None:
        super().__init__()
        if lam <= 0:
            raise ValueError(f"EASE lambda must be > 0, got {lam}")
        self.lam = float(lam)
        self.weights: torch.Tensor | None = None

    def _fit(self, split: Split) -> None:
        b = ease_weights(self._require_fitted(), self.lam)
        self.weights = torch.from_numpy(b.astype(np.float32))

    def score(self, users: np.ndarray) -> torch.Tensor:
        if self.weights is None:
            raise RuntimeError("EASE is not fitted: call fit(split) first")
        dense = self._user_rows(users) @ self.weights.numpy()
        return torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))

    def _state(self) -> dict[str, torch.Tensor]:
        assert self.weights is not None
        return {"weights": self.weights}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.weights = state["weights"]


def tune_ease(
    split: Split,
    lambdas: Iterable[float] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0),
    score_on: str = "val",
    k: int = 10,
) -> tuple[float, dict[float, float]]:
    """Pick EASE's lambda by validation NDCG@k (full ranking, train items masked).

    Returns ``(best_lambda, {lambda: NDCG@k})``; ties go to the smaller lambda. Only
    ``score_on="val"`` is accepted: model selection never reads the test split
    (DESIGN §2). The usual protocol then refits on train + validation before the
    test evaluation: ``EASE(best_lambda).fit(split, include_val=True)``.
    """
    if score_on != "val":
        raise ValueError(f"model selection uses validation only (DESIGN §2), got {score_on!r}")
    results = {float(lam): loo_ndcg(EASE(lam).fit(split), split, "val", k) for lam in lambdas}
    if not results:
        raise ValueError("tune_ease needs at least one lambda")
    best = max(sorted(results), key=lambda lam: results[lam])
    return best, results

"""The contract every baseline recommender honours (after ``implicit``'s RecommenderBase).

A recommender is fitted on a :class:`~marl_two_tower.data.split.Split` (train part
only), then scores **all** items for a batch of users. ``recommend`` is written once
here: it masks the user's train items and returns a deterministic top-k (ties broken
by the lower item index, so a batch call equals the per-user calls). Checkpoints are
plain dicts of tensors and primitives, written atomically and read back with
``torch.load(weights_only=True)`` (DESIGN §8, §10).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import numpy as np
import scipy.sparse as sp
import torch

from marl_two_tower.checkpoint import save_atomic
from marl_two_tower.data.split import Split
from marl_two_tower.utils.topk import topk_lowest_index_ties

CHECKPOINT_FORMAT = 1

R = TypeVar("R", bound="BaselineRecommender")


class BaselineRecommender(ABC):
    """Base class: ``fit(split) -> self``, ``score``, ``recommend``, ``save``/``load``.

    Subclasses set ``name`` and ``param_names`` (constructor keyword arguments that
    are saved with the model) and implement ``_fit``, ``score``, ``_state`` and
    ``_load_state``.

    After ``fit`` the binary train matrix ``X`` (``[n_users, n_items]`` CSR) is kept:
    neighbourhood models score from it and ``recommend`` masks with it, and it is
    part of the checkpoint so a loaded model works without the split.
    """

    name: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.train_matrix: sp.csr_matrix | None = None
        self.include_val = False

    # -- fitting and scoring ------------------------------------------------------

    def fit(self: R, split: Split, include_val: bool = False) -> R:
        """Fit on the train part of ``split``; the test split is never read.

        ``include_val=True`` fits on train plus each user's validation interaction:
        the usual last step once hyperparameters have been chosen on validation,
        before the single test evaluation (the validation item precedes the test
        item in time, so this leaks nothing about test). Such a model must not be
        scored on validation again.
        """
        x = split.exclusion_matrix("test") if include_val else split.train_matrix
        self.train_matrix = x.astype(np.float32).tocsr()
        self.include_val = bool(include_val)
        self._fit(split)
        return self

    @abstractmethod
    def _fit(self, split: Split) -> None:
        """Model-specific fitting from ``self.train_matrix`` (train, or train + val)."""

    @abstractmethod
    def score(self, users: np.ndarray) -> torch.Tensor:
        """Float32 CPU scores ``[len(users), n_items]`` for all items, nothing masked.

        The tensor is new on every call, so callers may mask it in place.
        """

    def history_scorer(self, split: Split, part: str, test_history: str = "train+val"):
        """Score function for ``part``: the user rows the model reads are train, plus the
        validation interaction for test under ``test_history='train+val'`` (input only,
        no refit: neighbourhood models and EASE score from these rows; BPR-MF and MostPop
        read none)."""
        if part != "test" or test_history == "train" or self.include_val:
            return self.score
        rows = split.exclusion_matrix("test").astype(np.float32).tocsr()

        def score_fn(users: np.ndarray) -> torch.Tensor:
            saved, self.train_matrix = self.train_matrix, rows
            try:
                return self.score(users)
            finally:
                self.train_matrix = saved

        return score_fn

    @property
    def n_users(self) -> int:
        return self._require_fitted().shape[0]

    @property
    def n_items(self) -> int:
        return self._require_fitted().shape[1]

    def _require_fitted(self) -> sp.csr_matrix:
        if self.train_matrix is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(split) first")
        return self.train_matrix

    def _user_rows(self, users: np.ndarray) -> sp.csr_matrix:
        """Rows ``X_u`` of the binary train matrix for ``users``."""
        return self._require_fitted()[np.asarray(users, dtype=np.int64)]

    def recommend(
        self,
        users: np.ndarray,
        k: int,
        exclude_seen: bool = True,
        exclude: sp.csr_matrix | None = None,
    ) -> np.ndarray:
        """Top-``k`` item indices per user, best first: int64 ``[len(users), k]``.

        ``exclude_seen`` masks the items the model was fitted on (train, plus
        validation after ``fit(..., include_val=True)``); ``exclude`` (a full
        ``[n_users, n_items]`` matrix such as ``split.exclusion_matrix("test")``)
        replaces that mask. Ties go to the lower item index. Slots left when a user
        has fewer than ``k`` unmasked items are -1; ``k`` is capped at ``n_items``.
        """
        users = np.asarray(users, dtype=np.int64)
        scores = self.score(users)
        if exclude_seen or exclude is not None:
            mask_rows_(scores, (exclude if exclude is not None else self._require_fitted())[users])
        top_idx, top_val = topk_lowest_index_ties(scores, k)
        top_idx[torch.isneginf(top_val)] = -1
        return top_idx.numpy()

    # -- serialisation ------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """Constructor keyword arguments (what ``load`` needs to rebuild the model)."""
        return {p: getattr(self, p) for p in self.param_names}

    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to checkpoint (the train matrix is added by ``save``)."""

    @abstractmethod
    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``_state`` returned."""

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``{model, params, state}`` atomically (temp file + fsync + rename)."""
        x = self._require_fitted()
        state = dict(self._state())
        state["train_indptr"] = torch.from_numpy(x.indptr.astype(np.int64))
        state["train_indices"] = torch.from_numpy(x.indices.astype(np.int64))
        state["train_shape"] = torch.tensor(x.shape, dtype=torch.int64)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model": self.name,
            "params": self.get_params(),
            "include_val": self.include_val,
            "state": state,
        }
        save_atomic(payload, path)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike[str]) -> R:
        """Rebuild a model written by ``save`` (no pickled code: ``weights_only``)."""
        payload = read_checkpoint(path)
        if payload["model"] != cls.name:
            raise ValueError(f"{path}: checkpoint holds {payload['model']!r}, not {cls.name!r}")
        model = cls(**payload["params"])
        state = payload["state"]
        n_users, n_items = (int(v) for v in state.pop("train_shape"))
        indptr = state.pop("train_indptr").numpy()
        indices = state.pop("train_indices").numpy()
        model.train_matrix = sp.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(n_users, n_items)
        )
        model.include_val = bool(payload["include_val"])
        model._load_state(state)
        return model


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and sanity-check a baseline checkpoint dict."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a baseline checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def mask_rows_(scores: torch.Tensor, rows: sp.csr_matrix) -> torch.Tensor:
    """Set ``scores[r, j] = -inf`` in place wherever ``rows[r, j]`` is stored."""
    r = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    scores[torch.from_numpy(r), torch.from_numpy(rows.indices.astype(np.int64))] = -torch.inf
    return scores


def loo_ndcg(
    model: BaselineRecommender, split: Split, part: str = "val", k: int = 10, batch_size: int = 1024
) -> float:
    """Mean NDCG@k of leave-one-out targets under full ranking, for model selection.

    With one relevant item at 0-based rank r among the unmasked items,
    NDCG@k = 1 / log2(r + 2) if r < k else 0. Items masked are
    ``split.exclusion_matrix(part)`` (train, plus validation for test). The reported
    numbers come from the evaluation harness; this is the small, self-contained
    version that ``tune_ease`` needs. The rank counts items scoring strictly higher
    than the target (optimistic on ties, which dense scores make rare).
    """
    if part == "val" and model.include_val:
        raise ValueError("model was fitted with include_val=True: its validation score leaks")
    users = split.eval_users(part)
    targets = split.targets(part)[users]
    excl = split.exclusion_matrix(part)
    total = 0.0
    for start in range(0, len(users), batch_size):
        u, t = users[start : start + batch_size], targets[start : start + batch_size]
        scores = model.score(u)
        mask_rows_(scores, excl[u])
        target_score = scores[torch.arange(len(u)), torch.from_numpy(t)]
        rank = (scores > target_score[:, None]).sum(dim=1).double()
        total += float(torch.where(rank < k, 1.0 / torch.log2(rank + 2.0), 0.0).sum())
    return total / max(len(users), 1)

"""The in-memory interaction dataset every loader produces.

All per-interaction data are parallel numpy arrays (no per-row Python objects), ids
are contiguous ``0..n-1`` indices with maps back to the original ids, and side
information (genres, release year, demographics) is stored as dense arrays indexed
by those ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PredefinedSplit:
    """A split shipped with the data (e.g. the NCF leave-one-out protocol).

    ``test_users[j]`` / ``test_items[j]`` are the held-out pairs (indices);
    ``test_negatives`` (optional, ``[n_test, n_neg]``) are the sampled negatives of
    the NCF protocol, aligned with ``test_users``.
    """

    test_users: np.ndarray
    test_items: np.ndarray
    test_negatives: np.ndarray | None = None


@dataclass
class Dataset:
    """Implicit-feedback interactions plus item and user side information.

    Attributes:
        users, items: int64 index arrays, one entry per interaction, in file order.
        timestamps: float64 seconds; NaN where unknown (the order in the file then
            stands for time).
        ratings: float32 ratings or None.
        user_ids, item_ids: original ids, ``user_ids[u]`` is the id of index ``u``.
        item_genres: bool ``[n_items, n_genres]`` multi-hot.
        genre_names: names of the genre columns.
        item_year: int32 release year (0 = unknown).
        user_features: categorical demographics, name -> int codes ``[n_users]``
            (-1 = unknown); ``user_feature_labels`` gives each code's label.
        predefined: optional split shipped with the data.
        order_known: file order within each user is time order even where
            timestamps are missing (``ml-1m-ordered``: its ``seq`` column), so every
            user counts as timed in :meth:`timed_users`.
    """

    name: str
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    n_users: int
    n_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_genres: np.ndarray
    genre_names: list[str]
    item_year: np.ndarray
    ratings: np.ndarray | None = None
    user_features: dict[str, np.ndarray] = field(default_factory=dict)
    user_feature_labels: dict[str, list[str]] = field(default_factory=dict)
    item_titles: list[str] | None = None
    predefined: PredefinedSplit | None = None
    order_known: bool = False

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if not (len(self.users) == len(self.items) == len(self.timestamps)):
            raise ValueError("users, items and timestamps must have the same length")
        if self.item_genres.shape[0] != self.n_items:
            raise ValueError("item_genres must have one row per item")

    @property
    def n_interactions(self) -> int:
        return int(len(self.users))

    @property
    def n_genres(self) -> int:
        return int(self.item_genres.shape[1])

    def filter_min_rating(self, min_rating: float) -> Dataset:
        """Keep interactions with rating >= ``min_rating`` (no-op without ratings).

        Raises DataError (naming ``data.min_rating``) when no interaction is left."""
        if min_rating <= 0 or self.ratings is None:
            return self
        keep = self.ratings >= min_rating
        if self.n_interactions and not keep.any():
            from marl_two_tower.data.errors import DataError

            raise DataError("data.min_rating", f"{min_rating:g} keeps none of the "
                            f"{self.n_interactions} ratings of {self.name} (highest rating: "
                            f"{float(np.nanmax(self.ratings)):g})")
        self.users, self.items = self.users[keep], self.items[keep]
        self.timestamps, self.ratings = self.timestamps[keep], self.ratings[keep]
        return self

    def filter_min_item_count(self, min_count: int) -> Dataset:
        """Drop items with fewer than ``min_count`` interactions (SASRec's ML-1M
        preprocessing, Kang & McAuley 2018: ``min_count = 5``), then re-index.

        Counts are over every interaction loaded (all users), after ``min_rating``.
        Dropped items leave the catalogue (the ranking is over the kept items only);
        users left without interactions leave too. Indices stay in sorted-id order,
        side information follows. No-op for ``min_count <= 1``.
        """
        if min_count <= 1:
            return self
        if self.predefined is not None:
            raise ValueError("data.min_item_count: not supported with a predefined split "
                             f"({self.name} ships its own test pairs)")
        counts = np.bincount(self.items, minlength=self.n_items)
        keep = counts[self.items] >= min_count
        item_keep = counts >= min_count
        user_keep = np.bincount(self.users[keep], minlength=self.n_users) > 0
        item_new = np.cumsum(item_keep) - 1
        user_new = np.cumsum(user_keep) - 1
        self.users, self.items = user_new[self.users[keep]], item_new[self.items[keep]]
        self.timestamps = self.timestamps[keep]
        if self.ratings is not None:
            self.ratings = self.ratings[keep]
        self.n_users, self.n_items = int(user_keep.sum()), int(item_keep.sum())
        self.user_ids, self.item_ids = self.user_ids[user_keep], self.item_ids[item_keep]
        self.item_genres, self.item_year = self.item_genres[item_keep], self.item_year[item_keep]
        if self.item_titles is not None:
            self.item_titles = [t for t, k in zip(self.item_titles, item_keep, strict=True) if k]
        self.user_features = {k: v[user_keep] for k, v in self.user_features.items()}
        return self

    def timed_users(self) -> np.ndarray:
        """bool ``[n_users]``: True where the user's time order is known: every
        interaction has a timestamp, or the file order is time order
        (``order_known``); otherwise file order stands in for time."""
        timed = np.ones(self.n_users, dtype=bool)
        if self.order_known:
            return timed
        timed[self.users[np.isnan(self.timestamps)]] = False
        return timed

    def fingerprint(self) -> str:
        """SHA-256 over the interaction arrays and shapes: identifies the data exactly."""
        h = hashlib.sha256()
        h.update(f"{self.name}:{self.n_users}:{self.n_items}".encode())
        for a in (self.users, self.items):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(np.nan_to_num(self.timestamps, nan=-1.0).tobytes())
        if self.predefined is not None:
            h.update(self.predefined.test_users.tobytes())
            h.update(self.predefined.test_items.tobytes())
        return h.hexdigest()[:16]


def encode_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary ids to ``0..n-1`` in sorted-id order: returns (index, unique_ids)."""
    uniq, inv = np.unique(raw, return_inverse=True)
    return inv.astype(np.int64), uniq

"""Leave-one-out split by time, train-only popularity and head/tail groups (DESIGN §2).

Protocol: per user, interactions are ordered by timestamp (ties and unknown
timestamps: stable by original file order); the last one is **test**, the second to
last **validation**, the rest **train**. Users with fewer than 3 interactions stay
train-only (val/test = -1). With a predefined split (NCF), the given test pair is
the test target and the user's last remaining interaction is validation.

Everything derived from interactions (popularity, tail set, graph) uses train only.

Repeated (user, item) pairs (``data.repeats``): ``drop`` (the default of
:func:`marl_two_tower.data.load_split`) keeps each pair's first interaction in time
order before splitting (:func:`drop_repeats`), so no target is an item the user
already has in train; ``keep`` splits every interaction, and the evaluator then
masks a re-consumed target like every other train item (masking never depends on
the label).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.errors import DataError


@dataclass
class Split:
    """Train/validation/test views of a :class:`Dataset`.

    Attributes:
        train_users, train_items: train interactions sorted by (user, time).
        train_indptr: CSR row pointer over ``train_items`` (user u's train history in
            time order is ``train_items[train_indptr[u]:train_indptr[u+1]]``).
        train_matrix: binary CSR ``[n_users, n_items]`` (duplicates collapsed).
        val_items, test_items: ``[n_users]`` target item or -1.
        item_pop: train interaction count per item.
        tail_mask: bool ``[n_items]``, True for long-tail items.
        tail_by, tail_fraction: how the tail was defined (stated in reports).
        test_negatives: ``[n_users, n_neg]`` sampled negatives or None (row of -1
            for users without a test target).
    """

    dataset: Dataset
    train_users: np.ndarray
    train_items: np.ndarray
    train_indptr: np.ndarray
    train_matrix: sp.csr_matrix
    val_items: np.ndarray
    test_items: np.ndarray
    item_pop: np.ndarray
    tail_mask: np.ndarray
    tail_by: str
    tail_fraction: float
    test_negatives: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return self.dataset.n_users

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    def history(self, u: int) -> np.ndarray:
        """User ``u``'s train items in time order."""
        return self.train_items[self.train_indptr[u] : self.train_indptr[u + 1]]

    def eval_users(self, part: str) -> np.ndarray:
        """Users that have a target in ``part`` ('val' or 'test')."""
        targets = self.val_items if part == "val" else self.test_items
        return np.flatnonzero(targets >= 0)

    def targets(self, part: str) -> np.ndarray:
        return self.val_items if part == "val" else self.test_items

    def exclusion_matrix(self, part: str) -> sp.csr_matrix:
        """Items masked when ranking for ``part``: train, plus validation for test."""
        if part == "val":
            return self.train_matrix
        vu = np.flatnonzero(self.val_items >= 0)
        extra = sp.csr_matrix(
            (np.ones(len(vu), dtype=np.float32), (vu, self.val_items[vu])),
            shape=self.train_matrix.shape,
        )
        m = (self.train_matrix + extra).tocsr()
        m.data[:] = 1.0
        return m


def time_order(ds: Dataset) -> np.ndarray:
    """Permutation sorting interactions by (user, timestamp, file position).

    Unknown timestamps (NaN) sort as equal, so file order decides among them.
    Data already in (user, time) order (the synthetic generator's, many exports) is
    recognised in O(n) and not sorted: the O(n log n) lexsort dominated the split at
    10M+ interactions.
    """
    pos = np.arange(ds.n_interactions)
    ts = np.nan_to_num(ds.timestamps, nan=-np.inf)
    du = np.diff(ds.users)
    if (du >= 0).all() and (ts[1:] >= ts[:-1])[du == 0].all():
        return pos
    return np.lexsort((pos, ts, ds.users))


def drop_repeats(ds: Dataset) -> Dataset:
    """Keep the first interaction of every (user, item) pair in time order.

    Time order is :func:`time_order`'s (timestamp, then file position), so the split
    of the result takes the user's last *new* item as test. Interactions stay in
    file order; side information is untouched. Returns ``ds`` itself when it has no
    repeats (hash-based check, O(n)); otherwise a copy with the repeats removed and
    the same users and items (indices unchanged).
    """
    order = time_order(ds)
    key = ds.users[order] * np.int64(ds.n_items) + ds.items[order]
    dup = pd.Series(key).duplicated(keep="first").to_numpy()
    if not dup.any():
        return ds
    keep = np.ones(ds.n_interactions, dtype=bool)
    keep[order[dup]] = False
    return dataclasses.replace(
        ds, users=ds.users[keep], items=ds.items[keep], timestamps=ds.timestamps[keep],
        ratings=None if ds.ratings is None else ds.ratings[keep])


def check_split(split: Split, where: str) -> None:
    """Refuse a split nothing can be trained or evaluated on, naming the data ``where``.

    Needs >= 2 users and >= 2 items, >= 1 train interaction and >= 1 user with a
    validation and a test target (a user with >= 3 interactions, or a predefined test
    pair plus >= 2 interactions): model selection uses validation, the report test.
    """
    ds = split.dataset
    size = f"{ds.n_users} user(s), {ds.n_items} item(s), {ds.n_interactions} interaction(s)"
    if ds.n_users < 2 or ds.n_items < 2:
        raise DataError(where, f"{size}: a recommender needs at least 2 users and 2 items")
    if len(split.train_items) == 0:
        raise DataError(where, f"{size}: no train interactions after the split")
    for part in ("val", "test"):
        if len(split.eval_users(part)) == 0:
            raise DataError(where, f"{size}: no user has a {part} item (leave-one-out needs "
                            "users with at least 3 interactions)")


def tail_items(item_pop: np.ndarray, fraction: float = 0.2, by: str = "interactions") -> np.ndarray:
    """Boolean tail mask from train popularity (DESIGN §2 "Tail").

    ``by='interactions'``: sort items by popularity ascending (ties by item index) and
    take the longest prefix whose cumulative share of interactions is <= ``fraction``.
    ``by='items'``: the ``floor(fraction * n_items)`` least-popular items.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"tail fraction must be in [0, 1], got {fraction}")
    n = len(item_pop)
    order = np.argsort(item_pop, kind="stable")
    mask = np.zeros(n, dtype=bool)
    if by == "items":
        mask[order[: int(np.floor(fraction * n))]] = True
    elif by == "interactions":
        total = item_pop.sum()
        if total == 0:
            return mask
        share = np.cumsum(item_pop[order]) / total
        mask[order[share <= fraction + 1e-12]] = True
    else:
        raise ValueError(f"tail.by must be 'interactions' or 'items', got {by!r}")
    return mask


def leave_one_out(ds: Dataset, tail_fraction: float = 0.2, tail_by: str = "interactions") -> Split:
    """Leave-one-out split by time (or by the dataset's predefined test pairs)."""
    order = time_order(ds)
    users, items = ds.users[order], ds.items[order]
    n_users = ds.n_users
    counts = np.bincount(users, minlength=n_users)
    ends = np.cumsum(counts)  # one past the last interaction of each user
    val_items = np.full(n_users, -1, dtype=np.int64)
    test_items = np.full(n_users, -1, dtype=np.int64)
    keep = np.ones(len(users), dtype=bool)
    negatives = None

    if ds.predefined is None:
        eligible = np.flatnonzero(counts >= 3)
        test_pos, val_pos = ends[eligible] - 1, ends[eligible] - 2
        test_items[eligible] = items[test_pos]
        val_items[eligible] = items[val_pos]
        keep[test_pos] = False
        keep[val_pos] = False
    else:
        pre = ds.predefined
        test_items[pre.test_users] = pre.test_items
        # The predefined test pairs are not in ds.users/items; validation is the last
        # remaining interaction of users with >= 2 of them.
        eligible = np.intersect1d(pre.test_users, np.flatnonzero(counts >= 2))
        val_pos = ends[eligible] - 1
        val_items[eligible] = items[val_pos]
        keep[val_pos] = False
        if pre.test_negatives is not None:
            negatives = np.full((n_users, pre.test_negatives.shape[1]), -1, dtype=np.int64)
            negatives[pre.test_users] = pre.test_negatives

    return build_split(ds, users[keep], items[keep], val_items, test_items, tail_fraction, tail_by,
                       negatives)


def build_split(ds: Dataset, train_users: np.ndarray, train_items: np.ndarray,
                val_items: np.ndarray, test_items: np.ndarray, tail_fraction: float,
                tail_by: str, test_negatives: np.ndarray | None = None) -> Split:
    """The :class:`Split` of given parts, with everything derived from train only.

    ``train_users``/``train_items`` are the train interactions sorted by user (time
    order within a user), ``val_items``/``test_items`` the ``[n_users]`` targets
    (-1 = none). Derived: the CSR row pointer over the train items, the binary train
    matrix (duplicates collapsed), the train popularity pop(i) = |{train (u, i)}| and
    the tail set :func:`tail_items` (``tail_fraction``, ``tail_by``) from it.
    """
    n_users, n_items = ds.n_users, ds.n_items
    tu, ti = train_users, train_items
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(tu, minlength=n_users), out=indptr[1:])
    mat = sp.csr_matrix(
        (np.ones(len(tu), dtype=np.float32), (tu, ti)), shape=(n_users, n_items)
    )
    mat.sum_duplicates()
    mat.data[:] = 1.0
    item_pop = np.bincount(ti, minlength=n_items).astype(np.int64)
    return Split(
        dataset=ds,
        train_users=tu,
        train_items=ti,
        train_indptr=indptr,
        train_matrix=mat,
        val_items=val_items,
        test_items=test_items,
        item_pop=item_pop,
        tail_mask=tail_items(item_pop, tail_fraction, tail_by),
        tail_by=tail_by,
        tail_fraction=tail_fraction,
        test_negatives=test_negatives,
    )

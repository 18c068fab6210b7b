"""User sequences for sequential (next-item) training and inference (SASRec style).

A user's train history in time order is a CSR row (``split.train_indptr`` /
``split.train_items``). Sequence models read the most recent ``L`` items of it,
right-aligned in a ``[B, L]`` array (padding on the left), so the last slot is always
the user's most recent item and one position embedding per slot counts back from it
(Kang & McAuley 2018 pad the same way).

Training on every position (one forward pass per user gives a next-item prediction
at each position): input ``x = s[-L-1:-1]``, target ``y = s[-L:]`` of the user's
sequence ``s``, i.e. ``y[t]`` is the item that follows ``x[..t]``.

Everything here is vectorised over the batch (no per-user Python loop).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from marl_two_tower.data.split import Split
from marl_two_tower.utils.csr import expand_ranges
from marl_two_tower.utils.runtime import epoch_rng


def last_windows(
    indptr: np.ndarray, items: np.ndarray, rows: np.ndarray, length: int, drop_last: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The last ``length`` entries of CSR rows ``rows``, right-aligned.

    Row r covers ``items[indptr[r]:indptr[r+1] - drop_last]`` (``drop_last`` trailing
    entries left out). Returns ``(window int64 [B, length], valid bool [B, length])``;
    padding slots hold 0 and ``valid`` False.
    """
    rows = np.asarray(rows, dtype=np.int64)
    end = indptr[rows + 1] - drop_last
    take = np.clip(end - indptr[rows], 0, length)
    out = np.zeros((len(rows), length), dtype=np.int64)
    valid = np.zeros((len(rows), length), dtype=bool)
    r = np.repeat(np.arange(len(rows)), take)
    within = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    src = np.repeat(end - take, take) + within
    cols = within + np.repeat(length - take, take)
    out[r, cols] = items[src]
    valid[r, cols] = True
    return out, valid


def next_item_windows(
    indptr: np.ndarray, items: np.ndarray, rows: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, targets and mask for next-item training on every position.

    For row sequence ``s`` (``n`` items): ``inputs = s[-length-1:-1]``,
    ``targets = s[-length:]`` (both right-aligned, ``[B, length]``) and ``valid``
    marks slots with both an input and a target (``min(n - 1, length)`` per row).
    A row with fewer than 2 items has no valid slot.
    """
    inputs, valid = last_windows(indptr, items, rows, length, drop_last=1)
    targets, t_valid = last_windows(indptr, items, rows, length)
    return inputs, np.where(valid, targets, 0), valid & t_valid


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, chunk: int = 32
) -> Iterator[np.ndarray]:
    """Shuffled batches of row ids with similar lengths (less padding per batch).

    Rows are shuffled, cut into chunks of ``chunk * batch_size``, sorted by length
    inside each chunk (stable) and cut into batches; the batch order is shuffled
    again. Every row appears exactly once per epoch; the randomness comes from
    ``(seed, epoch)`` only, so a run is reproducible and resumable.
    """
    rng = epoch_rng(seed, epoch, 7)
    perm = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    span = max(1, chunk) * batch_size
    for s in range(0, len(perm), span):
        part = perm[s : s + span]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    for k in rng.permutation(len(batches)):
        yield batches[k]


def trim_left(valid: np.ndarray) -> int:
    """Number of leading all-padding columns of a right-aligned batch (to cut off)."""
    used = valid.any(axis=0)
    return int(np.argmax(used)) if used.any() else valid.shape[1] - 1


def append_items(
    indptr: np.ndarray, items: np.ndarray, extra: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows with ``extra[r]`` appended to row r where ``extra[r] >= 0``.

    Used to score test with the validation item at the end of the input sequence
    (it precedes the test item in time). Returns the new ``(indptr, items)``.
    """
    add = (np.asarray(extra) >= 0).astype(np.int64)
    counts = np.diff(indptr) + add
    new_ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    out = np.empty(int(new_ptr[-1]), dtype=np.int64)
    rows = np.repeat(np.arange(len(counts)), np.diff(indptr))
    out[np.arange(len(items)) - indptr[rows] + new_ptr[rows]] = items
    has = np.flatnonzero(add)
    out[new_ptr[has + 1] - 1] = np.asarray(extra)[has]
    return new_ptr, out


class SequenceSampler:
    """Training positives as whole user windows: one batch = the last ``window`` train
    interactions of each of a set of users, about ``batch_size`` rows in all.

    With ``all_positions`` every train interaction is a positive: a user's sequence is
    cut into consecutive blocks of ``window`` counted back from its end (the first block
    the remainder), and a block is the unit a batch holds whole, as a window is.

    Units (windows or blocks) are shuffled per epoch, sorted by length within chunks of
    ~32 batches (less padding per batch) and cut where the running row count crosses a
    multiple of ``total_rows / len(self)``; the batch order is shuffled again. Each unit
    is encoded once per epoch, and the row count per batch (which sets the cost of the
    softmax) stays near ``batch_size``. ``prob[j]`` = share of the epoch's positives
    that are item j (the trainer's logQ correction of in-batch negatives).
    """

    def __init__(self, split: Split, batch_size: int, window: int, seed: int,
                 all_positions: bool = False) -> None:
        self.split, self.seed = split, seed
        ptr = split.train_indptr
        n = np.diff(ptr)
        if all_positions:  # block k of user u ends k * window items before its end
            blocks = -(-n // max(window, 1))
            self.unit_user, k = expand_ranges(np.zeros_like(blocks), blocks)
            self.unit_end = ptr[1:][self.unit_user] - k * window
            self.take = np.minimum(self.unit_end - ptr[:-1][self.unit_user], window)
        else:
            self.unit_user = np.flatnonzero(n > 0)
            self.unit_end = ptr[1:][self.unit_user]
            self.take = np.minimum(n[self.unit_user], window)
        self.total = int(self.take.sum())
        self.n_batches = max(1, math.ceil(self.total / max(batch_size, 1)))
        rows = self._rows(np.arange(len(self.take)))
        self.prob = np.bincount(split.train_items[rows], minlength=split.n_items) / max(self.total, 1)

    def __len__(self) -> int:
        return self.n_batches

    def _rows(self, units: np.ndarray) -> np.ndarray:
        """Interaction indices of ``units``, each unit's rows in time order."""
        end = self.unit_end[units]
        return expand_ranges(end - self.take[units], end)[1]

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """Interaction indices (into ``split.train_items``), one array per batch."""
        take = self.take
        rng = epoch_rng(self.seed, epoch, 7)
        order = rng.permutation(len(take))
        span = max(1, len(order) * 32 // self.n_batches)
        for s in range(0, len(order), span):  # sort by length within chunks
            part = order[s : s + span]
            order[s : s + span] = part[np.argsort(-take[part], kind="stable")]
        before = np.cumsum(take[order]) - take[order]
        group = np.minimum(before * self.n_batches // max(self.total, 1), self.n_batches - 1)
        cuts = np.flatnonzero(np.diff(group)) + 1
        parts = np.split(order, cuts)
        for k in rng.permutation(len(parts)):
            yield self._rows(parts[k])

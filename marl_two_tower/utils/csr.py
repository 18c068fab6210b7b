"""Range expansion over CSR row pointers, without a Python loop.

A batch of CSR rows (a user's train items, an item's genres, a user's exclusion
set) is the set of index ranges ``[starts[r], ends[r])``; most vectorised code here
needs them as flat (row, position) pairs.
"""

from __future__ import annotations

import numpy as np


def expand_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the index ranges ``[starts[r], ends[r])``.

    Returns ``(rows, positions)``, arrays of length ``sum(ends - starts)`` (rows int64,
    positions of the dtype of ``starts``):
    element j belongs to range ``rows[j]`` and is the index ``positions[j]``, ranges
    in order and each in increasing order. With ``L = ends - starts`` and
    ``O = cumsum(L) - L`` (each range's offset in the output),
    ``positions[j] = starts[rows[j]] + j - O[rows[j]]``.

    Example: ``expand_ranges([3, 0], [5, 1])`` -> ``([0, 0, 1], [3, 4, 0])``.
    """
    starts, ends = np.asarray(starts), np.asarray(ends)
    lengths = ends - starts
    rows = np.repeat(np.arange(len(starts)), lengths)
    # position = start of its range + offset within the range
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, np.repeat(starts, lengths) + offsets

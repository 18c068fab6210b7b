"""Per-run evaluation arrays stored next to ``results.json`` (``per_user.npz``).

Reports, significance tests and the notebook need more than the summary metrics:
paired tests need per-user values, bootstraps and Lorenz curves need the top-K
lists. They are saved once, at evaluation time, so a report never retrains or
re-scores a model. The file holds the *test* split, full-ranking protocol:

=============  =====================  ==============================================
key            shape / dtype          meaning
=============  =====================  ==============================================
users          [n] int64              evaluated users (row order of everything below)
targets        [n] int64              held-out test item of each user
recs           [n, k_max] int32       top-k_max list, best first, -1 = empty slot
ranks          [n] int64              r_u: 1 + items scoring strictly above the target
ties           [n] int64              b_u: other items scoring exactly as the target
                                      (the rank is uniform on r_u..r_u + b_u; v2+)
item_pop       [n_items] int64        train popularity (for AvgPop)
tail_mask      [n_items] bool         tail items of the split (for TailHR, Redundancy)
ks             [m] int64              the configured cut-offs
format_version scalar                 ``EVAL_ARRAYS_VERSION``
=============  =====================  ==============================================

Everything else is derived: per-user hit/NDCG/tail-hit via :func:`metrics.per_user`,
per-item exposure of the top-K lists via :func:`metrics.exposure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from marl_two_tower.data.split import Split
from marl_two_tower.fairness.exposure import ExposureBudget
from marl_two_tower.metrics import ranking as M
from marl_two_tower.utils.io import atomic_write

EVAL_ARRAYS_FILE = "per_user.npz"
EVAL_ARRAYS_VERSION = 2  # 2: adds ``ties`` (a version-1 file reads as list-based hits)


@dataclass
class EvalArrays:
    """Test rankings of one run (see the module docstring for the fields)."""

    users: np.ndarray
    targets: np.ndarray
    recs: np.ndarray
    ranks: np.ndarray
    item_pop: np.ndarray
    tail_mask: np.ndarray
    ks: tuple[int, ...]
    ties: np.ndarray | None = None  # None: hits from the lists (version-1 files)
    _cache: dict[tuple[int, ...], dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def n_items(self) -> int:
        return int(len(self.item_pop))

    def per_user(self, ks: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """:func:`metrics.per_user` arrays (hit@K, ndcg@K, tailhit@K, is_tail, rr)."""
        key = tuple(sorted(ks or self.ks))
        if key not in self._cache:
            self._cache[key] = M.per_user(self.recs.astype(np.int64), self.targets, self.tail_mask,
                                          key, ranks=self.ranks, ties=self.ties)
        return self._cache[key]

    def exposure(self, k: int = 10) -> np.ndarray:
        """Per-item exposure counts of the top-K lists over the whole catalogue."""
        return M.exposure(self.recs.astype(np.int64), k, self.n_items)


def compute_eval_arrays(split: Split, score_fn, ks: Sequence[int] = (5, 10, 20),
                        batch_size: int = 1024, budget: ExposureBudget | None = None) -> EvalArrays:
    """Rank the test targets with ``score_fn`` (full protocol, under the exposure
    ``budget`` when given) and keep the lists."""
    from marl_two_tower.eval.protocols import rank_full  # sharded over the ranks under DDP

    res = rank_full(split, score_fn, "test", k_max=max(ks), batch_size=batch_size, budget=budget)
    return EvalArrays(users=res.users, targets=res.targets, recs=res.recs.astype(np.int32),
                      ranks=res.ranks, ties=res.ties, item_pop=np.asarray(split.item_pop, dtype=np.int64),
                      tail_mask=np.asarray(split.tail_mask, dtype=bool), ks=tuple(sorted(ks)))


def save_eval_arrays(run_dir: str | Path, arrays: EvalArrays) -> Path:
    """Write ``run_dir/per_user.npz`` atomically (temp file + fsync + rename)."""
    path = Path(run_dir) / EVAL_ARRAYS_FILE
    ties = np.zeros_like(arrays.ranks) if arrays.ties is None else arrays.ties
    with atomic_write(path, "wb") as fh:
        np.savez_compressed(fh, users=arrays.users, targets=arrays.targets, recs=arrays.recs,
                            ranks=arrays.ranks, ties=ties, item_pop=arrays.item_pop,
                            tail_mask=arrays.tail_mask, ks=np.asarray(arrays.ks, dtype=np.int64),
                            format_version=np.int64(EVAL_ARRAYS_VERSION))
    return path


def load_eval_arrays(run_dir: str | Path) -> EvalArrays | None:
    """Read ``run_dir/per_user.npz``; None when the run has none."""
    path = Path(run_dir) / EVAL_ARRAYS_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format_version"])
        if version > EVAL_ARRAYS_VERSION:
            raise ValueError(f"{path}: format version {version} is newer than this package "
                             f"understands ({EVAL_ARRAYS_VERSION})")
        return EvalArrays(users=z["users"], targets=z["targets"], recs=z["recs"], ranks=z["ranks"],
                          item_pop=z["item_pop"], tail_mask=z["tail_mask"].astype(bool),
                          ks=tuple(int(k) for k in z["ks"]),
                          ties=z["ties"] if "ties" in z.files else None)

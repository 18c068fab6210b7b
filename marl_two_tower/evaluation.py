"""Evaluation harness: full and sampled ranking protocols (DESIGN §5).

A model is evaluated through a :data:`ScoreFn`, a function from a batch of user
indices to a ``[B, n_items]`` score tensor (higher = better), so the harness knows
nothing about the model. Two protocols:

* **full** (headline): the target is ranked against the whole catalogue with the
  user's train items (and, for test, the validation item) masked;
* **sampled** (NCF-era tables only): the target is ranked against 99 negatives,
  drawn uniformly from items the user never interacted with (fixed seed) or taken
  from the data's own negative file (``split.test_negatives``).

:func:`metrics_from_files` scores recommendation lists produced by any other
system from three tables, with the same metric definitions
(:mod:`marl_two_tower.metrics`); :func:`add_metrics_subparser` exposes it as the
``marl-two-tower metrics`` subcommand.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import metrics as M
from .data.errors import DataError
from .data.split import Split, tail_items
from .exposure import ExposureBudget, rerank_with_budget

__all__ = [
    "RankResult",
    "add_metrics_subparser",
    "ScoreFn",
    "evaluate",
    "evaluate_per_user",
    "main_metrics",
    "metrics_from_files",
    "rank_full",
    "rank_sampled",
    "read_table",
    "sample_negatives",
    "summarize",
]

ScoreFn = Callable[[np.ndarray], torch.Tensor]
"""Scores of a batch of users: int64 user indices ``[B]`` -> tensor ``[B, n_items]``."""

Protocol = Literal["full", "sampled", "both"]


@dataclass
class RankResult:
    """Ranking outcome of one protocol, one row per evaluated user.

    Attributes:
        users: int64 ``[n]`` evaluated user indices.
        targets: int64 ``[n]`` held-out target item of each user.
        recs: int64 ``[n, k_max]`` top-``k_max`` items, best first, -1 = empty slot
            (fewer than ``k_max`` rankable items).
        ranks: int64 ``[n]`` 1-based rank of the target among the ranked items
            (whole unmasked catalogue for ``full``, the candidates for ``sampled``).
    """

    users: np.ndarray
    targets: np.ndarray
    recs: np.ndarray
    ranks: np.ndarray


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------


def _gather_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the index ranges ``[starts[r], ends[r])`` without a Python loop.

    Returns (row id of each element, the positions themselves): the CSR rows of a
    batch of users become flat (row, column-position) pairs.
    """
    lengths = ends - starts
    rows = np.repeat(np.arange(len(starts)), lengths)
    # position = start of its row + offset within the row
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, np.repeat(starts, lengths) + offsets


def _scores(score_fn: ScoreFn, users: np.ndarray, n_items: int) -> torch.Tensor:
    """Call the model and return a private copy (we write -inf into it).

    Half-precision scores are upcast to float32 (topk and comparisons on CPU);
    float64 stays float64 so that no ties are created by rounding.
    """
    with torch.no_grad():
        out = torch.as_tensor(score_fn(users)).detach()
    dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
    scores = out.to(dtype, copy=True)
    if scores.shape != (len(users), n_items):
        raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected ({len(users)}, {n_items})")
    if torch.isnan(scores).any():
        raise ValueError("score_fn returned NaN scores; ranks would be meaningless")
    return scores


def _eval_users(split: Split, part: str, users: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if part not in ("val", "test"):
        raise ValueError(f"part must be 'val' or 'test', got {part!r}")
    targets_all = split.targets(part)
    # contiguous int64: score functions may hand the array straight to torch.from_numpy
    users = np.ascontiguousarray(split.eval_users(part) if users is None else users, np.int64)
    targets = targets_all[users]
    if (targets < 0).any():
        bad = users[targets < 0][:5].tolist()
        raise ValueError(f"users without a {part} target cannot be evaluated: {bad}")
    return users, targets


def rank_full(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    k_max: int = 20,
    batch_size: int = 1024,
    users: np.ndarray | None = None,
    budget: ExposureBudget | None = None,
) -> RankResult:
    """Full-catalogue ranking of each user's target (the headline protocol).

    For user u with scores s_u in R^n, the masked set E_u is u's train items (plus
    the validation item when ``part='test'``), minus the target t_u itself (a
    re-consumed item stays rankable). Masked scores are set to -inf; then
    recs_u = top-``k_max`` items by score (``torch.topk``; slots whose score is
    -inf are left empty, -1) and

        rank_u = 1 + |{ i not in E_u : s_u(i) > s_u(t_u) }|.

    Exact score ties are resolved in the target's favour for ``rank_u`` and by
    ``torch.topk`` for the lists; they only matter for scorers with tied scores.
    Users are processed ``batch_size`` at a time with whole-batch tensor ops.

    With an exposure ``budget`` (the GINI agent's inference-time arm,
    :mod:`marl_two_tower.exposure`) the lists of all evaluated users are allocated
    jointly from each user's ``budget.n_candidates`` best unmasked items, ranked
    across users by log p(i | u) = s_u(i) - logsumexp over u's unmasked items. The
    target's rank is then its slot in the allocated list, or max(rank_u, k_max + 1)
    when the allocation left it out (MRR beyond the list is the unconstrained one).
    """
    users, targets = _eval_users(split, part, users)
    n, n_items = len(users), split.n_items
    excl = split.exclusion_matrix(part)
    k = min(k_max, n_items)
    recs = np.full((n, k_max), -1, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int64)
    if budget is not None:
        m = min(max(budget.n_candidates, k_max), n_items)
        cand = np.full((n, m), -1, dtype=np.int64)
        logp = np.full((n, m), -np.inf)
    for start in range(0, n, batch_size):
        ub, tb = users[start : start + batch_size], targets[start : start + batch_size]
        scores = _scores(score_fn, ub, n_items)
        dev = scores.device
        rows, pos = _gather_ranges(excl.indptr[ub], excl.indptr[ub + 1])
        ar = torch.arange(len(ub), device=dev)
        t = torch.from_numpy(tb).to(dev)
        target_scores = scores[ar, t].clone()
        scores[torch.from_numpy(rows).to(dev), torch.from_numpy(excl.indices[pos]).to(dev)] = -math.inf
        scores[ar, t] = target_scores  # the target is never masked
        ranks[start : start + len(ub)] = (1 + (scores > target_scores[:, None]).sum(dim=1)).cpu().numpy()
        if budget is not None:
            vals, idx = torch.topk(scores, m, dim=1)
            idx[torch.isneginf(vals)] = -1
            cand[start : start + len(ub)] = idx.cpu().numpy()
            lse = torch.logsumexp(scores, 1, keepdim=True)  # over u's unmasked items
            logp[start : start + len(ub)] = (vals - lse).double().cpu().numpy()
            continue
        vals, idx = torch.topk(scores, k, dim=1)
        idx[torch.isneginf(vals)] = -1
        recs[start : start + len(ub), :k] = idx.cpu().numpy()
    if budget is not None:
        recs = rerank_with_budget(cand, logp, k_max, budget, n_items)
        slot = np.argmax(recs == targets[:, None], axis=1)
        hit = recs[np.arange(n), slot] == targets
        ranks = np.where(hit, slot + 1, np.maximum(ranks, k_max + 1))
    return RankResult(users=users, targets=targets, recs=recs, ranks=ranks)


def _interaction_keys(split: Split) -> np.ndarray:
    """Sorted unique keys u * n_items + i of every (user, item) pair in train/val/test."""
    n_items = split.n_items
    parts = [split.train_users * n_items + split.train_items]
    for target in (split.val_items, split.test_items):
        u = np.flatnonzero(target >= 0)
        parts.append(u * n_items + target[u])
    return np.unique(np.concatenate(parts))


def sample_negatives(split: Split, users: np.ndarray, n_neg: int = 99, seed: int = 12345) -> np.ndarray:
    """Uniform negatives without replacement, ``[len(users), n_neg]``.

    For each user u, a uniformly random ``n_neg``-subset of N_u = I \\ (train_u
    union val_u union test_u), the items u never interacted with. Drawn by
    vectorised rejection (items drawn i.i.d. uniformly over I; seen items and
    repeats are dropped and the first ``n_neg`` survivors kept, which is uniform
    sampling without replacement from N_u); users whose N_u is too small for
    rejection to be efficient get a dense random-key draw instead. Deterministic
    for a given ``seed`` and ``users`` array. Raises ValueError when some
    |N_u| < ``n_neg``.
    """
    users = np.asarray(users, dtype=np.int64)
    n, n_items = len(users), split.n_items
    keys = _interaction_keys(split)
    key_start = np.searchsorted(keys, users * n_items)
    key_end = np.searchsorted(keys, (users + 1) * n_items)
    avail = n_items - (key_end - key_start)
    if (avail < n_neg).any():
        u = int(users[np.argmin(avail)])
        raise ValueError(
            f"user {u} has only {int(avail.min())} non-interacted items, {n_neg} negatives needed"
        )
    rng = np.random.default_rng(seed)
    out = np.full((n, n_neg), -1, dtype=np.int64)
    todo = np.arange(n)
    for _ in range(4):
        if not todo.size or n_neg == 0:
            break
        # Enough draws that a row of median density expects ~1.3 n_neg survivors.
        # Rows that fall short are redrawn from scratch: success does not depend on
        # which unseen items were drawn, so the kept subsets stay uniform.
        frac = float(np.median(avail[todo])) / n_items
        m = int(math.ceil(1.3 * n_neg / frac)) + 8
        if m >= n_items:
            break  # the dense draw below is cheaper than this many rejections
        cand = rng.integers(0, n_items, size=(len(todo), m))
        ck = users[todo, None] * n_items + cand
        hit = np.searchsorted(keys, ck)
        seen = keys[np.minimum(hit, len(keys) - 1)] == ck if len(keys) else np.zeros_like(ck, bool)
        # Repeats within a row: after a stable sort, later copies of a value follow
        # its first draw, so the first draw is the one kept.
        order = np.argsort(cand, axis=1, kind="stable")
        srt = np.take_along_axis(cand, order, axis=1)
        dup_sorted = np.zeros_like(srt, dtype=bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = np.empty_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        keep = ~seen & ~dup
        csum = np.cumsum(keep, axis=1)
        ok = csum[:, -1] >= n_neg
        take = keep[ok] & (csum[ok] <= n_neg)
        out[todo[ok]] = cand[ok][take].reshape(-1, n_neg)
        todo = todo[~ok]
    if todo.size and n_neg:
        out[todo] = _dense_negatives(users[todo], keys, key_start[todo], key_end[todo], n_items, n_neg, rng)
    return out


def _dense_negatives(
    users: np.ndarray,
    keys: np.ndarray,
    key_start: np.ndarray,
    key_end: np.ndarray,
    n_items: int,
    n_neg: int,
    rng: np.random.Generator,
    chunk: int = 256,
) -> np.ndarray:
    """Exact uniform subsets for dense users: the n_neg smallest i.i.d. random keys
    among the unseen items (seen items get key 2 > any uniform key)."""
    out = np.empty((len(users), n_neg), dtype=np.int64)
    for s in range(0, len(users), chunk):
        sl = slice(s, s + chunk)
        r = rng.random((len(users[sl]), n_items))
        rows, pos = _gather_ranges(key_start[sl], key_end[sl])
        r[rows, keys[pos] % n_items] = 2.0
        out[sl] = np.argpartition(r, n_neg - 1, axis=1)[:, :n_neg]
    return out


def rank_sampled(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    n_neg: int = 99,
    seed: int = 12345,
    k_max: int = 20,
    batch_size: int = 1024,
) -> RankResult:
    """Sampled ranking: each target against ``n_neg`` negatives (NCF protocol).

    Candidates C_u = {t_u} union Neg_u, where Neg_u is ``split.test_negatives[u]``
    when the data ship negatives and ``part='test'`` (then ``n_neg`` is their
    number), else :func:`sample_negatives` (uniform over never-interacted items,
    ``seed``). Nothing is masked: negatives are by construction not interacted.

        rank_u = 1 + |{ j in Neg_u : s_u(j) > s_u(t_u) }|   (in 1..|C_u|)

    Ties are resolved in the target's favour, as in :func:`rank_full`; ``recs``
    (top-``k_max`` candidates) use the same rule (stable sort with the target
    first), so HR@K from the lists equals 1[rank_u <= K].
    """
    users, targets = _eval_users(split, part, None)
    if part == "test" and split.test_negatives is not None:
        negs = split.test_negatives[users]
        if (negs < 0).any():
            raise ValueError("split.test_negatives has no negatives for some test users")
    else:
        negs = sample_negatives(split, users, n_neg, seed)
    cands = np.concatenate([targets[:, None], negs], axis=1)
    n, c = cands.shape
    k = min(k_max, c)
    recs = np.full((n, k_max), -1, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        scores = _scores(score_fn, users[sl], split.n_items)
        cb = torch.from_numpy(cands[sl]).to(scores.device)
        cs = torch.gather(scores, 1, cb)
        ranks[sl] = (1 + (cs[:, 1:] > cs[:, :1]).sum(dim=1)).cpu().numpy()
        order = torch.sort(cs, dim=1, descending=True, stable=True).indices[:, :k]
        recs[sl, :k] = torch.gather(cb, 1, order).cpu().numpy()
    return RankResult(users=users, targets=targets, recs=recs, ranks=ranks)


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------


def _user_groups(split: Split, users: np.ndarray) -> dict[str, tuple[np.ndarray, list[str]]]:
    ds = split.dataset
    return {
        name: (np.asarray(codes)[users], list(ds.user_feature_labels.get(name, [])))
        for name, codes in ds.user_features.items()
    }


def summarize(
    result: RankResult,
    split: Split,
    ks: Sequence[int] = (5, 10, 20),
    protocol: Literal["full", "sampled"] = "full",
    groups: bool = True,
) -> dict[str, Any]:
    """Metrics of one ranking (JSON-serialisable; see :func:`metrics.compute_metrics`).

    ``full``: every list metric @K, MRR over the full ranking, and (``groups``) HR@K
    per demographic group of ``split.dataset.user_features``. ``sampled``: only
    HR@K = mean 1[rank_u <= K], NDCG@K = mean 1[rank_u <= K] / log2(rank_u + 1) and
    MRR over the candidates; list-level metrics over 100 candidates would be
    meaningless.
    """
    if protocol == "sampled":
        r = result.ranks
        out: dict[str, Any] = {}
        for k in sorted(ks):
            pos = np.where(r <= k, r, 0)
            out[f"HR@{k}"] = float(np.mean(pos > 0)) if len(r) else None
            out[f"NDCG@{k}"] = float(np.mean(M._ndcg_per_user(pos))) if len(r) else None
        out["MRR"] = float(np.mean(1.0 / r)) if len(r) else None
        return out
    return M.compute_metrics(
        result.recs,
        result.targets,
        ks=ks,
        n_items=split.n_items,
        item_pop=split.item_pop,
        tail_mask=split.tail_mask,
        ranks=result.ranks,
        groups=_user_groups(split, result.users) if groups else None,
    )


def _tail_info(split: Split) -> dict[str, Any]:
    return {
        "by": split.tail_by,
        "fraction": split.tail_fraction,
        "n_tail_items": int(split.tail_mask.sum()),
    }


def evaluate(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    protocol: Protocol = "full",
    batch_size: int = 1024,
    groups: bool = True,
    n_neg: int = 99,
    seed: int = 12345,
    budget: ExposureBudget | None = None,
) -> dict[str, Any]:
    """Evaluate a scorer on ``part`` ('val' or 'test'); JSON-serialisable result.

    Returns ``{"part", "n_users", "n_items", "tail": {"by", "fraction",
    "n_tail_items"}, "full": {...}, "sampled": {...}, "sampled_protocol":
    {"n_negatives", "negatives"}}`` with the protocols asked for (``both`` = full
    and sampled). Metric definitions: :mod:`marl_two_tower.metrics`; undefined
    values (e.g. TailHR with no tail targets) are None. ``budget`` allocates the
    full-protocol lists under an exposure cap (:func:`rank_full`); the sampled
    protocol ranks 100 candidates per user and is never capped.
    """
    if protocol not in ("full", "sampled", "both"):
        raise ValueError(f"protocol must be full, sampled or both, got {protocol!r}")
    k_max = max(ks)
    out: dict[str, Any] = {
        "part": part,
        "n_users": int(len(split.eval_users(part))),
        "n_items": split.n_items,
        "tail": _tail_info(split),
    }
    if protocol in ("full", "both"):
        res = rank_full(split, score_fn, part, k_max=k_max, batch_size=batch_size, budget=budget)
        out["full"] = summarize(res, split, ks, "full", groups)
    if protocol in ("sampled", "both"):
        res = rank_sampled(split, score_fn, part, n_neg, seed, k_max, batch_size)
        given = part == "test" and split.test_negatives is not None
        out["sampled"] = summarize(res, split, ks, "sampled")
        out["sampled_protocol"] = {
            "n_negatives": int(split.test_negatives.shape[1] if given else n_neg),
            "negatives": "given" if given else f"uniform(seed={seed})",
        }
    return out


def evaluate_per_user(
    split: Split,
    score_fn: ScoreFn,
    part: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    protocol: Literal["full", "sampled"] = "full",
    batch_size: int = 1024,
    n_neg: int = 99,
    seed: int = 12345,
    budget: ExposureBudget | None = None,
) -> tuple[RankResult, dict[str, np.ndarray]]:
    """Per-user values for paired significance tests and user bootstraps.

    Returns the :class:`RankResult` (its ``users`` align the rows; its ``recs``
    allow bootstrapping list-level metrics such as Coverage and Gini) and
    :func:`metrics.per_user` arrays ``hit@K``, ``ndcg@K``, ``tailhit@K`` (NaN for
    head targets), ``is_tail`` and ``rr`` = 1/rank_u. Same seed and split give the
    same users in the same order, so two models' arrays pair up.
    """
    if protocol == "full":
        res = rank_full(split, score_fn, part, k_max=max(ks), batch_size=batch_size, budget=budget)
    elif protocol == "sampled":
        res = rank_sampled(split, score_fn, part, n_neg, seed, max(ks), batch_size)
    else:
        raise ValueError(f"protocol must be full or sampled, got {protocol!r}")
    return res, M.per_user(res.recs, res.targets, split.tail_mask, ks, ranks=res.ranks)


# ---------------------------------------------------------------------------
# Scoring lists produced elsewhere
# ---------------------------------------------------------------------------

_DELIMITERS = {".tsv": "\t", ".tab": "\t", ".csv": ","}


def read_table(path: str | Path, required: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read a delimited text table with a header row into string columns.

    The delimiter comes from the extension (``.tsv``/``.tab`` tab, ``.csv`` comma)
    or is sniffed from the header (tab, comma, semicolon, pipe). Header names are
    matched case-insensitively; cells are stripped; blank lines are skipped.
    Returns (column name -> object array of str, 1-based file line of each row).
    Raises :class:`DataError` naming the file and line for an empty file, a bad
    encoding (UTF-8 expected), a missing or repeated column, a repeated header
    line, a row with the wrong number of fields or an empty required field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1  # the line holding the first bad byte
        raise DataError(path, f"not valid UTF-8 ({e.reason})", line) from None
    if not text.strip():
        raise DataError(path, "empty file")
    first = next(ln for ln in text.splitlines() if ln.strip())
    delim = _DELIMITERS.get(path.suffix.lower()) or _sniff(first, path)
    rows: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        for cells in reader:
            line_no = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            cells = [c.strip() for c in cells]
            if header is None:
                header = [c.lower() for c in cells]
                _check_header(header, required, path, line_no)
                continue
            if [c.lower() for c in cells] == header:
                raise DataError(path, "duplicate header line", line_no)
            if len(cells) != len(header):
                raise DataError(path, f"expected {len(header)} fields, found {len(cells)}", line_no)
            rows.append(cells)
            lines.append(line_no)
    except csv.Error as e:
        raise DataError(path, f"malformed line ({e})", reader.line_num) from None
    assert header is not None
    if not rows:
        raise DataError(path, "no data rows after the header")
    table = np.array(rows, dtype=object).reshape(len(rows), len(header))
    line_arr = np.asarray(lines, dtype=np.int64)
    cols = {name: table[:, j] for j, name in enumerate(header)}
    for name in required:
        empty = cols[name] == ""
        if empty.any():
            raise DataError(path, f"empty {name!r} field", int(line_arr[np.argmax(empty)]))
    return cols, line_arr


def _sniff(first_line: str, path: Path) -> str:
    counts = {d: first_line.count(d) for d in ("\t", ",", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    if counts[best] == 0:
        raise DataError(path, "cannot tell the delimiter from the header (tab, comma, ; or |)", 1)
    return best


def _check_header(header: list[str], required: Sequence[str], path: Path, line: int) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(path, f"column {name!r} appears twice in the header", line)
        seen.add(name)
    for name in required:
        if name not in seen:
            raise DataError(path, f"missing column {name!r} (header: {', '.join(header)})", line)


def _first_duplicate(keys: np.ndarray) -> int | None:
    """Row index of the first repeat of an earlier key, or None."""
    _, first = np.unique(keys, return_index=True)
    if len(first) == len(keys):
        return None
    mask = np.ones(len(keys), dtype=bool)
    mask[first] = False
    return int(np.flatnonzero(mask)[0])


def metrics_from_files(
    train_path: str | Path,
    test_path: str | Path,
    recs_path: str | Path,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    k: int = 10,
    tail_fraction: float = 0.2,
    tail_by: str = "interactions",
) -> dict[str, Any]:
    """Score recommendation lists produced by any system (same definitions).

    Tables (header required; extra columns such as rating/timestamp are ignored):
    TRAIN ``user,item`` (popularity and tail come from it only), TEST ``user,item``
    (one target per user), RECS ``user,item,rank`` (rank: positive integer, lower
    = better; each user's list is sorted by rank and cut at ``k``), optional ITEMS
    ``item`` (the catalogue; otherwise it is the union of items seen in the three
    tables) and USERS ``user,<categorical columns>`` (group HR@k per column). Ids
    are arbitrary strings, mapped through the union of all ids. Test users without
    recommendations count as misses.

    Returns ``compute_metrics`` keys at ``k`` (MRR is ``MRR@k``: the full ranking
    is unknown) plus ``k``, ``n_users``, ``n_items``, ``n_users_without_recs`` and
    ``tail``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    train, _ = read_table(train_path, ("user", "item"))
    test, test_lines = read_table(test_path, ("user", "item"))
    recs_t, recs_lines = read_table(recs_path, ("user", "item", "rank"))
    items_t = read_table(items_path, ("item",))[0] if items_path else None
    users_t, users_lines = read_table(users_path, ("user",)) if users_path else (None, None)

    dup = _first_duplicate(test["user"])
    if dup is not None:
        raise DataError(
            test_path,
            f"user {test['user'][dup]!r} has more than one test item",
            int(test_lines[dup]),
        )
    try:
        ranks = recs_t["rank"].astype(np.int64)
    except ValueError:
        bad = next(j for j, r in enumerate(recs_t["rank"]) if not r.lstrip("-").isdigit())
        raise DataError(
            recs_path, f"rank must be an integer, got {recs_t['rank'][bad]!r}", int(recs_lines[bad])
        ) from None
    if (ranks < 1).any():
        j = int(np.argmax(ranks < 1))
        raise DataError(recs_path, f"rank must be >= 1, got {ranks[j]}", int(recs_lines[j]))
    for pair, what in ((recs_t["rank"], "rank"), (recs_t["item"], "item")):
        dup = _first_duplicate(recs_t["user"] + "\x00" + pair)
        if dup is not None:
            raise DataError(
                recs_path,
                f"user {recs_t['user'][dup]!r} has {what} {pair[dup]!r} twice",
                int(recs_lines[dup]),
            )
    if users_t is not None:
        dup = _first_duplicate(users_t["user"])
        if dup is not None:
            raise DataError(users_path, f"user {users_t['user'][dup]!r} listed twice", int(users_lines[dup]))

    user_ids = np.unique(
        np.concatenate(
            [train["user"], test["user"], recs_t["user"]] + ([users_t["user"]] if users_t is not None else [])
        )
    )
    item_ids = np.unique(
        np.concatenate(
            [train["item"], test["item"], recs_t["item"]] + ([items_t["item"]] if items_t is not None else [])
        )
    )
    n_items = len(item_ids)

    def uidx(ids: np.ndarray) -> np.ndarray:
        # searchsorted into the sorted unique ids is the id -> index map, vectorised
        return np.searchsorted(user_ids, ids)

    def iidx(ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(item_ids, ids)

    item_pop = np.bincount(iidx(train["item"]), minlength=n_items).astype(np.int64)
    tail_mask = tail_items(item_pop, tail_fraction, tail_by)

    test_users = uidx(test["user"])
    targets = iidx(test["item"])
    row_of_user = np.full(len(user_ids), -1, dtype=np.int64)
    row_of_user[test_users] = np.arange(len(test_users))

    # Lists: keep recs of test users, order by (user row, rank), position within user.
    r_rows = row_of_user[uidx(recs_t["user"])]
    keep = r_rows >= 0
    r_rows, r_items, r_ranks = r_rows[keep], iidx(recs_t["item"][keep]), ranks[keep]
    order = np.lexsort((r_ranks, r_rows))
    r_rows, r_items = r_rows[order], r_items[order]
    first_of_row = np.searchsorted(r_rows, r_rows, side="left")
    pos = np.arange(len(r_rows)) - first_of_row
    inside = pos < k
    recs = np.full((len(test_users), k), -1, dtype=np.int64)
    recs[r_rows[inside], pos[inside]] = r_items[inside]

    groups = None
    if users_t is not None:
        groups = {}
        u_rows = uidx(users_t["user"])
        for name, values in users_t.items():
            if name == "user":
                continue
            labels, codes_known = np.unique(values[values != ""], return_inverse=True)
            codes_all = np.full(len(user_ids), -1, dtype=np.int64)
            codes_all[u_rows[values != ""]] = codes_known
            groups[name] = (codes_all[test_users], [str(x) for x in labels])

    out = M.compute_metrics(
        recs,
        targets,
        ks=[k],
        n_items=n_items,
        item_pop=item_pop,
        tail_mask=tail_mask,
        groups=groups,
    )
    out.update(
        {
            "k": k,
            "n_users": int(len(test_users)),
            "n_items": int(n_items),
            "n_users_without_recs": int(np.count_nonzero(recs[:, 0] < 0)),
            "tail": {
                "by": tail_by,
                "fraction": tail_fraction,
                "n_tail_items": int(tail_mask.sum()),
            },
        }
    )
    return out


# ---------------------------------------------------------------------------
# CLI: `marl-two-tower metrics`
# ---------------------------------------------------------------------------


def add_metrics_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``metrics`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "metrics",
        help="score recommendation lists produced elsewhere (HR, NDCG, coverage, Gini, ...)",
        description=(
            "Score top-K lists against held-out test items. TRAIN and TEST have a header "
            "'user,item[,rating,timestamp]', RECS 'user,item,rank'; .tsv = tab, .csv = comma, "
            "otherwise the delimiter is sniffed. Popularity and the long tail come from TRAIN "
            "only; test users without recommendations count as misses."
        ),
    )
    p.add_argument("--train", required=True, help="train interactions (user,item,...)")
    p.add_argument("--test", required=True, help="held-out test item per user (user,item,...)")
    p.add_argument("--recs", required=True, help="recommendation lists (user,item,rank)")
    p.add_argument("--items", default=None, help="optional item table: the catalogue (item,...)")
    p.add_argument("--users", default=None, help="optional user table (user,<categorical columns>)")
    p.add_argument("-k", type=int, default=10, help="list cut-off K (default 10)")
    p.add_argument("--output", default=None, help="also write the JSON to this file")
    p.set_defaults(func=main_metrics)
    return p


def _write_atomic(path: Path, text: str) -> None:
    # temp file + rename: a crash never leaves a half-written result behind
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main_metrics(args: argparse.Namespace) -> int:
    """Run :func:`metrics_from_files`, print the JSON, write it to ``--output``.

    Returns the exit status: 0 on success, 2 on bad input data (the
    :class:`~marl_two_tower.data.errors.DataError` message ``file:line: reason``
    goes to stderr).
    """
    try:
        result = metrics_from_files(args.train, args.test, args.recs, args.items, args.users, k=args.k)
    except ValueError as e:  # DataError is a ValueError; both are bad input, not bugs
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2) + "\n"
    sys.stdout.write(text)
    if args.output:
        _write_atomic(Path(args.output), text)
    return 0

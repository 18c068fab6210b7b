"""Scoring recommendation lists produced by another system (``marl-two-tower metrics``).

:func:`metrics_from_files` reads three tables (train interactions, the held-out test
item per user, the lists) and scores the lists with the same metric definitions as
the harness (:mod:`marl_two_tower.metrics`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marl_two_tower import metrics as M
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.split import tail_items
from marl_two_tower.utils.io import write_text_atomic

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


def _first_duplicate(*columns: np.ndarray) -> int | None:
    """Row index of the first row whose tuple of ``columns`` repeats an earlier row's.

    Each column is factorized to integer codes (hash-based, exact for any string)
    and the codes are combined positionally, key = sum_j code_j * prod_{l>j} n_l, so
    two different tuples never share a key (no separator characters to collide on).
    """
    key = np.zeros(len(columns[0]), dtype=np.int64)
    for col in columns:
        codes, uniques = pd.factorize(np.asarray(col, dtype=object))
        # re-coded to 0..n_rows-1 each time, so the product never overflows int64
        key = pd.factorize(key * np.int64(len(uniques)) + codes)[0].astype(np.int64)
    dup = pd.Series(key).duplicated(keep="first").to_numpy()
    return int(np.argmax(dup)) if dup.any() else None


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
        dup = _first_duplicate(recs_t["user"], pair)
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
        write_text_atomic(Path(args.output), text)
    return 0

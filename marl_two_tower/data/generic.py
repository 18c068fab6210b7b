"""Generic interaction tables: CSV, TSV or Parquet (DESIGN §2 "Sources").

* Interactions (required): columns ``user``, ``item``; optional ``timestamp``
  (seconds, or ISO-8601 datetimes; empty -> NaN, file order then stands for time)
  and ``rating``. Other columns are ignored.
* Items (optional): ``item``; optional ``genres`` (``"A|B"``), ``year``, ``title``.
* Users (optional): ``user`` plus any categorical columns, each becoming one entry
  of ``user_features`` (codes into the sorted distinct values; empty -> -1).

The format follows the extension: ``.csv`` (comma, UTF-8, RFC 4180 quoting: a
field holding a comma, newline or double quote must be quoted), ``.tsv`` (tab,
UTF-8, no quoting), ``.parquet``. Ids may be integers or text; when one file has
text ids and another integers, both are compared as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.parsing import (
    Col,
    ItemInfo,
    Table,
    UserInfo,
    assemble,
    check_ratings,
    check_unique,
    id_array,
    multi_hot,
    read_typed_table,
    to_seconds,
    unknown_items,
    year_from_text,
)

INTERACTION_COLS = [
    Col("user", "id"),
    Col("item", "id"),
    Col("timestamp", "time", required=False, nullable=True),
    Col("rating", "float", required=False, nullable=True),
]
ITEM_COLS = [
    Col("item", "id"),
    Col("genres", "str", required=False, nullable=True),
    Col("year", "float", required=False, nullable=True),
    Col("title", "str", required=False, nullable=True),
]
USER_COLS = [Col("user", "id")]


def _read(path: str | Path, cols: Sequence[Col], others: Literal["any", "str"] = "any") -> Table:
    """Read a table by extension, with ``cols`` required/validated and others kept."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return read_typed_table(p, cols, sep=",", header=True, encoding="utf-8", quoting=True,
                          others=others)
    if suffix == ".tsv":
        return read_typed_table(p, cols, sep="\t", header=True, encoding="utf-8", others=others)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(p, cols)
    raise DataError(p, f"unsupported file type {suffix!r} (expected .csv, .tsv or .parquet)")


def _read_parquet(path: Path, cols: Sequence[Col]) -> Table:
    """Parquet has typed columns and no lines: errors name the row instead."""
    if not path.is_file():
        raise DataError(path, "required file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise DataError(path, f"not a readable Parquet file: {exc}") from None
    if len(frame) == 0:
        raise DataError(path, "empty table (no rows)")
    frame = frame.reset_index(drop=True)
    for c in cols:
        if c.name not in frame.columns:
            if c.required:
                raise DataError(
                    path, f"missing column {c.name!r} (columns: {', '.join(map(str, frame))})"
                )
            continue
        s = frame[c.name]
        null = s.isna().to_numpy()
        if null.any() and not c.nullable:
            raise DataError(path, f"empty value in column {c.name!r} (row {np.argmax(null) + 1})")
        if c.kind in ("int", "float") and not pd.api.types.is_numeric_dtype(s):
            raise DataError(path, f"column {c.name!r} must be numeric, found {s.dtype}")
        if c.kind == "str":
            frame[c.name] = s.fillna("").astype(str)
    # Parquet has no lines: errors point at the 1-based row instead.
    return Table(path, frame, np.arange(1, len(frame) + 1))


def _item_info(path: str | Path) -> ItemInfo:
    t = _read(path, ITEM_COLS)
    check_unique(t, "item")
    f = t.frame
    if "genres" in f:
        genres, names = multi_hot(t, "genres")
    else:
        genres, names = np.zeros((len(f), 0), dtype=bool), []
    titles = f["title"].astype(str).tolist() if "title" in f else None
    if "year" in f:
        year = f["year"].fillna(0).to_numpy(np.int32)
    elif "title" in f:
        year = year_from_text(f["title"])
    else:
        year = np.zeros(len(f), dtype=np.int32)
    return ItemInfo(id_array(f["item"]), genres, names, year, titles)


def _user_info(path: str | Path) -> UserInfo:
    # Categories are read as text, so "25" stays "25" (not 25.0 next to an empty cell).
    t = _read(path, USER_COLS, others="str")
    check_unique(t, "user")
    info = UserInfo(ids=id_array(t.frame["user"]))
    for name in t.frame.columns:
        if name == "user":
            continue
        s = t.frame[name]
        if pd.api.types.is_float_dtype(s) and (s.dropna() % 1 == 0).all():
            s = s.astype("Int64")  # Parquet float column of whole numbers (NaN = unknown)
        text = s.astype(str).to_numpy(dtype=object)
        text[s.isna().to_numpy()] = None  # factorize codes missing values as -1
        codes, uniques = pd.factorize(text, sort=True)
        info.features[str(name)] = codes.astype(np.int64)
        info.labels[str(name)] = [str(u) for u in uniques]
    return info


def load_table(
    path: str | Path,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    rating_range: tuple[float, float] | None = None,
    unknown: str = "keep",
) -> Dataset:
    """Load a generic interactions table (plus optional item and user tables).

    Args:
        path: interactions (``.csv``/``.tsv``/``.parquet``) with ``user``, ``item``,
            optional ``timestamp`` and ``rating`` columns.
        items_path: optional item table (``item``, ``genres`` "A|B", ``year``,
            ``title``); genre names are the sorted distinct genres.
        users_path: optional user table (``user`` + categorical columns).
        rating_range: ``(lo, hi)``: a rating outside is an error at its line
            (``data.rating_range``); None accepts any finite rating. Infinite
            ratings are always refused; empty ones are allowed.
        unknown: interactions whose item is missing from ``items_path``: ``keep``
            (no side information) or ``drop`` (``data.unknown_items``); either way a
            warning gives their count and first line.

    Returns:
        A :class:`Dataset` named after the file stem, interactions in file order. A
        Parquet file written by ``marl-two-tower generate`` (its own layout, see
        :mod:`marl_two_tower.data.synthetic_parquet`) is read by the vectorised fast
        path and gives the generator's Dataset exactly.

    Raises:
        DataError: missing file or column, duplicate header, empty file, malformed
            line (naming file and line).
    """
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        from marl_two_tower.data.synthetic_parquet import native_header, read_native, side_paths

        # Our own generator's layout: vectorised fast path (identical Dataset to generate())
        if native_header(path) is not None and all(
                given is None or Path(given) == side for given, side in
                zip((items_path, users_path), side_paths(path), strict=True)):
            return read_native(path)
    t = _read(path, INTERACTION_COLS)
    f = t.frame
    n = len(f)
    ts = to_seconds(t, "timestamp") if "timestamp" in f else np.full(n, np.nan)
    if "rating" in f:
        check_ratings(t, "rating", rating_range)
    ratings = f["rating"].to_numpy(np.float32) if "rating" in f else None
    users, items = id_array(f["user"]), id_array(f["item"])
    item_info = _item_info(items_path) if items_path else None
    if item_info is not None:
        keep = unknown_items(t, items, item_info, unknown, Path(items_path))
        users, items, ts = users[keep], items[keep], ts[keep]
        ratings = None if ratings is None else ratings[keep]
    return assemble(
        Path(path).stem,
        users,
        items,
        ts,
        ratings,
        item_info,
        _user_info(users_path) if users_path else None,
    )

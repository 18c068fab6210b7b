"""Shared parsing of delimited tables and side information (DESIGN §2 "Validation").

Every loader reads its files through :func:`read_typed_table`, which has two paths:

* **Fast path** (normal files): the field count of every line is checked with numpy
  on the raw bytes, then pandas' C engine parses the whole file at once and the
  resulting column dtypes are checked (an integer column that came back as float or
  text means some line is bad).
* **Slow path** (only when the fast path found a problem): a line-by-line scan whose
  single job is to name the first bad line and say what is wrong with it, so that
  every error reads ``path:line: reason``.

The second half of the module turns parsed tables into the dense, index-aligned
arrays of :class:`~marl_two_tower.data.dataset.Dataset` (multi-hot genres, release
years, categorical demographics) without per-row Python loops.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.errors import DataError

Kind = Literal["int", "float", "id", "str", "time"]
log = logging.getLogger(__name__)

_INT_RE = re.compile(r"\s*[+-]?\d+\s*")
_BOM = b"\xef\xbb\xbf"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_RE = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


@dataclass(frozen=True)
class Col:
    """One expected column.

    Attributes:
        name: column name (the header name, or the name given to a positional column).
        kind: ``int`` / ``float`` (numeric), ``id`` (any non-empty token; integers stay
            integers), ``str`` (text), ``time`` (number or ISO-8601 datetime, converted
            later by :func:`to_seconds`).
        required: the header must contain it (headered tables only).
        nullable: empty values are allowed (NaN for numbers, "" for text).
    """

    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False


@dataclass
class Table:
    """A parsed table and, for each data row, the 1-based line where it starts
    (for Parquet, which has no lines, the 1-based row)."""

    path: Path
    frame: pd.DataFrame
    row_lines: np.ndarray

    def error(self, row: int, reason: str) -> DataError:
        """A :class:`DataError` pointing at data row ``row``."""
        return DataError(self.path, reason, line=int(self.row_lines[row]))


def read_bytes(path: str | Path) -> bytes:
    """Read a whole file; a missing or empty file is a :class:`DataError`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "required file not found" if not p.exists() else "not a file")
    data = p.read_bytes()
    if not data.strip():
        raise DataError(p, "empty file")
    return data


def require_file(folder: Path, name: str) -> Path:
    """``folder / name``, or a :class:`DataError` naming the missing file."""
    p = folder / name
    if not p.is_file():
        raise DataError(p, f"required file not found (is {folder} a complete dataset folder?)")
    return p


def _record_spans(
    path: Path, buf: np.ndarray, sep: str, quoted: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split raw bytes into records without a Python loop.

    Returns (starts, ends, first line of each record, separator offsets). ``ends``
    exclude the newline and a trailing ``\\r``. With ``quoted``, newlines and
    separators inside double quotes do not count: a byte is inside a quoted field
    when an odd number of quotes precede it (an escaped ``""`` adds two). The
    running count is kept mod 256 in uint8, which preserves its parity, so this
    costs one byte per input byte.
    """
    newline = buf == 10
    is_sep = buf == ord(sep)
    all_nl = np.flatnonzero(newline)  # physical lines, for line numbers
    if quoted:
        quotes = np.cumsum(buf == 34, dtype=np.uint8)
        if quotes[-1] & 1:
            last = int(np.flatnonzero(buf == 34)[-1])
            line = int(np.searchsorted(all_nl, last)) + 1
            raise DataError(path, "unterminated quoted field", line=line)
        outside = (quotes & 1) == 0
        newline &= outside
        is_sep &= outside
    nl = np.flatnonzero(newline)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(buf)]))
    if starts[-1] == len(buf):  # the file ends with a newline: no last partial line
        starts, ends = starts[:-1], ends[:-1]
    has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends = ends - has_cr
    lines = np.searchsorted(all_nl, starts) + 1
    return starts, ends, lines, np.flatnonzero(is_sep)


def _split_record(raw: str, sep: str, quoted: bool) -> list[str]:
    return next(csv.reader([raw], delimiter=sep), []) if quoted else raw.split(sep)


def read_typed_table(
    path: str | Path,
    cols: Sequence[Col],
    *,
    sep: str,
    header: bool,
    encoding: str = "latin-1",
    quoting: bool = False,
    others: Literal["any", "int", "str", "forbid"] = "forbid",
    data: bytes | None = None,
    sep_label: str | None = None,
) -> Table:
    """Parse a delimited text file into a validated :class:`Table`.

    Args:
        path: the file (named in every error).
        cols: expected columns; positional when ``header`` is False, looked up by
            name otherwise.
        sep: one-character field separator.
        header: the first non-blank line holds the column names.
        encoding: text encoding (MovieLens files are latin-1).
        quoting: honour CSV double quotes (generic ``.csv``); MovieLens files have none.
        others: headered tables only: columns not in ``cols`` are ``any`` (types
            inferred), ``int``, ``str`` (kept as text) or ``forbid`` (an error).
        data: file content when already read (e.g. after ``::`` -> tab rewriting).
        sep_label: how to name the separator in messages (default ``sep``).

    Raises:
        DataError: naming the file and, for line-level problems, the 1-based line.
    """
    path = Path(path)
    if data is None:
        data = read_bytes(path)
    # A UTF-8 byte-order mark (editors on Windows add one) belongs to no field, header
    # or not; dropping its 3 bytes moves no newline, so line numbers stay exact.
    data = data.removeprefix(_BOM)
    if not data.strip():
        raise DataError(path, "empty file")
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        try:
            data.decode(encoding)
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise DataError(
                path, f"byte 0x{data[exc.start]:02x} is not valid {encoding} text", line=line
            ) from None
    label = sep_label or sep
    quoted = quoting and b'"' in data
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, ends, lines, sep_pos = _record_spans(path, buf, sep, quoted)
    keep = ends > starts  # pandas skips blank lines too
    starts, ends, lines = starts[keep], ends[keep], lines[keep]

    names = [c.name for c in cols]
    header_fields: list[str] | None = None
    body = data
    if header:
        raw = data[starts[0] : ends[0]].decode(encoding, errors="replace")
        header_fields = [f.strip().lstrip("\ufeff") for f in _split_record(raw, sep, quoted)]
        _check_header(path, header_fields, cols, others, line=int(lines[0]))
        names = header_fields
        body = data[ends[0] :]
        starts, ends, lines = starts[1:], ends[1:], lines[1:]
        if len(starts) == 0:
            raise DataError(path, "no data rows (the file holds only a header)")
    n_fields = len(names)

    # Exact field count per record, on the raw bytes: catches short lines that
    # pandas would silently pad with NaN.
    counts = np.searchsorted(sep_pos, ends) - np.searchsorted(sep_pos, starts)
    bad = np.flatnonzero(counts + 1 != n_fields)
    if len(bad):
        i = int(bad[0])
        fields = _split_record(data[starts[i] : ends[i]].decode(encoding, errors="replace"),
                               sep, quoted)
        reason = _row_problem(fields, cols, names, header_fields, label)
        raise DataError(path, reason or "malformed line", line=int(lines[i]))

    by_name = {c.name: c for c in cols}
    dtype = {c.name: str for c in cols if c.kind == "str"}
    if others == "str":
        dtype.update({n: str for n in names if n not in by_name})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.BytesIO(body),
                sep=sep,
                header=None,
                names=names,
                index_col=False,
                dtype=dtype,
                keep_default_na=False,
                na_values=[""],
                quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
                encoding=encoding,
                engine="c",
                low_memory=False,
                skip_blank_lines=True,
            )
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning, csv.Error) as exc:
        _locate(path, data, (starts, ends, lines), cols, names, header_fields, sep, label,
                encoding, quoted, others)
        raise DataError(path, f"could not parse: {exc}") from None

    if len(frame.columns) != n_fields or not _dtypes_ok(frame, by_name, others):
        _locate(path, data, (starts, ends, lines), cols, names, header_fields, sep, label,
                encoding, quoted, others)
        raise DataError(path, "could not parse (inconsistent column types)")
    table = Table(path, frame, lines)
    if header_fields is not None:
        _check_repeated_header(table, header_fields)
    for c in cols:
        if c.kind == "str" and c.name in frame:
            frame[c.name] = frame[c.name].fillna("")
    return table


def _check_header(
    path: Path, fields: list[str], cols: Sequence[Col], others: str, line: int
) -> None:
    """Header names must be distinct, include the required columns, and (``forbid``)
    nothing else."""
    seen: set[str] = set()
    for f in fields:
        if f in seen:
            raise DataError(path, f"duplicate column name {f!r} in header", line=line)
        seen.add(f)
    known = {c.name for c in cols}
    for c in cols:
        if c.required and c.name not in seen:
            raise DataError(
                path, f"missing column {c.name!r} (header has: {', '.join(fields)})", line=line
            )
    if others == "forbid":
        extra = [f for f in fields if f not in known]
        if extra:
            raise DataError(path, f"unexpected column(s) {extra} in header", line=line)


def _check_repeated_header(table: Table, header_fields: list[str]) -> None:
    """Catch a header line repeated inside the data (e.g. two files concatenated).

    A repeated header makes every column text, so a table with any numeric column
    cannot contain one; only all-text tables (pure id tables) need the comparison.
    """
    frame = table.frame
    if any(pd.api.types.is_numeric_dtype(frame[n]) for n in frame.columns):
        return
    mask = np.ones(len(frame), dtype=bool)
    for n in header_fields:
        mask &= (frame[n].astype(str).str.strip() == n).to_numpy()
    if mask.any():
        raise table.error(int(np.argmax(mask)), "duplicate header line")


def _dtypes_ok(frame: pd.DataFrame, by_name: dict[str, Col], others: str) -> bool:
    """Whether every column parsed to the type its kind promises (cheap, vectorised)."""
    for name in frame.columns:
        s = frame[name]
        c = by_name.get(name)
        kind = c.kind if c is not None else ("int" if others == "int" else None)
        nullable = c.nullable if c is not None else False
        if kind is None or kind == "str":
            if kind == "str" and not nullable and s.isna().any():
                return False
            continue
        numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        # uint64: some value is above the int64 range (it would wrap when converted)
        if kind == "int" and (not pd.api.types.is_integer_dtype(s) or s.dtype == np.uint64):
            return False
        if kind == "float" and not numeric:
            return False
        if kind in ("float", "id", "time") and not nullable and s.isna().any():
            return False
    return True


def _check_field(value: str, col: Col) -> str | None:
    """Why ``value`` is not valid for ``col`` (None when it is)."""
    if value.strip() == "":
        return None if col.nullable else f"empty value in column {col.name!r}"
    if col.kind == "int" and not _INT_RE.fullmatch(value):
        return f"non-numeric value {value!r} in column {col.name!r} (expected an integer)"
    if col.kind == "int" and not _INT64_MIN <= int(value) <= _INT64_MAX:
        return (f"integer {value.strip()!r} in column {col.name!r} is out of range "
                "(at most 19 digits: a 64-bit signed integer)")
    if col.kind == "float" and not _FLOAT_RE.fullmatch(value):
        return f"non-numeric value {value!r} in column {col.name!r} (expected a number)"
    return None


def _row_problem(
    fields: list[str],
    cols: Sequence[Col],
    names: list[str],
    header_fields: list[str] | None,
    label: str,
) -> str | None:
    if header_fields is not None and [f.strip() for f in fields] == header_fields:
        return "duplicate header line"
    if len(fields) != len(names):
        return f"expected {len(names)} fields separated by {label!r}, found {len(fields)}"
    by_name = {c.name: c for c in cols}
    for name, value in zip(names, fields, strict=True):
        col = by_name.get(name)
        if col is None:
            continue
        reason = _check_field(value, col)
        if reason:
            return reason
    return None


def _locate(
    path: Path,
    data: bytes,
    spans: tuple[np.ndarray, np.ndarray, np.ndarray],
    cols: Sequence[Col],
    names: list[str],
    header_fields: list[str] | None,
    sep: str,
    label: str,
    encoding: str,
    quoted: bool,
    others: str,
) -> None:
    """Slow path: check record by record and raise for the first bad one (if any)."""
    listed = {c.name for c in cols}
    if others == "int":  # unlisted columns (e.g. neg1..neg99) must be integers too
        cols = [*cols, *(Col(n, "int") for n in names if n not in listed)]
    for start, end, line in zip(*spans, strict=True):
        raw = data[start:end].decode(encoding, errors="replace")
        reason = _row_problem(_split_record(raw, sep, quoted), cols, names, header_fields, label)
        if reason:
            raise DataError(path, reason, line=int(line))


def read_colon_table(path: Path, cols: Sequence[Col]) -> Table:
    """Read a MovieLens-1M ``::``-separated, latin-1, headerless file.

    ``::`` is rewritten to a tab on the raw bytes so that pandas' C engine (which
    takes one-character separators only) can parse it; newlines are untouched, so
    line numbers stay exact.
    """
    data = read_bytes(path).replace(b"::", b"\t")
    return read_typed_table(path, cols, sep="\t", header=False, data=data, sep_label="::")


# ---------------------------------------------------------------------------
# Tables -> dataset arrays
# ---------------------------------------------------------------------------

AGE_BUCKETS = np.array([1, 18, 25, 35, 45, 50, 56])
AGE_LABELS = ["Under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
GENDER_LABELS = ["F", "M"]


@dataclass
class ItemInfo:
    """Item side information, one entry per row of an item table (any order)."""

    ids: np.ndarray
    genres: np.ndarray  # bool [rows, n_genres]
    genre_names: list[str]
    year: np.ndarray  # int32, 0 = unknown
    titles: list[str] | None = None


@dataclass
class UserInfo:
    """User side information: categorical codes per row of a user table."""

    ids: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)


def _show(value: object) -> str:
    """``repr`` of a cell for messages (``57``, ``'X'``), without numpy's wrapper."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_ratings(table: Table, col: str, scale: tuple[float, float] | None,
                  key: str = "data.rating_range") -> None:
    """Refuse a non-finite rating (inf) and, with ``scale = (lo, hi)``, a rating outside
    [lo, hi], at its line. Empty ratings (NaN, where the column is nullable) pass."""
    v = table.frame[col].to_numpy(np.float64)
    bad = np.isinf(v)
    if scale is not None:
        lo, hi = scale
        bad |= (v < lo) | (v > hi)
    if bad.any():
        row = int(np.argmax(bad))
        where = f"outside the rating scale {scale[0]:g}..{scale[1]:g} ({key})" if scale else \
            "not a finite number"
        raise table.error(row, f"rating {_show(table.frame[col].iloc[row])} {where}")


def unknown_items(table: Table, items: np.ndarray, info: ItemInfo, policy: str,
                  catalogue: Path) -> np.ndarray:
    """Rows whose item is missing from the item table ``catalogue``: a warning with
    the count and the first line, then a keep mask for ``policy`` ``keep`` (all rows;
    such items get no genres, year 0, title "") or ``drop`` (those rows removed)."""
    if policy not in ("keep", "drop"):
        raise DataError("data.unknown_items", f"expected 'keep' or 'drop', got {policy!r}")
    items_h, ids_h = harmonise_ids(items, info.ids)
    missing = ~np.isin(items_h, ids_h)
    if missing.any():
        row = int(np.argmax(missing))
        n_items = len(pd.unique(items_h[missing]))
        log.warning("%s: %d rating(s) of %d item(s) not in %s (first: line %d, item %s); %s "
                    "(data.unknown_items=%s)", table.path, int(missing.sum()), n_items,
                    catalogue.name, int(table.row_lines[row]), _show(items[row]),
                    "dropped" if policy == "drop" else "kept without side information", policy)
    return ~missing if policy == "drop" else np.ones(len(items), dtype=bool)


def check_unique(table: Table, col: str) -> None:
    """Raise at the first repeated value of ``col`` (e.g. an item listed twice)."""
    dup = table.frame[col].duplicated().to_numpy()
    if dup.any():
        row = int(np.argmax(dup))
        value = table.frame[col].iloc[row]
        raise table.error(row, f"duplicate {col} {_show(value)}")


def id_array(s: pd.Series) -> np.ndarray:
    """Ids as int64 when they are whole numbers (``7`` or ``7.0``), else as text
    (integers beyond int64, which pandas reads as uint64 or text, stay text)."""
    if pd.api.types.is_integer_dtype(s) and s.dtype != np.uint64:
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(s) and bool((s % 1 == 0).all()):
        return s.to_numpy(dtype=np.int64)
    return s.astype(str).to_numpy(dtype=object)


def harmonise_ids(*arrays: np.ndarray) -> list[np.ndarray]:
    """Give id arrays from different files one comparable type (text if any is text)."""
    if all(a.dtype.kind in "iu" for a in arrays):
        return [a.astype(np.int64, copy=False) for a in arrays]
    return [a.astype(str).astype(object) for a in arrays]


def year_from_text(s: pd.Series) -> np.ndarray:
    """Release year from a title ``"Toy Story (1995)"`` or a date ``"01-Jan-1995"``.

    Takes the last 4-digit group in parentheses, else the last 4-digit group at the
    end of the text; 0 where none is found.
    """
    s = s.astype(str)
    year = s.str.extract(r"\((\d{4})\)\s*$", expand=False)
    year = year.fillna(s.str.extract(r"(\d{4})\s*$", expand=False))
    return pd.to_numeric(year, errors="coerce").fillna(0).to_numpy(dtype=np.int32)


def multi_hot(
    table: Table, col: str, names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """``"A|B"`` genre strings -> bool ``[rows, G]``.

    With ``names`` (a fixed vocabulary, e.g. the 18 ML-1M genres) an unknown genre is
    a :class:`DataError` on its line; without, the vocabulary is the sorted set seen.
    ``"(no genres listed)"`` and empty strings mean no genre.
    """
    s = table.frame[col].fillna("").astype(str).str.strip()
    s = s.where(s != "(no genres listed)", "")
    dummies = s.str.get_dummies(sep="|")
    dummies = dummies.drop(columns=[c for c in dummies.columns if c.strip() == ""])
    if names is None:
        names = sorted(dummies.columns)
    unknown = [c for c in dummies.columns if c not in set(names)]
    if unknown:
        row = int(np.argmax(dummies[unknown[0]].to_numpy() > 0))
        raise table.error(row, f"unknown genre {unknown[0]!r} (expected one of {list(names)})")
    out = dummies.reindex(columns=list(names), fill_value=0).to_numpy() > 0
    return out.astype(bool), list(names)


def categorical(
    table: Table, col: str, labels: Sequence[str], values: Sequence[object] | None = None
) -> np.ndarray:
    """Codes into ``labels`` for column ``col``; a value outside is an error on its line.

    ``values[k]`` is the raw value that stands for ``labels[k]`` (default: the labels).
    """
    raw = table.frame[col]
    keys = pd.Index(list(values) if values is not None else list(labels))
    codes = keys.get_indexer(raw)
    if (codes < 0).any():
        row = int(np.argmax(codes < 0))
        raise table.error(
            row, f"unknown {col} {_show(raw.iloc[row])} (expected one of {list(keys)})"
        )
    return codes.astype(np.int64)


def age_bucket(table: Table, col: str, exact: bool) -> np.ndarray:
    """Age -> code of the ML-1M buckets (1, 18, 25, 35, 45, 50, 56).

    ``exact``: the column already holds bucket codes (ML-1M) and any other value is an
    error; otherwise raw ages (ML-100K) are binned, ages < 1 are unknown (-1).
    """
    if exact:
        return categorical(table, col, AGE_LABELS, values=AGE_BUCKETS.tolist())
    age = table.frame[col].to_numpy(dtype=np.int64)
    return np.searchsorted(AGE_BUCKETS, age, side="right").astype(np.int64) - 1


def to_seconds(table: Table, col: str) -> np.ndarray:
    """A ``time`` column as float64 seconds since the epoch (NaN where empty).

    Numbers are taken as seconds; other text must be an ISO-8601 datetime.
    """
    s = table.frame[col]
    if pd.api.types.is_datetime64_any_dtype(s):
        dt = pd.to_datetime(s, utc=True)
        secs = dt.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
        return np.where(dt.isna().to_numpy(), np.nan, secs)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64)
    # Text: one bad value (or a quoted number in a CSV) turns the column into text.
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    dt = pd.to_datetime(s.where(np.isnan(num)), errors="coerce", utc=True, format="ISO8601")
    secs = dt.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
    out = np.where(np.isnan(num), np.where(dt.isna().to_numpy(), np.nan, secs), num)
    bad = np.isnan(out) & s.notna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise table.error(
            row, f"bad {col} {_show(s.iloc[row])} (expected a number or an ISO-8601 datetime)"
        )
    return out


def sorted_unique(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct ids: the same order as :func:`encode_ids`, but hash-based
    (``np.unique`` argsorts all 1M entries, several times slower)."""
    return np.sort(pd.unique(ids))


def lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each of ``ids`` in ``sorted_ids`` (which must contain them all)."""
    if sorted_ids.dtype.kind in "iu" and len(sorted_ids):
        lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
        if hi - lo < 8 * len(ids) + 1024:
            # Dense id range (MovieLens ids are 1..n): one O(n) table gather.
            table = np.zeros(hi - lo + 1, dtype=np.int64)
            table[sorted_ids - lo] = np.arange(len(sorted_ids))
            return table[ids - lo]
    return np.searchsorted(sorted_ids, ids).astype(np.int64)


def _align(dataset_ids: np.ndarray, table_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each dataset id: (found mask, row in the side table)."""
    dataset_ids, table_ids = harmonise_ids(dataset_ids, table_ids)
    order = np.argsort(table_ids, kind="stable")
    sorted_ids = table_ids[order]
    # Side tables are never empty (an empty file is an error), so clipping is safe.
    pos = np.minimum(np.searchsorted(sorted_ids, dataset_ids), len(sorted_ids) - 1)
    found = sorted_ids[pos] == dataset_ids
    return np.asarray(found, dtype=bool), order[pos]


def assemble(
    name: str,
    users_raw: np.ndarray,
    items_raw: np.ndarray,
    timestamps: np.ndarray,
    ratings: np.ndarray | None,
    item_info: ItemInfo | None,
    user_info: UserInfo | None,
    extra_users: Sequence[np.ndarray] = (),
    extra_items: Sequence[np.ndarray] = (),
) -> Dataset:
    """Build a :class:`Dataset`: index users/items, align side information.

    Users and items are indexed (in sorted-id order) over the ids of the interactions
    plus ``extra_*`` (e.g. held-out test pairs and negatives). Side tables only
    supply attributes: catalogue entries without interactions are dropped, and
    indexed ids missing from a side table get no genres, year 0, title "" and
    demographic code -1.
    """
    users_raw, *extra_users = harmonise_ids(users_raw, *extra_users)
    items_raw, *extra_items = harmonise_ids(items_raw, *extra_items)
    # Sorted-id order, as encode_ids gives.
    user_ids = sorted_unique(np.concatenate([users_raw, *extra_users]))
    item_ids = sorted_unique(np.concatenate([items_raw, *extra_items]))
    n_users, n_items = len(user_ids), len(item_ids)

    if item_info is not None:
        found, row = _align(item_ids, item_info.ids)
        genres = np.zeros((n_items, item_info.genres.shape[1]), dtype=bool)
        genres[found] = item_info.genres[row[found]]
        year = np.zeros(n_items, dtype=np.int32)
        year[found] = item_info.year[row[found]]
        titles = None
        if item_info.titles is not None:
            titles = np.where(found, np.array(item_info.titles, dtype=object)[row], "").tolist()
        genre_names = item_info.genre_names
    else:
        genres, genre_names = np.zeros((n_items, 0), dtype=bool), []
        year, titles = np.zeros(n_items, dtype=np.int32), None

    features: dict[str, np.ndarray] = {}
    labels: dict[str, list[str]] = {}
    if user_info is not None:
        found, row = _align(user_ids, user_info.ids)
        for key, codes in user_info.features.items():
            out = np.full(n_users, -1, dtype=np.int64)
            out[found] = codes[row[found]]
            features[key] = out
            labels[key] = list(user_info.labels[key])

    return Dataset(
        name=name,
        users=lookup(user_ids, users_raw),
        items=lookup(item_ids, items_raw),
        timestamps=np.asarray(timestamps, dtype=np.float64),
        n_users=n_users,
        n_items=n_items,
        user_ids=user_ids,
        item_ids=item_ids,
        item_genres=genres,
        genre_names=list(genre_names),
        item_year=year,
        ratings=None if ratings is None else np.asarray(ratings, dtype=np.float32),
        user_features=features,
        user_feature_labels=labels,
        item_titles=titles,
    )

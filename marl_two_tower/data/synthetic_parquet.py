"""The synthetic dataset as Parquet: streamed writing, fast loading (DESIGN §2, §9).

Layout (three files in one folder; ``<stem>`` is the interactions file's stem):

* ``<stem>.parquet`` -- interactions ``user`` (int32 index), ``item`` (int32 index),
  ``timestamp`` (float64 seconds), in generation order (user-major, time-increasing),
  one row group per generated chunk of users. The schema metadata key
  ``marl_two_tower`` holds a JSON header: layout name and version, dataset name,
  ``n_users``, ``n_items``, genre names, demographic labels, the side-file names and
  the generator config.
* ``<stem>.items.parquet`` -- ``item``, ``genres`` (``"genre_00|genre_03"``), ``year``
  and ``genre_mask`` (int64 bit g set <=> genre g).
* ``<stem>.users.parquet`` -- ``user``, ``gender``, ``age``, ``occupation`` (labels).

The side tables follow the generic-table conventions, so the files also load through
:func:`marl_two_tower.data.generic.load_table` (``items_path``/``users_path``); that
route re-indexes ids and drops items without interactions. :func:`read_native` is
the fast path: it fills preallocated int64/float64 arrays row group by row group
(no per-row Python, no pandas), so peak memory is the final arrays plus one row
group, and the :class:`Dataset` it returns is identical to ``generate(cfg)``
(same arrays, same fingerprint).

Writing streams :func:`marl_two_tower.data.synthetic.iter_chunks`: memory is bounded
by one chunk of users whatever ``n_users`` is. All three files are written to
temporary names and renamed at the end (interactions last), so an interrupted run
leaves nothing half-written under the final names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from marl_two_tower.config import SyntheticConfig
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.movielens import ML1M_OCCUPATIONS
from marl_two_tower.data.parsing import AGE_LABELS
from marl_two_tower.data.synthetic import generate_name, iter_chunks
from marl_two_tower.utils.io import atomic_write

META_KEY = b"marl_two_tower"
LAYOUT = "marl-two-tower/synthetic-interactions"
LAYOUT_VERSION = 1
# the code books of generate(): the ML-1M labels, so a written file reads back equal
FEATURE_LABELS = {"gender": ["M", "F"], "age": list(AGE_LABELS), "occupation": list(ML1M_OCCUPATIONS)}


def side_paths(path: str | Path) -> tuple[Path, Path]:
    """(items file, users file) next to the interactions file ``path``."""
    p = Path(path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(f"{stem}.items.parquet"), p.with_name(f"{stem}.users.parquet")


def write_synthetic_parquet(cfg: SyntheticConfig, path: str | Path,
                            compression: str = "zstd", log: Any = None) -> dict[str, Any]:
    """Generate ``cfg`` chunk by chunk straight into the Parquet layout above.

    Returns a summary: ``path``, ``n_users``, ``n_items``, ``n_interactions``,
    ``row_groups``, ``seconds``, ``bytes`` (the three files together). ``log`` (a
    callable taking a string) reports progress per chunk.
    """
    if cfg.n_genres > 63:
        raise ValueError(f"n_genres={cfg.n_genres}: the genre bit mask holds at most 63 genres")
    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items_path, users_path = side_paths(path)
    genre_names = [f"genre_{g:02d}" for g in range(cfg.n_genres)]
    header = {"layout": LAYOUT, "version": LAYOUT_VERSION, "name": generate_name(cfg),
              "n_users": cfg.n_users, "n_items": cfg.n_items, "genre_names": genre_names,
              "feature_labels": FEATURE_LABELS, "items_file": items_path.name,
              "users_file": users_path.name, "synthetic": dataclasses.asdict(cfg)}
    inter_schema = pa.schema([("user", pa.int32()), ("item", pa.int32()), ("timestamp", pa.float64())],
                             metadata={META_KEY: json.dumps(header).encode()})
    user_schema = pa.schema([("user", pa.int32()), ("gender", pa.string()), ("age", pa.string()),
                             ("occupation", pa.string())])
    labels = {k: np.asarray(v, dtype=object) for k, v in FEATURE_LABELS.items()}
    n_rows = groups = 0
    with contextlib.ExitStack() as files:
        # atomic_write renames on exit and the stack exits last-in first-out: the items,
        # then the users, then the interactions file appear (interactions last); an
        # exception deletes all three temporary files
        inter_fh, users_fh, items_fh = (files.enter_context(atomic_write(p, "wb"))
                                        for p in (path, users_path, items_path))
        chunks = iter_chunks(cfg)
        world = next(chunks)["world"]
        genres = world.genres
        mask = (genres.astype(np.int64) << np.arange(cfg.n_genres, dtype=np.int64)).sum(1)
        names = np.asarray(genre_names, dtype=object)
        genre_text = ["|".join(names[row]) for row in genres]
        pq.write_table(pa.table({"item": pa.array(np.arange(cfg.n_items, dtype=np.int32)),
                                 "genres": pa.array(genre_text, pa.string()),
                                 "year": pa.array(world.year.astype(np.int32)),
                                 "genre_mask": pa.array(mask)}),
                       items_fh, compression=compression)
        with pq.ParquetWriter(inter_fh, inter_schema, compression=compression) as iw, \
                pq.ParquetWriter(users_fh, user_schema, compression=compression) as uw:
            first_user = 0
            for chunk in chunks:
                n = len(chunk["gender"])
                iw.write_table(pa.table({"user": chunk["users"].astype(np.int32),
                                         "item": chunk["items"].astype(np.int32),
                                         "timestamp": chunk["timestamps"]}, schema=inter_schema),
                               row_group_size=len(chunk["users"]))
                uw.write_table(pa.table({
                    "user": np.arange(first_user, first_user + n, dtype=np.int32),
                    **{k: pa.array(labels[k][chunk[k]], pa.string()) for k in FEATURE_LABELS}},
                    schema=user_schema))
                first_user += n
                n_rows += len(chunk["users"])
                groups += 1
                if log is not None:
                    log(f"{first_user}/{cfg.n_users} users, {n_rows} interactions, "
                        f"{time.perf_counter() - t0:.0f}s")
    return {"path": str(path), "n_users": cfg.n_users, "n_items": cfg.n_items,
            "n_interactions": n_rows, "row_groups": groups,
            "seconds": time.perf_counter() - t0,
            "bytes": sum(p.stat().st_size for p in (items_path, users_path, path))}


def native_header(path: str | Path) -> dict[str, Any] | None:
    """The JSON header of a file in this layout, or None for any other Parquet file."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    if META_KEY not in meta:
        return None
    header = json.loads(meta[META_KEY])
    return header if header.get("layout") == LAYOUT else None


def read_native(path: str | Path) -> Dataset:
    """Load a dataset written by :func:`write_synthetic_parquet` (vectorised, see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "required file not found")
    header = native_header(path)
    if header is None:
        raise DataError(path, f"not a {LAYOUT} Parquet file (no '{META_KEY.decode()}' header)")
    if header["version"] > LAYOUT_VERSION:
        raise DataError(path, f"layout version {header['version']} is newer than this package "
                              f"reads ({LAYOUT_VERSION})")
    n_users, n_items = int(header["n_users"]), int(header["n_items"])
    pf = pq.ParquetFile(path)
    n = pf.metadata.num_rows
    users = np.empty(n, dtype=np.int64)
    items = np.empty(n, dtype=np.int64)
    ts = np.empty(n, dtype=np.float64)
    pos = 0
    for rg in range(pf.num_row_groups):  # one row group at a time bounds the transient memory
        t = pf.read_row_group(rg, columns=["user", "item", "timestamp"])
        k = t.num_rows
        users[pos : pos + k] = t.column("user").to_numpy()
        items[pos : pos + k] = t.column("item").to_numpy()
        ts[pos : pos + k] = t.column("timestamp").to_numpy()
        pos += k
    if n and (users.min() < 0 or users.max() >= n_users or items.min() < 0 or items.max() >= n_items):
        raise DataError(path, "user/item index outside the header's n_users/n_items")

    items_path = path.with_name(header["items_file"])
    if not items_path.is_file():
        raise DataError(items_path, "item table of the dataset not found")
    it = pq.read_table(items_path, columns=["item", "year", "genre_mask"])
    if it.num_rows != n_items or not np.array_equal(it.column("item").to_numpy(), np.arange(n_items)):
        raise DataError(items_path, f"expected items 0..{n_items - 1} in order")
    genre_names = list(header["genre_names"])
    mask = it.column("genre_mask").to_numpy()
    genres = (mask[:, None] >> np.arange(len(genre_names), dtype=np.int64)) & 1 == 1

    users_path = path.with_name(header["users_file"])
    if not users_path.is_file():
        raise DataError(users_path, "user table of the dataset not found")
    labels: dict[str, list[str]] = {k: list(v) for k, v in header["feature_labels"].items()}
    ut = pq.read_table(users_path, columns=["user", *labels])
    if ut.num_rows != n_users:
        raise DataError(users_path, f"expected {n_users} users, found {ut.num_rows}")
    features = {}
    for name, names in labels.items():
        # label -> code inside Arrow (vectorised); an unknown label becomes null -> error
        codes = pc.index_in(ut.column(name), value_set=pa.array(names, pa.string()))
        if codes.null_count:
            raise DataError(users_path, f"unknown {name} label (expected one of {names})")
        features[name] = codes.to_numpy().astype(np.int64)
    return Dataset(
        name=header["name"], users=users, items=items, timestamps=ts,
        n_users=n_users, n_items=n_items,
        user_ids=np.arange(1, n_users + 1), item_ids=np.arange(1, n_items + 1),
        item_genres=genres, genre_names=genre_names,
        item_year=it.column("year").to_numpy().astype(np.int32),
        user_features=features, user_feature_labels=labels,
    )

"""MovieLens loaders: ML-100K, ML-1M, ML-1M in SASRec's time order and ML-1M in the NCF
leave-one-out protocol.

Each loader reads a dataset folder as distributed by GroupLens (or, for NCF, the
folder described in its README) and returns a :class:`Dataset` with every rating
as an implicit interaction, in file order, plus genres, release year, titles and
demographics (gender, ML-1M age bucket, occupation). Users and items are indexed
over the ids that occur in interactions (and, for NCF, in the test pairs and
negatives); catalogue files only supply side information.

Parsing is vectorised (see :mod:`.parsing`); any malformed input raises
:class:`DataError` naming the file and line. Ratings must lie on the rating scale
(``rating_range``, default 1..5: ``data.rating_range``); ratings of movies missing
from the catalogue file are counted in a warning and kept or dropped
(``unknown_items``: ``data.unknown_items``); a missing user file (``users.dat`` /
``u.user``) is a warning, and the data then have no demographics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from marl_two_tower.data.dataset import Dataset, PredefinedSplit
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.parsing import (
    AGE_LABELS,
    GENDER_LABELS,
    Col,
    ItemInfo,
    Table,
    UserInfo,
    age_bucket,
    assemble,
    categorical,
    check_ratings,
    check_unique,
    lookup,
    multi_hot,
    read_colon_table,
    read_typed_table,
    require_file,
    unknown_items,
    year_from_text,
)

log = logging.getLogger(__name__)

MOVIELENS_SCALE = (1.0, 5.0)  # MovieLens star ratings

# Genre order of u.item's 19 flag columns (u.genre lists the same names).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
# The 18 genres of the ML-1M README, in its order.
ML1M_GENRES = ML100K_GENRES[1:]
# ML-1M users.dat occupation codes 0..20 (from the ML-1M README).
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer",
    "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
]  # fmt: skip

_RATING_COLS = [
    Col("user", "int"),
    Col("item", "int"),
    Col("rating", "float"),
    Col("timestamp", "float"),
]


def _folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(folder, "dataset folder not found")
    return folder


def _optional_users(path: Path) -> Path | None:
    """The user file, or None (one warning) when it is missing: no demographics then,
    and group metrics read "n/a"."""
    if path.is_file():
        return path
    log.warning("%s not found: loading without user demographics (group metrics: n/a)", path)
    return None


def _interactions(table: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    f = table.frame
    return (
        f["user"].to_numpy(np.int64),
        f["item"].to_numpy(np.int64),
        f["timestamp"].to_numpy(np.float64),
        f["rating"].to_numpy(np.float32),
    )


# ---------------------------------------------------------------------------
# ML-100K
# ---------------------------------------------------------------------------


def _ml100k_genre_names(folder: Path) -> list[str]:
    """Genre names from ``u.genre`` (``name|index``) when present, else the standard 19."""
    path = folder / "u.genre"
    if not path.is_file():
        return list(ML100K_GENRES)
    t = read_typed_table(path, [Col("name", "str"), Col("index", "int")], sep="|", header=False)
    order = t.frame["index"].to_numpy()
    if sorted(order.tolist()) != list(range(len(ML100K_GENRES))):
        raise DataError(path, f"expected genre indices 0..{len(ML100K_GENRES) - 1}")
    return t.frame["name"].to_numpy()[np.argsort(order)].tolist()


def _ml100k_items(folder: Path) -> ItemInfo:
    names = _ml100k_genre_names(folder)
    flags = [Col(f"g{k}", "int") for k in range(len(names))]
    cols = [
        Col("item", "int"),
        Col("title", "str", nullable=True),
        Col("release", "str", nullable=True),
        Col("video", "str", nullable=True),
        Col("url", "str", nullable=True),
        *flags,
    ]
    t = read_typed_table(require_file(folder, "u.item"), cols, sep="|", header=False)
    check_unique(t, "item")
    f = t.frame
    year = year_from_text(f["release"])
    # The release date is missing for a few items; fall back on the title's "(1995)".
    year = np.where(year > 0, year, year_from_text(f["title"])).astype(np.int32)
    return ItemInfo(
        ids=f["item"].to_numpy(np.int64),
        genres=f[[c.name for c in flags]].to_numpy() != 0,
        genre_names=names,
        year=year,
        titles=f["title"].tolist(),
    )


def _ml100k_users(folder: Path) -> UserInfo:
    cols = [
        Col("user", "int"),
        Col("age", "int"),
        Col("gender", "str"),
        Col("occupation", "str"),
        Col("zip", "str", nullable=True),
    ]
    t = read_typed_table(require_file(folder, "u.user"), cols, sep="|", header=False)
    check_unique(t, "user")
    occ_path = folder / "u.occupation"
    if occ_path.is_file():
        occ = read_typed_table(occ_path, [Col("name", "str")], sep="|", header=False)
        occupations = occ.frame["name"].str.strip().tolist()
    else:
        occupations = sorted(t.frame["occupation"].unique().tolist())
    return UserInfo(
        ids=t.frame["user"].to_numpy(np.int64),
        features={
            "gender": categorical(t, "gender", GENDER_LABELS),
            "age": age_bucket(t, "age", exact=False),
            "occupation": categorical(t, "occupation", occupations),
        },
        labels={"gender": GENDER_LABELS, "age": AGE_LABELS, "occupation": occupations},
    )


def load_ml100k(path: str | Path, rating_range: tuple[float, float] = MOVIELENS_SCALE,
                unknown: str = "keep") -> Dataset:
    """Load a MovieLens-100K folder (``u.data``, ``u.item``; ``u.user``, ``u.genre`` and
    ``u.occupation`` optional).

    Every one of the 100,000 ratings is an interaction (943 users, 1,682 items, 19
    genres). Raw ages are bucketed into the ML-1M age groups so both datasets share
    one demographic scheme; the release year comes from the release date (else the
    title). ``rating_range`` and ``unknown`` (items missing from ``u.item``): see the
    module docstring.
    """
    folder = _folder(path)
    t = read_typed_table(require_file(folder, "u.data"), _RATING_COLS, sep="\t", header=False)
    check_ratings(t, "rating", rating_range)
    users, items, ts, ratings = _interactions(t)
    item_info = _ml100k_items(folder)
    keep = unknown_items(t, items, item_info, unknown, folder / "u.item")
    users, items, ts, ratings = users[keep], items[keep], ts[keep], ratings[keep]
    user_info = _ml100k_users(folder) if _optional_users(folder / "u.user") else None
    return assemble("ml-100k", users, items, ts, ratings, item_info, user_info)


# ---------------------------------------------------------------------------
# ML-1M
# ---------------------------------------------------------------------------


def _ml1m_items(path: Path) -> ItemInfo:
    """``movies.dat``: ``MovieID::Title (Year)::Genre1|Genre2``."""
    cols = [Col("item", "int"), Col("title", "str"), Col("genres", "str", nullable=True)]
    t = read_colon_table(path, cols)
    check_unique(t, "item")
    genres, names = multi_hot(t, "genres", ML1M_GENRES)
    return ItemInfo(
        ids=t.frame["item"].to_numpy(np.int64),
        genres=genres,
        genre_names=names,
        year=year_from_text(t.frame["title"]),
        titles=t.frame["title"].tolist(),
    )


def _ml1m_users(path: Path) -> UserInfo:
    """``users.dat``: ``UserID::Gender::Age::Occupation::Zip`` (age and occupation coded)."""
    cols = [
        Col("user", "int"),
        Col("gender", "str"),
        Col("age", "int"),
        Col("occupation", "int"),
        Col("zip", "str", nullable=True),
    ]
    t = read_colon_table(path, cols)
    check_unique(t, "user")
    return UserInfo(
        ids=t.frame["user"].to_numpy(np.int64),
        features={
            "gender": categorical(t, "gender", GENDER_LABELS),
            "age": age_bucket(t, "age", exact=True),
            "occupation": categorical(
                t, "occupation", ML1M_OCCUPATIONS, values=range(len(ML1M_OCCUPATIONS))
            ),
        },
        labels={"gender": GENDER_LABELS, "age": AGE_LABELS, "occupation": ML1M_OCCUPATIONS},
    )


def load_ml1m(path: str | Path, rating_range: tuple[float, float] = MOVIELENS_SCALE,
              unknown: str = "keep") -> Dataset:
    """Load a MovieLens-1M folder (``ratings.dat``, ``movies.dat``; ``users.dat``
    optional).

    All 1,000,209 ratings are interactions (6,040 users; the 3,706 rated movies form
    the item catalogue, 18 genres). The release year is parsed from the title.
    ``rating_range`` and ``unknown`` (movies missing from ``movies.dat``): see the
    module docstring.
    """
    folder = _folder(path)
    t = read_colon_table(require_file(folder, "ratings.dat"), _RATING_COLS)
    check_ratings(t, "rating", rating_range)
    users, items, ts, ratings = _interactions(t)
    movies = require_file(folder, "movies.dat")
    item_info = _ml1m_items(movies)
    keep = unknown_items(t, items, item_info, unknown, movies)
    users, items, ts, ratings = users[keep], items[keep], ts[keep], ratings[keep]
    users_path = _optional_users(folder / "users.dat")
    user_info = _ml1m_users(users_path) if users_path else None
    return assemble("ml-1m", users, items, ts, ratings, item_info, user_info)


# ---------------------------------------------------------------------------
# ML-1M in SASRec's within-user time order
# ---------------------------------------------------------------------------

_ORDERED_COLS = [
    Col("user", "int"),
    Col("item", "int"),
    Col("rating", "float"),
    Col("timestamp", "float", nullable=True),  # empty for users >= 3000
    Col("seq", "int"),
]


def load_ml1m_ordered(path: str | Path, rating_range: tuple[float, float] = MOVIELENS_SCALE,
                      unknown: str = "keep") -> Dataset:
    """Load complete MovieLens-1M in SASRec's time order (folder ``ml-1m-ordered``).

    Folder: ``ratings.tsv`` (header ``user item rating timestamp seq``; ``seq`` =
    0-based position in the user's time order, i.e. timestamp order with same-second
    ties in canonical ``ratings.dat`` order; ``timestamp`` may be empty),
    ``movies.dat``, ``users.dat`` (canonical ML-1M files, original ids).

    Interactions are returned sorted by (user, seq), so the leave-one-out split
    (timestamp, then file position) follows ``seq`` exactly; the dataset is marked
    ``order_known`` because ``seq`` gives the order of the users without timestamps
    too. For SASRec's file: 6,040 users, 3,416 items (movies with >= 5 ratings),
    999,611 interactions. ``rating_range`` and ``unknown`` (movies missing from
    ``movies.dat``), and a missing ``users.dat``: as :func:`load_ml1m` (module
    docstring); dropped rows keep the others' ``seq`` order.

    Raises:
        DataError: a user's ``seq`` values are not exactly 0..n-1, or a timestamp
            decreases along ``seq`` (then the split and ``seq`` would disagree).
    """
    folder = _folder(path)
    t = read_typed_table(require_file(folder, "ratings.tsv"), _ORDERED_COLS, sep="\t", header=True)
    check_ratings(t, "rating", rating_range)
    f = t.frame
    user = f["user"].to_numpy(np.int64)
    seq = f["seq"].to_numpy(np.int64)
    order = np.lexsort((seq, user))
    if (np.diff(order) != 1).any():  # not already (user, seq)-sorted: sort (stable)
        f = f.iloc[order].reset_index(drop=True)
        t = Table(t.path, f, t.row_lines[order])
        user, seq = user[order], seq[order]
    first = np.r_[True, user[1:] != user[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(user)), 0))
    bad = np.flatnonzero(seq != np.arange(len(user)) - start)
    if len(bad):
        r = int(bad[0])
        raise t.error(r, f"seq {seq[r]} of user {user[r]}: expected each user's seq to run "
                         "0..n-1 without gaps or repeats")
    ts = f["timestamp"].to_numpy(np.float64)
    missing = np.isnan(ts)
    n_missing = np.bincount(user - user.min(), weights=missing)[user - user.min()]
    n_rows = np.bincount(user - user.min())[user - user.min()]
    mixed = np.flatnonzero(missing & (n_missing < n_rows))
    if len(mixed):
        r = int(mixed[0])
        raise t.error(r, f"user {user[r]} has some timestamps and some empty ones "
                         "(expected all or none)")
    same = ~first[1:]
    back = np.flatnonzero(same & (ts[1:] < ts[:-1]))  # NaN compares False: no check
    if len(back):
        r = int(back[0]) + 1
        raise t.error(r, f"timestamp of user {user[r]} decreases along seq "
                         f"({ts[r - 1]:.0f} at seq {seq[r] - 1}, {ts[r]:.0f} at seq {seq[r]})")
    users, items, ts, ratings = _interactions(t)
    movies = require_file(folder, "movies.dat")
    item_info = _ml1m_items(movies)
    keep = unknown_items(t, items, item_info, unknown, movies)
    users, items, ts, ratings = users[keep], items[keep], ts[keep], ratings[keep]
    users_path = _optional_users(folder / "users.dat")
    user_info = _ml1m_users(users_path) if users_path else None
    ds = assemble("ml-1m-ordered", users, items, ts, ratings, item_info, user_info)
    ds.order_known = True
    return ds


# ---------------------------------------------------------------------------
# ML-1M, NCF predefined split
# ---------------------------------------------------------------------------

_NCF_COLS = [
    Col("user", "int"),
    Col("item", "int"),
    Col("rating", "float"),
    Col("timestamp", "float", nullable=True),  # empty for users >= 3000 in train.tsv
]


def _ncf_negatives(path: Path, test_users: np.ndarray) -> np.ndarray:
    """``test_negatives.tsv`` (``user neg1..negK``) as raw ids aligned with ``test_users``."""
    t = read_typed_table(path, [Col("user", "int")], sep="\t", header=True, others="int")
    check_unique(t, "user")
    f = t.frame
    if f.shape[1] < 2:
        raise DataError(path, "no negative columns after 'user'", line=1)
    neg_users = f["user"].to_numpy(np.int64)
    order = np.argsort(neg_users)
    pos = np.searchsorted(neg_users[order], test_users)
    pos = np.minimum(pos, len(neg_users) - 1)
    missing = neg_users[order][pos] != test_users
    if missing.any():
        raise DataError(path, f"no negatives for test user {test_users[np.argmax(missing)]}")
    if len(neg_users) != len(test_users):
        extra = ~np.isin(neg_users, test_users)
        raise t.error(int(np.argmax(extra)), f"user {neg_users[np.argmax(extra)]} has no test pair")
    return f.drop(columns="user").to_numpy(np.int64)[order[pos]]


def load_ncf(path: str | Path, rating_range: tuple[float, float] = MOVIELENS_SCALE,
             unknown: str = "keep") -> Dataset:
    """Load ML-1M in the NCF leave-one-out protocol (He et al., 2017).

    Folder: ``train.tsv`` / ``test.tsv`` (``user item rating timestamp``; empty
    timestamps read as NaN, file order then stands for time),
    ``test_negatives.tsv`` (``user neg1..neg99``), ``movies.dat``, ``users.dat``.

    Interactions are the train rows in file order; the test pairs and their 99
    sampled negatives become ``predefined`` (index space, aligned with the test
    rows). For ML-1M: 6,040 users, 3,706 items, 994,169 train rows. ``rating_range``
    applies to both tables; ``unknown`` (movies missing from ``movies.dat``) applies
    to the train rows (the test pairs and negatives are the protocol's, kept as
    given); ``users.dat`` is optional.
    """
    folder = _folder(path)
    train = read_typed_table(require_file(folder, "train.tsv"), _NCF_COLS, sep="\t", header=True)
    test = read_typed_table(require_file(folder, "test.tsv"), _NCF_COLS, sep="\t", header=True)
    check_ratings(train, "rating", rating_range)
    check_ratings(test, "rating", rating_range)
    check_unique(test, "user")  # the protocol holds out exactly one pair per user
    test_users = test.frame["user"].to_numpy(np.int64)
    test_items = test.frame["item"].to_numpy(np.int64)
    negatives = _ncf_negatives(require_file(folder, "test_negatives.tsv"), test_users)
    users, items, ts, ratings = _interactions(train)
    movies = require_file(folder, "movies.dat")
    item_info = _ml1m_items(movies)
    keep = unknown_items(train, items, item_info, unknown, movies)
    users, items, ts, ratings = users[keep], items[keep], ts[keep], ratings[keep]
    users_path = _optional_users(folder / "users.dat")
    ds = assemble(
        "ml-1m-ncf",
        users,
        items,
        ts,
        ratings,
        item_info,
        _ml1m_users(users_path) if users_path else None,
        extra_users=[test_users],
        extra_items=[test_items, negatives.ravel()],
    )
    ds.predefined = PredefinedSplit(
        test_users=lookup(ds.user_ids, test_users),
        test_items=lookup(ds.item_ids, test_items),
        test_negatives=lookup(ds.item_ids, negatives.ravel()).reshape(negatives.shape),
    )
    return ds

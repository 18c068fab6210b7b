"""Loaders: hand-made fixture files with known answers, malformed input naming file
and line, and counts on the real MovieLens data when it is present."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset_dir

from marl_two_tower.config import DataConfig
from marl_two_tower.data import load_dataset
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.generic import load_table
from marl_two_tower.data.movielens import ML1M_GENRES, ML100K_GENRES, load_ml1m, load_ml100k, load_ncf
from marl_two_tower.data.parsing import AGE_LABELS
from marl_two_tower.data.split import leave_one_out


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("latin-1") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


def flags(*on: int, n: int = 19) -> str:
    return "|".join("1" if k in on else "0" for k in range(n))


# ---------------------------------------------------------------------------
# Hand-made MovieLens folders
# ---------------------------------------------------------------------------

ML100K = {
    "u.data": "2\t20\t4\t881250949\n1\t10\t5\t874965758\n2\t10\t3\t876893171\n",
    "u.item": (
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}\n"
        f"20|Caf\xe9 Society (1999)|||http://y|{flags(8)}\n"
        f"30|Unseen (1980)|01-Jan-1980||http://z|{flags(0)}\n"
    ),
    "u.user": "1|15|F|student|12345\n2|60|M|writer|54321\n3|30|M|writer|11111\n",
}


def test_ml100k_side_information_decoded(tmp_path: Path) -> None:
    ds = load_ml100k(write(tmp_path, ML100K))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 2, 3)
    np.testing.assert_array_equal(ds.user_ids, [1, 2])
    np.testing.assert_array_equal(ds.item_ids, [10, 20])  # item 30 has no rating
    # Interactions keep file order, in index space.
    np.testing.assert_array_equal(ds.users, [1, 0, 1])
    np.testing.assert_array_equal(ds.items, [1, 0, 0])
    np.testing.assert_array_equal(ds.timestamps, [881250949, 874965758, 876893171])
    np.testing.assert_array_equal(ds.ratings, [4, 5, 3])
    assert ds.genre_names == ML100K_GENRES  # no u.genre: the standard 19 names
    assert [ds.genre_names[g] for g in np.flatnonzero(ds.item_genres[0])] == [
        "Animation", "Children's", "Comedy",
    ]
    assert [ds.genre_names[g] for g in np.flatnonzero(ds.item_genres[1])] == ["Drama"]
    # Year from the release date; item 20 has none, so from its title.
    np.testing.assert_array_equal(ds.item_year, [1995, 1999])
    assert ds.item_titles == ["Toy Story (1995)", "Caf\xe9 Society (1999)"]  # latin-1
    # Raw ages 15 and 60 fall in the ML-1M buckets "Under 18" and "56+".
    assert [AGE_LABELS[c] for c in ds.user_features["age"]] == ["Under 18", "56+"]
    assert ds.user_feature_labels["gender"] == ["F", "M"]
    np.testing.assert_array_equal(ds.user_features["gender"], [0, 1])
    # No u.occupation: the labels are the sorted values of u.user.
    assert ds.user_feature_labels["occupation"] == ["student", "writer"]
    np.testing.assert_array_equal(ds.user_features["occupation"], [0, 1])


def test_ml100k_genre_and_occupation_files_are_used(tmp_path: Path) -> None:
    names = [f"G{k}" for k in range(19)]
    genre = "".join(f"{n}|{k}\n" for k, n in reversed(list(enumerate(names)))) + "\n"
    files = {**ML100K, "u.genre": genre, "u.occupation": "writer\nstudent\nartist\n"}
    ds = load_ml100k(write(tmp_path, files))
    assert ds.genre_names == names  # ordered by index, not by line
    assert ds.user_feature_labels["occupation"] == ["writer", "student", "artist"]
    np.testing.assert_array_equal(ds.user_features["occupation"], [1, 0])


ML1M = {
    "ratings.dat": "1::1::5::978300760\n2::3::3::978302109\n1::2::4::978301968\n",
    "movies.dat": (
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::City of Lost Children, The (1995)::Adventure|Sci-Fi\n"
        "3::No Year::Drama\n"
        "4::Heat (1995)::Action|Crime|Thriller\n"
    ),
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n9::M::25::15::55117\n",
}


def test_ml1m_side_information_decoded(tmp_path: Path) -> None:
    ds = load_ml1m(write(tmp_path, ML1M))
    assert (ds.n_users, ds.n_items, ds.n_interactions, ds.n_genres) == (2, 3, 3, 18)
    assert ds.genre_names == ML1M_GENRES
    np.testing.assert_array_equal(ds.item_ids, [1, 2, 3])  # movie 4 is never rated
    g = {ds.genre_names[k] for k in np.flatnonzero(ds.item_genres[1])}
    assert g == {"Adventure", "Sci-Fi"}
    np.testing.assert_array_equal(ds.item_genres.sum(1), [3, 2, 1])
    np.testing.assert_array_equal(ds.item_year, [1995, 1995, 0])  # 0 = unknown
    assert ds.item_titles == ["Toy Story (1995)", "City of Lost Children, The (1995)", "No Year"]
    assert [AGE_LABELS[c] for c in ds.user_features["age"]] == ["Under 18", "56+"]
    occ = ds.user_feature_labels["occupation"]
    assert [occ[c] for c in ds.user_features["occupation"]] == ["K-12 student", "self-employed"]
    np.testing.assert_array_equal(ds.user_features["gender"], [0, 1])


NCF = {
    "train.tsv": (
        "user\titem\trating\ttimestamp\n"
        "1\t1\t5\t978300760\n"
        "1\t2\t3\t978302109\n"
        "3000\t2\t4\t\n"
        "3000\t1\t2\t\n"
    ),
    "test.tsv": "user\titem\trating\ttimestamp\n1\t3\t4\t978824351\n3000\t4\t5\t978300174\n",
    "test_negatives.tsv": "user\tneg1\tneg2\n3000\t3\t5\n1\t4\t5\n",
    "movies.dat": ML1M["movies.dat"] + "5::Five (2000)::Drama\n",
    "users.dat": "1::F::1::10::48067\n3000::M::25::15::55117\n",
}


def test_ncf_predefined_split_and_nan_timestamps(tmp_path: Path) -> None:
    ds = load_ncf(write(tmp_path, NCF))
    # Items from train, test and negatives: 1, 2 (train), 3, 4 (test), 5 (negatives).
    np.testing.assert_array_equal(ds.item_ids, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ds.user_ids, [1, 3000])
    assert ds.n_interactions == 4
    np.testing.assert_array_equal(ds.items, [0, 1, 1, 0])  # file order
    assert np.isnan(ds.timestamps[2:]).all() and not np.isnan(ds.timestamps[:2]).any()
    pre = ds.predefined
    assert pre is not None
    np.testing.assert_array_equal(pre.test_users, [0, 1])
    np.testing.assert_array_equal(pre.test_items, [2, 3])
    # Negatives are aligned with test rows although the file lists user 3000 first.
    np.testing.assert_array_equal(pre.test_negatives, [[3, 4], [2, 4]])
    assert ds.item_year[4] == 2000 and ds.genre_names == ML1M_GENRES

    split = leave_one_out(ds)
    np.testing.assert_array_equal(split.test_items, [2, 3])
    np.testing.assert_array_equal(split.val_items, [1, 0])  # last remaining, file order


# ---------------------------------------------------------------------------
# Malformed input: one error naming file and line
# ---------------------------------------------------------------------------

GOOD_UDATA = "1\t10\t5\t874965758\n2\t20\t4\t881250949\n"


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (GOOD_UDATA + "2\t10\t3\n", 3, "expected 4 fields separated by '\\t', found 3"),
        (GOOD_UDATA + "2\t10\t3\t1\t9\n", 3, "expected 4 fields"),
        ("1\t10\t5\t1\n\n\n2\tten\t4\t2\n", 4, "non-numeric value 'ten' in column 'item'"),
        ("1\t10\t5\t1\n2\t\t4\t2\n", 2, "empty value in column 'item'"),
        ("1.5\t10\t5\t1\n", 1, "expected an integer"),
        ("user\titem\trating\ttimestamp\n" + GOOD_UDATA, 1, "non-numeric value 'user'"),
        ("1\t10\t5\t1\r\n2\t20\tx\t2\r\n", 2, "non-numeric value 'x' in column 'rating'"),
    ],
)
def test_ml100k_bad_line_is_named(tmp_path: Path, content: str, line: int, reason: str) -> None:
    folder = write(tmp_path, {**ML100K, "u.data": content})
    with pytest.raises(DataError) as err:
        load_ml100k(folder)
    assert err.value.path == str(folder / "u.data")
    assert err.value.line == line
    assert reason in err.value.reason
    assert str(err.value).startswith(f"{folder / 'u.data'}:{line}: ")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    folder = write(tmp_path, {**ML100K, "u.data": "\n\n"})
    with pytest.raises(DataError, match=r"u\.data: empty file"):
        load_ml100k(folder)


def test_missing_required_file_is_named(tmp_path: Path) -> None:
    files = dict(ML1M)
    del files["movies.dat"]  # users.dat is optional (no demographics then)
    folder = write(tmp_path, files)
    with pytest.raises(DataError) as err:
        load_ml1m(folder)
    assert err.value.path == str(folder / "movies.dat") and "not found" in err.value.reason
    with pytest.raises(DataError, match="dataset folder not found"):
        load_ml100k(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"),
    [
        ("ratings.dat", "1::1::5::978300760\n1::2::4\n", 2, "expected 4 fields separated by '::'"),
        ("movies.dat", "1::Toy Story (1995)::Animation\n2::Heat::Westerns\n", 2,
         "unknown genre 'Westerns'"),
        ("users.dat", "1::F::1::10::1\n2::X::56::16::2\n", 2, "unknown gender 'X'"),
        ("users.dat", "1::F::1::10::1\n2::M::57::16::2\n", 2, "unknown age 57"),
        ("users.dat", "1::F::1::10::1\n1::M::56::16::2\n", 2, "duplicate user 1"),
    ],
)
def test_ml1m_bad_line_is_named(
    tmp_path: Path, name: str, content: str, line: int, reason: str
) -> None:
    folder = write(tmp_path, {**ML1M, name: content})
    with pytest.raises(DataError) as err:
        load_ml1m(folder)
    assert (err.value.path, err.value.line) == (str(folder / name), line)
    assert reason in err.value.reason


@pytest.mark.parametrize(
    ("name", "content", "line", "reason"),
    [
        ("train.tsv", NCF["train.tsv"] + "user\titem\trating\ttimestamp\n1\t3\t1\t5\n", 6,
         "duplicate header line"),
        ("train.tsv", "user\titem\trating\n1\t1\t5\n", 1, "missing column 'timestamp'"),
        ("train.tsv", "user\titem\trating\ttimestamp\n", None, "no data rows"),
        ("train.tsv", NCF["train.tsv"] + "3000\t\t4\t\n", 6, "empty value in column 'item'"),
        ("test_negatives.tsv", "user\tneg1\tneg2\n3000\t3\t5\n1\t4\tfive\n", 3,
         "non-numeric value 'five' in column 'neg2'"),
        ("test_negatives.tsv", "user\tneg1\tneg2\n3000\t3\t5\n", None,
         "no negatives for test user 1"),
        ("test.tsv", NCF["test.tsv"] + "1\t2\t5\t1\n", 4, "duplicate user 1"),
    ],
)
def test_ncf_bad_input_is_named(
    tmp_path: Path, name: str, content: str, line: int | None, reason: str
) -> None:
    folder = write(tmp_path, {**NCF, name: content})
    with pytest.raises(DataError) as err:
        load_ncf(folder)
    assert (err.value.path, err.value.line) == (str(folder / name), line)
    assert reason in err.value.reason


# ---------------------------------------------------------------------------
# Generic tables
# ---------------------------------------------------------------------------


def test_generic_csv_with_item_and_user_tables(tmp_path: Path) -> None:
    write(tmp_path, {
        "log.csv": "user,item,timestamp,rating,extra\nu2,7,100,4,x\nu1,7,,5,y\nu1,9,50,1,z\n",
        "items.csv": 'item,genres,title\n7,Drama|Comedy,"Film, The (1990)"\n9,,Other\n8,Horror,X\n',
        "users.tsv": "user\tgender\tage\nu1\tF\t25\nu2\tM\t\n",
    })
    ds = load_table(tmp_path / "log.csv", tmp_path / "items.csv", tmp_path / "users.tsv")
    assert ds.name == "log"
    assert ds.user_ids.tolist() == ["u1", "u2"]
    np.testing.assert_array_equal(ds.item_ids, [7, 9])
    np.testing.assert_array_equal(ds.users, [1, 0, 0])
    np.testing.assert_array_equal(ds.timestamps, [100, np.nan, 50])
    np.testing.assert_array_equal(ds.ratings, [4, 5, 1])
    assert ds.genre_names == ["Comedy", "Drama", "Horror"]
    np.testing.assert_array_equal(ds.item_genres, [[1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ds.item_year, [1990, 0])  # year parsed from the title
    assert ds.item_titles == ["Film, The (1990)", "Other"]
    assert ds.user_feature_labels == {"gender": ["F", "M"], "age": ["25"]}
    np.testing.assert_array_equal(ds.user_features["age"], [0, -1])  # empty -> unknown


def test_generic_without_timestamps_and_parquet_roundtrip(tmp_path: Path) -> None:
    write(tmp_path, {"log.tsv": "user\titem\n1\t2\n1\t3\n"})
    ds = load_table(tmp_path / "log.tsv")
    assert np.isnan(ds.timestamps).all() and ds.ratings is None
    frame = pd.DataFrame({"user": [1, 1], "item": [2, 3],
                          "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02"])})
    frame.to_parquet(tmp_path / "log.parquet")
    pq = load_table(tmp_path / "log.parquet")
    np.testing.assert_array_equal(pq.items, ds.items)
    np.testing.assert_array_equal(pq.timestamps, [1577836800, 1577923200])


def test_generic_iso_timestamps(tmp_path: Path) -> None:
    write(tmp_path, {"log.csv": "user,item,timestamp\n1,2,2020-01-01T00:00:00\n1,3,\n"})
    np.testing.assert_array_equal(load_table(tmp_path / "log.csv").timestamps, [1577836800, np.nan])


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (b"user,timestamp\n1,2\n", 1, "missing column 'item' (header has: user, timestamp)"),
        (b"user,item\n1,2\nuser,item\n3,4\n", 3, "duplicate header line"),
        (b"user,item,item\n1,2,3\n", 1, "duplicate column name 'item'"),
        (b"", None, "empty file"),
        (b"user,item,timestamp\n", None, "no data rows"),
        (b'user,item,timestamp\n"1",2,3\n1,2\n', 3, "expected 3 fields"),
        (b'user,item,title\n1,"a\nb",x\n1,2\n', 4, "expected 3 fields"),  # quoted newline
        (b'user,item\n"1,2\n', 2, "unterminated quoted field"),
        (b"user,item,timestamp\n1,2,3\n1,3,yesterday\n", 3, "bad timestamp 'yesterday'"),
        (b"user,item,rating\n1,2,3\n1,3,good\n", 3, "non-numeric value 'good' in column 'rating'"),
        (b"user,item\n1,2\n\xff\xfe,3\n", 3, "not valid utf-8"),
    ],
)
def test_generic_bad_input_is_named(
    tmp_path: Path, content: bytes, line: int | None, reason: str
) -> None:
    write(tmp_path, {"log.csv": content})
    with pytest.raises(DataError) as err:
        load_table(tmp_path / "log.csv")
    assert (err.value.path, err.value.line) == (str(tmp_path / "log.csv"), line)
    assert reason in err.value.reason


def test_generic_bad_item_table_and_extension(tmp_path: Path) -> None:
    write(tmp_path, {"log.csv": "user,item\n1,2\n", "items.csv": "item,genres\n2,A\n2,B\n",
                     "log.txt": "user,item\n1,2\n"})
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'items.csv'}:3: duplicate item")):
        load_table(tmp_path / "log.csv", tmp_path / "items.csv")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_table(tmp_path / "log.txt")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_table(tmp_path / "bad.parquet")


def test_load_dataset_dispatches_to_generic(tmp_path: Path) -> None:
    write(tmp_path, {"log.csv": "user,item,rating\n1,2,5\n1,3,2\n"})
    ds = load_dataset(DataConfig(source="csv", path=str(tmp_path / "log.csv"), min_rating=3))
    assert ds.n_interactions == 1


# ---------------------------------------------------------------------------
# Real MovieLens data (skipped when absent)
# ---------------------------------------------------------------------------


def test_real_ml100k(ml100k_dir: Path) -> None:
    ds = load_ml100k(ml100k_dir)
    assert (ds.n_users, ds.n_items, ds.n_interactions, ds.n_genres) == (943, 1682, 100000, 19)
    assert ds.genre_names[0] == "unknown" and ds.genre_names[-1] == "Western"
    assert not np.isnan(ds.timestamps).any()
    assert (ds.item_year > 0).sum() == 1681  # item 267 "unknown" has no date and no year
    assert np.bincount(ds.user_features["gender"]).tolist() == [273, 670]
    assert (ds.user_features["occupation"] >= 0).all()
    assert len(ds.user_feature_labels["occupation"]) == 21


def test_real_ncf(ml1m_ncf_dir: Path) -> None:
    ds = load_ncf(ml1m_ncf_dir)
    assert (ds.n_users, ds.n_items, ds.n_interactions, ds.n_genres) == (6040, 3706, 994169, 18)
    assert np.isnan(ds.timestamps).sum() == 509518  # users >= 3000 have no timestamps
    pre = ds.predefined
    assert pre is not None and pre.test_negatives is not None
    assert len(pre.test_users) == len(pre.test_items) == 6040
    assert pre.test_negatives.shape == (6040, 99)
    np.testing.assert_array_equal(ds.user_ids[pre.test_users], np.arange(1, 6041))
    assert (ds.user_features["age"] >= 0).all() and (ds.item_genres.sum(1) > 0).all()
    split = leave_one_out(ds)
    np.testing.assert_array_equal(split.test_items[pre.test_users], pre.test_items)
    assert split.test_negatives is not None and split.test_negatives.shape == (6040, 99)


def test_real_ml1m_prefix(tmp_path: Path) -> None:
    """load_ml1m on the canonical ratings.dat prefix (users 1..2999), linked, not copied."""
    src = shared_dataset_dir("ml-1m-partial")
    for name, target in [("ratings.dat", "ratings_users_0001-2999.dat"),
                         ("movies.dat", "movies.dat"), ("users.dat", "users.dat")]:
        os.symlink(src / target, tmp_path / name)
    ds = load_ml1m(tmp_path)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2999, 3615, 487650)
    assert not np.isnan(ds.timestamps).any() and ds.n_genres == 18

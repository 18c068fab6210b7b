"""Complete ML-1M in SASRec's time order (``ml-1m-ordered``) and the SASRec item filter
(``data.min_item_count``): hand-made folders with known answers, bad input naming the
line, and the split equivalence on the real data (issue 14)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset_dir

from marl_two_tower.config import DataConfig
from marl_two_tower.data import load_dataset, load_split
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.movielens import load_ml1m_ordered
from marl_two_tower.data.split import Split, leave_one_out

MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::City of Lost Children, The (1995)::Adventure|Sci-Fi\n"
    "3::No Year::Drama\n"
    "4::Four (1990)::Drama\n"
)
USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3000::M::25::15::55117\n"
HEADER = "user\titem\trating\ttimestamp\tseq\n"


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content.encode("latin-1"))
    return folder


def ordered(tmp_path: Path, rows: str) -> Path:
    return write(tmp_path, {"ratings.tsv": HEADER + rows, "movies.dat": MOVIES, "users.dat": USERS})


def test_ordered_split_follows_seq_not_file_order(tmp_path: Path) -> None:
    # User 3000 has no timestamps and its rows are shuffled in the file: seq decides.
    # User 1's two rows at the same second are ordered by seq as well.
    rows = (
        "3000\t2\t4\t\t2\n"
        "1\t1\t5\t100\t0\n"
        "3000\t4\t3\t\t0\n"
        "1\t3\t4\t200\t2\n"
        "1\t2\t3\t200\t1\n"
        "3000\t1\t2\t\t3\n"
        "3000\t3\t5\t\t1\n"
    )
    ds = load_ml1m_ordered(ordered(tmp_path, rows))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 4, 7)
    np.testing.assert_array_equal(ds.user_ids, [1, 3000])
    # sorted by (user, seq), index space
    np.testing.assert_array_equal(ds.users, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(ds.item_ids[ds.items], [1, 2, 3, 4, 3, 2, 1])
    np.testing.assert_array_equal(ds.ratings, [5, 3, 4, 3, 5, 4, 2])
    assert np.isnan(ds.timestamps[3:]).all()
    assert ds.timed_users().all()  # seq is the order of the untimed user too
    split = leave_one_out(ds)
    ids = ds.item_ids
    assert ids[split.test_items].tolist() == [3, 1]
    assert ids[split.val_items].tolist() == [2, 2]
    assert ids[split.history(1)].tolist() == [4, 3]
    assert ds.user_features["age"].tolist() == [0, 2]  # users.dat decoded as for ml-1m


@pytest.mark.parametrize(
    ("rows", "line", "reason"),
    [
        ("1\t1\t5\t100\t0\n1\t2\t5\t101\t2\n", 3, "seq 2 of user 1"),  # gap
        ("1\t1\t5\t100\t0\n1\t2\t5\t101\t0\n", 3, "seq 0 of user 1"),  # repeat
        ("1\t1\t5\t300\t0\n1\t2\t5\t200\t1\n", 3, "timestamp of user 1 decreases"),
        ("1\t1\t5\t300\t0\n1\t2\t5\t\t1\n", 3, "some timestamps and some empty"),
        ("1\t1\t5\t300\tx\n", 2, "non-numeric value 'x' in column 'seq'"),
    ],
)
def test_ordered_bad_input_is_named(tmp_path: Path, rows: str, line: int, reason: str) -> None:
    folder = ordered(tmp_path, rows)
    with pytest.raises(DataError, match=rf"ratings.tsv:{line}: .*{reason}"):
        load_ml1m_ordered(folder)


def test_ordered_missing_seq_column(tmp_path: Path) -> None:
    folder = write(tmp_path, {"ratings.tsv": "user\titem\trating\ttimestamp\n1\t1\t5\t1\n",
                              "movies.dat": MOVIES, "users.dat": USERS})
    with pytest.raises(DataError, match=r"ratings.tsv:1: missing column 'seq'"):
        load_ml1m_ordered(folder)


def test_ordered_honours_rating_range_unknown_items_and_missing_users(tmp_path: Path, caplog) -> None:
    """As the other MovieLens loaders: data.rating_range refuses a rating outside the
    scale at its file line, data.unknown_items keeps or drops movies absent from
    movies.dat (the rest keep their seq order), a missing users.dat loads without
    demographics."""
    import logging

    rows = "1\t1\t5\t100\t0\n1\t77\t3\t150\t1\n1\t2\t9\t200\t2\n2\t3\t4\t50\t0\n"
    folder = ordered(tmp_path / "a", rows)
    with pytest.raises(DataError, match=r"ratings\.tsv:4: rating 9 outside the rating scale 1\.\.5"):
        load_dataset(DataConfig(source="ml-1m-ordered", path=str(folder)))
    with caplog.at_level(logging.WARNING):
        kept = load_dataset(DataConfig(source="ml-1m-ordered", path=str(folder), rating_range=[0, 10]))
    assert "1 rating(s) of 1 item(s) not in movies.dat (first: line 3, item 77)" in caplog.text
    assert kept.item_ids[kept.items].tolist() == [1, 77, 2, 3]
    dropped = load_dataset(DataConfig(source="ml-1m-ordered", path=str(folder), rating_range=[0, 10],
                                      unknown_items="drop"))
    assert dropped.item_ids[dropped.items].tolist() == [1, 2, 3]
    assert dropped.ratings.tolist() == [5, 9, 4] and dropped.order_known
    (folder / "users.dat").unlink()
    no_users = load_dataset(DataConfig(source="ml-1m-ordered", path=str(folder), rating_range=[0, 10]))
    assert no_users.user_features == {} and no_users.n_interactions == 4


ML1M = {
    # item 4 has 1 rating, item 2 has 2, items 1 and 3 have 3; user 2 rated only item 4
    "ratings.dat": (
        "1::1::5::10\n1::2::3::11\n1::3::4::12\n"
        "2::4::1::20\n"
        "3000::1::2::30\n3000::3::5::31\n3000::2::2::32\n"
        "9::1::3::40\n9::3::3::41\n"
    ),
    "movies.dat": MOVIES,
    "users.dat": USERS + "9::M::25::15::55117\n",
}


def test_min_item_count_drops_rare_items_and_reindexes(tmp_path: Path) -> None:
    folder = write(tmp_path, ML1M)
    ds = load_dataset(DataConfig(source="ml-1m", path=str(folder), min_item_count=3))
    np.testing.assert_array_equal(ds.item_ids, [1, 3])  # items 2 (2x) and 4 (1x) dropped
    np.testing.assert_array_equal(ds.user_ids, [1, 9, 3000])  # user 2 had only item 4
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 2, 6)
    np.testing.assert_array_equal(ds.user_ids[ds.users], [1, 1, 3000, 3000, 9, 9])
    np.testing.assert_array_equal(ds.item_ids[ds.items], [1, 3, 1, 3, 1, 3])
    np.testing.assert_array_equal(ds.timestamps, [10, 12, 30, 31, 40, 41])
    np.testing.assert_array_equal(ds.ratings, [5, 4, 2, 5, 3, 3])
    assert ds.item_titles == ["Toy Story (1995)", "No Year"]
    np.testing.assert_array_equal(ds.item_year, [1995, 0])
    assert ds.item_genres.shape == (2, 18) and ds.item_genres.sum(1).tolist() == [3, 1]
    assert ds.user_features["age"].tolist() == [0, 2, 2]
    # 2 keeps items 1, 2, 3 (item 2 has 2 ratings); 0 and 1 keep everything
    assert load_dataset(DataConfig(source="ml-1m", path=str(folder), min_item_count=2)).n_items == 3
    for n in (0, 1):
        assert load_dataset(DataConfig(source="ml-1m", path=str(folder), min_item_count=n)).n_items == 4


def test_min_item_count_bad_values(tmp_path: Path) -> None:
    folder = write(tmp_path, ML1M)
    with pytest.raises(DataError, match=r"data.min_item_count: expected an int >= 0, got -1"):
        load_dataset(DataConfig(source="ml-1m", path=str(folder), min_item_count=-1))
    cfg = DataConfig(source="synthetic", min_item_count=5)
    cfg.synthetic.n_users, cfg.synthetic.n_items = 50, 80
    ds = load_dataset(cfg)  # any source: every kept item has >= 5 interactions
    assert np.bincount(ds.items, minlength=ds.n_items).min() >= 5


# ---------------------------------------------------------------------------
# Real data: ml-1m + min_item_count=5 reproduces SASRec's ML-1M split
# ---------------------------------------------------------------------------


def _by_original_id(split: Split) -> tuple[dict[int, int], dict[int, int], dict[int, list[int]]]:
    ds = split.dataset
    uid, iid = ds.user_ids.tolist(), ds.item_ids
    val = dict(zip(uid, np.where(split.val_items >= 0, iid[split.val_items], -1).tolist(), strict=True))
    test = dict(zip(uid, np.where(split.test_items >= 0, iid[split.test_items], -1).tolist(), strict=True))
    hist = {u: iid[split.history(k)].tolist() for k, u in enumerate(uid) if u < 3000}
    return val, test, hist


def _complete_ratings_dat(partial: Path, out: Path) -> None:
    """A ratings.dat with all 1,000,209 ratings: users 1..2999 from the canonical prefix
    (timestamps), users 3000..6040 from the 5 folds with timestamp 0 (their order is
    irrelevant here; they are needed because SASRec's >= 5 filter counts every user's
    ratings)."""
    folds = pd.concat(
        pd.read_csv(partial / "ratings_5fold_no_timestamp" / f"test_1m{k}.dat", header=None,
                    names=["u", "i", "r"])
        for k in range(1, 6)
    )
    rest = folds[folds["u"] >= 3000]
    text = (rest["u"].astype(str) + "::" + rest["i"].astype(str) + "::" + rest["r"].astype(str)
            + "::0\n").str.cat()
    out.mkdir()
    (out / "ratings.dat").write_bytes((partial / "ratings_users_0001-2999.dat").read_bytes()
                                      + text.encode())
    for name in ("movies.dat", "users.dat"):
        os.symlink(partial / name, out / name)


def test_real_ml1m_min_item_count_equals_ml1m_ordered(tmp_path: Path) -> None:
    partial, ordered_dir = shared_dataset_dir("ml-1m-partial"), shared_dataset_dir("ml-1m-ordered")
    so = load_split(DataConfig(source="ml-1m-ordered", path=str(ordered_dir)))
    assert (so.n_users, so.n_items, so.dataset.n_interactions) == (6040, 3416, 999_611)
    assert so.dataset.timed_users().all()
    _complete_ratings_dat(partial, tmp_path / "ml-1m")
    sp5 = load_split(DataConfig(source="ml-1m", path=str(tmp_path / "ml-1m"), min_item_count=5))
    assert (sp5.n_users, sp5.n_items, sp5.dataset.n_interactions) == (6040, 3416, 999_611)
    (v_o, t_o, h_o), (v_5, t_5, h_5) = _by_original_id(so), _by_original_id(sp5)
    users = range(1, 3000)
    assert [v_o[u] for u in users] == [v_5[u] for u in users]
    assert [t_o[u] for u in users] == [t_5[u] for u in users]
    assert all(h_o[u] == h_5[u] for u in users)  # and the train sequences, in order
    # Counting only users 1..2999 (the timed prefix alone) is not SASRec's filter.
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    for name, target in [("ratings.dat", "ratings_users_0001-2999.dat"),
                         ("movies.dat", "movies.dat"), ("users.dat", "users.dat")]:
        os.symlink(partial / target, prefix / name)
    sp_prefix = load_split(DataConfig(source="ml-1m", path=str(prefix), min_item_count=5))
    v_p, t_p, _ = _by_original_id(sp_prefix)
    assert sum(v_p[u] != v_o[u] or t_p[u] != t_o[u] for u in users) > 0

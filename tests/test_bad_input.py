"""Bad input data (issue 13, points 5-9): each case loads correctly or fails before
training with one DataError naming the file and line (or the config key)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from test_loaders import ML1M, ML100K, NCF, write

from marl_two_tower.config import DataConfig
from marl_two_tower.data import load_dataset, load_split
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.generic import load_table
from marl_two_tower.data.movielens import load_ml1m, load_ml100k, load_ncf

BOM = "\ufeff".encode()


def ml1m_folder(tmp_path: Path, **files: str | bytes) -> Path:
    return write(tmp_path, {**ML1M, **files})


def same_dataset(a, b) -> None:
    for name in ("users", "items", "timestamps", "ratings", "user_ids", "item_ids", "item_genres"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.user_features.keys() == b.user_features.keys()


# ---------------------------------------------------------------------------
# 5. A UTF-8 byte-order mark on the first line of any file
# ---------------------------------------------------------------------------


def test_bom_on_the_first_line_of_every_movielens_file(tmp_path: Path) -> None:
    plain = load_ml1m(ml1m_folder(tmp_path / "plain"))
    for name in ("ratings.dat", "movies.dat", "users.dat"):
        content = BOM + ML1M[name].encode("latin-1")
        same_dataset(load_ml1m(ml1m_folder(tmp_path / name, **{name: content})), plain)
    plain100 = load_ml100k(write(tmp_path / "p100", ML100K))
    for name in ("u.data", "u.item", "u.user"):
        folder = write(tmp_path / f"b{name}", {**ML100K, name: BOM + ML100K[name].encode("latin-1")})
        same_dataset(load_ml100k(folder), plain100)
    ncf = load_ncf(write(tmp_path / "ncf", NCF))
    folder = write(tmp_path / "ncfb", {**NCF, "train.tsv": BOM + NCF["train.tsv"].encode()})
    same_dataset(load_ncf(folder), ncf)


def test_bom_in_generic_tables_and_line_numbers_unchanged(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(BOM + b"user,item,rating\n1,2,3\n1,3,4\n")
    ds = load_table(tmp_path / "a.csv")
    assert ds.n_interactions == 2 and ds.user_ids.tolist() == [1]
    # a bad line after a BOM is still named by its own line number
    bad = BOM + b"1::1::5::978300760\n1::2::x::978302109\n"
    with pytest.raises(DataError, match=r"ratings\.dat:2: non-numeric value 'x'"):
        load_ml1m(ml1m_folder(tmp_path / "b", **{"ratings.dat": bad}))


# ---------------------------------------------------------------------------
# 6. users.dat missing: no demographics, one warning, group metrics n/a
# ---------------------------------------------------------------------------


def test_missing_user_file_loads_without_demographics(tmp_path: Path, caplog) -> None:
    files = {k: v for k, v in ML1M.items() if k != "users.dat"}
    folder = write(tmp_path, files)
    with caplog.at_level(logging.WARNING):
        ds = load_ml1m(folder)
    warnings = [r for r in caplog.records if "users.dat" in r.getMessage()]
    assert len(warnings) == 1 and "without user demographics" in warnings[0].getMessage()
    assert ds.user_features == {} and ds.n_interactions == 3
    same = load_ml1m(ml1m_folder(tmp_path / "full"))
    np.testing.assert_array_equal(ds.users, same.users)
    # ML-100K (u.user) and NCF too
    no_user = {k: v for k, v in ML100K.items() if k != "u.user"}
    assert load_ml100k(write(tmp_path / "100", no_user)).user_features == {}
    no_user = {k: v for k, v in NCF.items() if k != "users.dat"}
    assert load_ncf(write(tmp_path / "ncf", no_user)).user_features == {}


def test_group_metrics_read_na_and_a_model_builds_without_demographics(tmp_path: Path) -> None:
    import torch

    from marl_two_tower.config import load_config
    from marl_two_tower.eval.protocols import evaluate
    from marl_two_tower.model.build import COMPONENTS, build_model

    rng = np.random.default_rng(0)
    rows = ["user,item,timestamp"] + [f"{u},{i},{t}" for u in range(30)
                                      for t, i in enumerate(rng.permutation(40)[:8])]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "items.csv").write_text("item,genres\n" + "".join(f"{i},{'AB'[i % 2]}|C\n"
                                                                  for i in range(40)))
    split = load_split(DataConfig(source="csv", path=str(tmp_path / "log.csv"),
                                  items_path=str(tmp_path / "items.csv")))
    out = evaluate(split, lambda u: torch.zeros(len(u), split.n_items), ks=(10,))
    assert out["groups"].startswith("n/a") and "groups" not in out["full"]
    cfg = load_config(None, ["model.dim=8", "model.id_dim=8", "model.hidden=8",
                             *(f"{c}.enabled=true" for c in COMPONENTS)])
    model = build_model(cfg, split)
    assert model.scorer()(np.arange(3)).shape == (3, split.n_items)


# ---------------------------------------------------------------------------
# 7. Ratings outside the scale
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "line"), [("9", 2), ("-3", 3), ("inf", 1), ("0", 2)])
def test_rating_outside_the_scale_is_refused_at_its_line(tmp_path: Path, value: str, line: int) -> None:
    rows = ["1::1::5::978300760", "1::2::3::978302109", "2::1::4::978301968"]
    rows[line - 1] = rows[line - 1].replace(rows[line - 1].split("::")[2], value, 1)
    folder = ml1m_folder(tmp_path, **{"ratings.dat": "\n".join(rows) + "\n"})
    with pytest.raises(DataError, match=rf"ratings\.dat:{line}: rating .* outside the rating scale 1\.\.5"):
        load_ml1m(folder)


def test_rating_scale_is_configurable(tmp_path: Path) -> None:
    rows = "1::1::9::978300760\n1::2::3::978302109\n2::1::4::978301968\n"
    folder = ml1m_folder(tmp_path, **{"ratings.dat": rows})
    ds = load_dataset(DataConfig(source="ml-1m", path=str(folder), rating_range=[0, 10]))
    assert ds.ratings.max() == 9
    with pytest.raises(DataError, match=r"data\.rating_range"):
        load_dataset(DataConfig(source="ml-1m", path=str(folder), rating_range=[5, 1]))
    # generic tables: any finite rating by default, the configured scale when given
    (tmp_path / "r.csv").write_text("user,item,rating\n1,1,9\n1,2,\n2,1,-3\n")
    assert load_table(tmp_path / "r.csv").n_interactions == 3  # empty rating allowed
    with pytest.raises(DataError, match=r"r\.csv:2: rating 9\.0 outside the rating scale 1\.\.5"):
        load_dataset(DataConfig(source="csv", path=str(tmp_path / "r.csv"), rating_range=[1, 5]))
    (tmp_path / "i.csv").write_text("user,item,rating\n1,1,3\n1,2,inf\n")
    with pytest.raises(DataError, match=r"i\.csv:3: rating inf not a finite number"):
        load_table(tmp_path / "i.csv")


# ---------------------------------------------------------------------------
# 8. Ratings of movies absent from movies.dat
# ---------------------------------------------------------------------------


def test_unknown_movies_warn_with_count_and_first_line(tmp_path: Path, caplog) -> None:
    rows = ("1::1::5::978300760\n1::77::3::978302109\n2::1::4::978301968\n2::77::2::978300000\n"
            "2::78::2::978300001\n")
    folder = ml1m_folder(tmp_path, **{"ratings.dat": rows})
    with caplog.at_level(logging.WARNING):
        kept = load_dataset(DataConfig(source="ml-1m", path=str(folder)))
    msg = [r.getMessage() for r in caplog.records if "not in movies.dat" in r.getMessage()]
    assert len(msg) == 1
    assert "3 rating(s) of 2 item(s) not in movies.dat (first: line 2, item 77)" in msg[0]
    assert "kept" in msg[0]
    assert kept.n_interactions == 5 and kept.item_ids.tolist() == [1, 77, 78]
    assert not kept.item_genres[1].any() and kept.item_titles[1] == ""  # no side information
    dropped = load_dataset(DataConfig(source="ml-1m", path=str(folder), unknown_items="drop"))
    assert dropped.n_interactions == 2 and dropped.item_ids.tolist() == [1]
    assert DataConfig().unknown_items == "keep"


def test_unknown_items_of_a_generic_item_table(tmp_path: Path, caplog) -> None:
    (tmp_path / "log.csv").write_text("user,item\na,x\na,y\nb,z\n")
    (tmp_path / "items.csv").write_text("item,genres\nx,A\nz,B\n")
    with caplog.at_level(logging.WARNING):
        ds = load_table(tmp_path / "log.csv", tmp_path / "items.csv", unknown="drop")
    assert ds.item_ids.tolist() == ["x", "z"]
    assert any("1 rating(s) of 1 item(s) not in items.csv (first: line 3, item 'y')" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------
# 9. Overflowing ids, one-user data, filters that leave nothing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("big", ["99999999999999999999", "18446744073709551615", "9223372036854775808"])
def test_overflowing_id_is_named_with_its_line(tmp_path: Path, big: str) -> None:
    rows = f"1::1::5::978300760\n{big}::2::3::978302109\n2::1::4::978301968\n"
    with pytest.raises(DataError, match=rf"ratings\.dat:2: integer '{big}' in column 'user' is out of range"):
        load_ml1m(ml1m_folder(tmp_path, **{"ratings.dat": rows}))
    # generic tables take ids as text when they do not fit: loaded, nothing wrapped
    (tmp_path / "g.csv").write_text(f"user,item\n1,5\n{big},6\n")
    ds = load_table(tmp_path / "g.csv")
    assert sorted(ds.user_ids.tolist()) == sorted(["1", big])


def test_one_user_dataset_fails_before_training_naming_the_folder(tmp_path: Path) -> None:
    rows = "".join(f"1\t{10 + k}\t4\t{k}\n" for k in range(5))
    folder = write(tmp_path, {**ML100K, "u.data": rows})
    with pytest.raises(DataError, match=r"1 user\(s\), .*at least 2 users") as err:
        load_split(DataConfig(source="ml-100k", path=str(folder)))
    assert err.value.path == str(folder)


def test_no_user_with_three_interactions_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("user,item\n1,1\n1,2\n2,1\n2,3\n3,2\n")
    with pytest.raises(DataError, match=r"s\.csv: .*no user has a val item"):
        load_split(DataConfig(source="csv", path=str(tmp_path / "s.csv")))


def test_min_rating_that_keeps_nothing_is_refused(tmp_path: Path) -> None:
    folder = ml1m_folder(tmp_path)
    with pytest.raises(DataError, match=r"data\.min_rating: 6 keeps none of the 3 ratings"):
        load_split(DataConfig(source="ml-1m", path=str(folder), min_rating=6))


def test_dropping_unknown_items_that_leaves_nothing_is_refused(tmp_path: Path) -> None:
    folder = ml1m_folder(tmp_path, **{"ratings.dat": "1::77::5::978300760\n"})
    with pytest.raises(DataError, match="no interactions left"):
        load_split(DataConfig(source="ml-1m", path=str(folder), unknown_items="drop"))


def test_sampled_protocol_shortage_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    """A test user with fewer unseen items than eval.sampled_negatives is refused before
    the Trainer is built (the evaluator found it only after training), naming the key,
    the user's original id and the largest value that works."""
    from marl_two_tower.config import ConfigError, load_config
    from marl_two_tower.eval.protocols import sampled_protocol_shortage, unseen_counts
    from marl_two_tower.study import run

    # 8 items; user "u1" consumed 6 of them (2 unseen), the others 3 (5 unseen)
    rows = ["user,item,timestamp"] + [f"u1,{i},{i}" for i in range(6)]
    rows += [f"u{u},{(u + j) % 8},{j}" for u in range(2, 6) for j in range(3)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, [f"data.path={tmp_path / 's.csv'}", "data.source=csv",
                             f"output_dir={tmp_path / 'runs'}", f"checkpoint_dir={tmp_path / 'ck'}",
                             "eval.sampled_negatives=3"])
    split = load_split(cfg.data)
    u1 = split.dataset.user_ids.tolist().index("u1")
    assert unseen_counts(split, np.array([u1]))[0] == 2
    assert sampled_protocol_shortage(split, 3) == (u1, 2)
    assert sampled_protocol_shortage(split, 2) is None
    built = []
    monkeypatch.setattr(run, "Trainer", lambda *a, **k: built.append(1))
    with pytest.raises(ConfigError, match=r"eval\.sampled_negatives=3: test user u1 has only 2 items "
                                          r".*set eval\.sampled_negatives <= 2"):
        run.train_and_evaluate(cfg, progress=False, split=split)
    assert built == []  # refused before any training

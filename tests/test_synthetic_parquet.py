"""Synthetic generator at scale: bounded-memory rewrite, exact lengths, Parquet round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from marl_two_tower.cli.main import main
from marl_two_tower.config import DataConfig, SyntheticConfig
from marl_two_tower.data import load_dataset
from marl_two_tower.data import synthetic as S
from marl_two_tower.data import synthetic_parquet as SP
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.generic import load_table

# Fingerprints of the generator as first committed (679e6ed, before the memory rewrite):
# with every structure knob at its first value (S.legacy_config) the generator must keep
# producing these datasets bit for bit.
LEGACY = [
    (S.legacy_config(n_users=400, n_items=300, interactions_per_user=25, seed=5), "71ef2fa957d396d9"),
    (S.legacy_config(), "b091b9bb69dc3df3"),
    (S.legacy_config(n_users=1200, n_items=5000, n_genres=7, genre_affinity=1.0, seed=11),
     "6406f61f234dd3c6"),
]


@pytest.mark.parametrize("cfg,fingerprint", LEGACY)
def test_legacy_generator_is_bitwise_unchanged(cfg, fingerprint):
    assert S.generate(cfg).fingerprint() == fingerprint


def test_genre_draw_equals_the_dense_inverse_cdf():
    rng = np.random.default_rng(0)
    pref = rng.dirichlet(np.ones(6), size=50)
    cdf = np.cumsum(pref, axis=1)
    uid = rng.integers(0, 50, 2000)
    r = rng.random(2000)
    r[:3] = cdf[uid[:3], 2]  # exactly on a boundary: counts cdf < r strictly
    assert np.array_equal(S._genre_draw(cdf, uid, r), (r[:, None] > cdf[uid]).sum(1))


def test_exact_lengths_gives_the_drawn_history_lengths():
    cfg = SyntheticConfig(n_users=300, n_items=2000, interactions_per_user=30, seed=2, exact_lengths=True)
    ds = S.generate(cfg)
    # the lengths the generator drew (same world and chunk streams as generate)
    world = S._World(cfg, np.random.default_rng(cfg.seed))
    length = S._user_chunk(world, cfg.n_users, np.random.default_rng([cfg.seed, 0]))["length"]
    counts = np.bincount(ds.users, minlength=cfg.n_users)
    assert np.array_equal(counts, length)
    assert abs(counts.mean() - 30) < 3
    key = ds.users * cfg.n_items + ds.items
    assert len(np.unique(key)) == len(key)  # one interaction per (user, item)
    same_user = np.diff(ds.users) == 0
    assert (np.diff(ds.users) >= 0).all() and (np.diff(ds.timestamps)[same_user] > 0).all()
    assert ds.name.endswith("-exact")
    first_only = S.generate(dataclasses.replace(cfg, exact_lengths=False))
    assert first_only.n_interactions < 0.97 * ds.n_interactions  # first-occurrence dedup loses draws


def _assert_same(a, b):
    assert a.fingerprint() == b.fingerprint() and a.name == b.name
    for k in ("users", "items", "timestamps", "item_genres", "item_year", "user_ids", "item_ids"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert a.n_users == b.n_users and a.n_items == b.n_items and a.genre_names == b.genre_names
    assert a.user_feature_labels == b.user_feature_labels
    for k in b.user_features:
        assert np.array_equal(a.user_features[k], b.user_features[k]), k


def test_parquet_round_trip_equals_generate(tmp_path):
    cfg = SyntheticConfig(n_users=500, n_items=300, interactions_per_user=20, seed=4, exact_lengths=True)
    path = tmp_path / "s.parquet"
    info = SP.write_synthetic_parquet(cfg, path)
    ref = S.generate(cfg)
    assert info["n_interactions"] == ref.n_interactions and info["row_groups"] == 1
    _assert_same(SP.read_native(path), ref)
    _assert_same(load_table(path), ref)  # the generic loader takes the fast path
    _assert_same(load_dataset(DataConfig(source="parquet", path=str(path))), ref)
    schema = pq.read_schema(path)
    assert [f.name for f in schema] == ["user", "item", "timestamp"]
    assert str(schema.field("user").type) == "int32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.items.parquet", "s.parquet", "s.users.parquet"]


def test_one_row_group_per_chunk(tmp_path, monkeypatch):
    cfg = SyntheticConfig(n_users=250, n_items=200, interactions_per_user=10, seed=1)
    real = S.iter_chunks
    monkeypatch.setattr(SP, "iter_chunks", lambda c: real(c, chunk_users=100))
    path = tmp_path / "c.parquet"
    SP.write_synthetic_parquet(cfg, path)
    pf = pq.ParquetFile(path)
    chunks = list(real(cfg, chunk_users=100))[1:]
    assert pf.num_row_groups == 3
    assert [pf.metadata.row_group(g).num_rows for g in range(3)] == [len(c["users"]) for c in chunks]
    ds = SP.read_native(path)
    assert np.array_equal(ds.users, np.concatenate([c["users"] for c in chunks]))
    assert np.array_equal(ds.user_features["age"], np.concatenate([c["age"] for c in chunks]))


def test_side_tables_follow_the_generic_layout(tmp_path):
    cfg = SyntheticConfig(n_users=200, n_items=150, interactions_per_user=15, seed=9)
    path = tmp_path / "g.parquet"
    SP.write_synthetic_parquet(cfg, path)
    items, users = SP.side_paths(path)
    other_items = tmp_path / "copy.items.parquet"
    other_items.write_bytes(items.read_bytes())
    ref = S.generate(cfg)
    # another item table than the header's -> the generic route (re-indexes ids)
    ds = load_table(path, other_items, users)
    assert ds.n_interactions == ref.n_interactions
    seen = np.unique(ref.items)
    assert np.array_equal(ds.item_ids, seen)  # generic: catalogue = items with interactions
    assert np.array_equal(seen[ds.items], ref.items) and np.array_equal(ds.users, ref.users)
    assert np.array_equal(ds.timestamps, ref.timestamps)
    names = [ref.genre_names.index(g) for g in ds.genre_names]
    assert np.array_equal(ds.item_genres, ref.item_genres[seen][:, names])
    assert [ds.user_feature_labels["gender"][c] for c in ds.user_features["gender"][:20]] == \
        [ref.user_feature_labels["gender"][c] for c in ref.user_features["gender"][:20]]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    cfg = SyntheticConfig(n_users=250, n_items=200, interactions_per_user=10, seed=1)
    real = S.iter_chunks

    def failing(c):
        it = real(c, chunk_users=100)
        yield next(it)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(SP, "iter_chunks", failing)
    with pytest.raises(KeyboardInterrupt):
        SP.write_synthetic_parquet(cfg, tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []


def test_read_native_refuses_other_parquet(tmp_path):
    import pyarrow as pa

    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"user": [1, 2], "item": [3, 4]}), path)
    assert SP.native_header(path) is None
    with pytest.raises(DataError, match="not a marl-two-tower"):
        SP.read_native(path)
    assert load_table(path).n_interactions == 2  # still a generic table


def test_generate_subcommand(tmp_path, capsys):
    out = tmp_path / "cli" / "synth.parquet"
    assert main(["generate", "--users", "300", "--items", "120", "--interactions-per-user", "12",
                 "--seed", "3", "--output", str(out), "-q"]) == 0
    ds = load_dataset(DataConfig(source="parquet", path=str(out)))
    ref = S.generate(SyntheticConfig(n_users=300, n_items=120, interactions_per_user=12, seed=3,
                                     exact_lengths=True))  # --genres: the config's n_genres
    _assert_same(ds, ref)
    assert f"{ref.n_interactions} interactions" in capsys.readouterr().out


def test_time_order_fast_path_equals_lexsort():
    from marl_two_tower.data.dataset import Dataset
    from marl_two_tower.data.split import time_order

    rng = np.random.default_rng(1)
    fast = 0
    for trial in range(300):
        n = int(rng.integers(1, 40))
        u = np.sort(rng.integers(0, 5, n)) if trial % 2 else rng.integers(0, 5, n)
        ts = rng.integers(0, 4, n).astype(float)
        if trial % 3 == 0:
            ts = np.sort(ts)
        if trial % 5 == 0:
            ts[rng.random(n) < 0.3] = np.nan
        ds = Dataset("x", u, u * 0, ts, 5, 1, np.arange(5), np.arange(1), np.zeros((1, 0), bool), [],
                     np.zeros(1, np.int32))
        ref = np.lexsort((np.arange(n), np.nan_to_num(ts, nan=-np.inf), u))
        fast += bool(np.array_equal(ref, np.arange(n)))
        assert np.array_equal(time_order(ds), ref), trial
    assert fast > 30  # the presorted case was exercised

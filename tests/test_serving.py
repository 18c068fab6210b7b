"""Serving: bundle round-trip, served == offline top-K, FAISS index, cold start, HTTP API."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from marl_two_tower.cli.main import main as cli_main
from marl_two_tower.config import ServingConfig, load_config
from marl_two_tower.data import load_split
from marl_two_tower.data.split import leave_one_out
from marl_two_tower.data.synthetic import generate
from marl_two_tower.eval.protocols import rank_full
from marl_two_tower.fairness.exposure import OnlineExposureBudget
from marl_two_tower.model.two_tower import Controller
from marl_two_tower.serving.commands import build_recommender
from marl_two_tower.serving.export import (
    BUNDLE_FILE,
    bundle_from_model,
    export_bundle,
    load_bundle,
    score_blocks,
)
from marl_two_tower.serving.index import (
    IndexSettings,
    ItemIndex,
    default_nlist,
    measure_recall,
    recall_at_k,
    synthetic_catalogue,
)
from marl_two_tower.serving.recommender import ColdStart, Recommender
from marl_two_tower.serving.service import MAX_BODY_BYTES, create_app
from marl_two_tower.train.trainer import Trainer

TINY = ["data.synthetic.n_users=300", "data.synthetic.n_items=200", "model.dim=16",
        "model.id_dim=16", "model.hidden=32", "train.batch_size=256", "train.epochs=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny two-tower trained for one epoch on synthetic data: (model, cfg, split, ckpt dir)."""
    ck = tmp_path_factory.mktemp("ck")
    cfg = load_config(None, TINY + [f"checkpoint_dir={ck}"])
    split = load_split(cfg.data)
    tr = Trainer(cfg, split, progress=False)
    tr.fit()
    return tr.model.eval(), cfg, split, ck


@pytest.fixture(scope="module")
def bundle_dir(trained, tmp_path_factory):
    model, cfg, split, _ = trained
    return export_bundle(model, cfg, split, tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def rec(bundle_dir):
    return Recommender(load_bundle(bundle_dir))


@pytest.fixture(scope="module")
def client(rec):
    return TestClient(create_app(rec))


def dense_topk(scores: np.ndarray, banned: set[int], k: int) -> list[int]:
    """Oracle: best-first items by score (ties by index), banned items skipped."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [i for i in order if i not in banned][:k]


# ---------------------------------------------------------------------------
# Bundle
# ---------------------------------------------------------------------------


def test_bundle_loads_weights_only_and_round_trips(trained, bundle_dir):
    model, cfg, split, _ = trained
    raw = torch.load(bundle_dir / BUNDLE_FILE, weights_only=True)  # no arbitrary pickle
    assert raw["format"] == "marl-two-tower-serving-bundle"
    b = load_bundle(bundle_dir)
    with torch.no_grad():
        z = model.user_vectors(torch.arange(split.n_users)).numpy()
        y = model.item_vectors().numpy()
    np.testing.assert_allclose(b.user_vectors, z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b.item_vectors, y, rtol=1e-6, atol=1e-6)
    assert list(b.user_ids) == list(split.dataset.user_ids)
    assert list(b.item_ids) == list(split.dataset.item_ids)
    assert b.data_fingerprint == split.dataset.fingerprint()
    assert b.cfg.to_dict() == cfg.to_dict()
    # the model rebuilt from the bundle's own split arrays and state gives the same vectors
    rebuilt = b.build_model()
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt.user_vectors(torch.arange(split.n_users)).numpy(), z,
                                   rtol=1e-6, atol=1e-6)
    s2 = b.split()
    assert (s2.train_matrix != split.train_matrix).nnz == 0
    np.testing.assert_array_equal(s2.train_indptr, split.train_indptr)
    assert json.loads((bundle_dir / "manifest.json").read_text())["n_items"] == split.n_items


def test_seen_sets(rec, trained):
    _, _, split, _ = trained
    b = rec.bundle
    all_seen, train_seen = b.seen_matrix("all"), b.seen_matrix("train")
    assert (train_seen != split.train_matrix).nnz == 0
    u = int(split.eval_users("test")[0])
    expect = set(split.history(u).tolist()) | {int(split.val_items[u]), int(split.test_items[u])}
    assert set(all_seen[u].indices.tolist()) == expect
    with pytest.raises(ValueError, match="seen"):
        b.seen_matrix("everything")


def test_model_rebuilt_from_bundle_has_the_trained_user_vectors(tmp_path):
    """With ContextGNN on, hop 1 of a root is its latest items when its interactions
    have timestamps and a uniform sample otherwise, so the bundle must say which users
    are timed: the model rebuilt from it then gives the trained model's user vectors.
    (Bundles once rebuilt every user as untimed: max |dz_u| 0.079 on a 200-user probe.)
    Users 0..39 have no timestamps here, so both kinds of root are checked."""
    cfg = load_config(None, TINY + [f"checkpoint_dir={tmp_path / 'ck'}", "context_gnn.enabled=true",
                                    "context_gnn.fanout=5"])
    ds = generate(cfg.data.synthetic)
    ds.timestamps[ds.users < 40] = np.nan
    split = leave_one_out(ds, cfg.data.tail_fraction, cfg.data.tail_by)
    timed = split.dataset.timed_users()
    assert not timed[:40].any() and timed[40:].all()
    tr = Trainer(cfg, split, progress=False)
    tr.fit()
    model = tr.model.eval()
    b = load_bundle(export_bundle(model, cfg, split, tmp_path / "bundle"))
    rebuilt_split = b.split()
    np.testing.assert_array_equal(rebuilt_split.dataset.timed_users(), timed)
    for key in ("train_users", "train_items", "train_indptr", "val_items", "test_items",
                "item_pop", "tail_mask"):
        np.testing.assert_array_equal(getattr(rebuilt_split, key), getattr(split, key), err_msg=key)
    users = torch.arange(split.n_users)
    with torch.no_grad():
        z = model.user_vectors(users).numpy()
        z_rebuilt = b.build_model().user_vectors(users).numpy()
    np.testing.assert_allclose(z_rebuilt, z, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------
# Served top-K == offline evaluation top-K
# ---------------------------------------------------------------------------


def test_served_topk_equals_offline_rank_full(trained):
    model, cfg, split, _ = trained
    b = bundle_from_model(model, cfg, split)
    rec = Recommender(b, ServingConfig(seen="train"))
    # validation protocol: train items masked
    res = rank_full(split, model.scorer(), "val", k_max=10)
    served = np.stack([lst.items for lst in rec.recommend(res.users, 10)])
    np.testing.assert_array_equal(served, res.recs)
    # test protocol: train + validation item masked, via a per-request exclusion
    res = rank_full(split, model.scorer(), "test", k_max=10)
    ok = np.array([split.test_items[u] not in split.history(u) and split.test_items[u] != split.val_items[u]
                   for u in res.users])
    users = res.users[ok]
    lists = rec.recommend(users, 10, exclude=[np.array([split.val_items[u]]) for u in users])
    np.testing.assert_array_equal(np.stack([lst.items for lst in lists]), res.recs[ok])


def test_online_exposure_budget_ring_hand_case():
    # 4 items, k=2, window 2 lists, factor 2: cap = ceil(2 * 2 * 2 / 4) = 2 slots each
    b = OnlineExposureBudget(4, factor=2.0, k=2, window=2)
    assert b.capacity == 2 and b.blocked().tolist() == []
    b.record(np.array([0, 1]))
    b.record(np.array([0, 2]))
    assert b.counts.tolist() == [2, 1, 1, 0] and b.blocked().tolist() == [0]
    b.record(np.array([3]))  # the first list leaves the window; short lists are fine
    assert b.counts.tolist() == [1, 0, 1, 1] and b.blocked().tolist() == []
    with pytest.raises(ValueError, match="factor"):
        OnlineExposureBudget(4, factor=0.5, k=10, window=10)


def test_served_lists_under_the_online_exposure_budget(trained):
    model, cfg, split, _ = trained
    b = bundle_from_model(model, cfg, split)
    users = split.eval_users("val")
    plain = [lst.items for lst in Recommender(b, ServingConfig(seen="train")).recommend(users, 10)]
    # a cap no item can reach: the same lists
    loose = Recommender(b, ServingConfig(seen="train", exposure_cap=1000.0, exposure_window=50))
    assert all(np.array_equal(x, y.items) for x, y in zip(plain, loose.recommend(users, 10), strict=True))
    # a binding cap: no window of `window` consecutive lists holds an item more than C times
    tight = Recommender(b, ServingConfig(seen="train", exposure_cap=1.5, exposure_window=50))
    served = [lst.items for lst in tight.recommend(users, 10)]
    cap = tight.budget.capacity
    for start in range(len(served) - 50):
        window = np.concatenate(served[start : start + 50])
        assert np.bincount(window).max() <= cap
    assert len(np.unique(np.concatenate(served))) > len(np.unique(np.concatenate(plain)))
    assert all(len(x) == 10 for x in served)


def test_served_lists_under_item_prices(trained):
    """exposure_mode=prices: the served lists are each user's own top-10 by
    s(u, i) - lambda_i with the prices fitted on the bundle's users (oracle: the dense
    scores, the same fit on the same candidates); stateless (a user's list does not
    depend on who asked before); exposure close to the cap; explain sums to the score."""
    from marl_two_tower.fairness.exposure import fair_share_cap, fit_item_prices, priced_lists

    model, cfg, split, _ = trained
    b = bundle_from_model(model, cfg, split)
    users = np.arange(b.n_users)
    plain = Recommender(b, ServingConfig(seen="train"))
    priced = Recommender(b, ServingConfig(seen="train", exposure_cap=1.5, exposure_mode="prices"))
    assert priced.budget is None and priced.prices is not None and priced.prices.max() > 0
    assert priced.exposure_info()["mode"] == "prices" and priced.price_fit_users == b.n_users
    # oracle: dense scores, train items masked, log-softmax, cap_candidates best, same fit
    s = (b.user_vectors.astype(np.float64) @ b.item_vectors.astype(np.float64).T)
    for u in users:
        s[u, split.history(u)] = -np.inf
    m = min(cfg.gini.cap_candidates, b.n_items)
    cand = np.stack([np.array(dense_topk(row, set(), m)) for row in s])
    lse = np.log(np.exp(np.where(np.isfinite(s), s, -np.inf)).sum(1, keepdims=True))
    logp = np.take_along_axis(s, cand, axis=1) - lse
    cand = np.where(np.isfinite(logp), cand, -1)
    cap = fair_share_cap(1.5, cfg.gini.cap_k, b.n_users, b.n_items)
    lam = fit_item_prices(cand, logp, cfg.gini.cap_k, cap, b.n_items)
    np.testing.assert_allclose(priced.prices, lam, atol=1e-5)
    want = priced_lists(cand, logp, lam, 10)
    served = np.stack([lst.items for lst in priced.recommend(users, 10)])
    # the prices put the boundary user's candidates within eps of each other, so the
    # float32 index may order near-ties differently from the float64 oracle: the served
    # keys s - lambda must be the oracle's top-10 key values, to float32 precision
    key = s - lam[None, :]
    np.testing.assert_allclose(np.take_along_axis(key, served, axis=1),
                               np.take_along_axis(key, want, axis=1), atol=1e-5)
    assert (served == want).all(axis=1).mean() > 0.9
    # stateless: the same users in reverse order get the same lists
    back = np.stack([lst.items for lst in priced.recommend(users[::-1], 10)])[::-1]
    np.testing.assert_array_equal(back, served)
    counts = np.bincount(served.ravel(), minlength=b.n_items)
    before = np.bincount(np.stack([lst.items for lst in plain.recommend(users, 10)]).ravel(),
                         minlength=b.n_items)
    oracle = np.bincount(want.ravel(), minlength=b.n_items)
    assert abs(int(counts.max()) - int(oracle.max())) <= 1  # the near-ties above
    assert counts.max() <= cap + 3 and counts.max() < before.max() / 2, (counts.max(), cap, before.max())
    for u in users[:5]:
        lst = priced.recommend([u], 10)[0]
        for i, sc in zip(lst.items.tolist(), lst.scores.tolist(), strict=True):
            e = priced.explain(int(u), i)
            assert e["parts"]["exposure_price"] == pytest.approx(-lam[i], abs=1e-5)
            assert sum(e["parts"].values()) == pytest.approx(sc, abs=1e-4)
            assert e["score"] == pytest.approx(sc, abs=1e-4)
    # a cap nobody reaches: zero prices and the plain lists
    loose = Recommender(b, ServingConfig(seen="train", exposure_cap=1000.0, exposure_mode="prices"))
    assert not loose.prices.any()
    np.testing.assert_array_equal(np.stack([x.items for x in loose.recommend(users, 10)]),
                                  np.stack([x.items for x in plain.recommend(users, 10)]))


def test_default_seen_all_never_serves_consumed_items(rec, trained):
    _, _, split, _ = trained
    users = split.eval_users("test")
    for u, lst in zip(users, rec.recommend(users, 20), strict=True):
        consumed = set(split.history(u).tolist()) | {split.val_items[u], split.test_items[u]}
        assert not consumed & set(lst.items.tolist())
        assert len(lst.items) == 20 and np.all(np.diff(lst.scores) <= 0)


class FakeAdjuster:
    """Familiar items F(u) = the 3 items after u's best non-seen item, logit 100 + j."""

    max_items = 3

    def __init__(self, scores: np.ndarray) -> None:
        self.fam = np.argsort(-scores, axis=1, kind="stable")[:, 5:8]

    def overrides(self, users, model, exclude=None, z=None):  # the ScoreAdjuster signature
        items = torch.as_tensor(self.fam[users.numpy()])
        return items, 100.0 + torch.arange(3, dtype=torch.float32).expand(len(users), 3)


def test_familiar_overrides_are_merged_and_explained(trained):
    model, cfg, split, _ = trained
    with torch.no_grad():
        dot = (model.user_vectors(torch.arange(split.n_users)) @ model.item_vectors().T).double().numpy()
    model.score_adjuster = FakeAdjuster(dot)  # the bundle precomputes F(u) through this hook
    try:
        b = bundle_from_model(model, cfg, split)
        np.testing.assert_array_equal(b.familiar_items, model.score_adjuster.fam)
        rec = Recommender(b, ServingConfig(seen="train"))
        assert rec.n_familiar == 3
        users = np.arange(20)
        lists = rec.recommend(users, 10)
        for u, lst in zip(users, lists, strict=True):
            fused = dot[u].copy()
            fused[model.score_adjuster.fam[u]] = 100.0 + np.arange(3)
            seen = set(split.history(u).tolist())
            assert lst.items.tolist() == dense_topk(fused, seen, 10)
            for i, s in zip(lst.items.tolist(), lst.scores.tolist(), strict=True):
                e = rec.explain(u, i)
                assert sum(e["parts"].values()) == pytest.approx(s, abs=1e-4)
                expected_fam = fused[i] - dot[u, i]
                assert e["parts"]["familiar"] == pytest.approx(expected_fam, abs=1e-4)
    finally:
        model.score_adjuster = None


COMPONENT_SETS = {
    "context_gnn": ["context_gnn.enabled=true", "context_gnn.familiar=true",
                    "context_gnn.familiar_size=10", "context_gnn.fanout=5"],
    "marl": ["marl.enabled=true", "marl.rl_batch_users=64"],
    # hop 1 the salted uniform sample: F(u) changes between inference draws, so the
    # bundle stores the union of the 4 draws' sets (wider than familiar_size)
    "uniform_hop1": ["context_gnn.recent=0"],
}


@pytest.mark.parametrize("parts", [["context_gnn"], ["marl"], ["context_gnn", "marl"],
                                   ["context_gnn", "uniform_hop1"]],
                         ids=["context_gnn", "marl", "context_gnn+marl", "context_gnn-uniform-hop1"])
def test_components_served_equal_offline(tmp_path, parts):
    """With ContextGNN (familiar re-scoring) and/or the genre agents (controller
    dimensions), the bundle served from disk reproduces the offline top-K exactly and
    /explain's parts sum to the served scores."""
    extra = [kv for c in parts for kv in COMPONENT_SETS[c]]
    cfg = load_config(None, TINY + [f"checkpoint_dir={tmp_path}", *extra])
    split = load_split(cfg.data)
    tr = Trainer(cfg, split, progress=False)
    tr.fit()
    model = tr.model.eval()
    b = load_bundle(export_bundle(model, cfg, split, tmp_path / "bundle"))  # model rebuilt from disk
    rec = Recommender(b, ServingConfig(seen="train"))
    if "uniform_hop1" in parts:  # the union of the draws' familiar sets
        assert 10 < rec.n_familiar <= 4 * 10, rec.n_familiar
    else:
        assert rec.n_familiar == (10 if "context_gnn" in parts else 0)
    if "marl" in parts:
        g, d = split.dataset.n_genres, cfg.model.dim
        assert b.blocks == {"two_tower": (0, d), "genre_boost": (d, d + g), "tail_boost": (d + g, d + 2 * g)}
    # the bundle serves the evaluator's mean over eval.inference_samples draws (mean
    # z_u, the union of the draws' familiar sets with mean fused scores)
    assert model.inference_samples == 4
    res = rank_full(split, model.scorer(), "val", k_max=10)
    lists = rec.recommend(res.users, 10)
    np.testing.assert_array_equal(np.stack([lst.items for lst in lists]), res.recs)
    fam = 0
    for u, lst in zip(res.users[:5], lists[:5], strict=True):
        for i, s in zip(lst.items.tolist(), lst.scores.tolist(), strict=True):
            p = rec.explain(int(u), i)["parts"]
            assert sum(p.values()) == pytest.approx(s, abs=1e-4)
            fam += p["familiar"] != 0.0
    assert (fam > 0) == ("context_gnn" in parts)


# ---------------------------------------------------------------------------
# Explain: block decomposition with a genre controller
# ---------------------------------------------------------------------------


class FixedController(Controller):
    """b_u = 0.5 on every genre, t_u = 2 on every genre; items [m_i ; m_i * tail(i)]."""

    def __init__(self, genres: np.ndarray, tail: np.ndarray) -> None:
        super().__init__()
        m = torch.as_tensor(genres, dtype=torch.float32)
        t = torch.as_tensor(tail, dtype=torch.float32)[:, None]
        self.register_buffer("feat", torch.cat([m, m * t], 1))
        self.g = m.shape[1]

    def user_features(self, users, e_u):
        return torch.cat([torch.full((len(users), self.g), 0.5), torch.full((len(users), self.g), 2.0)], 1)

    def item_features(self):
        return self.feat


def test_explain_parts_are_the_exact_blocks(trained):
    model, cfg, split, _ = trained
    ds = split.dataset
    model.set_controller(FixedController(ds.item_genres, split.tail_mask))
    try:
        b = bundle_from_model(model, cfg, split)
        g, d = ds.n_genres, cfg.model.dim
        assert score_blocks(model, g) == {"two_tower": (0, d), "genre_boost": (d, d + g),
                                          "tail_boost": (d + g, d + 2 * g)}
        rec = Recommender(b)
        u = int(split.eval_users("test")[0])
        lst = rec.recommend([u], 10)[0]
        for i, s in zip(lst.items.tolist(), lst.scores.tolist(), strict=True):
            p = rec.explain(u, i)["parts"]
            n_genres_i = int(ds.item_genres[i].sum())
            assert p["genre_boost"] == pytest.approx(0.5 * n_genres_i)
            assert p["tail_boost"] == pytest.approx(2.0 * n_genres_i * bool(split.tail_mask[i]))
            assert p["familiar"] == 0.0
            assert sum(p.values()) == pytest.approx(s, abs=1e-4)
    finally:
        model.controller = None


# ---------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------


def test_recall_at_k_fixture():
    approx = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[3, 2, 9], [6, 7, 8]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(approx, exact, 1) == pytest.approx(0.0)


def test_ivf_recall_on_small_synthetic_catalogue():
    items, queries = synthetic_catalogue(n_items=6000, dim=32, n_queries=200, n_clusters=50, seed=1)
    ivf = ItemIndex(items, IndexSettings(kind="ivf", nprobe=32))
    assert ivf.index.nlist == default_nlist(6000) == 153
    r = measure_recall(ivf, queries, 10)
    assert 0.97 <= r <= 1.0, r
    ivf.index.nprobe = 1  # one cell of 153: recall must drop clearly (the measure can fail)
    assert measure_recall(ivf, queries, 10) < r - 0.1
    flat = ItemIndex(items, IndexSettings(kind="flat"))
    assert measure_recall(flat, queries, 10) == 1.0


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_filtered_search_matches_brute_force(kind):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(800, 8)).astype(np.float32)
    q = rng.normal(size=(5, 8)).astype(np.float32)
    # nprobe = nlist: IVF visits every cell, so it is exact and comparable
    idx = ItemIndex(items, IndexSettings(kind=kind, nlist=16, nprobe=16))
    excl = [rng.choice(800, size=n, replace=False) for n in (0, 3, 50, 400, 795)]
    scores, ids = idx.search_filtered(q, 10, excl)
    full = q.astype(np.float64) @ items.T.astype(np.float64)
    for r in range(5):
        expect = dense_topk(full[r], set(excl[r].tolist()), 10)
        got = ids[r][ids[r] >= 0].tolist()
        assert got == expect
        assert np.isneginf(scores[r][len(got):]).all()
    assert (ids[4] >= 0).sum() == 5  # only 5 rankable items left


def test_ivf_short_candidate_lists_fall_back_to_exact():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(2000, 8)).astype(np.float32)
    idx = ItemIndex(items, IndexSettings(kind="ivf", nlist=50, nprobe=1))
    q = rng.normal(size=(3, 8)).astype(np.float32)
    # one cell holds < 510 items; 10 exclusions go through over-fetch, 100 through a selector
    excl = [np.arange(10), np.arange(100), np.arange(10)]
    _, ids = idx.search_filtered(q, 500, excl)
    assert (ids >= 0).all()
    _, exact = idx.exact_search(q, 600)
    for r in range(3):
        assert ids[r].tolist() == [i for i in exact[r].tolist() if i >= len(excl[r])][:500]


def test_selector_search_keeps_the_ivf_search_width():
    """The selector path must scan nprobe cells like the plain search (explicit FAISS
    search parameters would silently reset nprobe to 1)."""
    rng = np.random.default_rng(2)
    items = rng.normal(size=(3000, 8)).astype(np.float32)
    idx = ItemIndex(items, IndexSettings(kind="ivf", nlist=30, nprobe=6))
    q = rng.normal(size=(20, 8)).astype(np.float32)
    ex = np.arange(0, 3000, 7)
    for r in range(20):
        _, sel_ids = idx.search_excluding(q[r : r + 1], 10, ex)
        _, raw = idx.search(q[r : r + 1], 10 + len(ex))
        assert sel_ids[0].tolist() == [i for i in raw[0].tolist() if i >= 0 and i % 7][:10]


def test_index_settings_auto_threshold():
    cfg = ServingConfig(ann_threshold=1000)
    assert IndexSettings.from_config(cfg, 1000).kind == "flat"
    assert IndexSettings.from_config(cfg, 1001).kind == "ivf"
    assert IndexSettings.from_config(ServingConfig(index="hnsw"), 10).kind == "hnsw"


# ---------------------------------------------------------------------------
# Cold start
# ---------------------------------------------------------------------------


def test_cold_start_fixture():
    """Hand-computed: 6 items, pop = [10, 6, 4, 2, 1, 0], tail = items 3, 4, 5."""
    from types import SimpleNamespace

    users = np.array([0] * 10 + [1] * 6 + [0] * 2 + [1] * 4 + [1] * 1)
    items = np.array([0] * 10 + [1] * 6 + [3] * 2 + [2] * 4 + [4] * 1)
    b = SimpleNamespace(n_items=6, item_pop=np.array([10, 6, 4, 2, 1, 0]),
                        tail_mask=np.array([0, 0, 0, 1, 1, 1], bool),
                        user_feature_labels={"gender": ["F", "M"]},
                        user_features={"gender": np.array([0, 1])}, train_users=users, train_items=items)
    cs = ColdStart(b, ServingConfig(cold_start_beta=0.5, cold_start_tail_quota=0.25, cold_start_prior=2.0))
    p = (np.array([10, 6, 4, 2, 1, 0]) + 1) / (23 + 6)
    np.testing.assert_allclose(cs.scores(()), p ** 0.5)
    # k=4: round(0.25 * 4) = 1 tail slot (best tail = item 3), 3 head slots (0, 1, 2)
    assert cs.recommend(4).items.tolist() == [0, 1, 2, 3]
    # excluding item 0 and 3: head 1, 2 plus tail 4; the list is ordered by score
    assert cs.recommend(4, exclude=np.array([0, 3])).items.tolist() == [1, 2, 4, 5]
    # gender F (user 0: items 0 x10, 3 x2; n_F = 12): p_F = (c + 2 p) / 14, score p_F / sqrt(p)
    c_f = np.array([10, 0, 0, 2, 0, 0])
    s_f = ((c_f + 2 * p) / 14) / p ** 0.5
    np.testing.assert_allclose(cs.scores(cs.parse({"gender": "f"})), s_f)
    assert cs.recommend(3, cs.parse({"gender": "F"})).items.tolist() == [0, 3, 1]
    with pytest.raises(ValueError, match="unknown gender"):
        cs.parse({"gender": "X"})
    with pytest.raises(ValueError, match="unknown demographic"):
        cs.parse({"planet": "mars"})


# ---------------------------------------------------------------------------
# HTTP API (in-process client)
# ---------------------------------------------------------------------------


def first_user(split) -> object:
    return split.dataset.user_ids[int(split.eval_users("test")[0])].item()


def test_health_and_docs(client, trained):
    _, _, split, _ = trained
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["n_items"] == split.n_items and h["index"]["kind"] == "flat"
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_recommend_returns_original_ids_and_served_scores(client, rec, trained):
    _, _, split, _ = trained
    uid = first_user(split)
    r = client.get("/recommend", params={"user_id": uid, "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["cold_start"] is False and body["user_id"] == uid
    u = rec.user_index(uid)
    lst = rec.recommend([u], 5)[0]
    assert [x["item_id"] for x in body["items"]] == [split.dataset.item_ids[i].item() for i in lst.items]
    # exclusions (original ids) remove items; unknown ids are ignored
    top = body["items"][0]["item_id"]
    r2 = client.get("/recommend", params={"user_id": uid, "k": 5, "exclude": [top, "no-such-item"]}).json()
    assert top not in [x["item_id"] for x in r2["items"]]
    assert r2["items"][0]["item_id"] == body["items"][1]["item_id"]


def test_unknown_user_gets_flagged_cold_start(client, rec):
    r = client.get("/recommend", params={"user_id": "never-seen", "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert body["cold_start"] is True and len(body["items"]) == 7
    assert [x["item_id"] for x in body["items"]] == [rec.item_ids[i] for i in rec.cold_start(7).items]
    r = client.get("/recommend", params={"user_id": "never-seen", "k": 7, "feature": "gender:F"})
    assert r.status_code == 200 and r.json()["cold_start"] is True
    assert client.get("/recommend", params={"user_id": "x", "feature": "gender:Q"}).status_code == 422
    assert client.get("/recommend", params={"user_id": "x", "feature": "gender"}).status_code == 422


@pytest.mark.parametrize("k", ["0", "-1", "1000001", "abc", "2.5", ""])
def test_bad_k_is_422(client, trained, k):
    r = client.get("/recommend", params={"user_id": first_user(trained[2]), "k": k})
    assert r.status_code == 422
    assert r.json()["detail"]


def test_batch_recommend(client, rec, trained):
    _, _, split, _ = trained
    uids = [split.dataset.user_ids[u].item() for u in range(3)]
    body = {"k": 4, "users": [{"user_id": uids[0]}, {"user_id": "ghost", "features": {"gender": "M"}},
                              {"user_id": uids[2], "exclude": [split.dataset.item_ids[0].item()]}]}
    r = client.post("/recommend", json=body)
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["cold_start"] for x in res] == [False, True, False]
    single = client.get("/recommend", params={"user_id": uids[0], "k": 4}).json()
    assert res[0]["items"] == single["items"]


@pytest.mark.parametrize("payload,status", [
    (b"{not json", 422),
    (b"[1, 2]", 422),
    (b'{"users": []}', 422),
    (b'{"users": [{"user_id": [1]}]}', 422),
    (b'{"users": [{"user_id": true}]}', 422),
    (b'{"users": [{"user_id": 1.5}]}', 422),
    (b'{"users": [{"user_id": 1}], "k": 0}', 422),
    (b'{"users": [{"user_id": 1}], "k": 100000}', 422),
    (b'{"users": [{"user_id": 1}], "k": "ten"}', 422),
])
def test_malformed_batches_are_4xx(client, payload, status):
    r = client.post("/recommend", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text


def test_huge_batches_are_rejected(client, rec):
    n = rec.cfg.max_batch + 1
    r = client.post("/recommend", json={"users": [{"user_id": i} for i in range(n)], "k": 2})
    assert r.status_code == 413 and "max_batch" in r.json()["detail"]
    r = client.post("/recommend", content=b" " * (MAX_BODY_BYTES + 1),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the limit is enforced on the bytes received
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_items_and_explain(client, rec, trained):
    _, _, split, _ = trained
    uid = first_user(split)
    items = client.get("/recommend", params={"user_id": uid, "k": 3}).json()["items"]
    for it in items:
        e = client.get("/explain", params={"user_id": uid, "item_id": it["item_id"]})
        assert e.status_code == 200
        e = e.json()
        assert set(e["parts"]) == {"two_tower", "genre_boost", "tail_boost", "familiar"}
        assert sum(e["parts"].values()) == pytest.approx(it["score"], abs=1e-4)
        assert e["score"] == pytest.approx(it["score"], abs=1e-4) and e["seen"] is False
    iid = items[0]["item_id"]
    info = client.get(f"/items/{iid}").json()
    i = rec.item_index(iid)
    assert info["popularity"] == int(split.item_pop[i]) and info["tail"] == bool(split.tail_mask[i])
    assert client.get("/items/no-such-item").status_code == 404
    assert client.get("/explain", params={"user_id": "ghost", "item_id": iid}).status_code == 404
    assert client.get("/explain", params={"user_id": uid, "item_id": "nope"}).status_code == 404
    assert client.get("/explain", params={"user_id": uid}).status_code == 422


# ---------------------------------------------------------------------------
# A real uvicorn server on 127.0.0.1
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(rec):
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(rec), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(timeout=10)


def test_real_server_end_to_end(server, trained):
    _, _, split, _ = trained
    uid = first_user(split)
    statuses = []
    with httpx.Client(base_url=server, timeout=10) as c:
        def call(method, url, **kw):
            r = c.request(method, url, **kw)
            statuses.append(r.status_code)
            return r

        assert call("GET", "/health").json()["status"] == "ok"
        r = call("GET", "/recommend", params={"user_id": uid, "k": 10})
        assert r.status_code == 200 and len(r.json()["items"]) == 10
        r = call("POST", "/recommend", json={"users": [{"user_id": uid}, {"user_id": "ghost"}], "k": 3})
        assert r.status_code == 200 and [x["cold_start"] for x in r.json()["results"]] == [False, True]
        r = call("GET", "/recommend", params={"user_id": "ghost"})
        assert r.status_code == 200 and r.json()["cold_start"] is True
        for k in ("0", "-1", "99999999", "x"):
            assert call("GET", "/recommend", params={"user_id": uid, "k": k}).status_code == 422
        r = call("POST", "/recommend", content=b"{oops", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = call("POST", "/recommend", json={"users": [{"user_id": 1}] * 10_000})
        assert r.status_code in (413, 422)
        assert call("GET", "/items/nope").status_code == 404
        assert call("GET", "/nope").status_code == 404
    assert all(s < 500 for s in statuses), statuses


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_cli_export_then_load(trained, tmp_path):
    _, _, split, ck = trained
    out = tmp_path / "b"
    assert cli_main(["export", "-p", str(ck / "model_best.pt"), "-o", str(out), "--no-model"]) == 0
    b = load_bundle(out)
    assert b.model_state is None and b.n_items == split.n_items
    rec = Recommender(b)
    assert len(rec.recommend([0], 5)[0].items) == 5
    # serving straight from the checkpoint, with a config override, gives the same lists
    direct = build_recommender(checkpoint=str(ck / "model_best.pt"), overrides=["serving.max_k=50"])
    assert direct.cfg.max_k == 50 and rec.cfg.max_k == 1000
    users = np.arange(20)
    assert [x.items.tolist() for x in direct.recommend(users, 5)] == \
        [x.items.tolist() for x in rec.recommend(users, 5)]
    assert cli_main(["serve", "--bundle", str(tmp_path / "missing")]) == 2  # clear error, no server

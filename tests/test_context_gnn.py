"""ContextGNN: train-only graph, bounded unbiased sampling, no leakage of the training
positive, the familiar-item head in the loss, and retrieve-then-rescore == exhaustive
fused scoring (DESIGN §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.movielens import load_ml100k
from marl_two_tower.data.split import leave_one_out
from marl_two_tower.eval.protocols import rank_full
from marl_two_tower.model.build import build_model
from marl_two_tower.model.context_gnn import (
    BipartiteGraph,
    ContextGNN,
    sample_neighbourhood,
    sample_neighbours,
    two_hop_items,
)
from marl_two_tower.train.trainer import Trainer

TINY = ["data.synthetic.n_users=200", "data.synthetic.n_items=150", "model.dim=16",
        "model.id_dim=16", "model.hidden=32", "train.batch_size=128", "train.epochs=1",
        "train.patience=10", "context_gnn.fanout=6", "context_gnn.familiar_size=12"]


def tiny_cfg(*extra):
    return load_config(None, TINY + ["context_gnn.enabled=true", "context_gnn.familiar=true", *extra])


@pytest.fixture(scope="module")
def tiny_split():
    return load_split(load_config(None, TINY).data)


def hand_dataset(histories: list[list[int]], n_items: int) -> Dataset:
    users = np.concatenate([np.full(len(h), u) for u, h in enumerate(histories)])
    items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    ts = np.concatenate([np.arange(len(h), dtype=np.float64) for h in histories])
    n = len(histories)
    return Dataset(name="hand", users=users, items=items, timestamps=ts, n_users=n,
                   n_items=n_items, user_ids=np.arange(n), item_ids=np.arange(n_items),
                   item_genres=np.zeros((n_items, 1), dtype=bool), genre_names=["g"],
                   item_year=np.zeros(n_items, dtype=np.int32))


def exact_walks(graph: BipartiteGraph, users: np.ndarray, exclude: np.ndarray | None,
                recent: int = 0):
    """Oracle: dense hat-A products with the module's leakage rules applied."""
    r = np.zeros((graph.n_users, graph.n_items))
    rows = np.repeat(np.arange(graph.n_users), graph.user_deg)
    r[rows, graph.user_items] = 1.0
    du, di = r.sum(1), r.sum(0)
    a = r / np.sqrt(np.maximum(np.outer(du, di), 1e-300))
    a[r == 0] = 0.0
    if recent == 0:
        p1 = a[users].copy()
    else:  # the latest `recent` items before the predicted interaction
        p1 = np.zeros((len(users), graph.n_items))
        for b, u in enumerate(users):
            h = list(graph.hist_items[graph.hist_indptr[u]:graph.hist_indptr[u + 1]])
            if exclude is not None:
                h = h[:len(h) - 1 - h[::-1].index(exclude[b])]
            for i in h[-recent:]:
                p1[b, i] += 1.0 / np.sqrt(len(h[-recent:]) * di[i])
    if exclude is not None:
        p1[np.arange(len(users)), exclude] = 0.0
    p2 = p1 @ a.T
    p2[np.arange(len(users)), users] = 0.0  # the root leaves its own frontier
    p3 = p1 @ (a.T @ a)
    if exclude is not None:  # walks root -> i -> root -> t use the held-out edge
        ar = np.arange(len(users))
        p3[ar, exclude] -= (p1 * a[users]).sum(1) * a[users, exclude]
        p3[np.abs(p3) < 1e-12] = 0.0
    return p1, p2, p3


# --- graph and sampling ------------------------------------------------------


def test_graph_holds_train_edges_only(ml100k_dir):
    split = leave_one_out(load_ml100k(ml100k_dir))
    g = BipartiteGraph.from_split(split)
    train = set(zip(split.train_users.tolist(), split.train_items.tolist(), strict=True))
    assert len(g.keys) == len(train)  # ML-100K has no repeated (user, item) pairs
    rows = np.repeat(np.arange(g.n_users), g.user_deg)
    assert set(zip(rows.tolist(), g.user_items.tolist(), strict=True)) == train
    for part in ("val", "test"):
        u = split.eval_users(part)
        t = split.targets(part)[u]
        assert len(u) > 900
        assert not g.has_edges(u, t).any(), f"{part} edges leaked into the graph"
    # the reverse direction is the same edge set
    cols = np.repeat(np.arange(g.n_items), g.item_deg)
    assert set(zip(g.item_users.tolist(), cols.tolist(), strict=True)) == train


def test_neighbour_sampling_is_bounded_without_replacement_and_unbiased():
    # node k has degree k (neighbours 0..k-1)
    degs = np.arange(1, 31)
    indptr = np.concatenate([[0], np.cumsum(degs)])
    indices = np.concatenate([np.arange(d) for d in degs])
    nodes = np.arange(30)
    hits = np.zeros((30, 30))
    n_salts = 600
    for salt in range(n_salts):
        seg, nbr, scale = sample_neighbours(indptr, indices, nodes, 8, salt, hop=1)
        counts = np.bincount(seg, minlength=30)
        assert np.array_equal(counts, np.minimum(degs, 8))  # bounded by the fan-out
        pairs = seg * 100 + nbr
        assert len(np.unique(pairs)) == len(pairs)  # without replacement
        assert np.allclose(scale, degs[seg] / np.minimum(degs[seg], 8))
        np.add.at(hits, (seg, nbr), 1.0)
    # small nodes keep everything; big ones keep each neighbour with probability 8/deg
    for k in range(30):
        p = hits[k, : degs[k]] / n_salts
        expect = min(1.0, 8 / degs[k])
        assert np.allclose(p, expect, atol=0.09), (k, p.min(), p.max(), expect)
    # the same (salt, hop, node) gives the same sample whatever the batch
    a = sample_neighbours(indptr, indices, np.array([29]), 8, 3, hop=2)[1]
    seg, nbr, _ = sample_neighbours(indptr, indices, np.array([4, 29, 17]), 8, 3, hop=2)
    assert np.array_equal(a, nbr[seg == 1])


def dense(m) -> np.ndarray:
    return m if isinstance(m, np.ndarray) else m.toarray()


def test_tree_size_is_bounded_by_fanout_and_dense_equals_sparse(tiny_split):
    g = BipartiteGraph.from_split(tiny_split)
    cm = two_hop_items(g, 7)
    assert np.diff(cm.indptr).max() == 7  # each item keeps its 7 strongest links
    users = np.arange(64)
    exclude = tiny_split.train_items[tiny_split.train_indptr[users + 1] - 1]
    f = 3
    nb = sample_neighbourhood(g, users, exclude, f, 10, salt=1, need_hop3=True, item_item=cm,
                              dense_budget=0)
    assert np.diff(nb.p1.indptr).max() <= f
    assert np.diff(nb.p2.indptr).max() <= f**2
    assert np.diff(nb.p3.indptr).max() <= f * 7
    assert len(nb.items1) <= 64 * f and len(nb.users2) <= 64 * f**2
    assert g.user_deg.max() > 3 * f  # the cap actually binds on this data
    rec = sample_neighbourhood(g, users, exclude, f, 10, salt=1, need_hop3=True, item_item=cm,
                               recent=2, dense_budget=0)
    assert np.diff(rec.p1.indptr).max() <= 2
    # the dense regime (small frontiers) computes the same tree
    nd = sample_neighbourhood(g, users, exclude, f, 10, salt=1, need_hop3=True, item_item=cm)
    assert isinstance(nd.p2, np.ndarray) and isinstance(nd.p3, np.ndarray)
    assert np.allclose(dense(nd.p2), dense(nb.p2)) and np.allclose(dense(nd.p3), dense(nb.p3))
    assert np.array_equal(nd.fam_items, nb.fam_items)


def test_full_fanout_equals_exact_propagation_and_cuts_the_training_edge():
    # train: user 0 {0, 1, 5}, user 1 {0, 2, 5}, user 2 {0, 1, 3, 5}, user 3 {2, 3, 4}
    hist = [[0, 1, 5], [0, 2, 5], [0, 1, 3, 5], [2, 3, 4]]
    split = leave_one_out(hand_dataset([h + [6, 7] for h in hist], 8))
    g = BipartiteGraph.from_split(split)
    users = np.array([0, 1, 2, 3, 0])
    exclude = np.array([1, 2, 3, 4, 0])
    cm = two_hop_items(g, 8)  # all links kept: exact
    for ex, budget, recent in ((None, 0, 0), (exclude, 0, 0), (exclude, 1 << 20, 0), (None, 0, 2),
                               (exclude, 0, 2), (exclude, 1 << 20, 2)):
        nb = sample_neighbourhood(g, users, ex, fanout=100, familiar_size=8, salt=0, need_hop3=True,
                                  item_item=cm, recent=recent, dense_budget=budget)
        p1, p2, p3 = exact_walks(g, users, ex, recent)
        got1 = np.zeros_like(p1)
        got1[:, nb.items1] = nb.p1.toarray()
        got2 = np.zeros_like(p2)
        got2[:, nb.users2] = dense(nb.p2)
        got3 = np.zeros_like(p3)
        got3[:, nb.items3] = dense(nb.p3)
        assert np.allclose(got1, p1) and np.allclose(got2, p2) and np.allclose(got3, p3)
        # familiar: unconsumed (train minus the positive) items by P3 mass
        for b, u in enumerate(users):
            consumed = set(g.user_items[g.user_indptr[u]:g.user_indptr[u + 1]].tolist())
            if ex is not None:
                consumed.discard(int(ex[b]))
            cand = [j for j in np.argsort(-np.round(p3[b], 12), kind="stable") if p3[b, j] > 1e-12
                    and j not in consumed]
            fam = [j for j in nb.fam_items[b] if j >= 0]
            assert fam == cand[:8]
    # row 0 (user 0, positive 1): without the edge (0, 1), only user 2's edge reaches 1
    nb = sample_neighbourhood(g, users, exclude, 100, 8, 0, True, item_item=cm)
    assert 1 not in nb.items1[nb.p1[[0]].indices]
    ud, idg = g.user_deg.astype(float), g.item_deg.astype(float)
    # walks 0 -> 0 -> 2 -> 1 and 0 -> 5 -> 2 -> 1 (hand): only through user 2
    w = (1 / np.sqrt(ud[0] * idg[0]) / np.sqrt(idg[0] * ud[2]) / np.sqrt(ud[2] * idg[1])
         + 1 / np.sqrt(ud[0] * idg[5]) / np.sqrt(idg[5] * ud[2]) / np.sqrt(ud[2] * idg[1]))
    m = nb.fam_mass[0][nb.fam_items[0] == 1]
    assert len(m) == 1 and m[0] == pytest.approx(w)
    # user 3's positive (4) has no other user: it cannot be reached at all
    assert 4 not in nb.fam_items[3]
    assert dense(nb.p3)[3, np.searchsorted(nb.items3, 4)] == 0.0
    # temporal hop 1: user 2 predicting item 3 sees only what came before it, {0, 1}
    nb = sample_neighbourhood(g, np.array([2]), np.array([3]), 100, 8, 0, True, item_item=cm,
                              recent=2)
    assert set(nb.items1[nb.p1[[0]].indices]) == {0, 1}
    nb = sample_neighbourhood(g, np.array([2]), None, 100, 8, 0, True, item_item=cm, recent=2)
    assert set(nb.items1[nb.p1[[0]].indices]) == {3, 5}  # inference: the latest two


def test_sampled_walks_are_unbiased(tiny_split):
    g = BipartiteGraph.from_split(tiny_split)
    users = np.array([3, 11, 42])
    _, _, exact = exact_walks(g, users, None)
    cm = two_hop_items(g, g.n_items)
    acc = np.zeros_like(exact)
    n = 150
    for salt in range(n):
        nb = sample_neighbourhood(g, users, None, 4, 0, salt, need_hop3=True, item_item=cm)
        acc[:, nb.items3] += dense(nb.p3)
    est = acc / n
    # total mass is estimated within a few percent; per-item up to sampling noise
    assert np.allclose(est.sum(1), exact.sum(1), rtol=0.06)
    assert np.corrcoef(est.ravel(), exact.ravel())[0, 1] > 0.95


# --- model integration --------------------------------------------------------


def test_disabled_component_adds_nothing(tiny_split):
    off = build_model(load_config(None, TINY), tiny_split)
    on = build_model(tiny_cfg(), tiny_split)
    n_off = sum(p.numel() for p in off.parameters())
    n_on = sum(p.numel() for p in on.parameters())
    assert off.score_adjuster is None and "context_gnn" not in off.contexts
    base = build_model(load_config(None, TINY[:-2]), tiny_split)
    assert n_off == sum(p.numel() for p in base.parameters())
    # on: two GNN tables plus heads and the fusion gate
    d = 16
    expect = ((tiny_split.n_users + tiny_split.n_items) * d  # U^0, I^0
              + (d + 1) + (3 * 16 + 16 + 16 + 1) + (d + 1)  # item head, pair MLP, offset
              + (2 * d * d + d))  # gated fusion
    assert n_on - n_off == expect
    # the default is the graph context alone: no familiar head, no hop-3 operator
    ctx_only = build_model(load_config(None, TINY + ["context_gnn.enabled=true"]), tiny_split)
    assert ctx_only.score_adjuster is None and "context_gnn" in ctx_only.contexts
    assert ctx_only.contexts["context_gnn"].item_item is None
    n_ctx = sum(p.numel() for p in ctx_only.parameters())
    assert n_ctx - n_off == (tiny_split.n_users + tiny_split.n_items) * d + 2 * d * d + d


@pytest.mark.parametrize("mode", ["sampled", "stratified"])
def test_training_logits_score_familiar_candidates_pairwise(tiny_split, mode):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(f"context_gnn.familiar_loss={mode}"), tiny_split)
    gnn = model.score_adjuster
    assert isinstance(gnn, ContextGNN)
    model.train()
    idx = np.linspace(0, len(tiny_split.train_items) - 1, 40).astype(np.int64)
    users = torch.as_tensor(tiny_split.train_users[idx])
    pos = torch.as_tensor(tiny_split.train_items[idx])
    neg = torch.arange(0, 150, 3)
    cand = torch.cat([pos, neg])
    log_q = torch.linspace(-1.0, 1.0, len(cand))
    z = model.user_vectors(users, exclude=pos)
    raw = (z @ model.item_vectors(cand).T).detach()
    corrected = raw - log_q[None, :]
    corrected[0, 1] = float("-inf")  # an accidental hit stays masked
    out = gnn.training_logits(model, users, pos, cand, corrected, z, log_q)
    items, fam = gnn.overrides(users, model, exclude=pos, z=z)
    fam = fam.detach()
    extra = items.shape[1] if mode == "stratified" else 0
    assert out.shape == (40, len(cand) + extra)
    n_fam_pos = n_fam = 0
    for b in range(40):
        f = {int(i): float(v) for i, v in zip(items[b], fam[b], strict=True) if i >= 0}
        # F(u) holds no consumed item other than the positive
        assert not (set(f) - {int(pos[b])}) & set(tiny_split.history(int(users[b])).tolist())
        for c in range(len(cand)):
            item, got = int(cand[c]), float(out[b, c].detach())
            if (b, c) == (0, 1):
                assert got == float("-inf")
            elif item not in f:
                assert got == pytest.approx(float(corrected[b, c]), abs=1e-5)
            elif mode == "sampled":  # the fused score, with the column's correction
                n_fam += 1
                n_fam_pos += c == b
                assert got == pytest.approx(f[item] - float(log_q[c]), abs=1e-5)
            elif c == b:  # stratified: a familiar positive is uncorrected
                n_fam_pos += 1
                assert got == pytest.approx(f[item], abs=1e-5)
            else:  # stratified: counted once, in the exact block
                assert got == float("-inf")
        if mode == "stratified":
            block = out[b, len(cand):].detach()
            for s, i in enumerate(items[b].tolist()):
                if i < 0 or i == int(pos[b]):
                    assert block[s] == float("-inf")
                else:
                    assert float(block[s]) == pytest.approx(f[i], abs=1e-5)
    assert n_fam_pos > 0  # some positives are familiar: the head is trained on them
    assert mode == "stratified" or n_fam > 100
    out.logsumexp(1).sum().backward()
    assert gnn.pair_head[0].weight.grad is not None and gnn.offset.weight.grad.abs().sum() > 0


def assert_same_top_k(got, got_s, want, want_s, k):
    """Identical top-k lists up to exact score ties (float32 ties do occur on ML-100K:
    two fused scores equal to the last bit), which either order may break: the
    score sequences must be equal, and so must the items once each tie group is
    sorted by id, except a tie group that straddles the k-th slot."""
    assert np.array_equal(got_s, want_s[:, :k])
    for r in range(len(got)):
        boundary = want_s[r, k - 1] == want_s[r, k]
        keep = ~(boundary & (got_s[r] == want_s[r, k - 1]))
        g = got[r][np.lexsort((got[r], -got_s[r]))]
        w = want[r, :k][np.lexsort((want[r, :k], -want_s[r, :k]))]
        assert np.array_equal(g[keep], w[keep]), (r, got[r], want[r])


def fused_equals_retrieve(model, split, users, k=10):
    """Exhaustive fused scores (scorer, evaluator masking) vs two-stage retrieve, both
    averaging the model's eval.inference_samples draws (TwoTower.mean_user_state)."""
    model.eval()
    excl = split.exclusion_matrix("val")
    u = torch.as_tensor(users)
    with torch.no_grad():
        full = model.scorer()(users)
        rows, cols = excl[users].nonzero()
        full[rows, cols] = -np.inf
        want_s, want = torch.topk(full, k + 1, dim=1)
        got, got_s = model.retrieve(u, k, exclude=excl)
        items = model.mean_user_state(u)[1]  # the union of the draws' familiar sets
    assert_same_top_k(got.numpy(), got_s.numpy(), want.numpy(), want_s.numpy(), k)
    # without exclusions there is no slack from masked items: stage 1 needs k + |F|
    with torch.no_grad():
        all_s, all_i = torch.topk(model.scorer()(users), k + 1, dim=1)
        got0, got0_s = model.retrieve(u, k)
    assert_same_top_k(got0.numpy(), got0_s.numpy(), all_i.numpy(), all_s.numpy(), k)
    want = want[:, :k]
    # the test is not vacuous: lists mix familiar and two-tower items
    fam = (want[:, :, None] == items[:, None, :]).any(-1)
    return float(fam.float().mean())


def _calibrate(model, split, users):
    """Put the familiar logits on the two-tower scale so lists mix both kinds."""
    gnn = model.score_adjuster
    with torch.no_grad():
        u = torch.as_tensor(users)
        tt = model.user_vectors(u) @ model.item_vectors().T
        items, fam = gnn.overrides(u, model)
        gnn.offset.bias += float(tt.topk(10, 1).values.median() - fam[items >= 0].median())


def test_retrieve_then_rescore_equals_exhaustive_on_ml100k(ml100k_dir):
    split = leave_one_out(load_ml100k(ml100k_dir))
    cfg = load_config(None, ["context_gnn.enabled=true", "context_gnn.familiar=true"])
    torch.manual_seed(0)
    model = build_model(cfg, split)
    users = np.arange(split.n_users)
    _calibrate(model, split, users)
    share = fused_equals_retrieve(model, split, users)
    assert 0.1 < share < 0.9, share
    # and the evaluator's lists (batches of 1024, target unmasked) agree
    res = rank_full(split, model.scorer(), "val", k_max=11)
    got, got_s = model.retrieve(torch.as_tensor(res.users), 10, exclude=split.exclusion_matrix("val"))
    with torch.no_grad():
        full = model.scorer()(res.users)
    want_s = np.take_along_axis(full.numpy(), res.recs, 1)
    assert_same_top_k(got.numpy(), got_s.numpy(), res.recs, want_s, 10)


@pytest.mark.parametrize("residual", [False, True])
def test_retrieve_then_rescore_equals_exhaustive_on_tiny_split(tiny_split, residual):
    torch.manual_seed(1)
    model = build_model(tiny_cfg(f"context_gnn.residual={str(residual).lower()}"), tiny_split)
    users = np.arange(tiny_split.n_users)
    _calibrate(model, tiny_split, users)
    share = fused_equals_retrieve(model, tiny_split, users, k=5)
    assert 0.05 < share < 0.95, share
    # score(users, items) on given items agrees with the full fused matrix
    u = torch.arange(20)
    items = torch.tensor([0, 7, 33, 140, 7])
    with torch.no_grad():
        assert torch.allclose(model.score(u, items), model.score(u)[:, items], atol=1e-5)


@pytest.mark.parametrize("recent", [0, 5])
def test_mean_state_is_the_mean_of_the_draws_fused_scores(tiny_split, recent):
    """Serving's state (mean z_u + the union of the draws' familiar sets with their mean
    fused scores) gives exactly the mean over draws of the single-draw fused scores, and
    the two-stage retrieve returns the lists of that mean. ``recent=0``: hop 1 is the
    salted uniform sample, so F(u) itself changes between draws (the union is wider
    than one set); ``recent=5``: F(u) is the same set, its logits change (via c_u)."""
    from marl_two_tower.model.two_tower import apply_overrides

    torch.manual_seed(3)
    model = build_model(tiny_cfg(f"context_gnn.recent={recent}"), tiny_split).eval()
    assert model.inference_samples == 4  # the config default reaches the model
    users = torch.arange(tiny_split.n_users)
    _calibrate(model, tiny_split, users.numpy())
    gnn = model.score_adjuster
    with torch.no_grad():
        y = model.item_vectors()
        singles, sets = [], []
        for d in range(4):  # the oracle: each draw's fused score, then the mean
            gnn.inference_draw = d
            z = model.user_vectors(users)
            ov = gnn.overrides(users, model, z=z)
            singles.append(apply_overrides(z @ y.T, *ov))
            sets.append(ov[0])
        gnn.inference_draw = 0
        oracle = torch.stack(singles).mean(0)
        z_bar, u_items, u_vals = model.mean_user_state(users)
        got = model.scorer()(users.numpy())
    torch.testing.assert_close(got, oracle, rtol=1e-5, atol=1e-5)
    # the state itself: items outside every draw's set score <z-bar, y_i>
    in_union = torch.zeros_like(oracle, dtype=torch.bool)
    r, c = torch.nonzero(u_items >= 0, as_tuple=True)
    in_union[r, u_items[r, c]] = True
    torch.testing.assert_close((z_bar @ y.T)[~in_union], oracle[~in_union], rtol=1e-5, atol=1e-5)
    n_distinct = [len(set(torch.cat([s_[b] for s_ in sets]).tolist()) - {-1}) for b in range(len(users))]
    assert u_items.shape[1] == max(n_distinct)
    assert (u_items.shape[1] > gnn.max_items) == (recent == 0), u_items.shape
    assert not torch.allclose(singles[0], oracle)  # averaging changes the scores
    # the lists differ from the single draw 0 for some users, and retrieve gives the mean's
    top1 = torch.topk(model.scorer(samples=1)(users.numpy()), 5, dim=1).indices
    top4 = torch.topk(oracle, 5, dim=1).indices
    assert (top1 != top4).any()
    fused_equals_retrieve(model, tiny_split, users.numpy(), k=5)


def test_inference_is_batch_independent_and_deterministic(tiny_split):
    torch.manual_seed(2)
    model = build_model(tiny_cfg(), tiny_split)
    model.eval()
    gnn = model.score_adjuster
    with torch.no_grad():
        all_items, all_s = gnn.overrides(torch.arange(200), model)
        sub = torch.tensor([150, 3, 77])
        items, s = gnn.overrides(sub, model)
        c_all = gnn(torch.arange(200), model)
        c_sub = gnn(sub, model)
    assert torch.equal(items, all_items[sub])
    assert torch.allclose(s, all_s[sub], atol=1e-5)
    assert torch.allclose(c_sub, c_all[sub], atol=1e-5)
    # the per-batch cache never serves a stale c_u after the tables change in place
    with torch.no_grad():
        before = model.score(sub).clone()
        again = model.score(sub)
        gnn.user_emb.weight.mul_(3.0)
        after = model.score(sub)
    assert torch.equal(before, again) and not torch.allclose(before, after)


def test_training_is_deterministic_with_a_seed(tiny_split, tmp_path):
    outs = []
    for run in range(2):
        cfg = tiny_cfg(f"checkpoint_dir={tmp_path / str(run)}", "train.max_steps_per_epoch=8")
        tr = Trainer(cfg, tiny_split, progress=False)
        tr.fit()
        outs.append(tr.model.scorer()(np.arange(30)))
    assert torch.equal(outs[0], outs[1])
    cfg = tiny_cfg(f"checkpoint_dir={tmp_path / 'other'}", "train.max_steps_per_epoch=8", "seed=5")
    tr = Trainer(cfg, tiny_split, progress=False)
    tr.fit()
    assert not torch.equal(outs[0], tr.model.scorer()(np.arange(30)))


def test_roots_without_timestamps_get_the_uniform_sample():
    # users 0 and 1 have the same history; user 1's timestamps are unknown (NaN), so
    # its "latest items" would only be file order: its hop 1 is the uniform sample
    hist = [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6], [2, 3, 4]]
    ds = hand_dataset(hist, 8)
    ds.timestamps[ds.users == 1] = np.nan
    split = leave_one_out(ds)
    g = BipartiteGraph.from_split(split)
    assert g.timed.tolist() == [True, False, True]
    users = np.array([0, 1, 2])
    rec = sample_neighbourhood(g, users, None, fanout=100, familiar_size=0, salt=0,
                               need_hop3=False, recent=2)
    uni = sample_neighbourhood(g, users, None, fanout=100, familiar_size=0, salt=0,
                               need_hop3=False, recent=0)
    hop1 = lambda nb, b: set(nb.items1[nb.p1[b].indices].tolist())  # noqa: E731
    # train = first 5 items (val 5, test 6): the timed user sees its 2 latest, the
    # untimed one all 5 with the recent = 0 weights; user 2 (train [2]) its only item
    assert hop1(rec, 0) == {3, 4} and hop1(rec, 2) == {2}
    assert hop1(rec, 1) == {0, 1, 2, 3, 4} == hop1(uni, 1)
    w_rec = dict(zip(rec.items1[rec.p1[1].indices].tolist(), rec.p1[1].data, strict=True))
    w_uni = dict(zip(uni.items1[uni.p1[1].indices].tolist(), uni.p1[1].data, strict=True))
    assert w_rec == pytest.approx(w_uni)


def test_training_logits_full_softmax_layout_uses_the_target_column(tiny_split):
    """Full-softmax layout (candidates = the catalogue, positive at column pos[b]): the
    stratified familiar block masks familiar items except the row's own positive column,
    which gets the exact familiar logit."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("context_gnn.familiar_loss=stratified"), tiny_split)
    gnn = model.score_adjuster
    model.train()
    idx = np.linspace(0, len(tiny_split.train_items) - 1, 30).astype(np.int64)
    users = torch.as_tensor(tiny_split.train_users[idx])
    pos = torch.as_tensor(tiny_split.train_items[idx])
    cand = torch.arange(tiny_split.n_items)
    z = model.user_vectors(users, exclude=pos)
    raw = (z @ model.item_vectors().T).detach()
    out = gnn.training_logits(model, users, pos, cand, raw.clone(), z, None, target=pos).detach()
    items, fam = gnn.overrides(users, model, exclude=pos, z=z)
    checked_pos = 0
    for b in range(30):
        f = {int(i): float(v) for i, v in zip(items[b], fam[b].detach(), strict=True) if i >= 0}
        p = int(pos[b])
        if p in f:
            checked_pos += 1
            assert float(out[b, p]) == pytest.approx(f[p], abs=1e-5)
        else:
            assert float(out[b, p]) == pytest.approx(float(raw[b, p]), abs=1e-5)
        for item in set(f) - {p}:
            assert float(out[b, item]) == float("-inf")
    assert checked_pos > 0  # the fixture has familiar positives


@pytest.mark.parametrize("which, root_term", [("all", True), ("id", True),
                                              ("demographics", False), ("none", False)])
def test_root_id_embedding_follows_model_user_features(tiny_split, which, root_term):
    """c_u's layer 0 (the root's own user embedding) is there exactly when the user
    tower keeps a user id embedding: perturbing the root's row moves c_u iff so."""
    model = build_model(tiny_cfg("context_gnn.familiar=false", f"model.user_features={which}"),
                        tiny_split).eval()
    gnn = model.contexts["context_gnn"]
    assert gnn.root_id is root_term
    users = torch.arange(20)
    with torch.no_grad():
        before = gnn(users, model).clone()
        gnn.user_emb.weight[3] += 1.0  # user 3 is never in its own hop 2 (the root leaves it)
        gnn._cache = None
        after = gnn(users, model)
    # LightGCN mean of K + 1 terms: the root's own term enters with weight 1/(K+1);
    # without it, K terms none of which holds user 3's row
    k = gnn.cfg.layers
    want = torch.full((16,), 1.0 / (k + 1) if root_term else 0.0)
    torch.testing.assert_close(after[3] - before[3], want)

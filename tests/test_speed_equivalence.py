"""The speed work of issue 15 changes no number: each optimised routine against the
routine it replaced (kept here, verbatim, as the oracle), bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from marl_two_tower.config import GiniConfig
from marl_two_tower.fairness.gini_agent import GiniAgent, seen_mask, soft_exposure
from marl_two_tower.model.buhs import _MAX_BLOCKS, _gumbel, _length_blocks, draw_biased


def padded_draw_biased(indptr, train_items, inv_deg, fanout, temperature, users, exclude=None,
                       generator=None):
    """The BUHS draw before issue 15: keys over the whole padded [B, max length] batch."""
    f, dev = fanout, train_items.device
    start = indptr[users]
    length = indptr[users + 1] - start
    width = max(int(length.max()), 1) if len(users) else 1
    slot = torch.arange(width, device=dev)
    in_hist = slot[None, :] < length[:, None]
    pos = (start[:, None] + slot[None, :]).clamp(max=max(len(train_items) - 1, 0))
    items = train_items[pos] if len(train_items) else torch.zeros_like(pos)
    avail = in_hist if exclude is None else in_hist & (items != exclude[:, None])
    n_avail = avail.sum(1)
    logit = inv_deg[items] / temperature
    top = logit.masked_fill(~avail, -math.inf).amax(1, keepdim=True).clamp(min=-1e30)
    logit = (logit - top).masked_fill(~avail, -math.inf)
    out_pos = torch.zeros(len(users), f, dtype=torch.long, device=dev)
    valid = torch.zeros(len(users), f, dtype=torch.bool, device=dev)
    long_rows = torch.nonzero(n_avail >= f).squeeze(1)
    if len(long_rows):
        keys = logit[long_rows] + _gumbel((len(long_rows), width), dev, generator)
        out_pos[long_rows] = keys.topk(f, dim=1).indices.sort(dim=1).values
        valid[long_rows] = True
    short_rows = torch.nonzero((n_avail > 0) & (n_avail < f)).squeeze(1)
    if len(short_rows):
        w = max(int(length[short_rows].max()), 1)
        keys = logit[short_rows, None, :w] + _gumbel((len(short_rows), f, w), dev, generator)
        out_pos[short_rows] = keys.argmax(2).sort(dim=1).values
        valid[short_rows] = True
    return items.gather(1, out_pos).masked_fill(~valid, 0), valid


def heavy_tailed_csr(n_users: int, n_items: int, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """CSR histories with lengths 0..~600 (Pareto), item degrees and 1/deg."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum((rng.pareto(1.2, n_users) * 8).astype(np.int64), 600)
    lengths[:3] = [0, 1, 15]  # empty, one item (only the target), exactly the fan-out
    items = np.concatenate([rng.choice(n_items, size=n, replace=n > n_items) for n in lengths])
    deg = np.maximum(np.bincount(items, minlength=n_items), 1).astype(np.float64)
    indptr = np.r_[0, np.cumsum(lengths)]
    return torch.from_numpy(indptr), torch.from_numpy(items.astype(np.int64)), torch.from_numpy(1 / deg)


@pytest.mark.parametrize("with_exclude", [False, True])
def test_blocked_buhs_draw_equals_the_padded_draw(with_exclude):
    indptr, items, inv_deg = heavy_tailed_csr(400, 300, seed=1)
    rng = np.random.default_rng(2)
    for trial in range(6):
        users = torch.as_tensor(rng.integers(0, 400, 256))
        users[:3] = torch.tensor([0, 1, 2])
        exclude = None
        if with_exclude:  # a history item of each user (its training target), or any item
            ln = (indptr[users + 1] - indptr[users]).numpy()
            at = indptr[users].numpy() + rng.integers(0, np.maximum(ln, 1))
            exclude = torch.where(torch.as_tensor(ln) > 0, items[torch.as_tensor(at).clamp(
                max=len(items) - 1)], torch.zeros_like(users))
        for temperature in (0.1, 5.0):
            ref = padded_draw_biased(indptr, items, inv_deg, 15, temperature, users, exclude,
                                     torch.Generator().manual_seed(trial))
            got = draw_biased(indptr, items, inv_deg, 15, temperature, users, exclude,
                              torch.Generator().manual_seed(trial))
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
            # with the sampler's caches: per-interaction logits, sorted (user, item) keys
            rows = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr.diff())
            got = draw_biased(indptr, items, inv_deg, 15, temperature, users, exclude,
                              torch.Generator().manual_seed(trial), logit=inv_deg[items] / temperature,
                              pair_keys=torch.sort(rows * len(inv_deg) + items).values)
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    empty = draw_biased(indptr, items, inv_deg, 15, 1.0, torch.zeros(0, dtype=torch.long))
    assert empty[0].shape == (0, 15) and empty[1].shape == (0, 15)


def test_gini_seen_table_equals_the_csr_mask():
    # user 2 saw every item: its row must come back cleared (soft_exposure's rule)
    indptr = torch.tensor([0, 2, 2, 6, 7])
    items = torch.tensor([1, 3, 0, 1, 2, 3, 2])
    agent = GiniAgent(GiniConfig(enabled=True, mask_seen=True), 4, indptr.numpy(), items.numpy())
    users = torch.tensor([2, 0, 1, 3, 0])
    mask, cleared = agent.seen(users)
    ref = seen_mask(indptr, items, users, 4)
    assert cleared and torch.equal(mask, ref & ~ref.all(1, keepdim=True))
    assert mask[0].tolist() == [False] * 4 and mask[1].tolist() == [False, True, False, True]
    cand = torch.tensor([3, 1])
    mask_c, cleared_c = agent.seen(users, cand)
    assert not cleared_c and torch.equal(mask_c, seen_mask(indptr, items, users, 4, cand))
    scores = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(soft_exposure(scores, 0.3, mask, full_rows_cleared=True),
                       soft_exposure(scores, 0.3, ref))


def test_gini_loss_unchanged_by_the_seen_table():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 40
    indptr = np.r_[0, np.cumsum(rng.integers(0, 12, n_users))]
    items = rng.integers(0, n_items, indptr[-1])
    agent = GiniAgent(GiniConfig(enabled=True, mask_seen=True), n_items, indptr, items)
    users = torch.as_tensor(rng.integers(0, n_users, 32))
    z, y = torch.randn(32, 8), torch.randn(n_items, 8)
    ref = seen_mask(agent.indptr, agent.items, users, n_items)
    from marl_two_tower.metrics.gini import gini

    assert torch.equal(agent.loss(z, y, users), gini(soft_exposure(z @ y.T, agent.tau, ref)))


def test_sparse_hop2_product_equals_the_dense_one():
    """ContextGNN's hop 2 is (P1 S2).toarray() instead of P1 @ dense(S2): scipy sums
    over P1's stored entries in the same order in both, so the result is identical."""
    rng = np.random.default_rng(3)
    p1 = sp.random(64, 200, density=0.03, random_state=1, format="csr")
    p1.data = rng.random(p1.nnz) / 3
    s2 = sp.random(200, 150, density=0.1, random_state=2, format="csr")
    s2.data = rng.random(s2.nnz) * 7
    assert np.array_equal((p1 @ s2).toarray(), p1 @ s2.toarray())


def test_length_blocks_merge_the_cheapest_levels():
    # levels 3, 4, 5, 6, 7, 9 with row counts 50, 1, 2, 40, 3, 9: folding 4 into 5 pads
    # 1 x 16 rows, then 5 into 6 pads 3 x 32 (cheaper than 7 into 9: 3 x 384)
    level = torch.tensor([3] * 50 + [4] + [5] * 2 + [6] * 40 + [7] * 3 + [9] * 9)
    got = _length_blocks(level)
    assert len(torch.unique(got)) == _MAX_BLOCKS
    assert got.tolist() == [3] * 50 + [6] * 43 + [7] * 3 + [9] * 9


def test_genre_agents_reuse_stats_only_while_users_and_item_tower_are_unchanged():
    """GenreAgents.observe keeps the last batch's genre statistics (the scorer's draws
    re-observe the same users): equal to a fresh computation, recomputed for other
    users and after the item tower changes."""
    from marl_two_tower.config import Config, MARLConfig, SyntheticConfig
    from marl_two_tower.data import load_split
    from marl_two_tower.model.build import build_model
    from marl_two_tower.model.marl.env import build_observations

    cfg = Config()
    cfg.data.synthetic = SyntheticConfig(n_users=60, n_items=40, interactions_per_user=10,
                                         n_genres=4, seed=1)
    cfg.model.dim = cfg.model.id_dim = cfg.model.hidden = 8
    cfg.marl = MARLConfig(enabled=True, hidden=8)
    split = load_split(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, split).eval()
    agents = model.controller

    def fresh(users, e_u):
        stats = agents.history.features(users.numpy(), model.encode_items().detach().float())
        return build_observations(e_u, stats)

    users, e_u = torch.arange(20), torch.randn(20, 8)
    with torch.no_grad():
        assert torch.equal(agents.observe(users, e_u), fresh(users, e_u))
        e2 = torch.randn(20, 8)  # another draw's e_u: same stats, new observation
        assert torch.equal(agents.observe(users, e2), fresh(users, e2))
        other = torch.arange(5, 25)
        assert torch.equal(agents.observe(other, e_u), fresh(other, e_u))
        model.item_tower.id_emb.weight.add_(1.0)  # an optimiser step on the item tower
        assert torch.equal(agents.observe(other, e_u), fresh(other, e_u))

"""BUHS: the biased history sampler against its formula, target exclusion,
reproducibility at inference, and the synthesis models."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from marl_two_tower.config import BUHSConfig, ModelConfig
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.split import leave_one_out
from marl_two_tower.model.buhs import BUHS, BiasedHistorySampler, Synthesis
from marl_two_tower.model.two_tower import TwoTower

# user 0's history: items 1..6; other users give them train degrees 1, 2, 3, 5, 8, 13
DEGREES = {1: 1, 2: 2, 3: 3, 4: 5, 5: 8, 6: 13}


def degree_split(short_user: bool = True):
    """Users: 0 = history [1..6]; 1..12 = filler users setting the degrees; 13 = [2, 5]."""
    users, items = [0] * 6, list(range(1, 7))
    need = {i: d - 1 for i, d in DEGREES.items()}
    u = 1
    while any(need.values()):
        for i in DEGREES:
            if need[i]:
                users.append(u)
                items.append(i)
                need[i] -= 1
        u += 1
    users += [u, u]
    items += [7, 8]  # filler user's own items (so every user has a history)
    if short_user:
        users += [u + 1, u + 1]
        items += [2, 5]
    n_users = max(users) + 1
    extra = np.repeat(np.arange(n_users), 2)  # val + test rows, removed by LOO
    all_u = np.r_[users, extra]
    all_i = np.r_[items, np.zeros(len(extra), dtype=np.int64)]
    n_items = 9
    ds = Dataset(name="toy", users=all_u, items=all_i, timestamps=np.arange(len(all_u), dtype=float),
                 n_users=n_users, n_items=n_items, user_ids=np.arange(n_users),
                 item_ids=np.arange(n_items), item_genres=np.zeros((n_items, 0), dtype=bool),
                 genre_names=[], item_year=np.zeros(n_items, dtype=np.int32))
    return leave_one_out(ds)


def formula(history: list[int], degree: dict[int, int], t: float) -> np.ndarray:
    """Reference: p(i) ∝ exp((1/deg(i) - max_j 1/deg(j)) / T), written out directly."""
    inv = np.array([1.0 / degree[i] for i in history])
    w = np.exp((inv - inv.max()) / t)
    return w / w.sum()


def test_degrees_of_the_fixture():
    split = degree_split()
    assert split.history(0).tolist() == [1, 2, 3, 4, 5, 6]
    assert [int(split.item_pop[i]) for i in DEGREES] == [d + (i in (2, 5)) for i, d in DEGREES.items()]


def test_with_replacement_frequencies_match_formula():
    split = degree_split(short_user=False)
    t = 0.5
    s = BiasedHistorySampler(split, fanout=15, temperature=t)  # history 6 < fanout 15
    n = 4000
    gen = torch.Generator().manual_seed(1)
    items, valid = s(torch.zeros(n, dtype=torch.long), None, gen)
    assert bool(valid.all())
    counts = np.bincount(items.numpy().ravel(), minlength=9)[1:7]
    p = formula([1, 2, 3, 4, 5, 6], {i: int(split.item_pop[i]) for i in range(1, 7)}, t)
    np.testing.assert_allclose(s.probabilities(np.arange(1, 7)), p, rtol=1e-12)
    total = n * 15
    sigma = np.sqrt(total * p * (1 - p))
    z = (counts - total * p) / sigma
    assert np.abs(z).max() < 4.0, z  # fixed seed; measured max |z| ~ 1.3
    chi2 = float(((counts - total * p) ** 2 / (total * p)).sum())
    assert chi2 < 20.5  # chi2(5) 0.999 quantile


def plackett_luce_inclusion(p: np.ndarray, k: int) -> np.ndarray:
    """Exact P(item in sample) of a sequential draw of k without replacement."""
    incl = np.zeros(len(p))
    for seq in itertools.permutations(range(len(p)), k):
        prob, left = 1.0, 1.0
        for j in seq:
            prob *= p[j] / left
            left -= p[j]
        incl[list(seq)] += prob
    return incl


def test_without_replacement_matches_sequential_draw():
    split = degree_split(short_user=False)
    t = 0.3
    s = BiasedHistorySampler(split, fanout=3, temperature=t)
    n = 30000
    items, valid = s(torch.zeros(n, dtype=torch.long), None, torch.Generator().manual_seed(2))
    arr = items.numpy()
    assert bool(valid.all())
    assert (np.sort(arr, 1)[:, 1:] != np.sort(arr, 1)[:, :-1]).all()  # no repeats
    assert (np.diff(arr, axis=1) > 0).all()  # time order (items 1..6 are in time order)
    p = formula([1, 2, 3, 4, 5, 6], {i: int(split.item_pop[i]) for i in range(1, 7)}, t)
    incl = plackett_luce_inclusion(p, 3)
    freq = np.bincount(arr.ravel(), minlength=9)[1:7] / n
    sigma = np.sqrt(incl * (1 - incl) / n)
    assert np.abs((freq - incl) / sigma).max() < 4.0
    # it really is the sequential draw, not k independent draws: p*k would be > 1 here
    assert incl.max() <= 1.0 and (3 * p).max() > 1.0


def test_default_temperature_picks_the_rarest_items():
    split = degree_split(short_user=False)
    s = BiasedHistorySampler(split, fanout=2, temperature=0.01)
    items, _ = s(torch.zeros(50, dtype=torch.long), None, torch.Generator().manual_seed(0))
    # degrees 1 and 2 are the two rarest: exp(-(1 - 1/3)/0.01) makes anything else vanish
    assert (items.numpy() == [1, 2]).all()


def test_target_never_in_its_own_sample():
    split = degree_split()
    s = BiasedHistorySampler(split, fanout=4, temperature=0.2)
    gen = torch.Generator().manual_seed(3)
    for target in range(1, 7):
        items, valid = s(torch.zeros(2000, dtype=torch.long), torch.full((2000,), target), gen)
        assert bool(valid.all()) and not bool((items == target).any())
    # the rarest item is almost always drawn when allowed; excluded, it never is
    short = split.n_users - 1  # history [2, 5]
    items, valid = s(torch.tensor([short] * 100), torch.full((100,), 2), gen)
    assert bool(valid.all()) and bool((items == 5).all())  # replaced by the rest, with replacement
    items, valid = s(torch.tensor([short] * 3), torch.tensor([2, 5, 7]), gen)
    assert items[0].eq(5).all() and items[1].eq(2).all() and set(items[2].tolist()) <= {2, 5}


def test_user_with_only_the_target_gets_an_empty_sample():
    split = degree_split()
    s = BiasedHistorySampler(split, fanout=3, temperature=1.0)
    # the filler user with history [7, 8]: exclude... a user with a single item
    solo = [u for u in range(split.n_users) if len(split.history(u)) == 1]
    assert solo, "fixture has single-item users"
    u = solo[0]
    items, valid = s(torch.tensor([u]), torch.tensor([int(split.history(u)[0])]))
    assert not bool(valid.any())


def small_model(split, synthesis="attention", seed=0):
    torch.manual_seed(seed)
    mcfg = ModelConfig(dim=8, id_dim=8, hidden=16, history_len=5, user_encoder="pooled")
    model = TwoTower(split, mcfg)
    ctx = BUHS(split, BUHSConfig(enabled=True, fanout=3, temperature=0.5, synthesis=synthesis,
                                 inference_seed=11), model)
    model.add_user_context("buhs", ctx)
    return model, ctx


def test_same_seed_same_synthetic_history_at_inference():
    split = degree_split()
    model, ctx = small_model(split)
    model.eval()
    users = torch.arange(split.n_users)
    a_items, a_valid = ctx.sample(users)
    b_items, b_valid = ctx.sample(users.flip(0))  # another batching/order: same per user
    assert torch.equal(a_items, b_items.flip(0)) and torch.equal(a_valid, b_valid.flip(0))
    _, ctx2 = small_model(split, seed=5)  # fresh module, other weights, same seed
    ctx2.eval()
    assert torch.equal(ctx2.sample(users)[0], a_items)
    # scores are reproducible call to call
    s1 = model.scorer()(np.arange(split.n_users))
    s2 = model.scorer()(np.arange(split.n_users))
    assert torch.equal(s1, s2)
    # training draws are fresh
    ctx.train()
    draws = {tuple(ctx.sample(torch.zeros(1, dtype=torch.long))[0][0].tolist()) for _ in range(30)}
    assert len(draws) > 1
    # another inference seed gives another sample
    ctx3 = BUHS(split, BUHSConfig(enabled=True, fanout=3, temperature=0.5, inference_seed=12), model)
    ctx3.eval()
    assert not torch.equal(ctx3.sample(users)[0], a_items)


@pytest.mark.parametrize("kind", ["attention", "mean", "gru"])
def test_synthesis_ignores_invalid_slots_and_empty_rows(kind):
    torch.manual_seed(0)
    syn = Synthesis(kind, user_dim=6, item_dim=4, dim=5, hidden=8)
    u = torch.randn(3, 6)
    e = torch.randn(3, 4, 4)
    valid = torch.tensor([[True] * 4, [True, True, True, False], [False] * 4])
    out = syn(u, e, valid)
    e2 = e.clone()
    e2[1, 3] = 100.0  # an invalid slot
    e2[2] = -50.0  # an empty row
    out2 = syn(u, e2, valid)
    if kind != "gru":  # a GRU reads the padded slot positions; masked inputs are zeros
        torch.testing.assert_close(out[1], out2[1])
    torch.testing.assert_close(out[2], out2[2])
    # empty row = the MLP on [x_u; 0]
    torch.testing.assert_close(out[2], syn.mlp(torch.cat([u[2], torch.zeros(syn.mlp[0].in_features - 6)])))
    if kind == "mean":
        expect = syn.mlp(torch.cat([u[1], e[1, :3].mean(0)]))
        torch.testing.assert_close(out[1], expect)


def test_attention_with_equal_keys_is_the_mean():
    torch.manual_seed(0)
    syn = Synthesis("attention", user_dim=6, item_dim=4, dim=5, hidden=8)
    with torch.no_grad():
        syn.w_k.weight.zero_()  # all keys equal -> uniform attention over valid slots
    u, e = torch.randn(2, 6), torch.randn(2, 5, 4)
    valid = torch.tensor([[True] * 5, [True, False, True, False, False]])
    out = syn(u, e, valid)
    agg = torch.stack([e[0].mean(0), e[1, [0, 2]].mean(0)])
    torch.testing.assert_close(out, syn.mlp(torch.cat([u, syn.w_o(agg)], dim=1)))


def test_ml100k_sample_leans_to_rare_items(ml100k_dir):
    from marl_two_tower.data.movielens import load_ml100k

    split = leave_one_out(load_ml100k(ml100k_dir))
    users = torch.arange(split.n_users)
    pop, tail = split.item_pop, split.tail_mask
    stats = {}
    for t in (0.01, 100.0):  # T -> inf is uniform over the history
        s = BiasedHistorySampler(split, fanout=15, temperature=t)
        items, valid = s(users, None, torch.Generator().manual_seed(0))
        it, v = items.numpy(), valid.numpy()
        per_user_deg = ((pop[it] * v).sum(1) / v.sum(1)).mean()
        stats[t] = (per_user_deg, tail[it[v]].mean())
    # measured: mean degree 119 vs 189, tail share of the sample 0.47 vs 0.16
    assert stats[0.01][0] < 0.7 * stats[100.0][0]
    assert stats[0.01][1] > 2.5 * stats[100.0][1]


def test_buhs_query_is_the_user_towers_own_features():
    """BUHS reads x_u through the tower's public UserFeatures (shared parameters), and
    the tower's parameter names are those of earlier checkpoints."""
    from marl_two_tower.config import SyntheticConfig
    from marl_two_tower.data.synthetic import generate

    split = leave_one_out(generate(SyntheticConfig(n_users=40, n_items=30, interactions_per_user=6)))
    model, ctx = small_model(split)
    ut = model.user_tower
    names = sorted(split.dataset.user_features)
    assert names == ["age", "gender", "occupation"]
    assert {k for k in model.state_dict() if k.startswith("user_tower.")} == {
        "user_tower.id_emb.weight", "user_tower.hist_items", "user_tower.hist_valid",
        *(f"user_tower.demo_emb.{n}.weight" for n in names), *(f"user_tower.demo_{n}" for n in names),
        *(f"user_tower.mlp.{i}.{p}" for i in (0, 3) for p in ("weight", "bias"))}
    u = torch.tensor([0, 3, 7])
    codes = {n: torch.as_tensor(split.dataset.user_features[n][u.numpy()]) + 1 for n in names}
    want = torch.cat([ut.id_emb.weight[u], *(ut.demo_emb[n].weight[codes[n]] for n in names)], 1)
    torch.testing.assert_close(ut.features(u), want, rtol=0, atol=0)
    assert ut.feature_dim == 4 * 8 == ctx.synthesis.w_q.in_features


def _transformer_buhs(split, history: str):
    torch.manual_seed(0)
    mcfg = ModelConfig(dim=8, id_dim=8, hidden=16, history_len=8, user_encoder="transformer",
                       n_blocks=1)
    model = TwoTower(split, mcfg)
    ctx = BUHS(split, BUHSConfig(enabled=True, fanout=2, temperature=0.5, history=history), model)
    return model, ctx


def test_training_rows_of_the_transformer_tower_draw_from_their_prefix():
    """User 0's history is items 1..6 in time order. A training row predicting the item
    at position t draws only from the t items before it (buhs.history=prefix, the
    transformer's own input); history=all (default) also draws items after it; an
    unseen pair reads the whole history; the pooled tower cannot take 'prefix'."""
    split = degree_split()
    hist = split.history(0).tolist()
    assert hist == [1, 2, 3, 4, 5, 6]
    n = 3000
    users = torch.zeros(n, dtype=torch.long)
    _, ctx = _transformer_buhs(split, "prefix")
    ctx.train()
    for t in range(len(hist)):
        items, valid = ctx.sample(users, torch.full((n,), hist[t]))
        drawn = set(items[valid].tolist())
        assert drawn == set(hist[:t]), (t, drawn)  # every earlier item, nothing later
        assert bool(valid.any()) == (t > 0)  # the first item has an empty prefix
    _, ctx = _transformer_buhs(split, "all")
    ctx.train()
    items, valid = ctx.sample(users, torch.full((n,), hist[2]))
    assert set(items[valid].tolist()) == set(hist) - {hist[2]}
    _, ctx = _transformer_buhs(split, "prefix")
    items, valid = ctx.sample(users, torch.full((n,), 8))  # not in user 0's history
    assert set(items[valid].tolist()) == set(hist)
    mcfg = ModelConfig(dim=8, id_dim=8, hidden=16, history_len=5, user_encoder="pooled")
    with pytest.raises(ValueError, match="buhs.history='prefix'"):
        BUHS(split, BUHSConfig(enabled=True, history="prefix"), TwoTower(split, mcfg))

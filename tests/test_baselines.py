"""Behavioural tests every baseline must pass (after implicit's recommender_base_test),
plus oracles for each model's math. All data are built in memory and fit in well
under a second per model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from marl_two_tower.baselines import (
    BASELINES,
    BPR,
    EASE,
    BaselineRecommender,
    ItemKNN,
    MostPop,
    UnseenItemSampler,
    cosine_topk,
    ease_weights,
    load_recommender,
    loo_ndcg,
    tune_ease,
)
from marl_two_tower.data import Dataset, Split, leave_one_out

N_USERS, N_ITEMS, N_GROUPS = 60, 60, 3

# Small-data settings: the library defaults are sized for MovieLens, where an epoch
# has ~100 minibatches; here an epoch is a handful, so BPR needs smaller batches.
TEST_PARAMS: dict[str, dict] = {
    "mostpop": {},
    "itemknn": {"k_neighbors": 20},
    "bpr": {"dim": 16, "epochs": 30, "batch_size": 64, "lr": 0.01, "reg": 1e-2, "seed": 3},
    "ease": {"lam": 5.0},
    # a sequence model needs more passes over 60 short sequences than MovieLens' defaults
    "sasrec": {"dim": 32, "max_len": 20, "n_blocks": 1, "n_heads": 1, "epochs": 40, "patience": 40,
               "lr": 0.01, "seed": 3},
}


def planted_dataset(seed: int = 0) -> Dataset:
    """Block 'checkerboard': user u interacts with every item i with i = u (mod 3).

    Timestamps are a random permutation, so each user's withheld validation and test
    items differ and train popularity is uneven (MostPop has ties and non-ties).
    """
    uu, ii = np.nonzero(
        (np.arange(N_USERS)[:, None] % N_GROUPS) == (np.arange(N_ITEMS)[None, :] % N_GROUPS)
    )
    ts = np.random.default_rng(seed).permutation(len(uu)).astype(np.float64)
    return Dataset(
        name="planted",
        users=uu,
        items=ii,
        timestamps=ts,
        n_users=N_USERS,
        n_items=N_ITEMS,
        user_ids=np.arange(N_USERS),
        item_ids=np.arange(N_ITEMS),
        item_genres=np.zeros((N_ITEMS, 1), dtype=bool),
        genre_names=["none"],
        item_year=np.zeros(N_ITEMS, dtype=np.int32),
    )


@pytest.fixture(scope="module")
def split() -> Split:
    return leave_one_out(planted_dataset())


@pytest.fixture(scope="module")
def fitted(split: Split) -> dict[str, BaselineRecommender]:
    return {name: cls(**TEST_PARAMS[name]).fit(split) for name, cls in BASELINES.items()}


ALL = sorted(BASELINES)
PERSONALISED = [n for n in ALL if n != "mostpop"]


# -- contract shared by every model --------------------------------------------------


def test_registry_names_match_classes() -> None:
    assert set(BASELINES) == {"mostpop", "itemknn", "bpr", "ease", "sasrec"}
    for name, cls in BASELINES.items():
        assert cls.name == name and issubclass(cls, BaselineRecommender)


@pytest.mark.parametrize("name", ALL)
def test_score_covers_all_items_unmasked(name: str, fitted: dict, split: Split) -> None:
    users = np.array([0, 5, 7])
    scores = fitted[name].score(users)
    assert scores.dtype == torch.float32 and scores.shape == (3, N_ITEMS)
    assert torch.isfinite(scores).all()  # masking seen items is the caller's job


@pytest.mark.parametrize("name", PERSONALISED)
def test_recovers_withheld_item(name: str, fitted: dict, split: Split) -> None:
    users = split.eval_users("test")
    assert len(users) == N_USERS
    # Train items masked: the two withheld items of the user's block come first.
    top2 = fitted[name].recommend(users, k=2)
    assert (top2 == split.test_items[users, None]).any(axis=1).all()
    # Train and validation masked: the test item is the single best item.
    top1 = fitted[name].recommend(users, k=1, exclude=split.exclusion_matrix("test"))
    np.testing.assert_array_equal(top1[:, 0], split.test_items[users])


@pytest.mark.parametrize("name", ALL)
def test_recommend_never_returns_seen(name: str, fitted: dict, split: Split) -> None:
    users = np.arange(N_USERS)
    recs = fitted[name].recommend(users, k=10)
    seen = split.train_matrix[users].toarray().astype(bool)
    assert not np.take_along_axis(seen, recs, axis=1).any()
    assert (np.sort(recs, axis=1)[:, 1:] != np.sort(recs, axis=1)[:, :-1]).all()  # distinct
    excl = split.exclusion_matrix("test")
    recs = fitted[name].recommend(users, k=10, exclude=excl)
    assert not np.take_along_axis(excl[users].toarray().astype(bool), recs, axis=1).any()


@pytest.mark.parametrize("name", ALL)
def test_recommend_fills_with_minus_one_when_items_run_out(name: str, fitted: dict) -> None:
    # Each user has 18 train items, so only 42 of 60 items are recommendable.
    recs = fitted[name].recommend(np.array([0, 1]), k=N_ITEMS)
    assert recs.shape == (2, N_ITEMS)
    assert ((recs == -1).sum(axis=1) == 18).all()
    assert (recs[:, :42] >= 0).all()


@pytest.mark.parametrize("name", ALL)
def test_batch_recommend_equals_single_user(name: str, fitted: dict) -> None:
    users = np.arange(N_USERS)
    batch = fitted[name].recommend(users, k=7)
    single = np.concatenate([fitted[name].recommend(users[i : i + 1], k=7) for i in users])
    np.testing.assert_array_equal(batch, single)


@pytest.mark.parametrize("name", ALL)
def test_save_load_roundtrip(name: str, fitted: dict, tmp_path: Path) -> None:
    model = fitted[name]
    path = tmp_path / f"{name}.pt"
    model.save(path)
    loaded = type(model).load(path)
    users = np.arange(N_USERS)
    assert torch.equal(loaded.score(users), model.score(users))
    np.testing.assert_array_equal(loaded.recommend(users, 5), model.recommend(users, 5))
    assert loaded.get_params() == model.get_params()
    assert type(load_recommender(path)) is type(model)
    # The checkpoint is plain data: it loads under weights_only=True.
    torch.load(path, weights_only=True)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind


def test_load_refuses_other_model(fitted: dict, tmp_path: Path) -> None:
    fitted["ease"].save(tmp_path / "ease.pt")
    with pytest.raises(ValueError, match="ease"):
        ItemKNN.load(tmp_path / "ease.pt")


@pytest.mark.parametrize("name", ALL)
def test_unfitted_model_raises(name: str) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        BASELINES[name]().score(np.array([0]))


# -- MostPop -------------------------------------------------------------------------


def test_mostpop_scores_equal_train_counts(split: Split) -> None:
    model = MostPop().fit(split)
    counts = np.bincount(split.train_items, minlength=N_ITEMS)
    np.testing.assert_array_equal(model.score(np.array([0, 1])).numpy(), np.stack([counts] * 2))
    with_val = MostPop().fit(split, include_val=True)
    counts_val = counts + np.bincount(split.val_items, minlength=N_ITEMS)
    np.testing.assert_array_equal(with_val.score(np.array([3]))[0].numpy(), counts_val)


# -- ItemKNN -------------------------------------------------------------------------


X3 = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=np.float32))


def test_itemknn_cosine_matches_hand_computation() -> None:
    # Columns a=(1,1,1), b=(1,0,1), c=(0,1,1): |a|^2=3, |b|^2=|c|^2=2,
    # a.b = a.c = 2, b.c = 1.
    ab, bc = 2 / math.sqrt(6), 1 / 2
    expected = np.array([[0, ab, ab], [ab, 0, bc], [ab, bc, 0]])
    np.testing.assert_allclose(cosine_topk(X3, k_neighbors=10).toarray(), expected, rtol=1e-6)
    # Shrinkage adds to the denominator: S_ij = co_ij / (sqrt(c_i c_j) + shrink).
    ab_s, bc_s = 2 / (math.sqrt(6) + 1), 1 / (2 + 1)
    expected_s = np.array([[0, ab_s, ab_s], [ab_s, 0, bc_s], [ab_s, bc_s, 0]])
    np.testing.assert_allclose(
        cosine_topk(X3, k_neighbors=10, shrink=1.0).toarray(), expected_s, rtol=1e-6
    )
    # One neighbour per row: a's tie between b and c goes to the lower index (b).
    expected_1 = np.array([[0, ab, 0], [ab, 0, 0], [ab, 0, 0]])
    np.testing.assert_allclose(cosine_topk(X3, k_neighbors=1).toarray(), expected_1, rtol=1e-6)


def test_itemknn_blocked_pruning_matches_dense(split: Split, monkeypatch) -> None:
    import marl_two_tower.baselines.itemknn as itemknn

    x = split.train_matrix
    dense = (x.T @ x).toarray()
    norm = np.sqrt(np.diag(dense))
    sim = dense / np.outer(norm, norm)
    np.fill_diagonal(sim, 0.0)
    # Oracle: per row, the k largest (ties by lower index) via a stable argsort.
    k = 5
    expected = np.zeros_like(sim)
    for r in range(len(sim)):
        top = np.argsort(-sim[r], kind="stable")[:k]
        top = top[sim[r, top] > 0]
        expected[r, top] = sim[r, top]
    monkeypatch.setattr(itemknn, "_BLOCK_ENTRIES", 7 * N_ITEMS)  # several row blocks
    np.testing.assert_allclose(cosine_topk(x, k).toarray(), expected, rtol=1e-6)


def test_itemknn_score_is_history_times_similarity(fitted: dict, split: Split) -> None:
    model = fitted["itemknn"]
    users = np.array([2, 9])
    expected = split.train_matrix[users].toarray() @ model.similarity.toarray()
    np.testing.assert_allclose(model.score(users).numpy(), expected, rtol=1e-6)


# -- EASE ----------------------------------------------------------------------------


def test_ease_matches_constrained_ridge_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((12, 6)) < 0.5).astype(np.float64)
    lam = 2.0
    b = ease_weights(sp.csr_matrix(x), lam)
    assert np.all(np.diag(b) == 0.0)
    # Oracle: the constrained problem solved column by column as an ordinary ridge
    # regression of item j on all other items (B_jj = 0 by construction).
    brute = np.zeros((6, 6))
    for j in range(6):
        others = np.delete(np.arange(6), j)
        a = x[:, others]
        brute[others, j] = np.linalg.solve(a.T @ a + lam * np.eye(5), a.T @ x[:, j])
    np.testing.assert_allclose(b, brute, atol=1e-10)


def test_ease_model_weights_and_scores(fitted: dict, split: Split) -> None:
    model = fitted["ease"]
    assert torch.all(torch.diagonal(model.weights) == 0)
    users = np.array([1, 4])
    expected = split.train_matrix[users].toarray() @ model.weights.numpy()
    np.testing.assert_allclose(model.score(users).numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="> 0"):
        EASE(lam=0.0)


def test_tune_ease_picks_best_validation_lambda(split: Split) -> None:
    best, results = tune_ease(split, lambdas=[1.0, 5.0, 1e5])
    assert set(results) == {1.0, 5.0, 1e5}
    assert results[best] == max(results.values())
    with pytest.raises(ValueError, match="validation only"):
        tune_ease(split, [1.0], score_on="test")


# -- BPR -----------------------------------------------------------------------------


def test_bpr_same_seed_identical_and_other_seed_differs(split: Split) -> None:
    params = TEST_PARAMS["bpr"] | {"epochs": 3}
    users = np.arange(N_USERS)
    a = BPR(**params).fit(split).score(users)
    b = BPR(**params).fit(split).score(users)
    c = BPR(**(params | {"seed": 4})).fit(split).score(users)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bpr_loss_decreases(fitted: dict) -> None:
    losses = fitted["bpr"].epoch_losses
    assert len(losses) == TEST_PARAMS["bpr"]["epochs"]
    assert losses[-1] < 0.5 * losses[0]


def test_bpr_sgd_option_learns(split: Split) -> None:
    model = BPR(dim=16, epochs=40, batch_size=64, lr=0.05, optimizer="sgd", seed=0).fit(split)
    assert model.epoch_losses[-1] < model.epoch_losses[0]
    with pytest.raises(ValueError, match="optimizer"):
        BPR(optimizer="rmsprop")  # type: ignore[arg-type]


def test_bpr_negatives_are_uniform_over_unseen_items() -> None:
    # User 0 has seen 7 of 10 items (dense, where rejection sampling would struggle);
    # user 1 has seen none; user 2 has seen everything but the last item.
    x = sp.csr_matrix(
        (np.ones(7 + 9), (np.r_[[0] * 7, [2] * 9], np.r_[[0, 1, 2, 4, 5, 7, 8], np.arange(9)])),
        shape=(3, 10),
    )
    sampler = UnseenItemSampler(x)
    gen = torch.Generator().manual_seed(0)
    j0 = sampler.sample(torch.zeros(30_000, dtype=torch.int64), gen)
    counts = np.bincount(j0.numpy(), minlength=10)
    assert set(np.flatnonzero(counts)) == {3, 6, 9}
    np.testing.assert_allclose(counts[[3, 6, 9]] / 30_000, 1 / 3, atol=0.015)
    j1 = sampler.sample(torch.ones(20_000, dtype=torch.int64), gen)
    np.testing.assert_allclose(np.bincount(j1.numpy(), minlength=10) / 20_000, 0.1, atol=0.01)
    assert (sampler.sample(torch.full((100,), 2), gen) == 9).all()


# -- shared helpers ------------------------------------------------------------------


def test_loo_ndcg_matches_per_user_oracle(fitted: dict, split: Split) -> None:
    model = fitted["mostpop"]  # many ties: ranks count strictly better items only
    for part in ("val", "test"):
        excl = split.exclusion_matrix(part).toarray().astype(bool)
        expected = []
        for u in split.eval_users(part):
            s = model.score(np.array([u]))[0].numpy()
            target = split.targets(part)[u]
            rank = int(np.sum((s > s[target]) & ~excl[u]))
            expected.append(1 / math.log2(rank + 2) if rank < 10 else 0.0)
        assert loo_ndcg(model, split, part, k=10, batch_size=7) == pytest.approx(
            np.mean(expected)
        )


def test_include_val_fits_on_train_plus_validation(split: Split, tmp_path: Path) -> None:
    model = EASE(lam=5.0).fit(split, include_val=True)
    assert (model.train_matrix != split.exclusion_matrix("test")).nnz == 0
    recs = model.recommend(np.arange(N_USERS), k=1)  # masks train and validation
    np.testing.assert_array_equal(recs[:, 0], split.test_items)
    with pytest.raises(ValueError, match="include_val"):
        loo_ndcg(model, split, "val")
    model.save(tmp_path / "m.pt")
    assert EASE.load(tmp_path / "m.pt").include_val

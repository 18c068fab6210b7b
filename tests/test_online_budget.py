"""The online exposure budget of ``serve`` against the offline joint allocation
(docs/serving.md, "Online and offline exposure budget"): with one window covering all
users, requested once each in order, the served lists are exactly
``allocate_in_order`` (the frontier's ``online`` arm); they equal the offline budget's
lists when the cap never binds and differ, in the documented ways, when it does."""

from __future__ import annotations

import numpy as np
import pytest

from marl_two_tower.config import ServingConfig, load_config
from marl_two_tower.data import load_split
from marl_two_tower.eval import frontier as F
from marl_two_tower.eval.protocols import full_candidates
from marl_two_tower.fairness.exposure import (
    ExposureBudget,
    allocate,
    allocate_in_order,
    fair_share_cap,
    rerank_with_budget,
)
from marl_two_tower.serving.export import bundle_from_model
from marl_two_tower.serving.recommender import Recommender
from marl_two_tower.train.trainer import Trainer

TINY = ["data.synthetic.n_users=240", "data.synthetic.n_items=150", "model.dim=16",
        "model.id_dim=16", "model.hidden=32", "train.batch_size=256", "train.epochs=1",
        "train.num_threads=1"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny trained two-tower, its serving bundle and its validation candidates
    (all items: serve searches the whole catalogue)."""
    cfg = load_config(None, TINY + [f"checkpoint_dir={tmp_path_factory.mktemp('ck')}"])
    split = load_split(cfg.data)
    tr = Trainer(cfg, split, progress=False)
    tr.fit()
    model = tr.model.eval()
    # part "val": the evaluation masks train items only, as serving.seen = "train" does
    plain, cand, logp = full_candidates(split, model.scorer(), "val", n_candidates=split.n_items,
                                        k_max=10)
    return bundle_from_model(model, cfg, split), split, plain, cand, logp


def serve(bundle, users, factor: float, window: int) -> np.ndarray:
    rec = Recommender(bundle, ServingConfig(seen="train", exposure_cap=factor, exposure_window=window))
    lists = rec.recommend(users, 10)  # one request per user, in this order
    out = np.full((len(users), 10), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        out[r, : len(lst.items)] = lst.items
    return out


def test_allocate_in_order_hand_case() -> None:
    # 3 users, 3 items, cap 1 slot each, k = k_max = 2, all want 0 then 1 then 2:
    # user 0 (first) takes 0 and 1, user 1 gets 2, user 2 gets nothing
    cand = np.array([[0, 1, 2], [0, 1, 2], [0, 2, 1]])
    assert allocate_in_order(cand, 2, 1, 3, k=2).tolist() == [[0, 1], [2, -1], [-1, -1]]
    # the offline allocation with user 2 wanting item 0 most shares the first slots out
    pri = np.array([[-1.0, -2, -3], [-1.5, -2, -3], [-0.5, -2.5, -3]])
    assert allocate(cand, pri, 2, 1, 3).tolist() == [[1, -1], [2, -1], [0, -1]]
    # only the first k slots count: with k = 1 user 0's item 1 uses no budget, so user 1
    # still gets it (0 is full); user 2 then finds 0 and 1 full
    assert allocate_in_order(cand, 2, 1, 3, k=1).tolist() == [[0, 1], [1, 2], [2, -1]]


def test_one_window_over_all_users_serves_allocate_in_order(served) -> None:
    bundle, split, plain, cand, logp = served
    users, n, n_items = plain.users, len(plain.users), split.n_items
    for factor in (1.5, 3.0):
        got = serve(bundle, users, factor, window=n)
        cap = fair_share_cap(factor, 10, n, n_items)  # C_w with window = n users = offline C
        assert cap == ExposureBudget(factor, k=10, n_candidates=1000, floor=0).capacity(n, n_items)
        assert np.array_equal(got, allocate_in_order(cand, 10, cap, n_items, k=10))
        # ... which is the frontier's online arm
        c = F.Candidates("val", plain, cand, logp.astype(np.float32), np.asarray(split.item_pop),
                         np.asarray(split.tail_mask))
        assert np.array_equal(got, F.lists_for(c, F.Setting("online", factor)).recs)
        assert np.bincount(got[got >= 0], minlength=n_items).max() <= cap
    # a binding cap: the offline joint allocation gives other lists (who wins a contested
    # item: highest log p offline, earliest request online; slot-by-slot vs list-by-list)
    plain_budget = ExposureBudget(1.5, k=10, n_candidates=cand.shape[1], floor=0)
    offline = rerank_with_budget(cand, logp, 10, plain_budget, n_items)
    tight = serve(bundle, users, 1.5, window=n)
    assert not np.array_equal(offline, tight)
    assert (offline != tight).any(axis=1).mean() > 0.1
    # the same items win the first request either way (nothing is taken yet)
    assert np.array_equal(tight[0], plain.recs[0])


def test_a_cap_that_never_binds_serves_the_offline_lists(served) -> None:
    bundle, split, plain, cand, logp = served
    n = len(plain.users)
    top = np.bincount(plain.recs[plain.recs >= 0], minlength=split.n_items).max()
    factor = 1.01 * top * split.n_items / (10 * n)  # C = the most-exposed item's count
    assert fair_share_cap(factor, 10, n, split.n_items) >= top
    got = serve(bundle, plain.users, factor, window=n)
    budget = ExposureBudget(factor, k=10, n_candidates=cand.shape[1], floor=0)
    offline = rerank_with_budget(cand, logp, 10, budget, split.n_items)
    assert np.array_equal(got, plain.recs) and np.array_equal(offline, plain.recs)


def test_the_window_order_matters_online_only(served) -> None:
    """Reversing the request order changes the served lists (first come, first served);
    the offline allocation does not depend on the row order of the users."""
    bundle, split, plain, cand, logp = served
    n, rev = len(plain.users), np.arange(len(plain.users))[::-1]
    fwd = serve(bundle, plain.users, 1.5, window=n)
    back = serve(bundle, plain.users[rev], 1.5, window=n)[rev]
    assert not np.array_equal(fwd, back)
    b = ExposureBudget(1.5, k=10, n_candidates=cand.shape[1], floor=0)
    off = rerank_with_budget(cand, logp, 10, b, split.n_items)
    off_rev = rerank_with_budget(cand[rev], logp[rev], 10, b, split.n_items)[rev]
    assert np.array_equal(off, off_rev)

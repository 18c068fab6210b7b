"""The transformer user tower of the two-tower model (``model.user_encoder=transformer``):
prefix-exact training rows, sequence batches, full-softmax logits, the dot-product
score, a planted order pattern the pooled tower cannot learn, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marl_two_tower.config import load_config
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.sequences import SequenceSampler, append_items
from marl_two_tower.data.split import Split, leave_one_out
from marl_two_tower.model.build import build_model, load_trained
from marl_two_tower.model.losses import rec_loss
from marl_two_tower.model.two_tower import SequenceUserTower
from marl_two_tower.train.trainer import Trainer

M = 20  # "a" items 0..19; item M + a is b(a)


def planted_split(n_users: int = 400, seed: int = 0) -> Split:
    """Each user rates 4..8 distinct a items; after each a, its b(a) follows with
    probability 1/2, and always after the last one: "b(a) always follows a" wherever
    it occurs. Validation is the last a, test its b. At test (validation appended to
    the history) several a's have no b yet, so the candidates include several b's: an
    order-blind tower cannot tell which a came last; the rule appears at every position
    in train."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        a = rng.choice(M, rng.integers(4, 9), replace=False)
        follow = rng.random(len(a)) < 0.5
        follow[-1] = True
        seqs.append(np.concatenate([[x, M + x] if f else [x] for x, f in zip(a, follow, strict=True)]))
    lengths = np.array([len(q) for q in seqs])
    users = np.repeat(np.arange(n_users), lengths)
    steps = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ds = Dataset(name="planted", users=users, items=np.concatenate(seqs),
                 timestamps=steps.astype(float), n_users=n_users, n_items=2 * M,
                 user_ids=np.arange(n_users), item_ids=np.arange(2 * M),
                 item_genres=np.zeros((2 * M, 0), dtype=bool), genre_names=[],
                 item_year=np.zeros(2 * M, dtype=np.int32))
    return leave_one_out(ds)


def cfg_for(tmp_path: Path, encoder: str, *extra: str):
    return load_config(None, [
        f"model.user_encoder={encoder}", "model.history_len=16", "model.dim=16", "model.id_dim=16",
        "model.hidden=32", "model.n_blocks=1", "model.seq_dropout=0.0",
        "model.full_softmax_max_items=100", "train.batch_size=256", "train.lr=0.01",
        "train.epochs=40", "train.eval_every=40", "train.num_threads=1",
        "train.in_batch_negatives=false", "train.tensorboard=false", "train.num_negatives=8",
        f"checkpoint_dir={tmp_path / encoder}", *extra])


def test_training_rows_read_exactly_the_items_before_their_positive(tmp_path: Path) -> None:
    split = planted_split(20)
    model = build_model(cfg_for(tmp_path, "transformer"), split).eval()
    tower = model.user_tower
    assert isinstance(tower, SequenceUserTower)
    emb = model.item_tower.id_emb
    long = np.flatnonzero(np.diff(split.train_indptr) >= 6)
    a, b = int(long[0]), int(long[1])
    u = torch.tensor([a, a, a, b, a])
    # user a's train sequence has 6 items; rows for positives at positions 5, 1, 0, 4 and 3
    hist = split.history(a)
    pos = torch.tensor([hist[5], hist[1], hist[0], split.history(b)[4], hist[3]])
    grouped = tower.sequence_history(u, emb, exclude=pos)
    for r in range(len(u)):  # one row at a time: its own window only
        alone = tower.sequence_history(u[r:r + 1], emb, exclude=pos[r:r + 1])
        torch.testing.assert_close(grouped[r:r + 1], alone, atol=1e-5, rtol=0)
    # the row for position 5 equals the inference vector of a user whose history is the
    # first 5 items; the row for position 0 (empty prefix) equals an empty history
    x = torch.tensor(hist[:5])[None]
    ref = tower.encoder.last(emb(x), torch.ones_like(x, dtype=torch.bool))
    torch.testing.assert_close(grouped[0:1], ref, atol=1e-5, rtol=0)
    empty = tower.encoder.last(emb(torch.zeros(1, 1, dtype=torch.long)),
                               torch.zeros(1, 1, dtype=torch.bool))
    torch.testing.assert_close(grouped[2:3], empty, atol=1e-5, rtol=0)
    # inference reads the whole train history (6 items)
    x6 = torch.tensor(hist)[None]
    torch.testing.assert_close(tower.sequence_history(u[:1], emb),
                               tower.encoder.last(emb(x6), torch.ones_like(x6, dtype=torch.bool)),
                               atol=1e-5, rtol=0)


def test_sequence_sampler_batches_whole_user_windows() -> None:
    split = planted_split(50)
    sampler = SequenceSampler(split, batch_size=60, window=4, seed=0)
    batches = list(sampler.batches(0))
    assert len(batches) == len(sampler)
    flat = np.concatenate(batches)
    # every user's last min(n, 4) train interactions, each exactly once
    ptr = split.train_indptr
    take = np.minimum(np.diff(ptr), 4)
    expected = np.concatenate([np.arange(ptr[u + 1] - take[u], ptr[u + 1]) for u in range(50)])
    np.testing.assert_array_equal(np.sort(flat), np.sort(expected))
    for b in batches:  # whole windows: a user's rows are all in one batch
        users = split.train_users[b]
        assert all((users == u).sum() == take[u] for u in np.unique(users))
    np.testing.assert_allclose(sampler.prob.sum(), 1.0)


def test_all_positions_cut_long_sequences_into_blocks_read_within_their_block(tmp_path: Path) -> None:
    split = planted_split(50)
    window = 3  # train sequences hold 3..14 items: up to 5 blocks
    sampler = SequenceSampler(split, batch_size=60, window=window, seed=0, all_positions=True)
    batches = list(sampler.batches(0))
    # every train interaction exactly once
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(len(split.train_items)))
    ptr = split.train_indptr
    pos_of = np.arange(len(split.train_items)) - ptr[split.train_users]
    n = np.diff(ptr)
    block = (n[split.train_users] - 1 - pos_of) // window  # 0 = the last `window` items
    for b in batches:  # whole blocks: a (user, block) pair's rows are all in one batch
        key = split.train_users[b] * 1000 + block[b]
        all_key = split.train_users * 1000 + block
        for k in np.unique(key):
            assert (key == k).sum() == (all_key == k).sum()
    # the window sampler is unchanged by the option: the same batches as before
    plain = SequenceSampler(split, batch_size=60, window=window, seed=0)
    take = np.minimum(n, window)
    expected = np.concatenate([np.arange(ptr[u + 1] - take[u], ptr[u + 1]) for u in range(50)])
    np.testing.assert_array_equal(np.sort(np.concatenate(list(plain.batches(0)))), expected)
    # the tower: a row of block k reads the items before it inside its block's input
    # window, the block shifted back one item (SASRec's x = s[-L-1:-1] for y = s[-L:])
    cfg = cfg_for(tmp_path, "transformer", f"model.history_len={window}",
                  "model.train_positions=all")
    model = build_model(cfg, split).eval()
    tower, emb = model.user_tower, model.item_tower.id_emb
    a = int(np.flatnonzero(n >= 3 * window + 1)[0])
    hist = split.history(a)
    m = len(hist)
    at = np.array([m - 1, m - window - 1, m - window - 2, m - 2 * window, 1])
    h = tower.sequence_history(torch.full((len(at),), a), emb, exclude=torch.tensor(hist[at]))
    for r, p in enumerate(at):
        k = (m - 1 - p) // window
        start = m - (k + 1) * window - 1  # first input of the block (< 0: a short block)
        before = hist[max(start, 0):p]
        assert 1 <= len(before) <= window
        if len(before) == 0:
            ref = tower.encoder.ln_out(torch.zeros(1, tower.encoder.dim))
        else:
            x = torch.tensor(before)[None]
            ref = tower.encoder.last(emb(x), torch.ones_like(x, dtype=torch.bool))
        torch.testing.assert_close(h[r:r + 1], ref, atol=1e-5, rtol=0)


def test_attention_dropout_is_its_own_key(tmp_path: Path) -> None:
    split = planted_split(20)
    for extra, expected in ((), 0.3), (("model.attn_dropout=0",), 0.0):
        cfg = cfg_for(tmp_path, "transformer", "model.seq_dropout=0.3", *extra)
        enc = build_model(cfg, split).user_tower.encoder
        assert [b.attn.dropout for b in enc.blocks] == [expected]
        assert enc.emb_dropout.p == 0.3 and enc.blocks[0].ffn[2].p == 0.3


def test_full_softmax_logits_and_the_score_is_one_dot_product(tmp_path: Path) -> None:
    split = planted_split(20)
    cfg = cfg_for(tmp_path, "transformer")
    model = build_model(cfg, split).eval()
    users, pos = torch.tensor([0, 1, 1]), torch.tensor([split.history(0)[2], split.history(1)[3],
                                                        split.history(1)[1]])
    z, logits, target = model.training_logits(users, pos, torch.tensor([0, 1]))
    # full-softmax layout: one column per item in item order, the positive's column = its id
    assert logits.shape == (3, 2 * M)
    torch.testing.assert_close(target, pos)
    y = model.item_vectors()
    torch.testing.assert_close(logits, z @ y.T)
    # the loss is the full-softmax CE: -log softmax(z y^T)[pos]
    expected = -torch.log_softmax(z @ y.T, dim=1)[torch.arange(3), pos].mean()
    torch.testing.assert_close(rec_loss(logits, "softmax", target=target), expected)
    # the trainer's path: chunked per-row CE, the [B, n_items] logits never built
    z2, rows = model.training_row_losses(users, pos, torch.tensor([0, 1]))
    torch.testing.assert_close(rows, -torch.log_softmax(z @ y.T, dim=1)[torch.arange(3), pos])
    torch.testing.assert_close(z2, z)
    # inference: user vector . item vector = the model's score
    u = torch.arange(20)
    torch.testing.assert_close(model.score(u), model.user_vectors(u) @ y.T)
    torch.testing.assert_close(model.scorer()(u.numpy()), model.score(u))


def test_full_softmax_bf16_runs_the_ce_matmuls_in_bf16_only(tmp_path: Path) -> None:
    """model.full_softmax_bf16: the per-row losses are the bf16 chunked CE of the fp32
    user and item vectors (the towers are not autocast), close to the fp32 CE."""
    from marl_two_tower.model.chunked_ce import chunked_softmax_ce_rows

    split = planted_split(20)
    users, pos = torch.tensor([0, 1, 1]), torch.tensor([split.history(0)[2], split.history(1)[3],
                                                        split.history(1)[1]])
    for flag in (False, True):
        model = build_model(cfg_for(tmp_path, "transformer", f"model.full_softmax_bf16={flag}"),
                            split).eval()
        z, rows = model.training_row_losses(users, pos, torch.tensor([0, 1]))
        assert z.dtype == torch.float32
        y = model.item_vectors()
        torch.testing.assert_close(rows, chunked_softmax_ce_rows(z, y, pos, bf16=flag))
        other = chunked_softmax_ce_rows(z, y, pos, bf16=not flag)
        assert not torch.equal(rows, other)  # the flag changes the matmuls, by little:
        torch.testing.assert_close(rows, other, atol=0.02, rtol=0.01)


def test_fair_sampler_reweights_sequence_positives(tmp_path: Path) -> None:
    """Under the sequence tower the Fair Sampler weights each row's L_rec by
    pop(i)^-beta, normalised to mean 1 over the batch, instead of drawing positives."""
    split = planted_split(30)
    cfg = cfg_for(tmp_path, "transformer", "fair_sampler.enabled=true", "fair_sampler.beta=0.5",
                  "model.dropout=0.0")
    trainer = Trainer(cfg, split, progress=False)
    fair = trainer.component("fair_sampler")
    assert fair.positive_sampler is None  # the sequence batches stay the sampler
    users, pos = torch.tensor([0, 0, 1, 2]), torch.tensor([split.history(0)[1], split.history(0)[2],
                                                          split.history(1)[1], split.history(2)[3]])
    pop = np.maximum(split.item_pop[pos.numpy()], 1).astype(float)
    w = pop ** -0.5
    np.testing.assert_allclose(fair.row_weights(users, pos).numpy(), w / w.mean(), rtol=1e-6)
    trainer.model.eval()
    with torch.no_grad():
        _, rows = trainer.model.training_row_losses(users, pos, torch.tensor([0]))
    terms = trainer.losses(users, pos, np.random.default_rng(0))
    expected = float((rows * torch.as_tensor(w / w.mean(), dtype=torch.float32)).mean())
    assert float(terms["rec"]) == pytest.approx(cfg.loss.l_sup * expected, rel=1e-5)
    # an unweighted run gives the plain mean: the weights change the objective
    assert abs(float(rows.mean()) - expected) > 1e-4


def _test_hit_rate(tmp_path: Path, encoder: str) -> float:
    split = planted_split(1000)
    # few epochs and MLP dropout: the user-id embedding memorises histories otherwise
    cfg = cfg_for(tmp_path, encoder, "train.epochs=10", "train.eval_every=10", "model.dropout=0.3")
    trainer = Trainer(cfg, split, progress=False)
    trainer.fit()
    model = trainer.model
    model.user_tower.use_history(*append_items(split.train_indptr, split.train_items, split.val_items))
    users = split.eval_users("test")
    s = model.scorer()(users)
    excl = split.exclusion_matrix("test")[users].toarray().astype(bool)
    s[torch.from_numpy(excl)] = -torch.inf
    return float((s.argmax(1).numpy() == split.test_items[users]).mean())


def test_transformer_tower_recovers_planted_order_that_pooling_cannot(tmp_path: Path) -> None:
    assert _test_hit_rate(tmp_path, "transformer") > 0.8  # measured 0.88
    assert _test_hit_rate(tmp_path, "pooled") < 0.3  # several candidate b's (measured 0.1)


def test_transformer_checkpoint_round_trip(tmp_path: Path) -> None:
    split = planted_split(40)
    cfg = cfg_for(tmp_path, "transformer", "train.epochs=1", "train.eval_every=1")
    trainer = Trainer(cfg, split, progress=False)
    trainer.fit()
    model, stored, _ = load_trained(Path(cfg.checkpoint_dir) / "model_best.pt", split=split,
                                    device="cpu")
    assert stored.model.user_encoder == "transformer"
    u = np.arange(40)
    torch.testing.assert_close(model.scorer()(u), trainer.model.scorer()(u), atol=0, rtol=0)


@pytest.mark.parametrize("n_blocks", [0, 1, 2])
def test_last_slot_only_equals_the_full_pass(n_blocks: int) -> None:
    """SASRecEncoder.last runs only the last query through the final block; it must
    equal the last column of the full forward, with padding, empty rows and heads."""
    from marl_two_tower.model.sequence import SASRecEncoder

    torch.manual_seed(0)
    enc = SASRecEncoder(16, 12, n_blocks, n_heads=2, dropout=0.3).eval()
    x = torch.randn(9, 12, 16)
    valid = torch.rand(9, 12) > 0.4
    valid[:, -1] = True
    valid[0] = False  # an all-padding row
    with torch.no_grad():
        full = enc(x, valid)[:, -1]
        last = enc.last(x, valid)
    assert last.shape == (9, 16)
    torch.testing.assert_close(last, full, atol=1e-5, rtol=0)
    assert not torch.equal(last[1], last[2])  # not a constant: each row its own state


def test_rows_at_their_window_end_take_the_last_slot_path(tmp_path: Path) -> None:
    """One row per user with its last train item excluded (the RL state) reads the
    window's last slot only; it equals each row encoded with the full pass."""
    split = planted_split(30)
    model = build_model(cfg_for(tmp_path, "transformer"), split).eval()
    tower, emb = model.user_tower, model.item_tower.id_emb
    users = np.arange(10)
    last_items = np.array([split.history(u)[-1] for u in users])
    with torch.no_grad():
        fast = tower.sequence_history(torch.tensor(users), emb, exclude=torch.tensor(last_items))
        for r, u in enumerate(users):
            hist = torch.tensor(split.history(u)[:-1])[None]
            full = tower.encoder(emb(hist), torch.ones_like(hist, dtype=torch.bool))[:, -1]
            torch.testing.assert_close(fast[r:r + 1], full, atol=1e-5, rtol=0)


def test_inference_draws_share_one_user_tower_pass(tmp_path: Path) -> None:
    """With ContextGNN and BUHS (components that draw at inference) on the transformer
    tower, mean_user_state runs the tower once for all draws; the mean state equals the
    per-draw states computed one by one."""
    split = planted_split(30)
    cfg = cfg_for(tmp_path, "transformer", "context_gnn.enabled=true", "buhs.enabled=true",
                  "eval.inference_samples=3")
    model = build_model(cfg, split).eval()
    assert model.stochastic_modules()
    users = torch.arange(12)
    calls = []
    hook = model.user_tower.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        z_mean, _, _ = model.mean_user_state(users)
    hook.remove()
    assert len(calls) == 1
    zs = []
    with torch.no_grad():
        for d in range(3):
            for m in model.stochastic_modules():
                m.inference_draw = d
            zs.append(model.user_vectors(users))
    for m in model.stochastic_modules():
        m.inference_draw = 0
    assert not torch.allclose(zs[0], zs[1])  # the draws differ, so the test can fail
    torch.testing.assert_close(z_mean, torch.stack(zs).mean(0), atol=1e-6, rtol=0)


def _split_with_gender(n_users: int = 12) -> Split:
    """The planted split with a two-valued demographic feature (users alternate)."""
    split = planted_split(n_users)
    split.dataset.user_features = {"gender": np.arange(n_users) % 2}
    return split


@pytest.mark.parametrize("which, params, same", [
    # which x_u parts exist, and which users must then get one vector from one history
    ("all", {"id_emb", "demo_emb.gender"}, "nobody"),
    ("id", {"id_emb"}, "nobody"),
    ("demographics", {"demo_emb.gender"}, "same gender"),
    ("none", set(), "everybody"),
])
def test_user_features_choose_what_x_u_holds(tmp_path: Path, which: str, params: set[str],
                                             same: str) -> None:
    split = _split_with_gender()
    model = build_model(cfg_for(tmp_path, "transformer", f"model.user_features={which}"),
                        split).eval()
    tower = model.user_tower
    own = {n.rsplit(".weight", 1)[0] for n, _ in tower.named_parameters()
           if n.startswith(("id_emb", "demo_emb"))}
    assert own == params
    assert tower.feature_dim == 16 * len(params)
    # every user reads the same history: what still tells users apart is x_u alone
    n = split.n_users
    hist = np.tile(split.history(0), n)
    tower.use_history(np.arange(n + 1) * len(split.history(0)), hist)
    with torch.no_grad():
        z = model.user_vectors(torch.arange(n))
    dist = torch.cdist(z, z)
    gender = np.arange(n) % 2
    expect_equal = {"nobody": np.eye(n, dtype=bool),
                    "same gender": gender[:, None] == gender[None, :],
                    "everybody": np.ones((n, n), dtype=bool)}[same]
    assert bool((dist[torch.from_numpy(expect_equal)] < 1e-5).all())
    assert bool((dist[torch.from_numpy(~expect_equal)] > 1e-4).all())


def test_buhs_without_user_features_attends_with_one_learned_query(tmp_path: Path) -> None:
    split = _split_with_gender()
    cfg = cfg_for(tmp_path, "transformer", "model.user_features=none", "buhs.enabled=true")
    model = build_model(cfg, split).eval()
    buhs = model.contexts["buhs"]
    assert buhs.synthesis.w_q is None and buhs.synthesis.query.shape == (16,)
    with torch.no_grad():
        c = buhs(torch.arange(split.n_users), model)
    assert c.shape == (split.n_users, 16) and bool(torch.isfinite(c).all())
    # one gradient step reaches the query: it is trained, not a constant
    model.train()
    c = buhs(torch.arange(split.n_users), model, exclude=torch.zeros(split.n_users, dtype=torch.long))
    c.sum().backward()
    assert buhs.synthesis.query.grad is not None and bool(buhs.synthesis.query.grad.abs().sum() > 0)

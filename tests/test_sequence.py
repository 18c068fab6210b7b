"""The SASRec sequence encoder, its batching helpers, the chunked full-softmax CE and
the SASRec reference baseline (issue 14): hand-computed fixtures, the causal mask,
a planted order pattern only an order-aware encoder can learn, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from marl_two_tower.baselines import BASELINES, SASRec, load_recommender
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.sequences import (
    append_items,
    bucketed_batches,
    last_windows,
    next_item_windows,
    trim_left,
)
from marl_two_tower.data.split import leave_one_out
from marl_two_tower.model.chunked_ce import chunked_softmax_ce, chunked_softmax_ce_rows
from marl_two_tower.model.sequence import SASRecEncoder

# CSR rows: [5, 6, 7], [], [8], [1, 2, 3, 4]
INDPTR = np.array([0, 3, 3, 4, 8])
ITEMS = np.array([5, 6, 7, 8, 1, 2, 3, 4])


def test_last_windows_right_aligned() -> None:
    w, v = last_windows(INDPTR, ITEMS, np.array([0, 1, 2, 3]), 3)
    np.testing.assert_array_equal(w, [[5, 6, 7], [0, 0, 0], [0, 0, 8], [2, 3, 4]])
    np.testing.assert_array_equal(v, [[1, 1, 1], [0, 0, 0], [0, 0, 1], [1, 1, 1]])
    w, v = last_windows(INDPTR, ITEMS, np.array([3, 0]), 3, drop_last=1)
    np.testing.assert_array_equal(w, [[1, 2, 3], [0, 5, 6]])
    np.testing.assert_array_equal(v, [[1, 1, 1], [0, 1, 1]])


def test_next_item_windows_pair_each_prefix_with_its_next_item() -> None:
    x, y, v = next_item_windows(INDPTR, ITEMS, np.array([0, 2, 3]), 4)
    np.testing.assert_array_equal(x, [[0, 0, 5, 6], [0, 0, 0, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(y, [[0, 0, 6, 7], [0, 0, 0, 0], [0, 2, 3, 4]])
    np.testing.assert_array_equal(v, [[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]])
    x, y, v = next_item_windows(INDPTR, ITEMS, np.array([3]), 2)  # longer than the window
    np.testing.assert_array_equal(x, [[2, 3]])
    np.testing.assert_array_equal(y, [[3, 4]])
    assert trim_left(np.array([[0, 0, 1], [0, 1, 1]], dtype=bool)) == 1


def test_append_items_adds_validation_at_the_end() -> None:
    ptr, items = append_items(INDPTR, ITEMS, np.array([9, 10, -1, 11]))
    np.testing.assert_array_equal(ptr, [0, 4, 5, 6, 11])
    np.testing.assert_array_equal(items, [5, 6, 7, 9, 10, 8, 1, 2, 3, 4, 11])


def test_bucketed_batches_cover_every_row_once_and_are_seeded() -> None:
    lengths = np.random.default_rng(0).integers(1, 300, size=1000)
    batches = list(bucketed_batches(lengths, 64, seed=3, epoch=1, chunk=4))
    flat = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(flat), np.arange(1000))
    again = list(bucketed_batches(lengths, 64, seed=3, epoch=1, chunk=4))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = np.concatenate(list(bucketed_batches(lengths, 64, seed=3, epoch=2, chunk=4)))
    assert not np.array_equal(flat, other)
    # sorted within chunks: far less padding than random batches of the same size
    padded = sum(len(b) * lengths[b].max() for b in batches)
    perm = np.random.default_rng(1).permutation(1000)
    random_padded = sum(len(b) * lengths[b].max() for b in np.array_split(perm, len(batches)))
    assert padded < 0.75 * random_padded


@pytest.mark.parametrize("bf16", [False, True])
def test_chunked_ce_matches_cross_entropy(bf16: bool) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, generator=g, requires_grad=True)
    e = torch.randn(11, 8, generator=g, requires_grad=True)
    b = torch.randn(11, generator=g)
    y = torch.randint(0, 11, (37,), generator=g)
    ref = F.cross_entropy(h @ e.T + b, y)
    gh, ge = torch.autograd.grad(ref, (h, e))
    out = chunked_softmax_ce(h, e, y, bias=b, chunk=5, bf16=bf16)
    gh2, ge2 = torch.autograd.grad(out, (h, e))
    tol = 3e-2 if bf16 else 1e-5
    assert abs(float(out.detach()) - float(ref.detach())) < tol
    torch.testing.assert_close(gh2, gh, atol=tol, rtol=tol)
    torch.testing.assert_close(ge2, ge, atol=tol, rtol=tol)


@pytest.mark.parametrize("store", [True, False])
def test_chunked_ce_paths_agree_with_the_reference(monkeypatch, store: bool) -> None:
    """Both backward paths: the kept (unnormalised) softmax and the recomputed logits
    (products above STORE_ELEMENTS), with per-row upstream gradients and a bias."""
    import marl_two_tower.model.chunked_ce as cce

    monkeypatch.setattr(cce, "STORE_ELEMENTS", 1 << 25 if store else 0)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(29, 5, generator=g, requires_grad=True)
    e = torch.randn(13, 5, generator=g, requires_grad=True)
    b = torch.randn(13, generator=g)
    y = torch.randint(0, 13, (29,), generator=g)
    w = torch.rand(29, generator=g)
    ref = (F.cross_entropy(h @ e.T + b, y, reduction="none") * w).sum()
    out = (chunked_softmax_ce_rows(h, e, y, bias=b, chunk=6) * w).sum()
    torch.testing.assert_close(out, ref)
    for a, r in zip(torch.autograd.grad(out, (h, e)), torch.autograd.grad(ref, (h, e)), strict=True):
        torch.testing.assert_close(a, r)


def test_chunked_ce_across_changing_step_sizes_and_without_gradients() -> None:
    """Steps of changing sizes, fp32 and bf16 alternated (the bf16 path pads P to whole
    chunks), each match the reference; without gradients no softmax is kept and the
    losses are the same."""
    g = torch.Generator().manual_seed(3)
    e = torch.randn(17, 4, generator=g, requires_grad=True)
    for rows, bf16 in ((40, False), (23, True), (41, False), (9, True), (40, False)):
        h = torch.randn(rows, 4, generator=g, requires_grad=True)
        y = torch.randint(0, 17, (rows,), generator=g)
        ref = F.cross_entropy(h @ e.T, y, reduction="none")
        out = chunked_softmax_ce_rows(h, e, y, chunk=8, bf16=bf16)
        tol = 3e-2 if bf16 else 1e-5
        assert out.shape == (rows,)
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
        for a, r in zip(torch.autograd.grad(out.mean(), (h, e)), torch.autograd.grad(ref.mean(), (h, e)),
                        strict=True):
            torch.testing.assert_close(a, r, atol=tol, rtol=tol)
        with torch.no_grad():
            torch.testing.assert_close(chunked_softmax_ce_rows(h, e, y, chunk=8, bf16=bf16), out.detach())


def test_chunked_ce_rows_take_per_row_weights() -> None:
    """Per-row losses with a weighted reduction (the tail loss's use) match the
    reference's values and gradients."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(23, 6, generator=g, requires_grad=True)
    e = torch.randn(9, 6, generator=g, requires_grad=True)
    y = torch.randint(0, 9, (23,), generator=g)
    w = (torch.arange(23) % 3 == 0).float()
    ref = (F.cross_entropy(h @ e.T, y, reduction="none") * w).sum() / w.sum()
    out = (chunked_softmax_ce_rows(h, e, y, chunk=4) * w).sum() / w.sum()
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, (h, e)), torch.autograd.grad(ref, (h, e)), strict=True):
        torch.testing.assert_close(a, b)


def _encoder(dim: int = 16, max_len: int = 6, **kw) -> SASRecEncoder:
    torch.manual_seed(0)
    enc = SASRecEncoder(dim, max_len, n_blocks=2, n_heads=2, dropout=0.3, **kw)
    return enc.eval()


def test_causal_mask_later_items_never_change_earlier_outputs() -> None:
    enc = _encoder()
    x = torch.randn(3, 6, 16)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[1, :2] = False  # a padded row
    base = enc(x, valid)
    for t in range(6):
        x2 = x.clone()
        x2[:, t] += 5.0 * torch.randn(3, 16)
        out = enc(x2, valid)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)  # earlier: same
        changed = (out[:, t] - base[:, t]).abs().amax(-1)
        rows = [r for r in range(3) if valid[r, t]]
        assert (changed[rows] > 1e-3).all()  # the position itself sees its own item


def test_ffn_width_is_configurable_and_the_default_keeps_sasrec_shapes() -> None:
    """model.ffn_dim: the blocks' FFN hidden width (0 = d, SASRec's); RecBole's 4 d keeps
    the causal property (a later item never changes an earlier output)."""
    from marl_two_tower.config import ModelConfig
    from marl_two_tower.model.sequence import SASRecEncoder

    assert ModelConfig().ffn_dim == 0
    sasrec = SASRecEncoder(16, 6, n_blocks=2, dropout=0.0)
    wide = SASRecEncoder(16, 6, n_blocks=2, dropout=0.0, ffn_dim=64).eval()
    assert [tuple(m.weight.shape) for m in sasrec.blocks[0].ffn if isinstance(m, torch.nn.Linear)] \
        == [(16, 16), (16, 16)]
    assert [tuple(m.weight.shape) for m in wide.blocks[1].ffn if isinstance(m, torch.nn.Linear)] \
        == [(64, 16), (16, 64)]
    x, valid = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    x2 = x.clone()
    x2[:, 4] += 5.0
    with torch.no_grad():
        a, b = wide(x, valid), wide(x2, valid)
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-6, rtol=0)
    assert (a[:, 4] - b[:, 4]).abs().amax() > 1e-3


def test_padding_content_and_left_trimming_do_not_matter() -> None:
    enc = _encoder()
    x = torch.randn(2, 6, 16)
    valid = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    base = enc(x, valid)
    x2 = x.clone()
    x2[~valid] = torch.randn(int((~valid).sum()), 16)  # garbage in padding slots
    torch.testing.assert_close(enc(x2, valid)[valid], base[valid], atol=1e-6, rtol=0)
    # dropping the all-padding leading columns keeps positions (they count from the end)
    torch.testing.assert_close(enc(x[:, 2:], valid[:, 2:])[valid[:, 2:]], base[valid],
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="exceeds max_len"):
        enc(torch.randn(1, 7, 16), torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_heads"):
        SASRecEncoder(16, 6, n_heads=3)


def _planted_order_task(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences = a random permutation of items 0..m-1; the next item is m + (the last
    one): "item m + a always follows item a". Every sequence holds the same set, so
    an order-blind (pooled) encoder sees one input for all of them."""
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(m) for _ in range(n)])
    return torch.from_numpy(perms), torch.from_numpy(perms[:, -1] + m)


def _fit_next_item(encode: nn.Module, m: int) -> float:
    torch.manual_seed(0)
    emb = nn.Embedding(2 * m, 16)
    opt = torch.optim.Adam([*emb.parameters(), *encode.parameters()], lr=1e-2)
    x, y = _planted_order_task(m, 256, seed=0)
    valid = torch.ones_like(x, dtype=torch.bool)
    for _ in range(150):
        loss = F.cross_entropy(encode(emb(x), valid) @ emb.weight.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    encode.eval()
    xt, yt = _planted_order_task(m, 200, seed=1)
    with torch.no_grad():
        pred = (encode(emb(xt), torch.ones_like(xt, dtype=torch.bool)) @ emb.weight.T).argmax(1)
    return float((pred == yt).float().mean())


class _Last(nn.Module):
    def __init__(self, m: int) -> None:
        super().__init__()
        self.enc = SASRecEncoder(16, m, n_blocks=1, n_heads=1, dropout=0.0)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.enc.last(x, valid)


class _Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = valid[..., None].float()
        return self.mlp((x * w).sum(1) / w.sum(1))


def test_encoder_recovers_planted_order_that_pooling_cannot() -> None:
    m = 6
    assert _fit_next_item(_Last(m), m) > 0.95
    assert _fit_next_item(_Pooled(), m) < 0.35  # chance is 1/6


def test_encoder_state_dict_round_trip(tmp_path: Path) -> None:
    enc = _encoder()
    torch.save(enc.state_dict(), tmp_path / "enc.pt")
    other = SASRecEncoder(16, 6, n_blocks=2, n_heads=2, dropout=0.3)
    other.load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True))
    x, valid = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    torch.testing.assert_close(other.eval()(x, valid), enc(x, valid), atol=0, rtol=0)


# ---------------------------------------------------------------------------
# The SASRec reference baseline
# ---------------------------------------------------------------------------


def _chain_split(n_users: int = 120, n_items: int = 30, seed: int = 0):
    """Each user walks the cycle 0 -> 1 -> ... -> n_items-1 -> 0 from a random start
    for 8..14 steps: the next item is always (last + 1) mod n_items."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 15, size=n_users)
    starts = rng.integers(0, n_items, size=n_users)
    users = np.repeat(np.arange(n_users), lengths)
    steps = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    items = (np.repeat(starts, lengths) + steps) % n_items
    ds = Dataset(name="chain", users=users, items=items, timestamps=steps.astype(float),
                 n_users=n_users, n_items=n_items, user_ids=np.arange(n_users),
                 item_ids=np.arange(n_items), item_genres=np.zeros((n_items, 0), dtype=bool),
                 genre_names=[], item_year=np.zeros(n_items, dtype=np.int32))
    return leave_one_out(ds)


def test_sasrec_learns_the_chain_and_appends_validation_for_test(tmp_path: Path) -> None:
    torch.manual_seed(0)
    split = _chain_split()
    assert BASELINES["sasrec"] is SASRec
    model = SASRec(dim=16, max_len=10, n_blocks=1, dropout=0.1, lr=5e-3, batch_size=32,
                   epochs=30, eval_every=5, patience=10, seed=1).fit(split, include_val=True)
    assert model.history and model.history[-1]["val_ndcg@10"] > 0.9  # validation only
    users = split.eval_users("test")
    rec = model.recommend(users, 1, exclude=split.exclusion_matrix("test"))[:, 0]
    # The input ends with the validation item, so the top item is validation + 1 = test.
    assert (rec == split.test_items[users]).mean() > 0.9
    val_view = model._score_from(users, split.train_indptr, split.train_items)
    val_view[torch.from_numpy(split.exclusion_matrix("val")[users].toarray() > 0)] = -torch.inf
    assert (val_view.argmax(1).numpy() == split.val_items[users]).mean() > 0.9
    # save / load: same scores, no split needed
    model.save(tmp_path / "sasrec.pt")
    loaded = load_recommender(tmp_path / "sasrec.pt")
    torch.testing.assert_close(loaded.score(users), model.score(users), atol=0, rtol=0)
    assert isinstance(loaded.train_matrix, sp.csr_matrix)


def test_sasrec_sampled_softmax_learns_the_chain() -> None:
    split = _chain_split(seed=1)
    model = SASRec(dim=16, max_len=10, n_blocks=1, dropout=0.1, lr=5e-3, batch_size=32,
                   epochs=30, eval_every=10, patience=10, loss="sampled", num_negatives=8,
                   seed=1).fit(split)
    assert model.history[-1]["val_ndcg@10"] > 0.8
    with pytest.raises(ValueError, match="loss must be"):
        SASRec(loss="bpr")


@pytest.mark.parametrize("store", [True, False])
def test_chunked_ce_stored_and_recomputed_softmax_agree(store: bool, monkeypatch) -> None:
    """Both backward paths (the kept softmax, the recomputed chunks) give the reference
    gradients, and a second backward through a retained graph gives them again."""
    from marl_two_tower.model import chunked_ce

    monkeypatch.setattr(chunked_ce, "STORE_ELEMENTS", 1 << 30 if store else 0)
    g = torch.Generator().manual_seed(3)
    h = torch.randn(19, 5, generator=g, requires_grad=True)
    e = torch.randn(13, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 13, (19,), generator=g)
    w = torch.rand(19, generator=g)
    ref = (F.cross_entropy(h @ e.T, y, reduction="none") * w).sum()
    want = torch.autograd.grad(ref, (h, e))
    out = (chunked_softmax_ce_rows(h, e, y, chunk=4) * w).sum()
    torch.testing.assert_close(out, ref)
    for _ in range(2):
        got = torch.autograd.grad(out, (h, e), retain_graph=True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)


def test_chunked_ce_exact_where_exp_would_underflow() -> None:
    """Logit gaps of ~90-100 (exp arguments in the subnormal range that the floor
    clamps): the loss and gradients still match F.cross_entropy."""
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    e = torch.tensor([[95.0, 0.0], [0.0, 0.0], [3.0, 100.0]], requires_grad=True)
    y = torch.tensor([1, 2])
    ref = F.cross_entropy(h @ e.T, y, reduction="none")
    out = chunked_softmax_ce_rows(h, e, y)
    torch.testing.assert_close(out, ref)  # row 0: loss 95 from the picked logit, not the floor
    for a, b in zip(torch.autograd.grad(out.sum(), (h, e)), torch.autograd.grad(ref.sum(), (h, e)),
                    strict=True):
        torch.testing.assert_close(a, b)

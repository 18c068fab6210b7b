"""SASRec reference baseline: the sequential model users would pick (issue 14).

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018, trained with
full-softmax cross-entropy as in Klenitskiy & Vasilev, "Turning Dross Into Gold Loss:
is BERT4Rec really better than SASRec?", RecSys 2023 ("SASRec+": CE >> BCE with one
negative). Nothing else: no user id, no demographics, no side information, none of
the project's components.

* Input: the user's most recent ``max_len`` train items in time order, embedded with
  the item embedding E ``[n_items, d]`` and encoded by
  :class:`~marl_two_tower.model.sequence.SASRecEncoder` (causal self-attention).
* Output: h_t . E_i, the same E as the input (SASRec's shared embedding), for every
  position t: one forward pass per user gives a next-item prediction at each
  position (target = the next train item).
* Loss: ``ce`` = softmax cross-entropy over the whole catalogue; ``sampled`` =
  sampled softmax over ``num_negatives`` items drawn from train popularity, with
  the logQ correction (Yi et al. 2019) and accidental hits masked, for catalogues too
  large for a full softmax; ``auto`` = ``ce`` up to ``max_full_items`` items.
* Model selection: every ``eval_every`` epochs, NDCG@10 on **validation** (full
  ranking, train items masked); training stops after ``patience`` evaluations
  without improvement and the best state is kept. The test split is never read.
* Scoring: with ``fit(split, include_val=True)`` the validation item is appended to
  the input sequence (it precedes the test item in time; SASRec's and gSASRec's
  protocol); the model is not retrained on it.

Defaults (d = 64, 2 blocks, 1 head, dropout 0.2, max length 200, Adam lr 1e-3,
batch 128 users) are SASRec's published ML-1M settings with the CE loss of
SASRec+; docs/sequence_tower.md has the validation grid behind them.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marl_two_tower.baselines.base import BaselineRecommender, loo_ndcg
from marl_two_tower.data.sequences import (
    append_items,
    bucketed_batches,
    last_windows,
    next_item_windows,
    trim_left,
)
from marl_two_tower.data.split import Split
from marl_two_tower.model.chunked_ce import chunked_softmax_ce
from marl_two_tower.model.sequence import SASRecEncoder
from marl_two_tower.utils.numerics import floor_logits


class _Net(nn.Module):
    """Item embedding E plus the encoder; logits = h . E^T."""

    def __init__(self, n_items: int, dim: int, max_len: int, n_blocks: int, n_heads: int,
                 dropout: float, attn_dropout: float | None) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item_emb.weight, std=dim ** -0.5 / 2)
        self.encoder = SASRecEncoder(dim, max_len, n_blocks, n_heads, dropout, attn_dropout)

    def hidden(self, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.item_emb(items), valid)


class _TrainOnlyView:
    """Duck-typed ``BaselineRecommender`` view for :func:`loo_ndcg` on validation: scores with
    the train sequences only, whatever ``include_val`` the fit was asked for."""

    include_val = False

    def __init__(self, model: SASRec) -> None:
        self.model = model

    def score(self, users: np.ndarray) -> torch.Tensor:
        return self.model._score_from(users, self.model._train_ptr, self.model._train_items)


class SASRec(BaselineRecommender):
    """SASRec with full-softmax CE (or sampled softmax with logQ); see the module docstring.

    Args:
        dim: embedding size d.
        max_len: most recent train items read per user (SASRec: 200 on ML-1M).
        n_blocks, n_heads, dropout, attn_dropout: encoder shape (:class:`SASRecEncoder`;
            ``attn_dropout`` None = ``dropout``).
        lr, weight_decay: Adam settings.
        batch_size: users (sequences) per step.
        epochs: most passes over the users.
        patience: validation evaluations without NDCG@10 gain before stopping.
        eval_every: epochs between validation evaluations.
        loss: ``auto`` | ``ce`` | ``sampled`` (see the module docstring).
        num_negatives: negatives per step of the sampled softmax.
        max_full_items: largest catalogue ``auto`` trains with the full softmax.
        bf16: run the encoder and the logits under CPU/GPU bfloat16 autocast.
        seed: seeds initialisation, batch order, dropout and negatives.
        device: training/scoring device; scores are returned on CPU.
        verbose: print one line per validation evaluation.
    """

    name = "sasrec"
    param_names = (
        "dim", "max_len", "n_blocks", "n_heads", "dropout", "attn_dropout", "lr", "weight_decay",
        "batch_size", "epochs", "patience", "eval_every", "loss", "num_negatives",
        "max_full_items", "bf16", "seed", "device",
    )

    def __init__(
        self,
        dim: int = 64,
        max_len: int = 200,
        n_blocks: int = 2,
        n_heads: int = 1,
        dropout: float = 0.2,
        attn_dropout: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        epochs: int = 200,
        patience: int = 5,
        eval_every: int = 2,
        loss: Literal["auto", "ce", "sampled"] = "auto",
        num_negatives: int = 1024,
        max_full_items: int = 20_000,
        bf16: bool = False,
        seed: int = 0,
        device: str = "cpu",
        verbose: bool = False,
    ) -> None:
        super().__init__()
        if loss not in ("auto", "ce", "sampled"):
            raise ValueError(f"loss must be auto, ce or sampled, got {loss!r}")
        self.dim, self.max_len = int(dim), int(max_len)
        self.n_blocks, self.n_heads = int(n_blocks), int(n_heads)
        self.dropout, self.lr, self.weight_decay = float(dropout), float(lr), float(weight_decay)
        self.attn_dropout = None if attn_dropout is None else float(attn_dropout)
        self.batch_size, self.epochs, self.patience = int(batch_size), int(epochs), int(patience)
        self.eval_every, self.loss = max(1, int(eval_every)), loss
        self.num_negatives, self.max_full_items = int(num_negatives), int(max_full_items)
        self.bf16, self.seed, self.device, self.verbose = bool(bf16), int(seed), str(device), verbose
        self.net: _Net | None = None
        self.history: list[dict[str, float]] = []  # per evaluation: epoch, val NDCG@10, loss, seconds
        self.best_epoch = 0
        self.fit_seconds = 0.0
        self._train_ptr = self._train_items = None
        self._ptr = self._items = None  # scoring sequences (train, + val with include_val)

    # -- training -------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)

    def _fit(self, split: Split) -> None:
        t_start = time.perf_counter()
        dev = torch.device(self.device)
        torch.manual_seed(self.seed)
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        n_items = split.n_items
        self.net = _Net(n_items, self.dim, self.max_len, self.n_blocks, self.n_heads,
                        self.dropout, self.attn_dropout).to(dev)
        self._train_ptr, self._train_items = split.train_indptr, split.train_items
        self._ptr, self._items = self._train_ptr, self._train_items
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=(0.9, 0.98),
                               weight_decay=self.weight_decay)
        full = self.loss == "ce" or (self.loss == "auto" and n_items <= self.max_full_items)
        log_q = None
        if not full:
            pop = torch.as_tensor(split.item_pop, dtype=torch.float64) + 1.0
            q = (pop / pop.sum()).to(dev)
            log_q = torch.log(q * self.num_negatives).float()
        lengths = np.diff(split.train_indptr)
        users = np.flatnonzero(lengths >= 2)  # a sequence needs an input and a target
        view = _TrainOnlyView(self)
        best, best_state, bad = -1.0, None, 0
        self.history = []
        for epoch in range(self.epochs):
            self.net.train()
            total, count, t0 = 0.0, 0, time.perf_counter()
            for batch in bucketed_batches(lengths[users], self.batch_size, self.seed, epoch):
                x, y, valid = next_item_windows(split.train_indptr, split.train_items,
                                                users[batch], self.max_len)
                cut = trim_left(valid)
                x, y, valid = (torch.from_numpy(a[:, cut:]).to(dev) for a in (x, y, valid))
                with self._autocast():
                    h = self.net.hidden(x, valid)[valid]  # [P, d], one row per position
                target = y[valid]
                if full:  # chunked: the [P, n_items] logits are never stored
                    loss = chunked_softmax_ce(h, self.net.item_emb.weight, target, bf16=self.bf16)
                else:  # sampled softmax; row p's positive is column p (targets lead)
                    neg = torch.multinomial(q, self.num_negatives, replacement=True, generator=gen)
                    cand = torch.cat([target, neg])
                    with self._autocast():
                        logits = h @ self.net.item_emb(cand).T
                    logits = logits.float() - log_q[cand]
                    hit = cand[None, :] == target[:, None]  # accidental hits: same item
                    hit[torch.arange(len(target)), torch.arange(len(target))] = False
                    own = torch.arange(len(target), device=dev)
                    loss = F.cross_entropy(floor_logits(logits.masked_fill(hit, float("-inf")), 1,
                                                        keep=own, raw=logits), own)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(target)
                count += len(target)
            seconds = time.perf_counter() - t0
            if (epoch + 1) % self.eval_every and epoch + 1 < self.epochs:
                continue
            ndcg = loo_ndcg(view, split, "val", k=10)  # type: ignore[arg-type]
            self.history.append({"epoch": epoch + 1, "val_ndcg@10": ndcg,
                                 "loss": total / max(count, 1), "epoch_seconds": seconds})
            if self.verbose:
                print(f"epoch {epoch + 1}: loss {total / max(count, 1):.4f} val NDCG@10 "
                      f"{ndcg:.4f} ({seconds:.1f} s/epoch)", flush=True)
            if ndcg > best:
                best, bad, self.best_epoch = ndcg, 0, epoch + 1
                best_state = copy.deepcopy(self.net.state_dict())
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        if self.include_val:
            self._ptr, self._items = append_items(split.train_indptr, split.train_items,
                                                  split.val_items)
        self.fit_seconds = time.perf_counter() - t_start

    # -- scoring ----------------------------------------------------------------------

    @torch.no_grad()
    def _score_from(self, users: np.ndarray, ptr: np.ndarray, items: np.ndarray) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("SASRec is not fitted: call fit(split) first")
        self.net.eval()
        dev = next(self.net.parameters()).device
        x, valid = last_windows(ptr, items, np.asarray(users, dtype=np.int64), self.max_len)
        cut = trim_left(valid)
        x, valid = (torch.from_numpy(a[:, cut:]).to(dev) for a in (x, valid))
        with self._autocast():
            h = self.net.hidden(x, valid)[:, -1]
            s = h @ self.net.item_emb.weight.T
        return s.float().cpu()

    def history_scorer(self, split: Split, part: str, test_history: str = "train+val"):
        """Score function for ``part`` reading the train sequence, with the validation
        item appended for test under ``test_history='train+val'`` (not retrained on it)."""
        if part == "test" and (test_history == "train+val" or self.include_val):
            ptr, items = append_items(split.train_indptr, split.train_items, split.val_items)
        else:
            ptr, items = split.train_indptr, split.train_items
        return lambda users: self._score_from(users, ptr, items)

    def score(self, users: np.ndarray) -> torch.Tensor:
        """Scores h_u . E_i from the user's last ``max_len`` items (train, plus the
        validation item after ``fit(..., include_val=True)``)."""
        if self._ptr is None:
            raise RuntimeError("SASRec is not fitted: call fit(split) first")
        return self._score_from(users, self._ptr, self._items)

    # -- serialisation ----------------------------------------------------------------

    def _state(self) -> dict[str, torch.Tensor]:
        assert self.net is not None and self._ptr is not None
        state = {f"net.{k}": v.detach().cpu() for k, v in self.net.state_dict().items()}
        state["hist_indptr"] = torch.from_numpy(np.asarray(self._ptr, dtype=np.int64))
        state["hist_items"] = torch.from_numpy(np.asarray(self._items, dtype=np.int64))
        return state

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        n_items = state["net.item_emb.weight"].shape[0]
        self.net = _Net(n_items, self.dim, self.max_len, self.n_blocks, self.n_heads,
                        self.dropout, self.attn_dropout).to(self.device)
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        self.net.eval()
        self._ptr, self._items = state["hist_indptr"].numpy(), state["hist_items"].numpy()

"""The two-tower retrieval model (DESIGN §3 "Item tower" and "Base user tower").

Item tower:  e_i = MLP([id_emb(i); mean genre embedding of m_i; year-bucket emb])
User tower:  e_u = MLP([id_emb(u); demographic embs; h_u]) + sum_k gate_k * c_k(u)
             (context fusions), h_u = mean of u's N most recent train items' id
             embeddings (``model.user_encoder=pooled``) or SASRec's causal
             self-attention over them in time order (``transformer``:
             :class:`SequenceUserTower`)
Score:       s(u, i) = <z_u, y_i>, z_u = [e_u / temperature ; extra user dims],
             y_i = [e_i ; extra item dims]

Everything that steers the user tower (ContextGNN context, BUHS synthesis, the MARL
genre controller) plugs in through two documented extension points, so a disabled
component adds no parameters and no compute:

* :meth:`TwoTower.add_user_context` registers a module mapping users to a d-dim
  context vector that is fused by a learned gate (ContextGNN c_u, BUHS vector).
* :meth:`TwoTower.set_controller` registers a controller returning extra user
  dimensions whose item counterparts come from :meth:`Controller.item_features`
  (the genre agents' [b_u; t_u] and [m_i; m_i * tail(i)]), so the score stays one
  dot product and ANN retrieval keeps working.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from marl_two_tower.config import ModelConfig
from marl_two_tower.data.sequences import last_windows, trim_left
from marl_two_tower.data.split import Split
from marl_two_tower.model.chunked_ce import chunked_softmax_ce_rows
from marl_two_tower.model.losses import row_losses, sampled_softmax_logits
from marl_two_tower.model.sequence import SASRecEncoder
from marl_two_tower.utils.csr import expand_ranges


class Controller(nn.Module):
    """Base of modules that extend z_u and y_i with extra dot-product dimensions.

    A controller is trained by its own loop (the genre agents' RL steps), never by
    the supervised optimiser (:meth:`TwoTower.supervised_parameters`).
    """

    def user_features(self, users: torch.Tensor, e_u: torch.Tensor) -> torch.Tensor:
        """Extra user dimensions ``[B, k]`` appended to z_u."""
        raise NotImplementedError

    def item_features(self) -> torch.Tensor:
        """Extra item dimensions ``[n_items, k]`` appended to y_i."""
        raise NotImplementedError


class ScoreAdjuster(nn.Module):
    """Base of modules that replace s(u, i) on a bounded per-user item set F(u).

    The fused score is s(u, i) for i not in F(u) and the adjuster's logit for i in
    F(u) (ContextGNN's familiar items); |F(u)| <= ``max_items`` keeps retrieval
    ANN-compatible (see :meth:`TwoTower.retrieve`).
    """

    max_items: int = 0

    def overrides(self, users: torch.Tensor, model: TwoTower, exclude: torch.Tensor | None = None,
                  z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(items ``[B, max_items]`` int64, -1 = empty slot; their logits ``[B, max_items]``);
        ``z`` = the batch's user vectors when already computed."""
        raise NotImplementedError

    def training_logits(self, model: TwoTower, users: torch.Tensor, pos: torch.Tensor,
                        cand_items: torch.Tensor, logits: torch.Tensor,
                        z: torch.Tensor | None = None,
                        log_q: torch.Tensor | None = None,
                        target: torch.Tensor | None = None) -> torch.Tensor:
        """Training logits ``[B, C]`` over ``cand_items [C]`` (row b's positive in column
        ``target[b]``, None = column b; corrected by ``log_q [C]``) with the adjusted
        items' logits put in; may append columns."""
        raise NotImplementedError


def lookup_overrides(items: torch.Tensor, values: torch.Tensor,
                     cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Is candidate ``cand`` (``[C]`` shared or ``[B, C]`` per row) in row b's
    ``items`` (-1 = empty), and its value there: two ``[B, C]`` tensors (values
    meaningless where not found). Sort + ``searchsorted``: O(B C log F)."""
    q = (cand[None, :].expand(len(items), -1) if cand.dim() == 1 else cand).contiguous()
    n = 1 + max(int(items.max()) if items.numel() else 0, int(q.max()) if q.numel() else 0)
    if len(items) * n <= 1 << 22:  # small catalogue: a dense [B, n] scratch row is cheaper
        rows, slots = torch.nonzero(items >= 0, as_tuple=True)
        found = torch.zeros(len(items), n, dtype=torch.bool, device=items.device)
        table = torch.zeros(len(items), n, dtype=values.dtype, device=items.device)
        found[rows, items[rows, slots]] = True
        table[rows, items[rows, slots]] = values[rows, slots]
        return torch.gather(found, 1, q), torch.gather(table, 1, q)
    big = torch.full_like(items, torch.iinfo(torch.int64).max)
    sk, order = torch.sort(torch.where(items >= 0, items, big), dim=1)
    sv = torch.gather(values, 1, order)
    if sk.shape[1] == 0:
        return torch.zeros(q.shape, dtype=torch.bool, device=q.device), q.new_zeros(q.shape).to(sv.dtype)
    pos = torch.searchsorted(sk, q).clamp(max=sk.shape[1] - 1)
    return torch.gather(sk, 1, pos) == q, torch.gather(sv, 1, pos)


def apply_overrides(scores: torch.Tensor, items: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``scores [B, n_items]`` with ``scores[b, items[b, f]] = values[b, f]`` (items >= 0)."""
    rows, slots = torch.nonzero(items >= 0, as_tuple=True)
    out = scores.clone()
    out[rows, items[rows, slots]] = values[rows, slots].to(out.dtype)
    return out


def mlp(inp: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    """The MLP of the towers and of BUHS's synthesis:
    Linear(inp, hidden) -> GELU -> Dropout(dropout) -> Linear(hidden, out)."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out))


def recent_history(split: Split, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` most recent train items per user, right-aligned: ``[n_users, n]``.

    Returns (items, valid) where padding slots hold 0 with ``valid`` False.
    Vectorised over the CSR history (no per-user loop).
    """
    indptr = split.train_indptr
    lengths = np.diff(indptr)
    take = np.minimum(lengths, n)
    out = np.zeros((split.n_users, n), dtype=np.int64)
    valid = np.zeros((split.n_users, n), dtype=bool)
    # source index in train_items of each user's last `take` items, its position
    # within that window, and its right-aligned column
    rows, src = expand_ranges(indptr[1:] - take, indptr[1:])
    within = src - (indptr[1:] - take)[rows]
    cols = within + (n - take)[rows]
    out[rows, cols] = split.train_items[src]
    valid[rows, cols] = True
    return torch.from_numpy(out), torch.from_numpy(valid)


class ItemTower(nn.Module):
    """e_i = MLP([id_emb(i); mean genre embedding; year-bucket embedding])."""

    def __init__(self, split: Split, cfg: ModelConfig) -> None:
        super().__init__()
        ds = split.dataset
        self.id_emb = nn.Embedding(split.n_items, cfg.id_dim)
        self.genre_emb = nn.Embedding(max(ds.n_genres, 1), cfg.id_dim)
        genres = torch.from_numpy(ds.item_genres.astype(np.float32))
        if genres.shape[1] == 0:
            genres = torch.zeros(split.n_items, 1)
        self.register_buffer("genre_weights", genres / genres.sum(1, keepdim=True).clamp(min=1))
        years = ds.item_year.astype(np.int64)
        known = years > 0
        bucket = np.zeros(split.n_items, dtype=np.int64)  # bucket 0 = unknown year
        if known.any():
            edges = np.quantile(years[known], np.linspace(0, 1, cfg.year_buckets + 1)[1:-1])
            bucket[known] = 1 + np.searchsorted(edges, years[known], side="right")
        self.register_buffer("year_bucket", torch.from_numpy(bucket))
        self.year_emb = nn.Embedding(cfg.year_buckets + 1, cfg.id_dim)
        self.mlp = mlp(3 * cfg.id_dim, cfg.hidden, cfg.dim, cfg.dropout)
        nn.init.normal_(self.id_emb.weight, std=0.05)

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item embeddings for ``items`` (all items when None)."""
        if items is None:
            ids = self.id_emb.weight
            gw, yb = self.genre_weights, self.year_bucket
        else:
            ids, gw, yb = self.id_emb(items), self.genre_weights[items], self.year_bucket[items]
        x = torch.cat([ids, gw @ self.genre_emb.weight, self.year_emb(yb)], dim=-1)
        return self.mlp(x)


class UserFeatures(nn.Module):
    """x_u = [id_emb(u); one embedding per demographic feature]: the user's own
    features, without history (the user tower's input, and BUHS's attention query).

    ``which`` (``model.user_features``) keeps a subset: ``all``, ``demographics`` (no id
    embedding), ``id`` (no demographics) or ``none`` (x_u is empty, ``[B, 0]``; BUHS's
    attention then has no query and weighs its sampled items by their key alone).
    Demographic codes are buffers (code -1, unknown, maps to row 0 of its table).
    Parameter names: ``id_emb``, ``demo_emb.<feature>``; buffers ``demo_<feature>``.
    """

    def __init__(self, split: Split, id_dim: int, which: str = "all") -> None:
        super().__init__()
        ds = split.dataset
        self.id_emb: nn.Embedding | None = None
        if which in ("all", "id"):
            self.id_emb = nn.Embedding(split.n_users, id_dim)
            nn.init.normal_(self.id_emb.weight, std=0.05)
        self.feature_names = sorted(ds.user_features) if which in ("all", "demographics") else []
        self.demo_emb = nn.ModuleDict()
        for name in self.feature_names:
            codes = torch.as_tensor(np.asarray(ds.user_features[name]), dtype=torch.long)
            self.register_buffer(f"demo_{name}", codes + 1)
            self.demo_emb[name] = nn.Embedding(int(codes.max().item()) + 2, id_dim)
        self.feature_dim = (int(self.id_emb is not None) + len(self.feature_names)) * id_dim

    def features(self, users: torch.Tensor) -> torch.Tensor:
        """x_u ``[B, feature_dim]`` for a batch of users."""
        parts = [] if self.id_emb is None else [self.id_emb(users)]
        parts += [self.demo_emb[n](getattr(self, f"demo_{n}")[users]) for n in self.feature_names]
        if not parts:
            return torch.zeros(len(users), 0, device=users.device)
        return torch.cat(parts, dim=-1)


class UserTower(UserFeatures):
    """e_u = MLP([x_u; pooled recent history]), x_u from :class:`UserFeatures`.

    A subclass, not a member, so that the parameter names of checkpoints stay
    ``user_tower.id_emb``, ``user_tower.demo_emb.<feature>``.
    """

    def __init__(self, split: Split, cfg: ModelConfig) -> None:
        super().__init__(split, cfg.id_dim, cfg.user_features)
        hist, valid = recent_history(split, cfg.history_len)
        self.register_buffer("hist_items", hist)
        self.register_buffer("hist_valid", valid)
        self.mlp = mlp(self.feature_dim + cfg.id_dim, cfg.hidden, cfg.dim, cfg.dropout)

    def use_history(self, indptr: np.ndarray, items: np.ndarray) -> None:
        """Read the user histories from these CSR sequences (time order) from now on,
        e.g. train + the validation item before scoring test
        (:func:`marl_two_tower.data.sequences.append_items`); training is unaffected
        only if it is over."""
        self.hist_items, self.hist_valid = self.windows(indptr, items)

    def windows(self, indptr: np.ndarray, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(items, valid) ``[n_users, history_len]`` on the buffers' device: every user's
        most recent items of these CSR sequences, right-aligned (what the tower reads)."""
        hist, valid = last_windows(indptr, items, np.arange(len(indptr) - 1),
                                   self.hist_items.shape[1])
        return (torch.from_numpy(hist).to(self.hist_items.device),
                torch.from_numpy(valid).to(self.hist_valid.device))

    def pooled_history(self, users: torch.Tensor, item_emb: nn.Embedding,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Mean id embedding of u's recent train items; ``exclude[b]`` is left out.

        During training the positive being predicted is excluded, otherwise the
        tower could simply copy it from its own input.
        """
        items, valid = self.hist_items[users], self.hist_valid[users]
        if exclude is not None:
            valid = valid & (items != exclude[:, None])
        w = valid.float()
        summed = torch.einsum("bn,bnd->bd", w, item_emb(items))
        return summed / w.sum(1, keepdim=True).clamp(min=1.0)

    def forward(self, users: torch.Tensor, item_emb: nn.Embedding,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (e_u, input features [x_u; pooled history]) for a batch of users."""
        x = torch.cat([self.features(users), self.pooled_history(users, item_emb, exclude)], dim=-1)
        return self.mlp(x), x


# ---------------------------------------------------------------------------
# The transformer user tower (model.user_encoder=transformer)
# ---------------------------------------------------------------------------


class SequenceUserTower(UserTower):
    """e_u = MLP([x_u; h_u]), h_u = SASRec over u's train items in time order.

    h_u(t) = SASRecEncoder(id_emb(i_1..i_t))[t] (:mod:`marl_two_tower.model.sequence`,
    Kang & McAuley 2018) with the item tower's id embedding (shared, as the pooled
    mean), width ``model.id_dim``. The score stays one dot product <z_u, y_i> of the
    user vector at the last position and the item tower output.

    Training on every position: a training row (u, pos) is predicted from the items
    *before* pos in u's train sequence (the pooled tower's ``exclude=pos``). The rows of
    a batch are grouped by user and each user's window is encoded once, so a batch of
    whole user windows (:class:`marl_two_tower.data.sequences.SequenceSampler`, installed
    by :class:`marl_two_tower.model.sequence_training.SequenceBatches`) costs one
    forward pass per user and yields a next-item prediction at every position, as
    SASRec is trained; a row its user's window cannot reach gets its own window.

    Inference reads the ``history_len`` most recent train items (the ``hist_items``
    buffer, right-aligned). Training rows locate their positive in the user's train
    sequence (first occurrence of the (user, item) pair; with ``data.repeats=drop``,
    the default, pairs are unique) and read the ``history_len`` items before it.
    """

    def __init__(self, split: Split, cfg: ModelConfig) -> None:
        super().__init__(split, cfg)
        self.encoder = SASRecEncoder(cfg.id_dim, cfg.history_len, cfg.n_blocks, cfg.n_heads,
                                     cfg.seq_dropout, ffn_dim=cfg.ffn_dim or None,
                                     attn_dropout=cfg.attn_dropout if cfg.attn_dropout >= 0 else None)
        self.window = cfg.history_len
        self.block_windows = cfg.train_positions == "all"
        self.n_items = split.n_items
        # train sequences (CSR, time order) and a (user, item) -> position lookup; numpy,
        # not buffers: derived from the split, never part of a checkpoint
        self.seq_indptr = split.train_indptr
        self.seq_items = split.train_items
        keys = split.train_users * np.int64(split.n_items) + split.train_items
        self.key_order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.key_order]

    def positions(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Position of each (user, item) in the user's train sequence (-1 = not in it)."""
        key = users * np.int64(self.n_items) + items
        at = np.minimum(np.searchsorted(self.sorted_keys, key), len(self.sorted_keys) - 1)
        found = self.sorted_keys[at] == key if len(self.sorted_keys) else np.zeros(len(key), bool)
        idx = self.key_order[at]
        return np.where(found, idx - self.seq_indptr[users], -1)

    def _encode(self, rows: np.ndarray, drop_last: np.ndarray | int, item_emb: nn.Embedding,
                device: torch.device, last_only: bool = False) -> torch.Tensor:
        """Encoder outputs ``[W, L', d]`` for the windows ending ``drop_last`` items before
        the end of the train sequences of ``rows`` (leading all-padding columns cut);
        ``[W, 1, d]``, the last slot's, with ``last_only``."""
        x, valid = last_windows(self.seq_indptr, self.seq_items, rows, self.window, drop_last)
        cut = trim_left(valid)
        x = torch.from_numpy(x[:, cut:]).to(device)
        valid = torch.from_numpy(valid[:, cut:]).to(device)
        return self.encoder(item_emb(x), valid, last_only=last_only)

    def sequence_history(self, users: torch.Tensor, item_emb: nn.Embedding,
                         exclude: torch.Tensor | None = None) -> torch.Tensor:
        """h_u ``[B, id_dim]``: at the user's last train item (``exclude`` None), or, for
        training rows, at the item just before ``exclude[b]`` in the user's sequence."""
        if exclude is None:
            items, valid = self.hist_items[users], self.hist_valid[users]
            cut = trim_left(valid.cpu().numpy())
            return self.encoder.last(item_emb(items[:, cut:]), valid[:, cut:])
        u = users.cpu().numpy()
        end = self.positions(u, exclude.cpu().numpy()) - 1  # last input item; -1 = empty prefix
        # Unseen pairs (not train interactions) read the whole train history.
        lengths = np.diff(self.seq_indptr)[u]
        end = np.where(end < -1, lengths - 1, end)
        # one window per user, ending at the user's latest row; rows it cannot reach
        # (more than `window` items earlier) get their own window, or, training on all
        # positions (model.train_positions=all), the window of their block: blocks of
        # `window` counted back from the latest row, as SequenceSampler cuts them
        anchor = np.full(len(self.seq_indptr) - 1, -2, dtype=np.int64)
        np.maximum.at(anchor, u, end)
        if self.block_windows:
            win_end = anchor[u] - (anchor[u] - end) // self.window * self.window
        else:
            win_end = np.where(end > anchor[u] - self.window, anchor[u], end)
        key = u * np.int64(len(self.seq_items) + 2) + (win_end + 1)
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        w_user, w_end = u[first], win_end[first]
        # every row reads its window's last slot (one row per user: the RL state's users
        # with their reward target left out): only that slot is encoded
        last_only = bool(np.array_equal(w_end[inv], end))
        out = self._encode(w_user, np.diff(self.seq_indptr)[w_user] - 1 - w_end, item_emb,
                           users.device, last_only=last_only)
        # slot of the row's last input item, counted from the window's right end
        slot = np.maximum(out.shape[1] - 1 - (w_end[inv] - end), 0)
        dev = users.device
        h = out[torch.from_numpy(inv).to(dev), torch.from_numpy(slot).to(dev)]
        empty = torch.from_numpy(end < 0).to(dev)  # no item before the positive
        if bool(empty.any()):
            h = torch.where(empty[:, None], self.encoder.ln_out(torch.zeros_like(h[:1])), h)
        return h

    def forward(self, users: torch.Tensor, item_emb: nn.Embedding,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (e_u, input features [x_u; h_u]) for a batch of users (or rows)."""
        x = torch.cat([self.features(users), self.sequence_history(users, item_emb, exclude)], dim=-1)
        return self.mlp(x), x



class GatedFusion(nn.Module):
    """e <- e + sigmoid(W [e; c] + b) * c : a learned per-dimension gate on context c."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)
        nn.init.constant_(self.gate.bias, -1.0)  # start mostly closed: base model first

    def forward(self, e: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return e + torch.sigmoid(self.gate(torch.cat([e, c], dim=-1))) * c


class TwoTower(nn.Module):
    """Two-tower retrieval model with pluggable user contexts and a controller."""

    def __init__(self, split: Split, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = split.n_users, split.n_items
        self.item_tower = ItemTower(split, cfg)
        if cfg.user_encoder == "transformer":  # SASRec over the history
            self.user_tower: UserTower = SequenceUserTower(split, cfg)
        else:
            self.user_tower = UserTower(split, cfg)
        self.contexts = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.controller: Controller | None = None
        self.score_adjuster: ScoreAdjuster | None = None
        # draws averaged by scorer() for components with inference randomness
        # (eval.inference_samples; build_model sets it from the config)
        self.inference_samples = 1
        if cfg.normalize:
            self.log_inv_temp = nn.Parameter(torch.tensor(float(np.log(1.0 / cfg.init_temperature))))

    # --- extension points -------------------------------------------------
    def add_user_context(self, name: str, module: nn.Module) -> None:
        """Fuse ``module(users, model, exclude) -> [B, d]`` into e_u through a gate."""
        self.contexts[name] = module
        self.fusions[name] = GatedFusion(self.cfg.dim)

    def set_controller(self, controller: Controller) -> None:
        """Append ``controller``'s user/item features to z_u / y_i."""
        self.controller = controller

    def set_score_adjuster(self, adjuster: ScoreAdjuster) -> None:
        """Replace s(u, i) by ``adjuster``'s logits on its per-user item sets."""
        self.score_adjuster = adjuster

    # --- towers -------------------------------------------------------------
    @property
    def scale(self) -> torch.Tensor | float:
        """Inverse temperature folded into z_u (1 when not normalising)."""
        if self.cfg.normalize:
            return self.log_inv_temp.clamp(max=float(np.log(100.0))).exp()
        return 1.0

    def encode_items(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """e_i (L2-normalised when configured)."""
        e = self.item_tower(items)
        return F.normalize(e, dim=-1) if self.cfg.normalize else e

    def encode_users(self, users: torch.Tensor, exclude: torch.Tensor | None = None,
                     tower: torch.Tensor | None = None) -> torch.Tensor:
        """e_u with every registered context fused in (L2-normalised when configured).
        ``tower``: the user tower's output for these users, if already computed (the
        inference draws of :meth:`mean_user_state` share it)."""
        e = self.user_tower(users, self.item_tower.id_emb, exclude)[0] if tower is None else tower
        for name, ctx in self.contexts.items():
            e = self.fusions[name](e, ctx(users, self, exclude))
        return F.normalize(e, dim=-1) if self.cfg.normalize else e

    def user_vectors(self, users: torch.Tensor, exclude: torch.Tensor | None = None,
                     tower: torch.Tensor | None = None) -> torch.Tensor:
        """z_u = [scale * e_u ; controller user features] (``tower``: :meth:`encode_users`)."""
        e = self.encode_users(users, exclude, tower)
        z = e * self.scale
        if self.controller is not None:
            z = torch.cat([z, self.controller.user_features(users, e.detach())], dim=-1)
        return z

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """y_i = [e_i ; controller item features] for ``items`` (all when None)."""
        y = self.encode_items(items)
        if self.controller is not None:
            extra = self.controller.item_features()
            y = torch.cat([y, extra if items is None else extra[items]], dim=-1)
        return y

    def score(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """s(u, i) = <z_u, y_i> for all items (``[B, n_items]``) or given items ``[M]``,
        with the score adjuster's items replaced (fused score); in eval mode the mean
        over the inference draws (:meth:`mean_user_state`), as :meth:`scorer`."""
        z, ov_items, ov_vals = self.mean_user_state(users)
        s = z @ self.item_vectors(items).T
        if ov_items is None or ov_vals is None:
            return s
        if items is None:
            return apply_overrides(s, ov_items, ov_vals)
        hit, val = lookup_overrides(ov_items, ov_vals, items)
        return torch.where(hit, val.to(s.dtype), s)

    @property
    def full_softmax(self) -> bool:
        """Whether training uses the full-softmax layout (``model.full_softmax_max_items``)."""
        return 0 < self.n_items <= self.cfg.full_softmax_max_items

    def training_logits(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                        log_q_pos: torch.Tensor | None = None,
                        log_q_neg: torch.Tensor | None = None,
                        in_batch_negatives: bool = True,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(z_u ``[B, d']``, training logits ``[B, C]``, target ``[B]`` or None) of the
        fused score for a training batch, each user's own positive left out of its history
        (``exclude=pos``) and the score adjuster's items given its logits
        (:meth:`ScoreAdjuster.training_logits`).

        Sampled layout (the default): candidates = the batch's positives ``pos`` then
        ``neg``, column b = row b's positive (target None), logQ-corrected by ``log_q_*``
        (None = uncorrected); ``in_batch_negatives=False`` masks the other rows' positives
        (only ``neg`` are negatives). Full softmax (``n_items <= model.full_softmax_max_items``):
        the candidates are the whole catalogue in item order (C = n_items, ``neg`` and
        logQ unused: every item is a candidate with probability 1) and the target is
        ``pos``, so ``rec_loss(logits, target=pos)`` is the exact full-softmax CE. No
        ``[B, B]`` block is built: its cost grew with the square of the batch."""
        z = self.user_vectors(users, exclude=pos)
        target = None
        if self.full_softmax:
            cand = torch.arange(self.n_items, device=pos.device)
            logits = (z @ self.item_vectors().T).float()
            target, log_q = pos, None
        else:
            y_pos, y_neg = self.item_vectors(pos), self.item_vectors(neg)
            logits = sampled_softmax_logits(z, pos, neg, y_pos, y_neg, log_q_pos, log_q_neg)
            if not in_batch_negatives:
                b = len(pos)
                off = ~torch.eye(b, dtype=torch.bool, device=logits.device)
                logits = torch.cat([logits[:, :b].masked_fill(off, float("-inf")), logits[:, b:]], 1)
            cand = torch.cat([pos, neg])
            log_q = None if log_q_pos is None or log_q_neg is None else torch.cat([log_q_pos, log_q_neg])
        if self.score_adjuster is not None:  # ContextGNN: familiar items get pair-wise logits
            logits = self.score_adjuster.training_logits(self, users, pos, cand, logits, z, log_q,
                                                         target)
        return z, logits, target

    def training_row_losses(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                            log_q_pos: torch.Tensor | None = None,
                            log_q_neg: torch.Tensor | None = None, kind: str = "softmax",
                            in_batch_negatives: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_u ``[B, d']``, per-row L_rec ``[B]``) on :meth:`training_logits`.

        The full-softmax CE without a score adjuster never builds the ``[B, n_items]``
        logits: :func:`~marl_two_tower.model.chunked_ce.chunked_softmax_ce_rows` computes
        the same per-row losses in row chunks (bfloat16 matmuls under bf16 autocast or
        ``model.full_softmax_bf16``), the dominant cost of a sequence-tower step otherwise."""
        if self.full_softmax and self.score_adjuster is None and kind == "softmax":
            z = self.user_vectors(users, exclude=pos)
            dev = z.device.type
            bf16 = self.cfg.full_softmax_bf16 or (torch.is_autocast_enabled(dev)
                                                  and torch.get_autocast_dtype(dev) == torch.bfloat16)
            return z, chunked_softmax_ce_rows(z, self.item_vectors(), pos, bf16=bf16)
        z, logits, target = self.training_logits(users, pos, neg, log_q_pos, log_q_neg,
                                                 in_batch_negatives)
        return z, row_losses(logits, kind, target)

    def supervised_parameters(self) -> list[nn.Parameter]:
        """The parameters the supervised objective trains: all but the controller's."""
        return [p for n, p in self.named_parameters() if not n.startswith("controller.")]

    @torch.no_grad()
    def retrieve(self, users: torch.Tensor, k: int,
                 exclude: sp.csr_matrix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items of the fused score in two ANN-compatible stages.

        1. Top-K' by the dot product <z_u, y_i> only, K' = k + max_items + the most
           items any user in the batch has in ``exclude`` (an ANN index such as FAISS
           can serve this stage; here it is exact).
        2. The adjuster's items F(u) re-scored, merged with stage 1, excluded items
           (``exclude[u]``, e.g. train items) dropped, top-``k`` taken.

        Exact: a non-F item in the fused top-k has at most k - 1 + |F(u)| + |exclude_u|
        items above it in dot-product order. Returns (items, scores) ``[B, k]``; slots
        without a rankable item hold -1 / -inf. Components that sample at inference
        are averaged over ``self.inference_samples`` draws exactly as :meth:`scorer`
        does (:meth:`mean_user_state`): stage 1 ranks by <mean z_u, y_i>, and F(u) is
        the union of the draws' familiar sets with their mean fused scores, so the
        lists are the evaluated ones.
        """
        self.eval()
        z, ov_items, ov_vals = self.mean_user_state(users)
        s = z @ self.item_vectors().T
        n_ex, ex_keys = 0, None
        if exclude is not None:
            sub = exclude[users.cpu().numpy()].tocsr()
            n_ex = int(np.diff(sub.indptr).max(initial=0))
            rows = np.repeat(np.arange(sub.shape[0]), np.diff(sub.indptr))
            ex_keys = torch.from_numpy(np.sort(rows * self.n_items + sub.indices)).to(s.device)
        n_ov = ov_items.shape[1] if ov_items is not None else 0
        kk = min(s.shape[1], k + n_ov + n_ex)
        cand_s, cand_i = torch.topk(s, kk, dim=1)  # stage 1: dot-product top-K'
        if ov_items is not None and ov_vals is not None and n_ov:
            hit, val = lookup_overrides(ov_items, ov_vals, cand_i)
            cand_s = torch.where(hit, val.to(cand_s.dtype), cand_s)
            new = (ov_items >= 0) & ~(ov_items[:, :, None] == cand_i[:, None, :]).any(-1)
            cand_i = torch.cat([cand_i, torch.where(new, ov_items, 0)], 1)
            cand_s = torch.cat([cand_s, ov_vals.to(cand_s.dtype).masked_fill(~new, -np.inf)], 1)
        if ex_keys is not None and len(ex_keys):
            key = torch.arange(len(users), device=s.device)[:, None] * self.n_items + cand_i
            pos = torch.searchsorted(ex_keys, key).clamp(max=len(ex_keys) - 1)
            cand_s = cand_s.masked_fill(ex_keys[pos] == key, -np.inf)
        top_s, pos = torch.topk(cand_s, min(k, cand_s.shape[1]), dim=1)
        top_i = torch.gather(cand_i, 1, pos).masked_fill(torch.isneginf(top_s), -1)
        return top_i, top_s

    def stochastic_modules(self) -> list[nn.Module]:
        """Components whose inference draws a random sample (an ``inference_draw``
        attribute: ContextGNN's neighbourhood salt, BUHS's history sample)."""
        return [m for m in self.modules() if hasattr(m, "inference_draw")]

    def mean_user_state(self, users: torch.Tensor, samples: int | None = None,
                        item_vecs: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The user state whose fused score is the mean score over the inference draws:
        (z-bar ``[B, D]``, override items ``[B, W]`` (-1 = empty), their values ``[B, W]``)
        (the last two None without a score adjuster).

        With S = ``samples`` draws d = 0..S-1 of the components that sample at
        inference (:meth:`stochastic_modules`; default ``self.inference_samples``), draw
        d giving z_d and the adjuster's set F_d with logits p_d, the mean fused score
        (1/S) sum_d s_d(u, i), s_d = p_d(i) if i in F_d else <z_d, y_i>, is exactly

            <z-bar, y_i>                                   for i in no F_d,
            (1/S) sum_d (p_d(i) if i in F_d else <z_d, y_i>)   for i in U = union_d F_d,

        z-bar = (1/S) sum_d z_d (the dot product is linear in z). So the mean score
        stays one dot product plus |U| <= S |F| overrides, and retrieval stays
        ANN-compatible (:meth:`retrieve`, the serving bundle). U is sorted by item
        id. S = 1, a model without such components, or training mode: the single
        pass (z_0, F_0, p_0) unchanged. ``item_vecs``: the cached y (all items).
        """
        if samples is not None and samples < 1:  # a caller's argument; the config checks its own
            raise ValueError(f"samples must be >= 1, got {samples}")
        stochastic = [] if self.training else self.stochastic_modules()
        n_draws = int(self.inference_samples if samples is None else samples) if stochastic else 1
        adj = self.score_adjuster
        zs: list[torch.Tensor] = []
        ovs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # the user tower itself draws nothing at inference (eval mode, no component
        # inside it samples): its output is computed once for all the draws
        tower = None
        if n_draws > 1 and not any(hasattr(m, "inference_draw") for m in self.user_tower.modules()):
            tower = self.user_tower(users, self.item_tower.id_emb, None)[0]
        try:
            for d in range(n_draws):
                for m in stochastic:
                    m.inference_draw = d
                z = self.user_vectors(users, tower=tower)
                zs.append(z)
                if adj is not None:
                    ovs.append(adj.overrides(users, self, z=z))
        finally:
            for m in stochastic:
                m.inference_draw = 0
        if n_draws == 1:
            return (zs[0], *ovs[0]) if ovs else (zs[0], None, None)
        z_mean = torch.stack(zs).sum(0) / n_draws
        if not ovs:
            return z_mean, None, None
        union = _row_union(torch.cat([o[0] for o in ovs], dim=1))
        safe = union.clamp(min=0)
        if item_vecs is not None:
            y = item_vecs[safe].float()
        else:
            uniq, inv = torch.unique(safe, return_inverse=True)
            y = self.item_vectors(uniq).float()[inv]  # [B, W, D]
        total = torch.zeros(union.shape, device=union.device)
        for z, (o_items, o_vals) in zip(zs, ovs, strict=True):
            hit, val = lookup_overrides(o_items, o_vals, safe)
            dot = torch.einsum("bd,bwd->bw", z.float(), y)
            total = total + torch.where(hit, val.float(), dot)
        return z_mean, union, (total / n_draws).masked_fill(union < 0, 0.0)

    @torch.no_grad()
    def scorer(self, device: torch.device | str = "cpu", samples: int | None = None,
               history: tuple[np.ndarray, np.ndarray] | None = None):
        """A ``ScoreFn`` for the evaluator: item vectors are computed once; users are
        scored in the batches the caller passes (the evaluator's ``eval.batch_size``).

        With components that sample at inference (:meth:`stochastic_modules`), s(u, i)
        depends on the draw; the score is then the mean over ``samples`` draws
        d = 0..S-1 (each component's seed + d),

            s(u, i) = (1/S) sum_d s_d(u, i),

        a Monte Carlo estimate of the expected score E_d[s_d(u, i)], so the ranking
        (and every number computed from it) is not one lucky draw. It is computed as
        the dot product of the mean user vector plus the mean fused scores of the
        union of the draws' familiar sets (:meth:`mean_user_state`), the same state
        :meth:`retrieve` and the serving bundle use, so served lists are the evaluated
        ones. ``samples`` defaults to ``self.inference_samples``
        (``eval.inference_samples``, range-checked by the config); S = 1 is draw 0, the
        single fixed-seed draw. Models without such components score once whatever S is.

        ``history`` (CSR ``(indptr, items)`` in time order, e.g. train + the validation
        item for test: :func:`marl_two_tower.data.sequences.append_items`) is what the
        user tower reads instead of its train histories, during each call only.
        """
        self.eval()
        if samples is not None and samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        items = self.item_vectors()
        tower = self.user_tower
        swap = None if history is None else tower.windows(*history)

        def score_fn(users: np.ndarray) -> torch.Tensor:
            if swap is None:
                return _score(users)
            saved = tower.hist_items, tower.hist_valid
            tower.hist_items, tower.hist_valid = swap
            try:
                return _score(users)
            finally:
                tower.hist_items, tower.hist_valid = saved

        def _score(users: np.ndarray) -> torch.Tensor:
            with torch.no_grad():
                u = torch.as_tensor(users, dtype=torch.long, device=device)
                z, ov_items, ov_vals = self.mean_user_state(u, samples, item_vecs=items)
                s = z @ items.T
                if ov_items is not None and ov_vals is not None:
                    s = apply_overrides(s, ov_items, ov_vals)
                return s.float().cpu()

        return score_fn


def _row_union(items: torch.Tensor) -> torch.Tensor:
    """Per row, the distinct items >= 0 of ``items [B, W]``, sorted, -1 padded, trimmed
    to the widest row."""
    big = torch.iinfo(torch.int64).max
    key, _ = torch.sort(torch.where(items >= 0, items, big), dim=1)
    dup = torch.zeros_like(key, dtype=torch.bool)
    dup[:, 1:] = key[:, 1:] == key[:, :-1]
    key, _ = torch.sort(key.masked_fill(dup, big), dim=1)
    width = int((key != big).sum(1).max()) if key.numel() else 0
    key = key[:, :width]
    return key.masked_fill(key == big, -1)

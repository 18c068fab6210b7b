"""The two-tower retrieval model (DESIGN §3 "Item tower" and "Base user tower").

Item tower:  e_i = MLP([id_emb(i); mean genre embedding of m_i; year-bucket emb])
User tower:  e_u = MLP([id_emb(u); demographic embs; mean of u's N most recent train
             items' id embeddings]) + sum_k gate_k * c_k(u)   (context fusions)
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

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .data.split import Split


class UserContext(Protocol):
    """A module giving a d-dim context vector for a batch of users."""

    def __call__(self, users: torch.Tensor, model: TwoTower,
                 exclude: torch.Tensor | None = None) -> torch.Tensor: ...


class Controller(nn.Module):
    """Base of modules that extend z_u and y_i with extra dot-product dimensions."""

    def user_features(self, users: torch.Tensor, e_u: torch.Tensor) -> torch.Tensor:
        """Extra user dimensions ``[B, k]`` appended to z_u."""
        raise NotImplementedError

    def item_features(self) -> torch.Tensor:
        """Extra item dimensions ``[n_items, k]`` appended to y_i."""
        raise NotImplementedError


def _mlp(inp: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
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
    rows = np.repeat(np.arange(split.n_users), take)
    # position within the last-`take` window, and its source index in train_items
    within = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
    src = np.repeat(indptr[1:] - take, take) + within
    cols = within + np.repeat(n - take, take)
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
        self.mlp = _mlp(3 * cfg.id_dim, cfg.hidden, cfg.dim, cfg.dropout)
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


class UserTower(nn.Module):
    """e_u = MLP([id_emb(u); demographic embs; pooled recent history])."""

    def __init__(self, split: Split, cfg: ModelConfig) -> None:
        super().__init__()
        ds = split.dataset
        self.id_emb = nn.Embedding(split.n_users, cfg.id_dim)
        nn.init.normal_(self.id_emb.weight, std=0.05)
        self.feature_names = sorted(ds.user_features)
        self.demo_emb = nn.ModuleDict()
        for name in self.feature_names:
            codes = torch.as_tensor(np.asarray(ds.user_features[name]), dtype=torch.long)
            # code -1 (unknown) maps to row 0
            self.register_buffer(f"demo_{name}", codes + 1)
            self.demo_emb[name] = nn.Embedding(int(codes.max().item()) + 2, cfg.id_dim)
        hist, valid = recent_history(split, cfg.history_len)
        self.register_buffer("hist_items", hist)
        self.register_buffer("hist_valid", valid)
        inp = (2 + len(self.feature_names)) * cfg.id_dim
        self.mlp = _mlp(inp, cfg.hidden, cfg.dim, cfg.dropout)

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
        """Returns (e_u, input features) for a batch of users."""
        parts = [self.id_emb(users)]
        parts += [self.demo_emb[n](getattr(self, f"demo_{n}")[users]) for n in self.feature_names]
        parts.append(self.pooled_history(users, item_emb, exclude))
        x = torch.cat(parts, dim=-1)
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
        self.user_tower = UserTower(split, cfg)
        self.contexts = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.controller: Controller | None = None
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

    def encode_users(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """e_u with every registered context fused in (L2-normalised when configured)."""
        e, _ = self.user_tower(users, self.item_tower.id_emb, exclude)
        for name, ctx in self.contexts.items():
            e = self.fusions[name](e, ctx(users, self, exclude))
        return F.normalize(e, dim=-1) if self.cfg.normalize else e

    def user_vectors(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """z_u = [scale * e_u ; controller user features]."""
        e = self.encode_users(users, exclude)
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
        """s(u, i) = <z_u, y_i> for all items (``[B, n_items]``) or given items."""
        return self.user_vectors(users) @ self.item_vectors(items).T

    @torch.no_grad()
    def scorer(self, device: torch.device | str = "cpu", batch_size: int = 4096):
        """A ``ScoreFn`` for the evaluator: item vectors are computed once."""
        self.eval()
        items = self.item_vectors()

        def score_fn(users: np.ndarray) -> torch.Tensor:
            with torch.no_grad():
                u = torch.as_tensor(users, dtype=torch.long, device=device)
                return (self.user_vectors(u) @ items.T).float().cpu()

        return score_fn

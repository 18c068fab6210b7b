"""ContextGNN: graph context for the user tower and pair-wise scores for familiar items.

After Yuan et al., *ContextGNN: Beyond Two-Tower Recommendation Systems* (2024). The
paper's observation: a two-tower dot product is good at *exploring* the catalogue, but
for items in the user's own graph neighbourhood (items the user, or users like them,
already touched) a *pair-wise* score computed from the user's subgraph is better. It
therefore scores familiar items pair-wise, everything else with the two-tower dot
product, and calibrates the two scales with learned per-user offsets.

Our version, over the **train** user-item bipartite graph G (validation and test
edges never enter it), with symmetric LightGCN weights w(u, i) = 1 / sqrt(deg u deg i)
(He et al., *LightGCN*, SIGIR 2020):

1. **Bounded neighbour sampling.** For a batch of root users, a computation tree is
   sampled hop by hop: root -> items (hop 1) -> users (hop 2) -> items (hop 3). Every
   frontier node keeps at most ``fanout`` neighbours (systematic sampling: a random
   offset r in [0, deg/F) and positions floor(r + k deg/F), so every neighbour is kept
   with probability exactly F/deg, without duplicates), and a kept edge carries
   ``(deg/kept) * w`` so the sampled sums are unbiased estimates of the full
   propagation. The walk masses of the tree are sparse matrices

       P1 = S_ui[roots],  P2 = P1 S_iu,  P3 = P2 S_ui      (hat-A, hat-A^2, hat-A^3)

   with at most B F, B F^2 and B F^3 non-zeros whatever the graph size, so memory is
   bounded by the batch and the fan-out, not by the 1M+ users of the graph. The
   random offsets are a hash of (salt, hop, node): a node's sample does not depend
   on which batch it is in, so inference (fixed salt) is reproducible and a user's
   recommendations do not change with the batch composition; training draws a fresh
   salt per step from torch's RNG (seeded and checkpointed by the trainer).

2. **Context vector.** LightGCN layer combination over learned GNN embeddings
   U^0 (users) and I^0 (items), with ``layers`` = K in {1, 2, 3}:

       c_u = 1/(K+1) * (U^0_u + P1 I^0 + P2 U^0 + P3 I^0)     (first K+1 terms)

   fused into the user tower by the model's gated sum (``TwoTower.add_user_context``).

3. **Familiar items and their pair-wise logit.** F(u) = the ``familiar_size`` items
   with the largest 3-hop walk mass P3(u, j) among items u has *not* consumed
   (u -> i -> v -> j: items of users who share items with u). The user's own train
   items are in the sampled neighbourhood too, but the full-ranking protocol masks
   them, so a familiar slot spent on them would be wasted; on a re-consumption task
   they would belong in F(u). For j in F(u) the two-tower logit is *replaced* by

       s_F(u, j) = <c_u, I^0_j> + a^T I^0_j + MLP(phi(u, j)) + o(u),
       phi(u, j) = [log P3(u,j), log(P3(u,j) / max_j' P3(u,j')), log(1 + deg j)],

   the analogue of the paper's ``head(h_j) + <h_u, h_j> + offset_idgnn(u)`` where
   ID-GNN's user-conditioned item states become the user-conditioned walk mass.
   o(u) = w_o^T c_u + b_o is the learned per-user offset that calibrates the pair-wise
   scale against the dot product (the paper also offsets the two-tower logits, but a
   per-user constant added to *all* items changes neither the ranking nor the
   softmax, so only the difference o(u) is identifiable and only it is kept).

**No leakage in training.** When the positive (u, t) is predicted, that edge is in
the train graph. It is dropped from u's hop-1 sample, and the root is removed from
its own hop-2 frontier (return walks u -> i -> u -> j would only reach u's own
items, one of which is t), so no path of the tree uses the edge (u, t); F(u)
excludes u's train items except t, mirroring evaluation, where F(u) excludes all
train items.

**Training.** The familiar logits enter the sampled softmax as a stratified
estimate of the full softmax (like the paper, which always keeps familiar items
among the sampled candidates): familiar items are scored exactly, once, in an extra
block of columns without logQ correction; the sampled (in-batch and uniform)
negatives that are familiar are masked out of the sampled block so they are not
counted twice; a familiar positive keeps its column and logQ correction with s_F as
its score.

**Retrieval** stays ANN-compatible: top-(k + familiar_size) by the two-tower dot
product only, then F(u) re-scored and merged (``TwoTower.retrieve``); the result is
identical to ranking the fused scores of the whole catalogue (tested).

Implemented with torch sparse tensors and scipy, not PyTorch Geometric: no extra
dependency, CPU friendly, and the bipartite two-hop tree is a few sparse products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .config import ContextGNNConfig
from .data.split import Split
from .two_tower import ScoreAdjuster, TwoTower, lookup_overrides

__all__ = ["BipartiteGraph", "ContextGNN", "Neighbourhood", "attach_context_gnn",
           "sample_neighbours"]

_N_PHI = 3  # pair features phi(u, j)


# ---------------------------------------------------------------------------
# Graph and sampling (numpy; no autograd)
# ---------------------------------------------------------------------------


@dataclass
class BipartiteGraph:
    """The train user-item graph in both directions (CSR, neighbours sorted by id).

    ``user_indptr/user_items``: items of each user; ``item_indptr/item_users``: users
    of each item; ``keys``: sorted ``u * n_items + i`` of every edge (membership tests).
    """

    n_users: int
    n_items: int
    user_indptr: np.ndarray
    user_items: np.ndarray
    item_indptr: np.ndarray
    item_users: np.ndarray
    keys: np.ndarray

    @classmethod
    def from_split(cls, split: Split) -> BipartiteGraph:
        """Built from ``split.train_matrix`` only: validation/test edges never enter."""
        ui = sp.csr_matrix(split.train_matrix, copy=True)
        ui.sum_duplicates()
        ui.sort_indices()
        iu = ui.T.tocsr()
        iu.sort_indices()
        n_items = split.n_items
        rows = np.repeat(np.arange(split.n_users, dtype=np.int64), np.diff(ui.indptr))
        return cls(split.n_users, n_items, ui.indptr.astype(np.int64), ui.indices.astype(np.int64),
                   iu.indptr.astype(np.int64), iu.indices.astype(np.int64),
                   rows * n_items + ui.indices.astype(np.int64))

    @property
    def user_deg(self) -> np.ndarray:
        return np.diff(self.user_indptr)

    @property
    def item_deg(self) -> np.ndarray:
        return np.diff(self.item_indptr)

    def has_edges(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Bool array: is (users[k], items[k]) a train edge."""
        k = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, k), max(len(self.keys) - 1, 0))
        return self.keys[pos] == k if len(self.keys) else np.zeros(k.shape, dtype=bool)


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _hash_uniform(salt: int, hop: int, nodes: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per node from splitmix64(salt, hop, node): batch-independent."""
    with np.errstate(over="ignore"):
        x = (np.asarray(nodes, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64((salt * 1_000_003 + hop * 7919) & int(_M64)))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_neighbours(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, fanout: int,
                      salt: int, hop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``fanout`` neighbours of each node, without replacement.

    Nodes with deg <= F keep all neighbours; others keep positions
    floor(r + k * deg/F), k = 0..F-1, r ~ U[0, deg/F) from the hash of
    (salt, hop, node) (systematic sampling: inclusion probability exactly F/deg).

    Returns (slot -> index into ``nodes``, neighbour, deg / kept) per kept edge.
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    start, deg = indptr[nodes], indptr[nodes + 1] - indptr[nodes]
    take = np.minimum(deg, fanout)
    seg = np.repeat(np.arange(len(nodes)), take)
    k = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    step = np.where(deg > fanout, deg / max(fanout, 1), 1.0)
    offset = np.where(deg > fanout, _hash_uniform(salt, hop, nodes) * step, 0.0)
    pos = np.floor(offset[seg] + k * step[seg]).astype(np.int64)
    scale = deg / np.maximum(take, 1)
    return seg, indices[start[seg] + pos], scale[seg]


@dataclass
class Neighbourhood:
    """Sampled computation tree of a batch of roots (numpy, no autograd).

    ``p1``: ``[B, len(items1)]`` hop-1 mass (columns = global ids ``items1``);
    ``p2``: ``[B, len(users2)]``; ``p3``: ``[B, len(items3)]`` or None when not needed;
    ``fam_items``: ``[B, familiar_size]`` familiar items (-1 = empty slot), best first;
    ``fam_mass``: their P3 mass (0 in empty slots).
    """

    p1: sp.csr_matrix
    items1: np.ndarray
    p2: sp.csr_matrix
    users2: np.ndarray
    p3: sp.csr_matrix | None
    items3: np.ndarray
    fam_items: np.ndarray
    fam_mass: np.ndarray


def _compact(rows: np.ndarray, nodes: np.ndarray, vals: np.ndarray,
             n_rows: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """CSR over the distinct ``nodes`` only (columns relabelled in increasing id)."""
    uniq, inv = np.unique(nodes, return_inverse=True)
    m = sp.csr_matrix((vals, (rows, inv)), shape=(n_rows, len(uniq)))
    m.sum_duplicates()
    return m, uniq


def _familiar(p3: sp.csr_matrix, items3: np.ndarray, graph: BipartiteGraph, users: np.ndarray,
              exclude: np.ndarray | None, k: int,
              block: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` unconsumed items of largest P3 mass (ties: smaller id), padded.

    Rows are densified ``block // n3`` at a time, so memory stays bounded.
    """
    b, n3 = p3.shape
    out_i = np.full((b, k), -1, dtype=np.int64)
    out_m = np.zeros((b, k))
    if n3 == 0 or k == 0:
        return out_i, out_m
    step = max(1, block // n3)
    for r0 in range(0, b, step):
        r1 = min(b, r0 + step)
        dense = p3[r0:r1].toarray()
        # consumed items (train, minus the training positive) cannot be familiar
        u = users[r0:r1]
        start, end = graph.user_indptr[u], graph.user_indptr[u + 1]
        rows = np.repeat(np.arange(r1 - r0), end - start)
        within = np.arange(len(rows)) - np.repeat(np.cumsum(end - start) - (end - start), end - start)
        own = graph.user_items[start[rows] + within]
        if exclude is not None:
            keep = own != exclude[r0:r1][rows]
            rows, own = rows[keep], own[keep]
        loc = np.minimum(np.searchsorted(items3, own), n3 - 1)
        hit = items3[loc] == own
        dense[rows[hit], loc[hit]] = 0.0
        kk = min(k, n3)
        idx = _topk_smallest_id(dense, kk)
        vals = np.take_along_axis(dense, idx, 1)
        out_i[r0:r1, :kk] = np.where(vals > 0, items3[idx], -1)
        out_m[r0:r1, :kk] = np.where(vals > 0, vals, 0.0)
    return out_i, out_m


def _topk_smallest_id(x: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest values, best first; ties go to the
    smaller column (so the result does not depend on the sort algorithm)."""
    t = torch.from_numpy(x)
    kth = torch.topk(t, k, dim=1).values[:, -1:]
    above = t > kth
    tie = t == kth
    # keep every value above the k-th, then the first (smallest-column) ties
    need = k - above.sum(1, keepdim=True)
    chosen = above | (tie & (torch.cumsum(tie, 1) <= need))
    cols = torch.nonzero(chosen)[:, 1].reshape(len(x), k)
    order = torch.sort(-torch.gather(t, 1, cols), dim=1, stable=True).indices
    return torch.gather(cols, 1, order).numpy()


def sample_neighbourhood(graph: BipartiteGraph, users: np.ndarray, exclude: np.ndarray | None,
                         fanout: int, familiar_size: int, salt: int,
                         need_hop3: bool) -> Neighbourhood:
    """The sampled tree of ``users`` and their familiar sets (see the module docstring).

    ``exclude[b]`` (training positive, or -1) is cut from row b's tree and stays
    eligible for F(u_b).
    """
    users = np.asarray(users, dtype=np.int64)
    b = len(users)
    udeg, ideg = graph.user_deg.astype(np.float64), graph.item_deg.astype(np.float64)
    # hop 1: root -> items, the training positive's edge removed
    seg, items, scale = sample_neighbours(graph.user_indptr, graph.user_items, users, fanout, salt, 1)
    w = scale / np.sqrt(udeg[users[seg]] * ideg[items])
    if exclude is not None:
        keep = items != exclude[seg]
        seg, items, w = seg[keep], items[keep], w[keep]
    p1, items1 = _compact(seg, items, w, b)
    # hop 2: items -> users; the root leaves its own frontier (return walks)
    seg, nbr, scale = sample_neighbours(graph.item_indptr, graph.item_users, items1, fanout, salt, 2)
    s2, users2 = _compact(seg, nbr, scale / np.sqrt(ideg[items1[seg]] * udeg[nbr]), len(items1))
    p2 = (p1 @ s2).tocoo()
    keep = users2[p2.col] != users[p2.row]
    p2 = sp.csr_matrix((p2.data[keep], (p2.row[keep], p2.col[keep])), shape=p2.shape)
    fam_items = np.full((b, familiar_size), -1, dtype=np.int64)
    fam_mass = np.zeros((b, familiar_size))
    if not need_hop3:
        return Neighbourhood(p1, items1, p2, users2, None, np.zeros(0, np.int64), fam_items, fam_mass)
    # hop 3: users -> items
    seg, nbr, scale = sample_neighbours(graph.user_indptr, graph.user_items, users2, fanout, salt, 3)
    s3, items3 = _compact(seg, nbr, scale / np.sqrt(udeg[users2[seg]] * ideg[nbr]), len(users2))
    p3 = (p2 @ s3).tocsr()
    if familiar_size > 0:
        fam_items, fam_mass = _familiar(p3, items3, graph, users, exclude, familiar_size)
    return Neighbourhood(p1, items1, p2, users2, p3, items3, fam_items, fam_mass)


# ---------------------------------------------------------------------------
# The module (torch; differentiable parts)
# ---------------------------------------------------------------------------


def _propagate(m: sp.csr_matrix, emb: torch.Tensor) -> torch.Tensor:
    """``m @ emb`` with gradients to ``emb``: dense when m is dense enough, else sparse."""
    dev = emb.device
    if m.nnz == 0:
        return emb.new_zeros((m.shape[0], emb.shape[1]))
    if m.nnz > 0.05 * m.shape[0] * m.shape[1]:
        return torch.from_numpy(m.toarray().astype(np.float32)).to(dev) @ emb
    c = m.tocoo()
    idx = torch.from_numpy(np.vstack([c.row, c.col]).astype(np.int64)).to(dev)
    t = torch.sparse_coo_tensor(idx, torch.from_numpy(c.data.astype(np.float32)).to(dev),
                                m.shape, is_coalesced=True, check_invariants=False)
    return torch.sparse.mm(t, emb)


class ContextGNN(ScoreAdjuster):
    """LightGCN context c_u for the user tower plus the familiar-item pair-wise head.

    Called as a user context ``module(users, model, exclude) -> c_u [B, d]``; as the
    model's score adjuster ``overrides(users, model, exclude) -> (F(u), s_F(u, .))``.
    """

    def __init__(self, split: Split, cfg: ContextGNNConfig, dim: int) -> None:
        super().__init__()
        if not 1 <= cfg.layers <= 3:
            raise ValueError(f"context_gnn.layers must be 1, 2 or 3, got {cfg.layers}")
        if cfg.fanout < 1 or cfg.familiar_size < 0:
            raise ValueError("context_gnn.fanout must be >= 1 and familiar_size >= 0")
        self.cfg = cfg
        self.graph = BipartiteGraph.from_split(split)
        self.max_items = cfg.familiar_size if cfg.familiar else 0
        self.user_emb = nn.Embedding(split.n_users, dim)
        self.item_emb = nn.Embedding(split.n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        self.register_buffer("log_item_deg",
                             torch.log1p(torch.as_tensor(self.graph.item_deg, dtype=torch.float32)))
        if cfg.familiar:
            self.item_head = nn.Linear(dim, 1)  # head(h_j): the item's own term
            self.pair_head = nn.Sequential(nn.Linear(_N_PHI, 16), nn.GELU(), nn.Linear(16, 1))
            self.offset = nn.Linear(dim, 1)  # o(u): per-user calibration offset
        self._cache: tuple | None = None

    # --- sampling ---------------------------------------------------------
    def neighbourhood(self, users: torch.Tensor, exclude: torch.Tensor | None) -> Neighbourhood:
        """The sampled tree of this batch; reused by the calls of one forward pass.

        The context (inside ``user_vectors``) and the familiar head (after it) must
        see the same sample; the cache holds the structure only (no parameters), keyed
        by the identity of the ``users``/``exclude`` tensors and the mode.
        """
        c = self._cache
        if c is not None and c[0] is users and c[1] is exclude and c[2] == self.training:
            return c[3]
        if self.training:
            salt = int(torch.randint(0, 2**62, ()).item())
        else:
            salt = self.cfg.inference_seed
        ex = None if exclude is None else exclude.detach().cpu().numpy().astype(np.int64)
        nb = sample_neighbourhood(self.graph, users.detach().cpu().numpy(), ex, self.cfg.fanout,
                                  self.max_items, salt,
                                  need_hop3=self.cfg.layers >= 3 or self.max_items > 0)
        self._cache = (users, exclude, self.training, nb)
        return nb

    # --- context ----------------------------------------------------------
    def context(self, users: torch.Tensor, nb: Neighbourhood) -> torch.Tensor:
        """c_u = 1/(K+1) sum_{k<=K} (hat-A^k E^0)_u  (LightGCN layer combination)."""
        dev = self.user_emb.weight.device
        terms = [self.user_emb(users)]
        terms.append(_propagate(nb.p1, self.item_emb(torch.from_numpy(nb.items1).to(dev))))
        if self.cfg.layers >= 2:
            terms.append(_propagate(nb.p2, self.user_emb(torch.from_numpy(nb.users2).to(dev))))
        if self.cfg.layers >= 3:
            assert nb.p3 is not None
            terms.append(_propagate(nb.p3, self.item_emb(torch.from_numpy(nb.items3).to(dev))))
        return torch.stack(terms).mean(0)

    def forward(self, users: torch.Tensor, model: TwoTower,
                exclude: torch.Tensor | None = None) -> torch.Tensor:
        """c_u ``[B, d]`` (the user-context interface of ``TwoTower``)."""
        with torch.autocast(users.device.type, enabled=False):
            return self.context(users, self.neighbourhood(users, exclude))

    # --- familiar items -----------------------------------------------------
    def overrides(self, users: torch.Tensor, model: TwoTower,
                  exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(F(u) ``[B, familiar_size]`` with -1 padding, s_F(u, j) ``[B, familiar_size]``)."""
        dev = self.user_emb.weight.device
        with torch.autocast(dev.type, enabled=False):
            nb = self.neighbourhood(users, exclude)
            items = torch.from_numpy(nb.fam_items).to(dev)
            valid = items >= 0
            if items.shape[1] == 0:
                return items, torch.zeros(items.shape, device=dev)
            c = self.context(users, nb)
            h = self.item_emb(items.clamp(min=0))  # [B, F, d]
            mass = torch.from_numpy(nb.fam_mass.astype(np.float32)).to(dev).clamp(min=1e-30)
            log_mass = torch.log(mass)
            rel = log_mass - log_mass[:, :1]
            phi = torch.stack([log_mass, rel, self.log_item_deg[items.clamp(min=0)]], dim=-1)
            phi = torch.where(valid[..., None], phi, torch.zeros_like(phi))
            logit = (torch.einsum("bd,bfd->bf", c, h) + self.item_head(h).squeeze(-1)
                     + self.pair_head(phi).squeeze(-1) + self.offset(c))
            return items, logit.masked_fill(~valid, 0.0)

    def training_logits(self, model: TwoTower, users: torch.Tensor, pos: torch.Tensor,
                        cand_items: torch.Tensor, logits: torch.Tensor,
                        log_q_pos: torch.Tensor | None) -> torch.Tensor:
        """Sampled-softmax logits ``[B, C]`` -> ``[B, C + F]`` with familiar items exact.

        Column b of row b is the positive; familiar non-positive candidates are masked
        in the sampled block and scored once in the appended block (no logQ).
        """
        items, fam = self.overrides(users, model, exclude=pos)
        if items.shape[1] == 0:
            return logits
        fam = fam.float()
        b = len(users)
        ar = torch.arange(b, device=logits.device)
        in_fam, fam_at = lookup_overrides(items, fam, cand_items)  # [B, C]
        own = torch.zeros_like(in_fam)
        own[ar, ar] = True
        out = logits.masked_fill(in_fam & ~own, float("-inf"))
        pos_fam = in_fam[ar, ar]
        corr = log_q_pos.float() if log_q_pos is not None else torch.zeros(b, device=logits.device)
        out[ar, ar] = torch.where(pos_fam, fam_at[ar, ar] - corr, out[ar, ar])
        extra = fam.masked_fill((items < 0) | (items == pos[:, None]), float("-inf"))
        return torch.cat([out, extra], dim=1)


def attach_context_gnn(model: TwoTower, split: Split, cfg: ContextGNNConfig) -> ContextGNN:
    """Build the component and plug it into ``model`` (context and/or familiar head)."""
    gnn = ContextGNN(split, cfg, model.cfg.dim)
    if cfg.context:
        model.add_user_context("context_gnn", gnn)
    if cfg.familiar:
        model.set_score_adjuster(gnn)
    if not (cfg.context or cfg.familiar):
        raise ValueError("context_gnn.enabled needs context or familiar (or both) switched on")
    return gnn


"""ContextGNN: graph context for the user tower and pair-wise scores for familiar items.

After Yuan et al., *ContextGNN: Beyond Two-Tower Recommendation Systems* (2024). The
paper's observation: a two-tower dot product is good at *exploring* the catalogue, but
for items in the user's own graph neighbourhood (items the user, or users like them,
already touched) a *pair-wise* score computed from the user's subgraph is better. It
therefore scores familiar items pair-wise, everything else with the two-tower dot
product, and calibrates the two scales with learned per-user offsets.

Our version, over the **train** user-item bipartite graph G (validation and test
edges never enter it), with symmetric LightGCN weights w(u, i) = 1 / sqrt(deg u deg i)
(He et al., *LightGCN*, SIGIR 2020). For a batch of root users a computation tree
root -> items (hop 1) -> users (hop 2) -> items (hop 3) gives walk-mass matrices

    P1 [B, items],  P2 = P1 S_iu [B, users],  P3 = P1 C [B, items]

1. **Hop 1, temporal** (``recent`` > 0, the default): the root's ``recent`` latest
   train items *before the predicted interaction* (at inference: the latest ones; in
   training: those before the positive), weighted 1/sqrt(n_window deg i) as if they
   were the root's only edges. This is the temporal neighbour sampling of the
   paper's RelBench setting (neighbours before the seed time, most recent first);
   on a leave-one-out-by-time split it is what makes the graph useful (see
   docs/context_gnn.md). ``recent = 0``: a uniform sample of ``fanout`` of all its
   items, weights (deg/kept) w, an unbiased estimate of the full hop.
2. **Hop 2, sampled**: at most ``fanout`` users per frontier item (systematic
   sampling: random offset r in [0, deg/F), positions floor(r + k deg/F): each user
   kept with probability exactly F/deg, no duplicates), edge weight (deg/kept) w, so
   P2 is an unbiased estimate of the full propagation. The root leaves its own
   frontier. The random offsets are a hash of (salt, hop, node): a node's sample does
   not depend on which batch it is in, so inference (fixed salt) is reproducible;
   training draws a fresh salt per step from torch's RNG (seeded and checkpointed).
3. **Hop 3, exact and truncated**: C = top-``item_neighbours`` per row of
   hat-A^T hat-A, the two-hop item -> user -> item walk mass over *all* users,
   precomputed once from the train edges (``two_hop_items``). Sampling this hop too
   (fan-out F at hops 2 and 3, a first version) left ~F^2 walks per root item and
   the familiar sets were mostly noise; the truncated operator is exact where it
   matters and costs B x |hop 1| x item_neighbours.

P1, P2 and P3 have at most B |hop1|, B |hop1| F and B |hop1| item_neighbours
non-zeros whatever the graph size, so per-batch memory is bounded by the batch and
the fan-outs, not by the 1M+ users of the graph (C itself is n_items x
item_neighbours).

**Context vector.** LightGCN layer combination over learned GNN embeddings U^0
(users) and I^0 (items), ``layers`` = K in {1, 2, 3}:

    c_u = 1/(K+1) * (U^0_u + P1 I^0 + P2 U^0 + P3 I^0)      (first K+1 terms)

fused into the user tower by the model's gated sum (``TwoTower.add_user_context``).

**Familiar items and their pair-wise logit.** F(u) = the ``familiar_size`` items with
the largest P3(u, j) among items u has *not* consumed (items co-consumed with u's
recent items). The user's own train items are in the neighbourhood too, but the
full-ranking protocol masks them, so a familiar slot spent on them would be wasted;
on a re-consumption task they would belong in F(u). For j in F(u) the two-tower
logit is *replaced* by

    s_F(u, j) = <c_u, I^0_j> + a^T I^0_j + MLP(phi(u, j)) + o(u)  [+ <z_u, y_j> if residual]
    phi(u, j) = [log P3(u,j), log(P3(u,j) / max_j' P3(u,j')), log(1 + deg j)],

the analogue of the paper's ``head(h_j) + <h_u, h_j> + offset_idgnn(u)``, where
ID-GNN's user-conditioned item states become the user-conditioned walk mass.
o(u) = w_o^T c_u + b_o is the learned per-user offset that calibrates the pair-wise
scale against the dot product (the paper also offsets the two-tower logits, but a
per-user constant added to *all* items changes neither the ranking nor the softmax,
so only the difference o(u) is identifiable and only it is kept).

**No leakage in training.** When the positive (u, t) is predicted, the edge (u, t) is
in the train graph. Hop 1 never contains t (the temporal window ends before it; the
uniform sample drops it); hop 2 drops the root; in hop 3 the operator C contains the
root's own term w(u, i) w(u, t) for every (i, t) it kept, and exactly that term is
subtracted from P3(b, t) (a result within rounding of zero is zero). So no walk of
the tree uses (u, t) (tested against a dense oracle). F(u) excludes u's train items
except t, mirroring evaluation, where F(u) excludes all train items.

**Training.** ``familiar_loss='sampled'`` (default): the sampled softmax of the fused
score, i.e. a candidate that is familiar gets s_F minus the same logQ correction as
any candidate. ``'stratified'`` (the paper keeps familiar items among the sampled
candidates): familiar items are scored exactly, once, in extra uncorrected columns,
and familiar sampled candidates are masked out; on ML-100K both give the same
accuracy (docs/context_gnn.md).

**Retrieval** stays ANN-compatible: top-(k + familiar_size) by the two-tower dot
product only, then F(u) re-scored and merged (``TwoTower.retrieve``); the result is
identical to ranking the fused scores of the whole catalogue (tested).

Implemented with scipy sparse matrices and torch, not PyTorch Geometric: no extra
dependency, CPU friendly, and the bipartite tree is three sparse products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from marl_two_tower.config import ContextGNNConfig
from marl_two_tower.data.split import Split
from marl_two_tower.model.two_tower import ScoreAdjuster, TwoTower, lookup_overrides
from marl_two_tower.utils.csr import expand_ranges

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
    of each item; ``keys``: sorted ``u * n_items + i`` of every edge (membership tests);
    ``hist_indptr/hist_items``: each user's train interactions in time order;
    ``last_pos[e]``: index into ``hist_items`` of the last interaction of edge ``keys[e]``;
    ``timed[u]``: every train interaction of u has a timestamp (otherwise its "time
    order" is only file order, and temporal sampling falls back to a uniform sample).
    """

    n_users: int
    n_items: int
    user_indptr: np.ndarray
    user_items: np.ndarray
    item_indptr: np.ndarray
    item_users: np.ndarray
    keys: np.ndarray
    hist_indptr: np.ndarray
    hist_items: np.ndarray
    last_pos: np.ndarray
    timed: np.ndarray

    @classmethod
    def from_split(cls, split: Split) -> BipartiteGraph:
        """Built from the train interactions only: validation/test edges never enter."""
        ui = sp.csr_matrix(split.train_matrix, copy=True)
        ui.sum_duplicates()
        ui.sort_indices()
        iu = ui.T.tocsr()
        iu.sort_indices()
        n_items = split.n_items
        rows = np.repeat(np.arange(split.n_users, dtype=np.int64), np.diff(ui.indptr))
        keys = rows * n_items + ui.indices.astype(np.int64)
        hist_keys = split.train_users.astype(np.int64) * n_items + split.train_items
        # last occurrence of each edge: the first one in the reversed history
        rev_keys, first = np.unique(hist_keys[::-1], return_index=True)
        assert np.array_equal(rev_keys, keys)
        return cls(split.n_users, n_items, ui.indptr.astype(np.int64), ui.indices.astype(np.int64),
                   iu.indptr.astype(np.int64), iu.indices.astype(np.int64), keys,
                   split.train_indptr.astype(np.int64), split.train_items.astype(np.int64),
                   len(hist_keys) - 1 - first, split.dataset.timed_users())

    def position(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Index into ``hist_items`` of the last (u, i) interaction; must be an edge."""
        k = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        e = np.searchsorted(self.keys, k)
        if not np.array_equal(self.keys[np.minimum(e, len(self.keys) - 1)], k):
            raise ValueError("training positives must be train edges")
        return self.last_pos[e]

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
    seg, k = expand_ranges(np.zeros_like(take), take)  # k = 0..take-1 within each node
    step = np.where(deg > fanout, deg / max(fanout, 1), 1.0)
    offset = np.where(deg > fanout, _hash_uniform(salt, hop, nodes) * step, 0.0)
    pos = np.floor(offset[seg] + k * step[seg]).astype(np.int64)
    scale = deg / np.maximum(take, 1)
    return seg, indices[start[seg] + pos], scale[seg]


def two_hop_items(graph: BipartiteGraph, m: int, budget: int = 1 << 24) -> sp.csr_matrix:
    """C = top-``m`` per row of hat-A^T hat-A (items -> users -> items, LightGCN weights).

    C(i, j) = sum_v w(v, i) w(v, j): the exact two-hop walk mass between items over
    all their users, truncated to each item's ``m`` strongest links (ties: smaller
    id), so hop 3 of the tree costs B x |hop 1| x m whatever the number of users.
    Computed in row blocks of at most ``budget`` entries; train edges only.
    """
    n_u, n_i = graph.n_users, graph.n_items
    udeg, ideg = graph.user_deg.astype(np.float64), graph.item_deg.astype(np.float64)
    rows = np.repeat(np.arange(n_u), graph.user_deg)
    a = sp.csr_matrix((1.0 / np.sqrt(udeg[rows] * ideg[graph.user_items]), (rows, graph.user_items)),
                      shape=(n_u, n_i))
    at = a.T.tocsr()
    out_r, out_c, out_v = [], [], []
    step = max(1, budget // max(n_i, 1))
    for s0 in range(0, n_i, step):
        c = (at[s0:s0 + step] @ a).tocoo()
        order = np.lexsort((c.col, -c.data, c.row))
        r, col, v = c.row[order], c.col[order], c.data[order]
        rank = np.arange(len(r)) - np.searchsorted(r, r)
        keep = rank < m
        out_r.append(r[keep] + s0)
        out_c.append(col[keep])
        out_v.append(v[keep])
    cm = sp.csr_matrix((np.concatenate(out_v), (np.concatenate(out_r), np.concatenate(out_c))),
                       shape=(n_i, n_i))
    cm.sort_indices()
    return cm


@dataclass
class Neighbourhood:
    """Sampled computation tree of a batch of roots (numpy, no autograd).

    ``p1``: ``[B, len(items1)]`` hop-1 mass (columns = global ids ``items1``);
    ``p2``: ``[B, len(users2)]``; ``p3``: ``[B, len(items3)]`` or None when not needed;
    ``p2``/``p3`` are dense arrays when the frontier is small (see ``dense_budget``);
    ``fam_items``: ``[B, familiar_size]`` familiar items (-1 = empty slot), best first;
    ``fam_mass``: their P3 mass (0 in empty slots).
    """

    p1: sp.csr_matrix
    items1: np.ndarray
    p2: sp.csr_matrix | np.ndarray
    users2: np.ndarray
    p3: sp.csr_matrix | np.ndarray | None
    items3: np.ndarray
    fam_items: np.ndarray
    fam_mass: np.ndarray


def _relabel(nodes: np.ndarray, n_total: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct nodes in increasing id, index of each node among them), like
    ``np.unique(return_inverse=True)`` but O(len + n_total) with a mark array."""
    mark = np.zeros(n_total + 1, dtype=np.int64)
    mark[nodes + 1] = 1
    rank = np.cumsum(mark)  # rank[v] = number of distinct nodes < v
    return np.flatnonzero(mark[1:]), rank[nodes]


def _compact(rows: np.ndarray, nodes: np.ndarray, vals: np.ndarray, n_rows: int,
             n_total: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """CSR over the distinct ``nodes`` only (columns relabelled in increasing id)."""
    uniq, inv = _relabel(nodes, n_total)
    m = sp.csr_matrix((vals, (rows, inv)), shape=(n_rows, len(uniq)))
    m.sum_duplicates()
    return m, uniq


def _familiar(p3: sp.csr_matrix | np.ndarray, items3: np.ndarray, graph: BipartiteGraph,
              users: np.ndarray, exclude: np.ndarray | None, k: int,
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
        dense = p3[r0:r1].copy() if isinstance(p3, np.ndarray) else p3[r0:r1].toarray()
        # consumed items (train, minus the training positive) cannot be familiar
        u = users[r0:r1]
        start, end = graph.user_indptr[u], graph.user_indptr[u + 1]
        rows, pos = expand_ranges(start, end)
        own = graph.user_items[pos]
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
    """Column indices of each row's ``k`` largest values, best first; exact ties go to
    the smaller column (columns are in increasing item id, so the choice does not depend
    on the batch): the key x * (1 - 2^-40 col/n) reorders only values that are equal to
    ~12 significant digits, i.e. ties up to rounding."""
    n = x.shape[1]
    key = torch.from_numpy(x) * (1.0 - 2.0**-40 * torch.arange(n, dtype=torch.float64) / n)
    return torch.topk(key, k, dim=1).indices.numpy()


def _cut_return_walks(p3: sp.csr_matrix | np.ndarray, p1: sp.csr_matrix, items1: np.ndarray,
                      items3: np.ndarray, item_item: sp.csr_matrix, graph: BipartiteGraph,
                      users: np.ndarray, exclude: np.ndarray) -> None:
    """Remove, in place, the walks root -> i -> root -> t from P3(b, t_b).

    C sums over all users of i and t, the root included, and the root's own term
    w(u, i) w(u, t) uses the held-out edge (u, t). Where C(i, t) was kept, that term
    is subtracted; a result within rounding of 0 (the root was the only link) is 0.
    """
    b = len(users)
    n_i = graph.n_items
    udeg, ideg = graph.user_deg.astype(np.float64), graph.item_deg.astype(np.float64)
    c = p1.tocoo()
    i_glob, t = items1[c.col], exclude[c.row]
    keys = np.repeat(np.arange(n_i, dtype=np.int64), np.diff(item_item.indptr)) * n_i + item_item.indices
    q = i_glob * n_i + t
    hit = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
    stored = (keys[hit] == q) if len(keys) else np.zeros(len(q), dtype=bool)
    per = c.data * stored / np.sqrt(udeg[users[c.row]] * ideg[i_glob])
    leak = np.bincount(c.row, weights=per, minlength=b) / np.sqrt(udeg[users] * ideg[exclude])
    col = np.minimum(np.searchsorted(items3, exclude), len(items3) - 1)
    rows = np.flatnonzero((items3[col] == exclude) & (leak > 0))
    if isinstance(p3, np.ndarray):
        before = p3[rows, col[rows]].copy()
        after = before - leak[rows]
        p3[rows, col[rows]] = np.where(after > 1e-9 * before, after, 0.0)
    else:
        p3.sort_indices()
        n3 = p3.shape[1]
        flat = np.repeat(np.arange(b, dtype=np.int64), np.diff(p3.indptr)) * n3 + p3.indices
        k = np.searchsorted(flat, rows * n3 + col[rows])  # present: leak > 0 implies a walk
        after = p3.data[k] - leak[rows]
        p3.data[k] = np.where(after > 1e-9 * p3.data[k], after, 0.0)


def sample_neighbourhood(graph: BipartiteGraph, users: np.ndarray, exclude: np.ndarray | None,
                         fanout: int, familiar_size: int, salt: int, need_hop3: bool,
                         recent: int = 0, item_item: sp.csr_matrix | None = None,
                         dense_budget: int = 1 << 21) -> Neighbourhood:
    """The sampled tree of ``users`` and their familiar sets (see the module docstring).

    ``exclude[b]`` (training positive, or -1) is cut from row b's tree and stays
    eligible for F(u_b). ``recent > 0``: the root's hop-1 neighbours are its
    ``recent`` latest train items before the predicted interaction (temporal
    sampling; during training, the items before the positive), weighted
    1 / sqrt(n_window deg i) as if they were the root's only edges; ``recent = 0``,
    and roots whose interactions lack timestamps (``graph.timed``): a uniform
    ``fanout`` sample of all its items. A walk matrix is kept dense when
    B x (its distinct frontier nodes) <= ``dense_budget`` (small graphs, where the
    frontier saturates and dense products beat building sparse ones); the values
    are the same either way.
    """
    users = np.asarray(users, dtype=np.int64)
    b = len(users)
    udeg, ideg = graph.user_deg.astype(np.float64), graph.item_deg.astype(np.float64)
    # hop 1: root -> items, the training positive's edge removed; roots without
    # timestamps have no "latest" items, so they get the uniform sample
    timed = graph.timed[users] if recent > 0 else np.zeros(b, dtype=bool)
    parts = []
    if timed.any():
        rows = np.flatnonzero(timed)
        ex = None if exclude is None else exclude[rows]
        end = graph.hist_indptr[users[rows] + 1] if ex is None else graph.position(users[rows], ex)
        start = np.maximum(graph.hist_indptr[users[rows]], end - recent)
        n = end - start
        seg, pos = expand_ranges(start, end)
        items = graph.hist_items[pos]
        parts.append((rows[seg], items, 1.0 / np.sqrt(n[seg] * ideg[items])))
    if not parts or not timed.all():
        rows = np.flatnonzero(~timed)
        seg, items, scale = sample_neighbours(graph.user_indptr, graph.user_items, users[rows],
                                              fanout, salt, 1)
        parts.append((rows[seg], items, scale / np.sqrt(udeg[users[rows[seg]]] * ideg[items])))
    seg, items, w = (np.concatenate(x) for x in zip(*parts, strict=True))
    if exclude is not None:
        keep = items != exclude[seg]
        seg, items, w = seg[keep], items[keep], w[keep]
    p1, items1 = _compact(seg, items, w, b, graph.n_items)
    # hop 2: items -> users; the root leaves its own frontier (return walks)
    seg, nbr, scale = sample_neighbours(graph.item_indptr, graph.item_users, items1, fanout, salt, 2)
    s2, users2 = _compact(seg, nbr, scale / np.sqrt(ideg[items1[seg]] * udeg[nbr]), len(items1),
                          graph.n_users)
    p2: sp.csr_matrix | np.ndarray
    if b * len(users2) <= dense_budget:
        # sparse x sparse, then dense: the same sums in the same order as p1 @ dense(s2)
        # (both accumulate over p1's stored entries), without the B x |frontier| x
        # |users2| dense product
        p2 = (p1 @ s2).toarray()
        loc = np.minimum(np.searchsorted(users2, users), max(len(users2) - 1, 0))
        own = users2[loc] == users if len(users2) else np.zeros(b, dtype=bool)
        p2[np.flatnonzero(own), loc[own]] = 0.0
    else:
        c = (p1 @ s2).tocoo()
        keep = users2[c.col] != users[c.row]
        p2 = sp.csr_matrix((c.data[keep], (c.row[keep], c.col[keep])), shape=c.shape)
    fam_items = np.full((b, familiar_size), -1, dtype=np.int64)
    fam_mass = np.zeros((b, familiar_size))
    if not need_hop3:
        return Neighbourhood(p1, items1, p2, users2, None, np.zeros(0, np.int64), fam_items, fam_mass)
    # hop 3: items -> items through the two-hop operator C (exact walks, top-m links)
    if item_item is None:
        raise ValueError("hop 3 needs the two-hop item operator (two_hop_items)")
    rows_c = item_item[items1]
    items3, inv = _relabel(rows_c.indices.astype(np.int64), graph.n_items)
    c3 = sp.csr_matrix((rows_c.data, inv, rows_c.indptr), shape=(len(items1), len(items3)))
    p3: sp.csr_matrix | np.ndarray = (p1 @ c3).tocsr()
    if b * len(items3) <= dense_budget:
        p3 = p3.toarray()
    if exclude is not None and len(items3):
        _cut_return_walks(p3, p1, items1, items3, item_item, graph, users, exclude)
    if familiar_size > 0:
        fam_items, fam_mass = _familiar(p3, items3, graph, users, exclude, familiar_size)
    return Neighbourhood(p1, items1, p2, users2, p3, items3, fam_items, fam_mass)


# ---------------------------------------------------------------------------
# The module (torch; differentiable parts)
# ---------------------------------------------------------------------------


def _propagate(m: sp.csr_matrix | np.ndarray, emb: torch.Tensor) -> torch.Tensor:
    """``m @ emb`` with gradients to ``emb``: dense when m is dense enough, else sparse."""
    dev = emb.device
    if isinstance(m, np.ndarray):
        return torch.from_numpy(m.astype(np.float32)).to(dev) @ emb
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

    def __init__(self, split: Split, cfg: ContextGNNConfig, dim: int, root_id: bool = True) -> None:
        super().__init__()
        # LightGCN's layer 0 for the root is its own id embedding: kept only where the
        # user tower keeps one (model.user_features all | id), so that "no user id
        # embedding" means none, not one smuggled back through the context
        self.root_id = bool(root_id)
        if not 1 <= cfg.layers <= 3:
            raise ValueError(f"context_gnn.layers must be 1, 2 or 3, got {cfg.layers}")
        if cfg.fanout < 1 or cfg.familiar_size < 0:
            raise ValueError("context_gnn.fanout must be >= 1 and familiar_size >= 0")
        self.cfg = cfg
        # draw index d at inference: the salt is inference_seed + d (set by
        # TwoTower.scorer to average over eval.inference_samples draws)
        self.inference_draw = 0
        self.graph = BipartiteGraph.from_split(split)
        # hop 3 (familiar items, layer 3): exact two-hop item walks, top item_neighbours
        self.item_item = (two_hop_items(self.graph, cfg.item_neighbours)
                          if cfg.layers >= 3 or cfg.familiar else None)
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
    def tree(self, users: torch.Tensor,
             exclude: torch.Tensor | None) -> tuple[Neighbourhood, torch.Tensor]:
        """(sampled tree, c_u) of this batch, shared by the calls of one forward pass.

        The context (inside ``user_vectors``) and the familiar head (after it) must see
        the same sample, so the tree is cached, keyed by the identity of the
        ``users``/``exclude`` tensors and the mode; c_u is reused only while the GNN
        tables are unchanged (their in-place version counters, bumped by every
        optimiser step) and the grad mode is the same.
        """
        version = (self.user_emb.weight._version, self.item_emb.weight._version,
                   torch.is_grad_enabled())
        c = self._cache
        mode = (self.training, self.inference_draw)
        if c is not None and c[0] is users and c[1] is exclude and c[2] == mode:
            nb = c[3]
            if c[5] == version:
                return nb, c[4]
        else:
            salt = (int(torch.randint(0, 2**62, ()).item()) if self.training
                    else self.cfg.inference_seed + self.inference_draw)
            ex = None if exclude is None else exclude.detach().cpu().numpy().astype(np.int64)
            nb = sample_neighbourhood(self.graph, users.detach().cpu().numpy(), ex, self.cfg.fanout,
                                      self.max_items, salt,
                                      need_hop3=self.cfg.layers >= 3 or self.max_items > 0,
                                      recent=self.cfg.recent, item_item=self.item_item)
        ctx = self.context(users, nb)
        self._cache = (users, exclude, mode, nb, ctx, version)
        return nb, ctx

    # --- context ----------------------------------------------------------
    def context(self, users: torch.Tensor, nb: Neighbourhood) -> torch.Tensor:
        """c_u = 1/(K+1) sum_{k<=K} (hat-A^k E^0)_u  (LightGCN layer combination;
        without the k = 0 term, the root's own embedding, when ``root_id`` is off)."""
        dev = self.user_emb.weight.device
        terms = [self.user_emb(users)] if self.root_id else []
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
            return self.tree(users, exclude)[1]

    # --- familiar items -----------------------------------------------------
    def overrides(self, users: torch.Tensor, model: TwoTower, exclude: torch.Tensor | None = None,
                  z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(F(u) ``[B, familiar_size]`` with -1 padding, s_F(u, j) ``[B, familiar_size]``).

        ``z`` (the batch's z_u, if already computed) feeds the residual variant.
        """
        dev = self.user_emb.weight.device
        with torch.autocast(dev.type, enabled=False):
            nb, c = self.tree(users, exclude)
            items = torch.from_numpy(nb.fam_items).to(dev)
            valid = items >= 0
            if items.shape[1] == 0:
                return items, torch.zeros(items.shape, device=dev)
            safe = items.clamp(min=0)
            h = self.item_emb(safe)  # [B, F, d]
            mass = torch.from_numpy(nb.fam_mass.astype(np.float32)).to(dev).clamp(min=1e-30)
            log_mass = torch.log(mass)
            rel = log_mass - log_mass[:, :1]
            phi = torch.stack([log_mass, rel, self.log_item_deg[safe]], dim=-1)
            phi = torch.where(valid[..., None], phi, torch.zeros_like(phi))
            logit = (torch.einsum("bd,bfd->bf", c, h) + self.item_head(h).squeeze(-1)
                     + self.pair_head(phi).squeeze(-1) + self.offset(c))
            if self.cfg.residual:
                if z is None:
                    z = model.user_vectors(users, exclude)
                uniq, inv = torch.unique(safe, return_inverse=True)
                y = model.item_vectors(uniq).float()[inv]  # [B, F, d']
                logit = logit + torch.einsum("bd,bfd->bf", z.float(), y)
            return items, logit.masked_fill(~valid, 0.0)

    def training_logits(self, model: TwoTower, users: torch.Tensor, pos: torch.Tensor,
                        cand_items: torch.Tensor, logits: torch.Tensor,
                        z: torch.Tensor | None = None,
                        log_q: torch.Tensor | None = None,
                        target: torch.Tensor | None = None) -> torch.Tensor:
        """Training logits ``[B, C]`` of the fused score over ``cand_items [C]`` (row b's
        positive in column ``target[b]``; None = column b, the sampled layout).

        ``logits`` are the logQ-corrected two-tower logits s - log q_c (``log_q [C]``,
        None = uncorrected). ``familiar_loss='sampled'``: a familiar candidate's logit
        becomes s_F - log q_c, i.e. the sampled softmax of the fused score, with the
        same correction for both kinds of logits. ``'stratified'``: familiar items are
        scored once each, exactly and uncorrected, in ``F`` appended columns; familiar
        candidates other than the positive are masked in the sampled block; a
        familiar positive gets s_F uncorrected. Returns ``[B, C]`` or ``[B, C + F]``.
        """
        items, fam = self.overrides(users, model, exclude=pos, z=z)
        if items.shape[1] == 0:
            return logits
        fam = fam.float()
        in_fam, fam_at = lookup_overrides(items, fam, cand_items)  # [B, C]
        in_fam &= torch.isfinite(logits)  # accidental hits stay masked
        corr = log_q.float()[None, :] if log_q is not None else torch.zeros_like(logits[:1])
        if self.cfg.familiar_loss == "sampled":
            return torch.where(in_fam, fam_at - corr, logits)
        ar = torch.arange(len(users), device=logits.device)
        col = ar if target is None else target
        own = torch.zeros_like(in_fam)
        own[ar, col] = True
        out = logits.masked_fill(in_fam & ~own, float("-inf"))
        out[ar, col] = torch.where(in_fam[ar, col], fam_at[ar, col], out[ar, col])
        extra = fam.masked_fill((items < 0) | (items == pos[:, None]), float("-inf"))
        return torch.cat([out, extra], dim=1)


def attach_context_gnn(model: TwoTower, split: Split, cfg: ContextGNNConfig) -> ContextGNN:
    """Build the component and plug it into ``model`` (context and/or familiar head)."""
    gnn = ContextGNN(split, cfg, model.cfg.dim,
                     root_id=model.cfg.user_features in ("all", "id"))
    if cfg.context:
        model.add_user_context("context_gnn", gnn)
    if cfg.familiar:
        model.set_score_adjuster(gnn)
    if not (cfg.context or cfg.familiar):
        raise ValueError("context_gnn.enabled needs context or familiar (or both) switched on")
    return gnn


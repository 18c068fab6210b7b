"""The serving core, independent of HTTP: top-K for known users, cold start, explain.

**Known users** (DESIGN §3, §8). The list of user u is the top-K of
s(u, i) = <z_u, y_i> over the catalogue minus u's seen items (``serving.seen``:
everything u consumed, or train only) and any per-request exclusions, retrieved
from the FAISS index (:mod:`.index`) with the precomputed z_u of the bundle.

**Familiar-item re-scoring** (ContextGNN). When the model has a score adjuster
(``TwoTower.score_adjuster``, whose ``overrides(users, model)`` gives each user's
familiar items F(u) and the pair-wise logits that replace the dot product there;
the bundle stores them, see :mod:`.export`), the list is retrieved in the two
ANN-compatible stages of ``TwoTower.retrieve``: the index returns the top-(K + |F|)
non-excluded items by the dot product, F(u) (minus exclusions) is merged in with
its logits, and the top K are served. Exact: a non-familiar item in the fused
top-K has at most K - 1 + |F(u)| non-excluded items above it in dot-product order,
so it is always among the candidates. With components that sample at inference
(``eval.inference_samples`` = S > 1) the bundle holds the mean user vector and the
union of the S draws' familiar sets with their mean fused scores
(``TwoTower.mean_user_state``), so the served list is the evaluated one; |F| is then
that union's width (at most S times ``context_gnn.familiar_size``).

**Cold start** (unknown user id). A documented non-personalised list with the
fairness re-weighting: with smoothed train popularity
p(i) = (pop(i) + 1) / (N + n_items) and, when the request gives demographics D
(e.g. ``gender=F``), the shrunk group popularity
p_D(i) = mean_{f in D} (c_f(i) + m p(i)) / (n_f + m) (c_f(i) = train interactions of
users in group f with i, n_f their total, m = ``cold_start_prior``), the score is

    c(i) = p_D(i) / p(i)^beta          (= p(i)^(1 - beta) without demographics)

with beta = ``cold_start_beta``: beta = 0 ranks by (group) popularity, larger beta
favours items over-represented in the group relative to their global popularity.
A tail quota then reserves round(``cold_start_tail_quota`` * K) slots for the
best-scored long-tail items (the rest go to the best head items; a side that runs
short is filled from the other), and the K items are ordered by c(i).

**Exposure cap** (``serving.exposure_cap`` > 0). ``exposure_mode = window``: the items
at their cap over the last ``exposure_window`` served lists are left out of the next
one (stateful, first come first served). ``prices``: per-item prices lambda_i >= 0,
fitted once at start on the bundle's users (their lists under the cap, the dual
variables of the offline budget's capacity constraints:
:func:`~marl_two_tower.fairness.exposure.fit_item_prices`), are subtracted from every
score, s(u, i) - lambda_i, searched as <[z_u; 1], [y_i; -lambda_i]> (one more index
column, so ANN search still applies): stateless, every list independent of the others.

**Explain.** s(u, i) = sum over blocks b of <z_u[b], y_i[b]> (+ the familiar-item
correction hook(u, i) - <z_u, y_i> when the hook re-scores i, - lambda_i when priced),
so the parts ``two_tower``, ``genre_boost``, ``tail_boost``, ``familiar`` (and
``exposure_price``) sum to the served score.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

from marl_two_tower.config import ServingConfig
from marl_two_tower.fairness.exposure import OnlineExposureBudget, fair_share_cap, fit_item_prices
from marl_two_tower.serving.export import Bundle
from marl_two_tower.serving.index import IndexSettings, ItemIndex

OverridesFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""users ``[B]`` -> (familiar items ``[B, F]`` with -1 padding, their logits ``[B, F]``)."""


class UnknownFeature(ValueError):
    """A cold-start demographic name or label the bundle does not know."""


@dataclass
class RecList:
    """One user's list: item indices and scores, best first."""

    items: np.ndarray
    scores: np.ndarray
    cold_start: bool = False


class ColdStart:
    """Demographic/popularity cold-start lists with fairness re-weighting (see module doc)."""

    def __init__(self, bundle: Bundle, cfg: ServingConfig) -> None:
        self.cfg = cfg
        n_items = bundle.n_items
        pop = bundle.item_pop.astype(np.float64)
        self.p = (pop + 1.0) / (pop.sum() + n_items)
        self.tail = bundle.tail_mask.astype(bool)
        self.labels = {f: [str(x) for x in labs] for f, labs in bundle.user_feature_labels.items()}
        self._lower = {f: {x.lower(): c for c, x in enumerate(labs)} for f, labs in self.labels.items()}
        # c_f(code, i): train interactions per (demographic code, item), one sparse matrix per feature
        self.counts: dict[str, sp.csr_matrix] = {}
        for f, codes in bundle.user_features.items():
            codes = np.asarray(codes, np.int64)
            n_codes = max(len(self.labels.get(f, [])), int(codes.max(initial=-1)) + 1)
            c = codes[bundle.train_users]
            ok = c >= 0
            self.counts[f] = sp.csr_matrix((np.ones(int(ok.sum())), (c[ok], bundle.train_items[ok])),
                                           shape=(n_codes, n_items))
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def parse(self, features: dict[str, Any] | None) -> tuple[tuple[str, int], ...]:
        """Demographic labels -> sorted (feature, code) pairs; unknown ones raise."""
        out = []
        for name, label in (features or {}).items():
            if name not in self.counts:
                raise UnknownFeature(f"unknown demographic {name!r} (known: {sorted(self.counts)})")
            code = self._lower[name].get(str(label).strip().lower())
            if code is None:
                raise UnknownFeature(f"unknown {name} {label!r} (known: {self.labels[name]})")
            out.append((name, code))
        return tuple(sorted(out))

    def scores(self, groups: tuple[tuple[str, int], ...]) -> np.ndarray:
        """c(i) for every item (cached per demographic combination)."""
        if groups in self._cache:
            self._cache.move_to_end(groups)
            return self._cache[groups]
        m, beta = self.cfg.cold_start_prior, self.cfg.cold_start_beta
        if groups:
            p_d = np.zeros_like(self.p)
            for name, code in groups:
                row = np.asarray(self.counts[name][code].todense()).ravel()
                p_d += (row + m * self.p) / (row.sum() + m)
            p_d /= len(groups)
        else:
            p_d = self.p
        s = p_d / self.p**beta
        self._cache[groups] = s
        if len(self._cache) > 256:
            self._cache.popitem(last=False)
        return s

    def recommend(self, k: int, groups: tuple[tuple[str, int], ...] = (),
                  exclude: np.ndarray | None = None) -> RecList:
        """Top-``k`` cold-start items with the tail quota."""
        s = self.scores(groups)
        valid = np.ones(len(s), dtype=bool)
        if exclude is not None and len(exclude):
            valid[exclude] = False
        tail_ids = np.flatnonzero(valid & self.tail)
        head_ids = np.flatnonzero(valid & ~self.tail)
        k = min(k, len(tail_ids) + len(head_ids))
        n_tail = min(int(round(self.cfg.cold_start_tail_quota * k)), len(tail_ids))
        n_tail = max(n_tail, k - len(head_ids))  # head side short: fill with tail
        chosen = np.concatenate([_best(tail_ids, s, n_tail), _best(head_ids, s, k - n_tail)])
        order = np.lexsort((chosen, -s[chosen]))
        items = chosen[order]
        return RecList(items=items, scores=s[items].astype(np.float32), cold_start=True)


def _best(ids: np.ndarray, s: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` ids with the highest s (ties by lower id)."""
    if n <= 0:
        return ids[:0]
    order = np.lexsort((ids, -s[ids]))
    return ids[order[:n]]


class Recommender:
    """Top-K service over a :class:`Bundle`: known users, cold start, explanations."""

    def __init__(self, bundle: Bundle, cfg: ServingConfig | None = None) -> None:
        self.bundle = bundle
        self.cfg = cfg or bundle.cfg.serving
        self.user_vectors = np.ascontiguousarray(bundle.user_vectors, dtype=np.float32)
        seen = bundle.seen_matrix(self.cfg.seen)
        self.seen_indptr, self.seen_indices = seen.indptr.astype(np.int64), seen.indices.astype(np.int64)
        # original id (as text) -> index; the API speaks original ids
        self.user_pos = {str(x): i for i, x in enumerate(bundle.user_ids.tolist())}
        self.item_pos = {str(x): i for i, x in enumerate(bundle.item_ids.tolist())}
        self.item_ids = bundle.item_ids.tolist()
        self.user_ids = bundle.user_ids.tolist()
        self.cold = ColdStart(bundle, self.cfg)
        self.overrides_fn, self.n_familiar = self._adjuster()
        # fair share counted over each list's first gini.cap_k items, as offline
        capped = self.cfg.exposure_cap > 0
        self.budget = (OnlineExposureBudget(bundle.n_items, self.cfg.exposure_cap,
                                            k=bundle.cfg.gini.cap_k, window=self.cfg.exposure_window)
                       if capped and self.cfg.exposure_mode == "window" else None)
        # item prices: s(u, i) - lambda_i, searched as <[z_u; 1], [y_i; -lambda_i]>
        self.prices: np.ndarray | None = None
        self.price_fit_users = 0
        items = bundle.item_vectors
        if capped and self.cfg.exposure_mode == "prices":
            self.prices = self._fit_prices()
            items = np.hstack([items, -self.prices[:, None]])
            self.user_vectors = self._with_price_column(self.user_vectors)
        self.index = ItemIndex(items, IndexSettings.from_config(self.cfg, bundle.n_items))

    @staticmethod
    def _with_price_column(z: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.hstack([z, np.ones((len(z), 1), dtype=np.float32)]),
                                    dtype=np.float32)

    def _fit_prices(self) -> np.ndarray:
        """lambda for ``serving.exposure_cap`` (:func:`~marl_two_tower.fairness.exposure.fit_item_prices`)
        on the bundle's users (a fixed-seed sample of ``serving.exposure_fit_users`` of
        them beyond that): each user's served scores (dot product, familiar logits over
        F(u)) with its seen items (``serving.seen``) masked, as log-softmax over the rest,
        its ``gini.cap_candidates`` best items; cap C = ceil(f * cap_k * U_fit / n_items)."""
        b, g = self.bundle, self.bundle.cfg.gini
        users = np.arange(b.n_users)
        if len(users) > self.cfg.exposure_fit_users:
            users = np.sort(np.random.default_rng(0).choice(len(users), self.cfg.exposure_fit_users,
                                                            replace=False))
        m = min(g.cap_candidates, b.n_items)
        y = np.asarray(b.item_vectors, dtype=np.float32)
        cand = np.empty((len(users), m), dtype=np.int64)
        logp = np.empty((len(users), m), dtype=np.float64)
        for lo in range(0, len(users), 1024):
            chunk = users[lo : lo + 1024]
            s = (self.user_vectors[chunk] @ y.T).astype(np.float64)
            if self.overrides_fn is not None:
                fi, fs = self.overrides_fn(chunk)
                r, c = np.nonzero(fi >= 0)
                s[r, fi[r, c]] = fs[r, c]
            starts, ends = self.seen_indptr[chunk], self.seen_indptr[chunk + 1]
            rows = np.repeat(np.arange(len(chunk)), ends - starts)
            cols = np.concatenate([self.seen_indices[a:e] for a, e in zip(starts, ends, strict=True)]
                                  or [np.zeros(0, dtype=np.int64)])
            s[rows, cols] = -np.inf
            top = np.argpartition(-s, m - 1, axis=1)[:, :m] if m < s.shape[1] else np.tile(
                np.arange(s.shape[1]), (len(chunk), 1))
            ts = np.take_along_axis(s, top, axis=1)
            order = np.lexsort((top, -ts), axis=1)  # best first, ties by item index
            top, ts = np.take_along_axis(top, order, axis=1), np.take_along_axis(ts, order, axis=1)
            lse = logsumexp(s, axis=1, keepdims=True)  # over the unmasked items (-inf adds 0)
            cand[lo : lo + len(chunk)] = np.where(np.isfinite(ts), top, -1)
            logp[lo : lo + len(chunk)] = ts - lse
        self.price_fit_users = len(users)
        cap = fair_share_cap(self.cfg.exposure_cap, g.cap_k, len(users), b.n_items)
        return fit_item_prices(cand, logp, g.cap_k, cap, b.n_items)

    def exposure_info(self) -> dict[str, Any]:
        """How exposure is capped: mode, cap and its state (for ``/health``)."""
        if self.budget is not None:
            return {"mode": "window", "cap": self.cfg.exposure_cap, "window": self.cfg.exposure_window,
                    "capacity": int(self.budget.capacity)}
        if self.prices is not None:
            return {"mode": "prices", "cap": self.cfg.exposure_cap, "fit_users": self.price_fit_users,
                    "priced_items": int((self.prices > 0).sum()), "max_price": float(self.prices.max())}
        return {"mode": "off"}

    def _adjuster(self) -> tuple[OverridesFn | None, int]:
        """Familiar items and logits of the bundle (ContextGNN), and |F|max."""
        fi, fs = self.bundle.familiar_items, self.bundle.familiar_scores
        if fi is None or fs is None or fi.shape[1] == 0:
            return None, 0

        def overrides(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return fi[users].astype(np.int64), fs[users]

        return overrides, int(fi.shape[1])

    # --- id maps ----------------------------------------------------------
    def user_index(self, user_id: Any) -> int | None:
        return self.user_pos.get(str(user_id).strip())

    def item_index(self, item_id: Any) -> int | None:
        return self.item_pos.get(str(item_id).strip())

    def seen(self, u: int) -> np.ndarray:
        return self.seen_indices[self.seen_indptr[u] : self.seen_indptr[u + 1]]

    # --- known users --------------------------------------------------------
    def recommend(self, users: Sequence[int] | np.ndarray, k: int,
                  exclude: Sequence[np.ndarray | None] | None = None,
                  vectors: np.ndarray | None = None,
                  familiar: tuple[np.ndarray, np.ndarray] | None = None) -> list[RecList]:
        """Top-``k`` lists for known user indices, seen items and ``exclude[b]`` removed.

        ``vectors`` (z_u ``[B, D]``) and ``familiar`` ((F(u), s_F) ``[B, F]``) replace
        the bundle's precomputed user state, e.g. when the model computes it per request.
        With an online exposure budget (``serving.exposure_cap``) the lists are made one
        at a time, each leaving out the items at their cap and then counted.
        """
        users = np.asarray(users, dtype=np.int64)
        exclude = list(exclude) if exclude is not None else [None] * len(users)
        if familiar is None and self.overrides_fn is not None:
            familiar = self.overrides_fn(users)
        if self.budget is None:
            return self._search(users, k, exclude, vectors, familiar)
        out = []
        for b in range(len(users)):
            row = slice(b, b + 1)
            blocked = self.budget.blocked()
            extra = blocked if exclude[b] is None else np.concatenate([exclude[b], blocked])
            lst = self._search(users[row], k, [extra], None if vectors is None else vectors[row],
                               None if familiar is None else (familiar[0][row], familiar[1][row]))[0]
            self.budget.record(lst.items)
            out.append(lst)
        return out

    def _search(self, users: np.ndarray, k: int, exclude: list[np.ndarray | None],
                vectors: np.ndarray | None,
                familiar: tuple[np.ndarray, np.ndarray] | None) -> list[RecList]:
        """One batched index search (+ familiar merge) with seen and ``exclude`` removed."""
        excl = []
        for u, extra in zip(users, exclude, strict=True):
            s = self.seen(u)
            excl.append(s if extra is None or not len(extra) else np.concatenate([s, extra]))
        z = self.user_vectors[users] if vectors is None else vectors
        if self.prices is not None:  # every served score pays its item's price
            if z.shape[1] == self.bundle.item_vectors.shape[1]:
                z = self._with_price_column(z)  # a state computed per request
            if familiar is not None:
                fi, fs = familiar
                familiar = (fi, np.where(fi >= 0, fs - self.prices[np.maximum(fi, 0)], fs))
        n_fam = familiar[0].shape[1] if familiar is not None else 0
        scores, ids = self.index.search_filtered(z, k + n_fam, excl)
        if familiar is not None:
            scores, ids = self._merge_familiar(familiar, scores, ids, excl)
        out = []
        for r in range(len(users)):
            keep = ids[r, :k] >= 0
            out.append(RecList(items=ids[r, :k][keep], scores=scores[r, :k][keep]))
        return out

    @staticmethod
    def _merge_familiar(familiar: tuple[np.ndarray, np.ndarray], scores: np.ndarray, ids: np.ndarray,
                        excl: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Stage 2 of the retrieval: F(u) with its logits merged into the candidates."""
        fam_i, fam_s = familiar
        n = len(ids)
        width = ids.shape[1] + fam_i.shape[1]
        out_i = np.full((n, width), -1, dtype=np.int64)
        out_s = np.full((n, width), -np.inf, dtype=np.float32)
        for r in range(n):
            f_ok = fam_i[r] >= 0
            f_ok[f_ok] &= ~np.isin(fam_i[r][f_ok], excl[r])
            f_items, f_vals = fam_i[r][f_ok], fam_s[r][f_ok]
            c_ok = ids[r] >= 0
            c_ok[c_ok] &= ~np.isin(ids[r][c_ok], f_items)  # familiar: the logit replaces the dot
            items = np.concatenate([ids[r][c_ok], f_items])
            vals = np.concatenate([scores[r][c_ok], f_vals])
            order = np.lexsort((items, -vals))
            out_i[r, : len(items)] = items[order]
            out_s[r, : len(items)] = vals[order]
        return out_s, out_i

    # --- cold start -------------------------------------------------------
    def cold_start(self, k: int, features: dict[str, Any] | None = None,
                   exclude: np.ndarray | None = None) -> RecList:
        """The cold-start list for an unknown user (raises :class:`UnknownFeature`)."""
        return self.cold.recommend(k, self.cold.parse(features), exclude)

    # --- explain ------------------------------------------------------------
    def explain(self, u: int, i: int) -> dict[str, Any]:
        """Exact decomposition of s(u, i) into the score blocks (+ familiar part)."""
        z, y = self.user_vectors[u], self.index.vectors[i]
        parts = {name: float(np.dot(z[a:b].astype(np.float64), y[a:b].astype(np.float64)))
                 for name, (a, b) in self.bundle.blocks.items()}
        parts.setdefault("genre_boost", 0.0)
        parts.setdefault("tail_boost", 0.0)
        price = 0.0 if self.prices is None else -float(self.prices[i])
        dot = float(np.dot(z, y))  # includes -lambda_i when priced (the index's last column)
        familiar = 0.0
        if self.overrides_fn is not None:
            fam_i, fam_s = self.overrides_fn(np.array([u]))
            hit = np.flatnonzero(fam_i[0] == i)
            if len(hit):
                familiar = float(fam_s[0, hit[0]]) + price - dot
        parts["familiar"] = familiar
        if self.prices is not None:
            parts["exposure_price"] = price
        return {"score": dot + familiar, "parts": parts}

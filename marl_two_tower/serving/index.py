"""FAISS maximum-inner-product index over item vectors, with seen-item filtering.

The model scores s(u, i) = <z_u, y_i> (DESIGN §3: one dot product even with the
genre controller), so top-K retrieval is maximum inner product search over the
item vectors y_i:

* ``flat``: exact search (``faiss.IndexFlatIP``), the default up to
  ``serving.ann_threshold`` items;
* ``ivf``: inverted file (``faiss.IndexIVFFlat``, inner-product metric) with
  ``nlist`` k-means cells (default 4 sqrt(n)) of which ``nprobe`` are scanned;
* ``hnsw``: a navigable small-world graph (``faiss.IndexHNSWFlat``, inner product).

**Filtering.** Items to exclude (the user's seen items plus per-request
exclusions) are removed in one of two ways. Users with few exclusions (E <= 64)
are searched together by over-fetching: the index returns K + E results, at most
E of them are excluded, so K survive whenever the index has K + E candidates
(always for ``flat``). Users with more exclusions are searched one by one with the
exclusions as a FAISS ``IDSelector``, so a heavy user costs one unfiltered search
rather than a K + E heap. Rows for which an approximate index returns too few
candidates fall back to exact search, so a list is never shorter than the number
of rankable items allows.

**Recall.** ``recall@K = |ANN top-K ∩ exact top-K| / K`` averaged over queries
(:func:`recall_at_k`); :func:`synthetic_catalogue` makes the clustered 100k-item
catalogue on which the defaults are checked (``benchmarks/serving_latency.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import torch

from marl_two_tower.config import ServingConfig
from marl_two_tower.utils.topk import topk_lowest_index_ties

IndexKind = Literal["flat", "ivf", "hnsw"]


@dataclass
class IndexSettings:
    """What index to build and how to search it (see :class:`ServingConfig`, whose
    defaults these are; ``kind`` is resolved, so "flat" stands for ``index: auto``
    below ``ann_threshold`` items)."""

    kind: IndexKind = "flat"
    nlist: int = ServingConfig.ivf_nlist  # IVF cells; 0 = round(4 sqrt(n))
    nprobe: int = ServingConfig.ivf_nprobe
    hnsw_m: int = ServingConfig.hnsw_m
    ef_search: int = ServingConfig.hnsw_ef_search

    @classmethod
    def from_config(cls, cfg: ServingConfig, n_items: int) -> IndexSettings:
        """``index: auto`` resolves to flat up to ``ann_threshold`` items, IVF above."""
        kind = cfg.index
        if kind == "auto":
            kind = "flat" if n_items <= cfg.ann_threshold else "ivf"
        return cls(kind=kind, nlist=cfg.ivf_nlist, nprobe=cfg.ivf_nprobe, hnsw_m=cfg.hnsw_m,
                   ef_search=cfg.hnsw_ef_search)


def default_nlist(n: int) -> int:
    """4 sqrt(n) cells (the usual FAISS rule of thumb), at least 1 and at most n / 39
    so that k-means has the 39 training points per centroid FAISS asks for."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


class ItemIndex:
    """Top-K inner-product search over fixed item vectors ``[n_items, D]``.

    Attributes:
        vectors: float32 C-contiguous item vectors (kept for exact fallbacks).
        settings: the index kind and its search parameters.
        index: the FAISS index (ids = item indices 0..n_items-1).
    """

    OVERFETCH_LIMIT = 64  # rows with more exclusions are filtered by a FAISS selector

    def __init__(self, vectors: np.ndarray, settings: IndexSettings | None = None) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or len(self.vectors) == 0:
            raise ValueError(f"item vectors must be a non-empty [n, D] array, got {self.vectors.shape}")
        self.settings = settings or IndexSettings()
        self.n_items, self.dim = self.vectors.shape
        self.index = self._build()

    def _build(self) -> faiss.Index:
        s, n, d = self.settings, self.n_items, self.dim
        if s.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif s.kind == "ivf":
            nlist = s.nlist or default_nlist(n)
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means seeded for reproducible cells (and so reproducible ANN lists)
            index.cp.seed = 1234
            index.train(self.vectors)
            index.nprobe = min(s.nprobe, nlist)
            # keep the quantizer alive as long as the index (SWIG does not own it)
            self._quantizer = quantizer
        elif s.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = s.ef_search
        else:
            raise ValueError(f"unknown index kind {s.kind!r} (flat | ivf | hnsw)")
        index.add(self.vectors)
        return index

    @property
    def exact(self) -> bool:
        return self.settings.kind == "flat"

    def describe(self) -> dict[str, object]:
        """Kind and parameters (for /health and the benchmark tables)."""
        s = self.settings
        out: dict[str, object] = {"kind": s.kind, "n_items": self.n_items, "dim": self.dim}
        if s.kind == "ivf":
            out |= {"nlist": int(self.index.nlist), "nprobe": int(self.index.nprobe)}
        elif s.kind == "hnsw":
            out |= {"M": s.hnsw_m, "ef_search": int(self.index.hnsw.efSearch)}
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-``k`` (scores, ids) per query; missing results have id -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self.n_items))
        return self.index.search(q, k)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by brute force (the oracle for recall and the fallback); equal
        scores go to the lower item index (:func:`~marl_two_tower.utils.topk.topk_lowest_index_ties`)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self.n_items))
        ids, scores = topk_lowest_index_ties(torch.from_numpy(q @ self.vectors.T), k)
        return scores.numpy().astype(np.float32), ids.numpy()

    def _params(self, sel: faiss.IDSelector) -> faiss.SearchParameters:
        """Search parameters carrying a selector (and this index's search width, which
        explicit parameters would otherwise reset). Built without keyword arguments:
        the FAISS wrapper's keyword constructor costs ~0.1 ms."""
        if self.settings.kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = int(self.index.nprobe)
        elif self.settings.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(self.index.hnsw.efSearch)
        else:
            params = faiss.SearchParameters()
        params.sel = sel
        return params

    def search_excluding(self, query: np.ndarray, k: int,
                         exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of one query ``[1, D]`` with ``exclude`` filtered inside FAISS by an
        ``IDSelectorBitmap`` of the allowed items: no over-fetch, whatever the
        exclusion size (the bitmap costs n_items / 8 bytes; a hash-set selector
        costs ~0.1 ms to build for a few hundred ids)."""
        allowed = np.ones(self.n_items, dtype=bool)
        allowed[exclude] = False
        bits = np.packbits(allowed, bitorder="little")  # bit i of byte i >> 3 = item i
        sel = faiss.IDSelectorBitmap(self.n_items, faiss.swig_ptr(bits))  # `bits` outlives the search
        q = np.ascontiguousarray(query, dtype=np.float32)
        return self.index.search(q, max(1, min(int(k), self.n_items)), params=self._params(sel))

    def search_filtered(self, queries: np.ndarray, k: int,
                        exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per query with ``exclude[b]`` (item indices) removed.

        Rows with at most :attr:`OVERFETCH_LIMIT` exclusions share one batched search
        of K + E results (over-fetch, then filter); rows with more are searched one by
        one with the exclusions as a FAISS selector, which costs the same as an
        unfiltered search instead of a K + E heap. Returns (scores ``[B, k]`` float32,
        ids ``[B, k]`` int64), best first; slots beyond the number of rankable items
        hold id -1 and score -inf.
        """
        b = len(queries)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n_ex = np.array([len(e) for e in exclude], dtype=np.int64) if b else np.zeros(0, np.int64)
        out_s = np.full((b, k), -np.inf, dtype=np.float32)
        out_i = np.full((b, k), -1, dtype=np.int64)
        light = np.flatnonzero(n_ex <= self.OVERFETCH_LIMIT)
        rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if len(light):
            fetch = min(self.n_items, k + int(n_ex[light].max(initial=0)))
            raw_s, raw_i = self.search(queries[light], fetch)
            for j, r in enumerate(light.tolist()):
                ids, sc = raw_i[j], raw_s[j]
                # <= 64 exclusions among <= K + 64 results: a Python set beats np.isin here
                ex = set(exclude[r].tolist()) if n_ex[r] else ()
                keep = [c for c, i in enumerate(ids.tolist()) if i >= 0 and i not in ex][:k]
                rows[r] = (ids[keep], sc[keep])
        for r in np.flatnonzero(n_ex > self.OVERFETCH_LIMIT).tolist():
            sc, ids = self.search_excluding(queries[r : r + 1], k, exclude[r])
            keep = ids[0] >= 0
            rows[r] = (ids[0][keep], sc[0][keep])
        for r, (ids, sc) in rows.items():
            if len(ids) < k and not self.exact:
                # the approximate index may have run out of candidates: exact search
                es, ei = self.exact_search(queries[r : r + 1], min(self.n_items, k + int(n_ex[r])))
                keep = ~np.isin(ei[0], exclude[r]) if n_ex[r] else np.ones(len(ei[0]), dtype=bool)
                ids, sc = ei[0][keep][:k], es[0][keep][:k]
            out_i[r, : len(ids)] = ids
            out_s[r, : len(ids)] = sc
        return out_s, out_i


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (ids -1 never match)."""
    a, e = approx_ids[:, :k], exact_ids[:, :k]
    hits = [len(np.intersect1d(a[r][a[r] >= 0], e[r][e[r] >= 0])) for r in range(len(a))]
    return float(np.mean(hits) / k) if len(hits) else float("nan")


def measure_recall(index: ItemIndex, queries: np.ndarray, k: int = 10) -> float:
    """recall@k of ``index.search`` against exact brute-force search on ``queries``."""
    _, approx = index.search(queries, k)
    _, exact = index.exact_search(queries, k)
    return recall_at_k(approx, exact, k)


def synthetic_catalogue(n_items: int = 100_000, dim: int = 64, n_queries: int = 1000,
                        n_clusters: int = 200, noise: float = 0.7, scale: float = 10.0,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A clustered catalogue shaped like trained two-tower embeddings.

    Items: y_i = normalise(c_{k(i)} + noise * g_i / sqrt(dim)) with K Gaussian unit
    centres c_k (cluster sizes Zipf-like, as genres/tastes are) and g_i ~ N(0, I).
    Queries: z_u = scale * normalise(mixture of two random centres + noise), as a
    user tower with a learned inverse temperature produces. Returns (items, queries)
    as float32.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    w = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    assign = rng.choice(n_clusters, size=n_items, p=w / w.sum())
    items = centres[assign] + noise * rng.normal(size=(n_items, dim)) / math.sqrt(dim)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    a, b = rng.integers(0, n_clusters, (2, n_queries))
    mix = rng.random((n_queries, 1))
    q = mix * centres[a] + (1 - mix) * centres[b] + noise * rng.normal(size=(n_queries, dim)) / math.sqrt(dim)
    q = scale * q / np.linalg.norm(q, axis=1, keepdims=True)
    return items.astype(np.float32), q.astype(np.float32)

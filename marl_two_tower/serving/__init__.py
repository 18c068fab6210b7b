"""Real-time serving (DESIGN §8): bundle export, FAISS retrieval, HTTP API.

* :mod:`.export`: trained checkpoint -> self-contained bundle (``weights_only`` loadable);
* :mod:`.index`: exact / IVF / HNSW inner-product index with seen-item filtering;
* :mod:`.recommender`: top-K for known users, cold start, score explanations;
* :mod:`.service`: the FastAPI app and ``marl-two-tower serve``;
* :mod:`.commands`: the ``serve`` and ``export`` subcommands.
"""

from __future__ import annotations

from marl_two_tower.serving.export import Bundle, export_bundle, export_checkpoint, load_bundle
from marl_two_tower.serving.index import IndexSettings, ItemIndex, measure_recall, recall_at_k
from marl_two_tower.serving.recommender import Recommender

__all__ = [
    "Bundle",
    "IndexSettings",
    "ItemIndex",
    "Recommender",
    "export_bundle",
    "export_checkpoint",
    "load_bundle",
    "measure_recall",
    "recall_at_k",
]

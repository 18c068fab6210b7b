"""Metrics with written definitions (docs/metrics.md): ranking and list metrics
(:mod:`.ranking`) and the one Gini coefficient, numpy and differentiable torch
(:mod:`.gini`)."""

from marl_two_tower.metrics.gini import gini
from marl_two_tower.metrics.ranking import (
    avg_popularity,
    compute_metrics,
    coverage,
    expected_hits,
    expected_ndcg,
    expected_rr,
    exposure,
    group_hit_rate,
    head_hit_rate,
    hit_positions,
    hit_rate,
    mrr,
    ndcg,
    per_user,
    redundancy,
    tail_hit_rate,
)

__all__ = ["avg_popularity", "compute_metrics", "coverage", "expected_hits", "expected_ndcg",
           "expected_rr", "exposure", "gini", "group_hit_rate", "head_hit_rate", "hit_positions",
           "hit_rate", "mrr", "ndcg", "per_user", "redundancy", "tail_hit_rate"]

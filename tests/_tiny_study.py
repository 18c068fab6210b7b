"""A tiny two-variant ablation study on synthetic data, built once per test session."""

from __future__ import annotations

import functools
from pathlib import Path

from marl_two_tower.config import Config, load_config
from marl_two_tower.study.ablation import Variant, run_study

TINY = ["data.synthetic.n_users=120", "data.synthetic.n_items=90", "data.synthetic.n_genres=5",
        "model.dim=8", "model.id_dim=8", "model.hidden=16", "model.history_len=10",
        "train.batch_size=256", "train.epochs=2", "train.patience=10", "train.num_negatives=32",
        "eval.ks=[5,10]", "eval.sampled_negatives=20"]

# Two variants whose components always exist: the base model and the tail loss.
VARIANTS = (Variant("base", "Base"), Variant("tail", "+Tail loss", ("tail_loss",)))
SEEDS = (1, 2)


def tiny_config(*extra: str) -> Config:
    return load_config(None, TINY + list(extra))


@functools.cache
def tiny_study(root: str) -> Path:
    """Run the tiny study (with baselines and the report) under ``root`` once."""
    out = Path(root) / "tiny_study"
    run_study(tiny_config(), SEEDS, out, variants=VARIANTS, baselines=True, progress=False,
              report=True)
    return out

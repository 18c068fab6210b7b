"""The workflow the CLI exposes: data -> split -> train -> evaluate -> results.

Each function is a thin, documented composition of the library pieces so that
scripts, notebooks and the CLI all run exactly the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marl_two_tower.config import Config
from marl_two_tower.data import load_split
from marl_two_tower.data.split import Split
from marl_two_tower.eval.arrays import compute_eval_arrays, save_eval_arrays
from marl_two_tower.fairness.exposure import budget_from_config
from marl_two_tower.study.results import build_results, write_results
from marl_two_tower.train.trainer import Trainer


def evaluate_model(split: Split, score_fn, cfg: Config, part: str = "test",
                   protocol: str = "both", groups: bool = True) -> dict[str, Any]:
    """All DESIGN §5 metrics of ``score_fn`` on ``part`` with the configured Ks (full
    protocol under the GINI agent's exposure budget when ``cfg`` sets one)."""
    from marl_two_tower.eval.protocols import evaluate  # sharded over the ranks under DDP

    return evaluate(split, score_fn, part=part, ks=tuple(cfg.eval.ks), protocol=protocol,
                    batch_size=cfg.eval.batch_size, groups=groups,
                    n_neg=cfg.eval.sampled_negatives, seed=cfg.eval.sampled_seed,
                    budget=budget_from_config(cfg))


def train_and_evaluate(cfg: Config, resume: bool = False, progress: bool = True,
                       split: Split | None = None) -> tuple[Trainer, dict[str, Any]]:
    """Train with early stopping on validation, then evaluate the best model on test
    (the only time test is touched) and write ``<output_dir>/<name>/results.*``."""
    split = split or load_split(cfg.data)
    trainer = Trainer(cfg, split, progress=progress, run_dir=Path(cfg.output_dir) / cfg.name)
    state = trainer.fit(resume=resume)
    score_fn = trainer.model.scorer(trainer.device)
    metrics = {"test": evaluate_model(split, score_fn, cfg, "test"),
               "val": evaluate_model(split, score_fn, cfg, "val", protocol="full",
                                     groups=False)}
    extra = {"best_epoch": state.best_epoch, "epochs_run": state.epoch,
             "skipped_steps": trainer.skipped_steps,
             "world_size": trainer.dist.world_size if trainer.dist is not None else 1,
             "checkpoint": str(Path(cfg.checkpoint_dir) / "model_best.pt")}
    doc = build_results(cfg, split, metrics, state.history, extra)
    # per-user arrays and top-K lists for significance tests and plots (reports never
    # re-score); written before results.json, which marks a finished run
    arrays = compute_eval_arrays(split, score_fn, cfg.eval.ks, cfg.eval.batch_size,
                                 budget_from_config(cfg))
    if trainer.dist is None or trainer.dist.is_main:  # DDP: only rank 0 writes
        save_eval_arrays(Path(cfg.output_dir) / cfg.name, arrays)
        write_results(Path(cfg.output_dir) / cfg.name, doc)
    return trainer, doc




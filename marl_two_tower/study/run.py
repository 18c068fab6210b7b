"""The workflow the CLI exposes: data -> split -> train -> evaluate -> results.

Each function is a thin, documented composition of the library pieces so that
scripts, notebooks and the CLI all run exactly the same code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.config import Config, ConfigError, fingerprint_config
from marl_two_tower.data import load_split
from marl_two_tower.data.split import Split
from marl_two_tower.eval.arrays import compute_eval_arrays, save_eval_arrays
from marl_two_tower.fairness.exposure import budget_from_config
from marl_two_tower.study.results import build_results, write_results
from marl_two_tower.train.trainer import Trainer

log = logging.getLogger(__name__)


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
    check_run_paths(cfg)  # a bad folder fails now, not after training
    split = split or load_split(cfg.data)
    last = Path(cfg.checkpoint_dir) / "last.pt"
    if resume and not last.exists():
        log.warning("no last.pt in %s: starting from scratch", cfg.checkpoint_dir)
    elif resume:  # refuse another run's checkpoint before building anything, naming the file
        ckpt_io.check_compatible(ckpt_io.load(last), split.dataset.fingerprint(),
                                 fingerprint_config(cfg), path=last)
    trainer = Trainer(cfg, split, progress=progress, run_dir=Path(cfg.output_dir) / cfg.name)
    state = trainer.fit(resume=resume)
    if state.best_epoch < 1 and (Path(cfg.checkpoint_dir) / "model_best.pt").exists():
        # this run saved no best model, so the trainer restored another run's model_best.pt
        raise ckpt_io.CheckpointError(
            f"{cfg.checkpoint_dir}: this run saved no best model (validation NDCG@10 was never "
            f"a number above -1 in {state.epoch} epoch(s)); refusing to report another run's "
            "model_best.pt")
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


def check_output_folder(path: str | Path, key: str) -> None:
    """Refuse ``path`` as an output folder when it, or the nearest existing folder
    above it, is a file or not writable (found before any work, not at the end)."""
    p = Path(path)
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == p else f" (on the way to {p})"
        raise ConfigError(f"{key}: {probe} is a file, expected a folder{where}")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: folder {probe} is not writable")


def check_run_paths(cfg: Config) -> None:
    """The run's results folder ``<output_dir>/<name>`` and ``checkpoint_dir`` can be
    written, and the results folder stays inside ``output_dir`` (``name`` has no
    ``..`` and is not absolute: the config checks that, this re-checks resolved paths)."""
    out, run_dir = Path(cfg.output_dir), Path(cfg.output_dir) / cfg.name
    if not run_dir.resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"name: {cfg.name!r} would write outside output_dir {cfg.output_dir}")
    check_output_folder(cfg.output_dir, "output_dir")
    check_output_folder(run_dir, "name")
    check_output_folder(cfg.checkpoint_dir, "checkpoint_dir")

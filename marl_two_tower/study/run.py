"""The workflow the CLI exposes: data -> split -> train -> evaluate -> results.

Each function is a thin, documented composition of the library pieces so that
scripts, notebooks and the CLI all run exactly the same code.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.baselines import BASELINES
from marl_two_tower.config import Config, ConfigError, fingerprint_config, run_checkpoint_dir
from marl_two_tower.data import load_split
from marl_two_tower.data.split import Split
from marl_two_tower.eval.arrays import compute_eval_arrays, save_eval_arrays
from marl_two_tower.eval.frontier import Candidates, compute_candidates, save_candidates
from marl_two_tower.eval.protocols import sampled_protocol_shortage
from marl_two_tower.eval.scorers import part_scorers
from marl_two_tower.fairness.exposure import budget_from_config
from marl_two_tower.model.build import COMPONENTS
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
    check_sampled_protocol(cfg, split)  # evaluation's negatives exist before training
    ck_dir = run_checkpoint_dir(cfg)
    last = ck_dir / "last.pt"
    if resume and not last.exists():
        log.warning("no last.pt in %s: starting from scratch", ck_dir)
    elif resume:  # refuse another run's checkpoint before building anything, naming the file
        ckpt_io.check_compatible(ckpt_io.load(last), split.dataset.fingerprint(),
                                 fingerprint_config(cfg), path=last)
    trainer = Trainer(cfg, split, progress=progress, run_dir=Path(cfg.output_dir) / cfg.name)
    state = trainer.fit(resume=resume)
    if state.best_epoch < 1 and (ck_dir / "model_best.pt").exists():
        # this run saved no best model, so the trainer restored another run's model_best.pt
        raise ckpt_io.CheckpointError(
            f"{ck_dir}: this run saved no best model (validation NDCG@10 was never "
            f"a number above -1 in {state.epoch} epoch(s)); refusing to report another run's "
            "model_best.pt")
    scorers = part_scorers(trainer.model, split, cfg, trainer.device)
    extra = {"best_epoch": state.best_epoch, "epochs_run": state.epoch,
             "skipped_steps": trainer.skipped_steps,
             "world_size": trainer.dist.world_size if trainer.dist is not None else 1,
             "checkpoint": str(ck_dir / "model_best.pt")}
    main = trainer.dist is None or trainer.dist.is_main
    if main and "{name}" in cfg.checkpoint_dir and (ck_dir / "model_best.pt").exists():
        # per-run folders under one root: <root>/model_best.pt = the latest run's best
        root = Path(cfg.checkpoint_dir.split("{name}")[0] or ".")
        ckpt_io.link_latest(ck_dir / "model_best.pt", root / "model_best.pt")
    doc = evaluate_and_write(cfg, split, scorers, state.history, extra, write=main)
    return trainer, doc


def check_sampled_protocol(cfg: Config, split: Split) -> None:
    """Refuse, before any training, a run whose test evaluation cannot draw the sampled
    protocol's ``eval.sampled_negatives`` unseen items for every test user (the
    evaluator would fail only after training); raises :class:`ConfigError` naming the
    key, the user and the largest value that works."""
    short = sampled_protocol_shortage(split, cfg.eval.sampled_negatives, "test")
    if short is None:
        return
    u, avail = short
    uid = split.dataset.user_ids[u]
    raise ConfigError(
        f"eval.sampled_negatives={cfg.eval.sampled_negatives}: test user {uid} has only {avail} "
        "items it never interacted with, so the sampled protocol cannot draw that many "
        f"negatives; set eval.sampled_negatives <= {avail}")


def evaluate_and_write(cfg: Config, split: Split, scorers: dict[str, Any],
                       history: list[dict[str, Any]], extra: dict[str, Any],
                       write: bool = True) -> dict[str, Any]:
    """Evaluate trained scorers (:func:`part_scorers`) on test (all protocols) and
    validation (full) and write
    the run folder ``<output_dir>/<name>/``: ``per_user.npz`` (test lists and ranks),
    ``frontier.npz`` (val and test candidates for :mod:`marl_two_tower.eval.frontier`;
    reports never re-score a model) and, last, ``results.json`` (which marks a finished
    run). ``write=False`` (DDP ranks other than 0) only computes."""
    metrics = {"test": evaluate_model(split, scorers["test"], cfg, "test"),
               "val": evaluate_model(split, scorers["val"], cfg, "val", protocol="full",
                                     groups=False)}
    doc = build_results(cfg, split, metrics, history, extra)
    arrays = compute_eval_arrays(split, scorers["test"], cfg.eval.ks, cfg.eval.batch_size,
                                 budget_from_config(cfg))
    cands = frontier_candidates(cfg, split, scorers)
    if write:
        run_dir = Path(cfg.output_dir) / cfg.name
        save_eval_arrays(run_dir, arrays)
        save_candidates(run_dir, cands)
        write_results(run_dir, doc)
    return doc


def fit_and_evaluate_baseline(name: str, cfg: Config, split: Split,
                              params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit the baseline ``name`` (:data:`~marl_two_tower.baselines.BASELINES`, default
    hyperparameters unless ``params`` gives constructor arguments, e.g. the demo's
    shorter SASRec) on the train part of ``split``, evaluate it once on test with the
    same harness as the two-tower runs (:func:`evaluate_model`, every protocol), and
    write its run folder ``<output_dir>/<name>/``: ``per_user.npz``, ``frontier.npz``
    and, last, ``results.json``/``.csv`` (``extra``: model name, kind ``baseline``).

    The run's config is ``cfg`` with ``name`` set and every component switched off (a
    baseline has none, so no exposure budget either). Returns the results document.
    """
    c = copy.deepcopy(cfg)
    c.name = name
    for comp in COMPONENTS:
        getattr(c, comp).enabled = False
    model = BASELINES[name](**(params or {})).fit(split)
    scorers = part_scorers(model, split, c)
    metrics = {"test": evaluate_model(split, scorers["test"], c, "test")}
    doc = build_results(c, split, metrics, extra={"model": name, "kind": "baseline",
                                                  "params": dict(params or {})})
    run_dir = Path(c.output_dir) / c.name
    save_eval_arrays(run_dir, compute_eval_arrays(split, scorers["test"], c.eval.ks,
                                                  c.eval.batch_size, budget_from_config(c)))
    save_candidates(run_dir, frontier_candidates(c, split, scorers))
    write_results(run_dir, doc)
    return doc


def frontier_candidates(cfg: Config, split: Split, scorers) -> dict[str, Candidates]:
    """Val and test candidates of the exposure budget (its ``gini.cap_candidates``),
    whether the budget is on or not: every run can then be put on the frontier.
    ``scorers``: ``{"val": fn, "test": fn}`` (:func:`part_scorers`) or one function
    for both parts."""
    if not isinstance(scorers, dict):
        scorers = {"val": scorers, "test": scorers}
    return {part: compute_candidates(split, scorers[part], part, cfg.gini.cap_candidates,
                                     max(cfg.eval.ks), cfg.eval.batch_size)
            for part in ("val", "test")}


def backfill_candidates(cfg: Config, split: Split, checkpoint: str | Path) -> Path:
    """Write ``frontier.npz`` for a finished run that predates it, from its checkpoint."""
    from marl_two_tower.model.build import load_trained

    model, _, split = load_trained(checkpoint, cfg=cfg, split=split, device=cfg.train.device)
    scorers = part_scorers(model, split, cfg, next(model.parameters()).device)
    return save_candidates(Path(cfg.output_dir) / cfg.name, frontier_candidates(cfg, split, scorers))


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, split: Split | None = None,
                        source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate an already trained ``checkpoint`` under ``cfg`` and write the run folder
    as :func:`train_and_evaluate` does, without training.

    For an evaluation-only ablation step (the exposure budget on the previous step's
    model): ``cfg`` may differ from the checkpoint's own config only in what the
    checkpoint fingerprint ignores (evaluation settings, ``exposure_budget``), which is
    checked. ``source`` (the trained run's results document) supplies the history,
    best epoch and epochs run.
    """
    from marl_two_tower.model.build import load_trained

    check_run_paths(cfg)
    model, stored, split = load_trained(checkpoint, cfg=cfg, split=split, device=cfg.train.device)
    if fingerprint_config(stored) != fingerprint_config(cfg):
        raise ckpt_io.CheckpointMismatch(
            f"{checkpoint}: trained with another model or training config than the run "
            f"{cfg.name!r} asks for; only evaluation settings may differ")
    device = next(model.parameters()).device
    src_extra = (source or {}).get("extra", {})
    extra = {"best_epoch": src_extra.get("best_epoch"), "epochs_run": src_extra.get("epochs_run"),
             "checkpoint": str(checkpoint), "evaluation_only": True}
    return evaluate_and_write(cfg, split, part_scorers(model, split, cfg, device),
                              (source or {}).get("history", []), extra)


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
    check_output_folder(run_checkpoint_dir(cfg), "checkpoint_dir")

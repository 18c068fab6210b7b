"""Training loop: composite objective, early stopping on validation, resumable.

:class:`Trainer` knows one objective, L_rec on the sampled-softmax logits of the
fused score (:meth:`TwoTower.training_logits`), and a list of training components
(:class:`marl_two_tower.model.components.TrainingComponent`, built by
:func:`marl_two_tower.model.build.build_components`) that add loss terms, filter
positives, step after batches, summarise epochs and carry checkpoint state through
one interface; the loop has no per-component code. One epoch = one pass of the
positive sampler; validation NDCG@10 after each ``eval_every`` epochs decides early
stopping and ``model_best.pt``; ``last.pt`` after every epoch makes ``--resume``
exact. Given a run folder (``run_dir``) and ``train.tensorboard``, every epoch's
record is also written as TensorBoard scalars under ``run_dir/tb`` (rank 0 only).

Determinism: every random stream is derived from ``cfg.seed`` and the epoch number
(``numpy.random.default_rng([seed, epoch, stream])``, torch RNG state saved in the
checkpoint), so a resumed run replays exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.config import Config, fingerprint_config, run_checkpoint_dir
from marl_two_tower.data.samplers import PositiveSampler
from marl_two_tower.data.split import Split
from marl_two_tower.model.build import build_components, build_model
from marl_two_tower.model.components import TrainBatch, TrainingComponent, component_names
from marl_two_tower.model.losses import weighted_mean
from marl_two_tower.model.two_tower import TwoTower
from marl_two_tower.train.schedule import lr_factor
from marl_two_tower.utils import distributed, runtime
from marl_two_tower.utils.runtime import epoch_rng, interactive_output, resolve_device, set_seed

log = logging.getLogger(__name__)


# checkpoint keys of the trainer itself; a component's state_key must differ
CHECKPOINT_KEYS = frozenset({"model", "optimizer", "scaler", "torch_rng", "train_state", "config",
                             "config_fingerprint", "data_fingerprint", "format_version"})


def epoch_line(record: Mapping[str, Any], epochs: int, best: bool = False) -> str:
    """One short human-readable line of an epoch record: epoch, mean total loss,
    validation NDCG@10 / HR@10 / Coverage@10 (those present) and wall time, ``*`` when
    the epoch is the best so far. The full record goes to the run's results.json
    (``history``) and TensorBoard; this is what a person reads in the console."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    loss = record.get("loss/total")
    if isinstance(loss, float):
        parts.append(f"loss {loss:.4f}")
    val = [f"{k} {record[f'val/{k}']:.4f}" for k in ("NDCG@10", "HR@10", "Coverage@10")
           if isinstance(record.get(f"val/{k}"), float)]
    if val:
        parts.append("val " + " ".join(val))
    parts.append(f"{record['time_s']:.1f}s" + (" *" if best else ""))
    return " | ".join(parts)


def scalar_items(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) of every number in an epoch record except ``epoch``; nested dicts
    (``marl/agents``) become ``key/subkey`` tags. What TensorBoard receives."""
    for k, v in record.items():
        if isinstance(v, Mapping):
            yield from scalar_items(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and (prefix or k != "epoch"):
            yield f"{prefix}{k}", float(v)


# ---------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------


@dataclass
class TrainState:
    """What besides the weights must survive a restart."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    after_fit_done: bool = False  # the components' after_fit stage ran (not twice on resume)


class StopTraining(Exception):
    """Raised by a callback to stop training (used to simulate a killed run)."""


class Trainer:
    """Trains a :class:`TwoTower` on a :class:`Split` with the composite objective.

    ``extra_components`` are appended to the configured training components (a
    component not in the registry, e.g. in a test); ``run_dir`` is the run folder
    (``<output_dir>/<name>``) that receives TensorBoard event files.
    """

    def __init__(self, cfg: Config, split: Split, model: TwoTower | None = None,
                 progress: bool = True, extra_components: Sequence[TrainingComponent] = (),
                 run_dir: str | Path | None = None) -> None:
        self.cfg, self.split, self.progress = cfg, split, progress
        self.run_dir = None if run_dir is None else Path(run_dir)
        set_seed(cfg.seed)
        runtime.apply_threads(cfg.train.num_threads)  # default 1: safe on a shared CPU (runtime.py)
        self.device = resolve_device(cfg.train.device)
        self.dist = distributed.current()  # the DDP process group (distributed.py), or None
        if self.dist is not None:
            self.device = self.dist.device
            self.progress = progress and self.dist.is_main  # only rank 0 logs
        if not cfg.train.in_batch_negatives and cfg.train.num_negatives < 1:
            raise ValueError("train.in_batch_negatives=false needs train.num_negatives >= 1")
        self.model = (model or build_model(cfg, split)).to(self.device)
        if self.dist is not None:  # every rank starts from rank 0's weights
            self.dist.broadcast_parameters(self.model)
        self.components: list[TrainingComponent] = [
            *build_components(cfg, split, self.model, self.device, self.dist), *extra_components]
        component_names(self.components)  # unique names and state keys
        clash = CHECKPOINT_KEYS & {c.state_key for c in self.components}
        if clash:
            raise ValueError(f"training component state_key {sorted(clash)} is a trainer checkpoint key")
        samplers = [c for c in self.components if c.positive_sampler is not None]
        if len(samplers) > 1:
            raise ValueError(f"more than one component replaces the positive sampler: "
                             f"{[c.name for c in samplers]}")
        self.sampler = (samplers[0].positive_sampler if samplers
                        else PositiveSampler(split, cfg.train.batch_size, cfg.seed))
        # terms computed over the global batch (DDP neither rescales nor sums them)
        self.global_terms = frozenset().union(*(c.global_terms for c in self.components))
        # the controller (genre agents) is trained by its own RL optimiser
        self.optimizer = torch.optim.Adam(self.model.supervised_parameters(), lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay)
        self.amp_dtype = self._amp_dtype(cfg.train.mixed_precision)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=cfg.train.mixed_precision == "fp16")
        self.state = TrainState()
        self.ckpt_dir = run_checkpoint_dir(cfg)  # checkpoints/<name>/ by default
        self.data_fingerprint = split.dataset.fingerprint()
        self.callbacks: list[Callable[[Trainer], None]] = []
        self.skipped_steps = 0

    def component(self, name: str) -> TrainingComponent | None:
        """The training component called ``name`` (e.g. ``"gini"``, ``"marl"``), or None."""
        return next((c for c in self.components if c.name == name), None)

    def _amp_dtype(self, mode: str) -> torch.dtype | None:
        if mode == "none":
            return None
        if mode == "fp16" and self.device.type == "cpu":
            warnings.warn("fp16 autocast is not supported on CPU; using bf16", stacklevel=2)
            return torch.bfloat16
        return torch.bfloat16 if mode == "bf16" else torch.float16

    # --- one step ---------------------------------------------------------
    def losses(self, users: torch.Tensor, pos: torch.Tensor,
               rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Weighted loss terms of the composite objective for one batch: ``rec`` then
        every component's :meth:`~TrainingComponent.loss_terms`, in component order."""
        cfg = self.cfg
        n_neg = cfg.train.num_negatives
        neg = torch.as_tensor(rng.integers(0, self.split.n_items, n_neg), device=self.device)
        log_q_pos = log_q_neg = None
        if cfg.loss.logq:
            p = torch.as_tensor(self.sampler.prob, dtype=torch.float32, device=self.device)
            log_q_pos = torch.log((p[pos] * len(pos)).clamp(min=1e-12))
            log_q_neg = torch.full((n_neg,), math.log(max(n_neg, 1) / self.split.n_items),
                                   device=self.device)
            if not cfg.train.in_batch_negatives:  # positives are not sampled candidates here
                log_q_pos = log_q_neg[:1].expand(len(pos))
        z, per_row = self.model.training_row_losses(users, pos, neg, log_q_pos, log_q_neg,
                                                    cfg.loss.rec, cfg.train.in_batch_negatives)
        weight = None  # components' per-row weights of L_rec (the Fair Sampler's, sequence batches)
        for c in self.components:
            w = c.row_weights(users, pos)
            if w is not None:
                weight = w if weight is None else weight * w
        out = {"rec": cfg.loss.l_sup * weighted_mean(per_row, weight)}
        batch = TrainBatch(users=users, pos=pos, z=z, row_losses=per_row)
        for c in self.components:
            terms = c.loss_terms(batch)
            if out.keys() & terms.keys():
                raise ValueError(f"component {c.name!r} returns loss terms "
                                 f"{sorted(out.keys() & terms.keys())} that already exist")
            out |= terms
        return out

    def train_step(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        """One supervised step on interaction indices ``idx``; non-finite -> skipped."""
        self.model.train()
        users = torch.as_tensor(self.split.train_users[idx], device=self.device)
        pos = torch.as_tensor(self.split.train_items[idx], device=self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            terms = self.losses(users, pos, rng)
        logged = None
        if self.dist is not None:  # per-rank objective whose gradients sum to the global batch's
            weights: dict[str, float] = {"rows": len(idx)}
            for c in self.components:
                weights |= c.term_weights(users, pos)
            terms = self.dist.local_objective(terms, weights, self.global_terms)
            # shared skip decision, global values
            finite, logged = self.dist.reduce_terms(terms, self.global_terms)
        total = sum(terms.values())
        if not (torch.isfinite(total) if self.dist is None else finite):
            self.skipped_steps += 1
            log.warning("non-finite loss at step %d (%s); step skipped", self.state.step,
                        {k: float(v.detach()) for k, v in terms.items()})
            self.optimizer.zero_grad(set_to_none=True)
            return {"skipped": 1.0}
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.dist is not None:  # the supervised optimiser's parameters (the agents have their own)
            self.dist.all_reduce_grads(p for g in self.optimizer.param_groups for p in g["params"])
        self._set_lr()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        out = logged or {k: float(v.detach()) for k, v in terms.items()} | {"total": float(total.detach())}
        for c in self.components:
            c.after_step(self.state.step, out)
        return out

    def steps_per_epoch(self) -> int:
        """Optimiser steps of one epoch: the sampler's batches, capped by
        ``train.max_steps_per_epoch``."""
        limit = self.cfg.train.max_steps_per_epoch
        return min(limit, len(self.sampler)) if limit else len(self.sampler)

    def _set_lr(self) -> None:
        """``train.lr`` times the schedule's factor at the current step (train/schedule.py)."""
        cfg = self.cfg.train
        if cfg.lr_schedule == "constant" and cfg.lr_warmup_epochs == 0:
            return
        per_epoch = self.steps_per_epoch()
        factor = lr_factor(self.state.step, cfg.epochs * per_epoch,
                           round(cfg.lr_warmup_epochs * per_epoch), cfg.lr_schedule,
                           cfg.lr_final_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor

    # --- epochs -----------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass of the positive sampler; returns mean loss terms."""
        rng = epoch_rng(self.cfg.seed, epoch, 2)  # negatives
        comp_rng = epoch_rng(self.cfg.seed, epoch, 3)  # components' after_batch (the RL steps)
        sums: dict[str, float] = {}
        n = 0
        limit = self.steps_per_epoch()
        bar = tqdm(self.sampler.batches(epoch), total=limit,
                   desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", leave=False,
                   disable=not (self.progress and interactive_output()))
        for i, idx in enumerate(bar):
            if i >= limit:
                break
            for c in self.components:  # e.g. reward targets are never supervised positives
                idx = c.filter_positives(idx)
            if self.dist is not None:  # DDP: this rank's contiguous shard of the global batch
                idx = self.dist.shard(idx)
            terms = self.train_step(idx, rng)
            for c in self.components:
                c.after_batch(i, comp_rng)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if "total" in terms:
                bar.set_postfix(loss=f"{terms['total']:.4f}")
        return {k: v / max(n, 1) for k, v in sums.items()}

    def validate(self) -> dict[str, float]:
        """Full-ranking validation metrics @10 (the only data model selection sees)."""
        from marl_two_tower.eval.protocols import evaluate  # sharded over the ranks under DDP

        res = evaluate(self.split, self.model.scorer(self.device), part="val", ks=(10,),
                       protocol="full", groups=False)
        return {k: v for k, v in res["full"].items() if isinstance(v, (int, float))}

    @contextlib.contextmanager
    def _event_writer(self) -> Iterator[Any]:
        """TensorBoard writer on ``run_dir/tb`` (None without a run folder, with
        ``train.tensorboard`` off, or on ranks > 0). A resumed run purges the events
        of epochs after its checkpoint, so the files match the resumed history."""
        if (self.run_dir is None or not self.cfg.train.tensorboard
                or (self.dist is not None and not self.dist.is_main)):
            yield None
            return
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run_dir / "tb"),
                               purge_step=self.state.epoch + 1 if self.state.epoch else None)
        try:
            yield writer
        finally:
            writer.close()

    def fit(self, resume: bool = False) -> TrainState:
        """Train until ``epochs`` or early stopping; keeps best and last checkpoints."""
        if resume and (self.ckpt_dir / "last.pt").exists():
            self.load_checkpoint(self.ckpt_dir / "last.pt")
            log.info("resumed from epoch %d", self.state.epoch)
        with self._event_writer() as writer:
            self._fit(writer)
        if self.dist is not None:
            self.dist.barrier()  # rank 0 has written model_best.pt
        if (self.ckpt_dir / "model_best.pt").exists():
            self.load_checkpoint(self.ckpt_dir / "model_best.pt", weights_only_state=True)
        if not self.state.after_fit_done:
            self._after_fit()
        return self.state

    def _after_fit(self) -> None:
        """The components' after_fit stage on the selected weights (e.g. the genre agents
        trained on the frozen towers); a changed model is saved as ``model_best.pt`` and
        its record appended to the history."""
        changed = False
        for c in self.components:
            record = c.after_fit(self.cfg.seed, self.validate)
            if record is not None:
                self.state.history.append({"epoch": self.state.epoch, "phase": c.name, **record})
                changed = True
        self.state.after_fit_done = True
        if changed:  # both, so a resumed finished run neither repeats nor loses the stage
            self.save_checkpoint(self.ckpt_dir / "model_best.pt")
            self.save_checkpoint(self.ckpt_dir / "last.pt")

    def _fit(self, writer: Any) -> None:
        """The epoch loop of :meth:`fit`; each record also goes to ``writer`` if any."""
        cfg = self.cfg.train
        while self.state.epoch < cfg.epochs and self.state.bad_evals < cfg.patience:
            epoch = self.state.epoch
            t0 = time.perf_counter()
            losses = self.train_epoch(epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, "time_s": time.perf_counter() - t0,
                                      "lr": self.optimizer.param_groups[0]["lr"],
                                      **{f"loss/{k}": v for k, v in losses.items()}}
            for c in self.components:
                record |= c.epoch_summary(epoch + 1)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                val = self.validate()
                record |= {f"val/{k}": v for k, v in val.items()}
                metric = val.get("NDCG@10", 0.0)
                if metric > self.state.best_metric:
                    self.state.best_metric, self.state.best_epoch = metric, epoch + 1
                    self.state.bad_evals = 0
                    self.save_checkpoint(self.ckpt_dir / "model_best.pt")
                else:
                    self.state.bad_evals += 1
            self.state.history.append(record)
            self.state.epoch = epoch + 1
            if writer is not None:
                for tag, value in scalar_items(record):
                    writer.add_scalar(tag, value, epoch + 1)
                writer.flush()
            self.save_checkpoint(self.ckpt_dir / "last.pt")
            if self.progress:  # one line; the full record is in history and TensorBoard
                tqdm.write(epoch_line(record, cfg.epochs, self.state.best_epoch == epoch + 1))
            for cb in self.callbacks:
                cb(self)

    # --- checkpoints ------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, scaler, RNG, config, data."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "train_state": json.dumps(self.state.__dict__),
            "config": json.dumps(self.cfg.to_dict()),
            "config_fingerprint": json.dumps(fingerprint_config(self.cfg)),
            "data_fingerprint": self.data_fingerprint,
            "format_version": 1,
            **{c.state_key: c.state_dict() for c in self.components if c.state_key is not None},
        }

    def save_checkpoint(self, path: Path) -> Path:
        if self.dist is not None and not self.dist.is_main:  # only rank 0 writes
            return path
        return ckpt_io.save_atomic(self.checkpoint_dict(), path)

    def load_checkpoint(self, path: Path, weights_only_state: bool = False) -> None:
        """Restore a checkpoint; refuses other data or an incompatible config."""
        ck = ckpt_io.load(path, self.device)
        ckpt_io.check_compatible(ck, self.data_fingerprint, fingerprint_config(self.cfg))
        self.model.load_state_dict(ck["model"])
        if weights_only_state:
            return
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["torch_rng"])
        for c in self.components:
            if c.state_key is not None and c.state_key in ck:
                c.load_state_dict(ck[c.state_key])
        self.state = TrainState(**json.loads(ck["train_state"]))

"""Training loop: composite objective, early stopping on validation, resumable.

Reads top to bottom: seeding and devices, the positive sampler, model assembly
from the config, then :class:`Trainer` (one epoch = one pass of the positive
sampler; validation NDCG@10 after each ``eval_every`` epochs decides early stopping
and ``model_best.pt``; ``last.pt`` after every epoch makes ``--resume`` exact).

Determinism: every random stream is derived from ``cfg.seed`` and the epoch number
(``numpy.random.default_rng([seed, epoch, stream])``, torch RNG state saved in the
checkpoint), so a resumed run replays exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.config import Config, fingerprint_config
from marl_two_tower.data.samplers import PositiveSampler
from marl_two_tower.data.split import Split
from marl_two_tower.model.build import build_model
from marl_two_tower.model.losses import rec_loss, sampled_softmax_logits
from marl_two_tower.model.two_tower import TwoTower
from marl_two_tower.utils import distributed
from marl_two_tower.utils.runtime import epoch_rng, resolve_device, set_seed

log = logging.getLogger(__name__)


def build_sampler(cfg: Config, split: Split) -> PositiveSampler:
    """The positive sampler the config asks for (uniform, or the Fair Sampler)."""
    if cfg.fair_sampler.enabled:
        from marl_two_tower.fairness.fair_sampler import FairSampler

        fs = cfg.fair_sampler
        return FairSampler(split, cfg.train.batch_size, cfg.seed, fs.beta, fs.max_per_batch)
    return PositiveSampler(split, cfg.train.batch_size, cfg.seed)


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


class StopTraining(Exception):
    """Raised by a callback to stop training (used to simulate a killed run)."""


class Trainer:
    """Trains a :class:`TwoTower` on a :class:`Split` with the composite objective."""

    def __init__(self, cfg: Config, split: Split, model: TwoTower | None = None,
                 progress: bool = True) -> None:
        self.cfg, self.split, self.progress = cfg, split, progress
        set_seed(cfg.seed)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
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
        self.sampler = build_sampler(cfg, split)
        # the genre agents (controller) have their own optimiser in self.marl
        sup_params = [p for n, p in self.model.named_parameters() if not n.startswith("controller.")]
        self.optimizer = torch.optim.Adam(sup_params, lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay)
        self.amp_dtype = self._amp_dtype(cfg.train.mixed_precision)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=cfg.train.mixed_precision == "fp16")
        self.state = TrainState()
        self.ckpt_dir = Path(cfg.checkpoint_dir)
        self.tail = torch.as_tensor(split.tail_mask, device=self.device)
        self.data_fingerprint = split.dataset.fingerprint()
        self.callbacks: list[Callable[[Trainer], None]] = []
        self.skipped_steps = 0
        self.gini_agent = None  # GINI agent: dual-ascent weight of L_GINI (gini.enabled)
        if cfg.gini.enabled:
            from marl_two_tower.fairness.gini_agent import GiniAgent

            self.gini_agent = GiniAgent(cfg.gini, split.n_items, split.train_indptr,
                                        split.train_items).to(self.device)
            if self.dist is not None:  # G over the global batch's exposure (distributed.py)
                self.gini_agent.exposure_reduce = self.dist.sum_exposure
        self._gini_batch = math.nan  # G of the last batch, for the dual update after the step
        self.marl = None  # genre agents' RL steps (marl.enabled), see genre_agents.MARLTrainer
        if cfg.marl.enabled:
            from marl_two_tower.model.marl.agents import MARLTrainer

            self.marl = MARLTrainer(cfg, split, self.model, self.device)

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
        """Weighted loss terms of the composite objective for one batch."""
        cfg = self.cfg
        m = self.model
        n_neg = cfg.train.num_negatives
        neg = torch.as_tensor(rng.integers(0, self.split.n_items, n_neg), device=self.device)
        z = m.user_vectors(users, exclude=pos)
        y_pos, y_neg = m.item_vectors(pos), m.item_vectors(neg)
        log_q_pos = log_q_neg = None
        if cfg.loss.logq:
            p = torch.as_tensor(self.sampler.prob, dtype=torch.float32, device=self.device)
            log_q_pos = torch.log((p[pos] * len(pos)).clamp(min=1e-12))
            log_q_neg = torch.full((n_neg,), math.log(max(n_neg, 1) / self.split.n_items),
                                   device=self.device)
            if not cfg.train.in_batch_negatives:  # positives are not sampled candidates here
                log_q_pos = log_q_neg[:1].expand(len(pos))
        logits = sampled_softmax_logits(z, pos, neg, y_pos, y_neg, log_q_pos, log_q_neg)
        if m.score_adjuster is not None:  # ContextGNN: familiar items get pair-wise logits
            log_q = None if log_q_pos is None else torch.cat([log_q_pos, log_q_neg])
            logits = m.score_adjuster.training_logits(m, users, pos, torch.cat([pos, neg]), logits, z,
                                                      log_q)
        if not cfg.train.in_batch_negatives:  # mask the other rows' positives
            b = len(pos)
            off = ~torch.eye(b, dtype=torch.bool, device=logits.device)
            logits = torch.cat([logits[:, :b].masked_fill(off, float("-inf")), logits[:, b:]], dim=1)
        out = {"rec": cfg.loss.l_sup * rec_loss(logits, cfg.loss.rec)}
        if cfg.tail_loss.enabled:
            out["tail"] = cfg.loss.l_tail * rec_loss(logits, cfg.loss.rec,
                                                     weight=self.tail[pos].float())
        if self.gini_agent is not None:
            cand = self.gini_agent.candidates(self.device)
            if cand is not None and self.dist is not None:  # one candidate set for all ranks
                self.dist.broadcast_(cand)
            g = self.gini_agent.loss(z, m.item_vectors(cand), users, cand)
            self._gini_batch = float(g.detach())
            out["gini"] = cfg.loss.l_fair * self.gini_agent.lam * g
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
            terms = self.dist.local_objective(terms, {"rows": len(idx), "tail": float(self.tail[pos].sum())})
            finite, logged = self.dist.reduce_terms(terms)  # shared skip decision, global values
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
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        out = logged or {k: float(v.detach()) for k, v in terms.items()} | {"total": float(total.detach())}
        if self.gini_agent is not None:
            lam = self.gini_agent.update(self._gini_batch, self.state.step)
            log.debug("step %d gini %.4f lambda %.4f", self.state.step, self._gini_batch, lam)
            out |= {"gini_value": self._gini_batch, "gini_lambda": lam}
        return out

    # --- epochs -----------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass of the positive sampler; returns mean loss terms."""
        rng = epoch_rng(self.cfg.seed, epoch, 2)
        rl_rng = epoch_rng(self.cfg.seed, epoch, 3)
        sums: dict[str, float] = {}
        n = 0
        limit = self.cfg.train.max_steps_per_epoch or len(self.sampler)
        bar = tqdm(self.sampler.batches(epoch), total=min(limit, len(self.sampler)),
                   desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", leave=False,
                   disable=not self.progress)
        for i, idx in enumerate(bar):
            if i >= limit:
                break
            if self.marl is not None:  # reward targets are never supervised positives
                idx = self.marl.filter_positives(idx)
            if self.dist is not None:  # DDP: this rank's contiguous shard of the global batch
                idx = self.dist.shard(idx)
            terms = self.train_step(idx, rng)
            if self.marl is not None and (i + 1) % self.cfg.marl.rl_every == 0:
                self.marl.step(rl_rng)
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

    def fit(self, resume: bool = False) -> TrainState:
        """Train until ``epochs`` or early stopping; keeps best and last checkpoints."""
        if resume and (self.ckpt_dir / "last.pt").exists():
            self.load_checkpoint(self.ckpt_dir / "last.pt")
            log.info("resumed from epoch %d", self.state.epoch)
        cfg = self.cfg.train
        while self.state.epoch < cfg.epochs and self.state.bad_evals < cfg.patience:
            epoch = self.state.epoch
            t0 = time.perf_counter()
            losses = self.train_epoch(epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, "time_s": time.perf_counter() - t0,
                                      **{f"loss/{k}": v for k, v in losses.items()}}
            if hasattr(self.sampler, "last_epoch_gini"):
                record["sampler/gini"] = self.sampler.last_epoch_gini
            if self.gini_agent is not None:
                record |= {"gini/value": record.pop("loss/gini_value", math.nan),
                           "gini/lambda": self.gini_agent.lambda_fair}
                record.pop("loss/gini_lambda", None)
            if self.marl is not None:
                record |= self.marl.epoch_summary(getattr(self, "writer", None), epoch + 1)
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
            self.save_checkpoint(self.ckpt_dir / "last.pt")
            if self.progress:
                shown = {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}
                tqdm.write(json.dumps(shown))
            for cb in self.callbacks:
                cb(self)
        if self.dist is not None:
            self.dist.barrier()  # rank 0 has written model_best.pt
        if (self.ckpt_dir / "model_best.pt").exists():
            self.load_checkpoint(self.ckpt_dir / "model_best.pt", weights_only_state=True)
        return self.state

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
            **({"gini_agent": self.gini_agent.state_dict()} if self.gini_agent is not None else {}),
            **({"marl": self.marl.state_dict()} if self.marl is not None else {}),
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
        if self.gini_agent is not None and "gini_agent" in ck:
            self.gini_agent.load_state_dict(ck["gini_agent"])
        if self.marl is not None and "marl" in ck:
            self.marl.load_state_dict(ck["marl"])
        self.state = TrainState(**json.loads(ck["train_state"]))

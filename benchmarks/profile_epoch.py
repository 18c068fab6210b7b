"""Where one training epoch of the full model goes, per component (issue 15).

Explicit wall-clock timers (``time.perf_counter``) around the component hooks and the
components' inner functions, installed by wrapping them in this script (the library
is not changed): every region's time is *exclusive* of the regions nested in it and
keyed by its path (``rl_step/rescore/context_gnn_sampling`` is ContextGNN's
neighbourhood sampling inside the RL step's re-scoring, not inside the supervised
forward), so the rows add up to the epoch. One trainer runs ``--repeats`` epochs
(epochs 0, 1, ...); each row is the median over the epochs of its seconds per epoch.

Regions:

* ``sampler``: drawing the epoch's positive batches (Fair Sampler or uniform).
* ``step/forward``: the supervised forward (towers, logits, rec loss) outside the
  component regions below; ``step/forward/context_gnn_sampling`` the numpy tree
  sampling, ``.../context_gnn_context`` the propagation c_u (and familiar head),
  ``.../buhs_sampling`` the biased history draw, ``.../buhs_synthesis`` the
  attention synthesis, ``.../marl_user_features`` the agents' extra z_u dims,
  ``.../gini_soft_exposure`` L_GINI (candidate scores, seen mask, softmax, Gini),
  ``.../tail_loss`` L_Tail.
* ``step/backward_optimiser``: backward, clipping, the Adam step, logging.
* ``step/after_step``: the components' after-step hooks (GINI dual ascent).
* ``rl_step``: one RL step every ``marl.rl_every`` batches (``rl_step/observe`` = RL
  state: ``rl_step/observe/rescore`` the model re-scoring the catalogue for the RL
  users, ``rl_step/rewards`` the three reward evaluations, ``rl_step/update`` the
  actor-critic update).
* ``loop``: the rest of ``train_epoch`` (positive filter, bookkeeping).

Validation (full ranking @10 after the epoch) is timed separately.

    .venv/bin/python benchmarks/profile_epoch.py            # ML-100K, every component on
    .venv/bin/python benchmarks/profile_epoch.py --repeats 3 --set train.max_steps_per_epoch=40

Writes ``benchmarks/results/profile_epoch_ml100k.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
FULL = ("context_gnn", "marl", "fair_sampler", "buhs", "gini", "tail_loss")


class RegionTimer:
    """Exclusive wall time per region path; regions nest through a stack."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.excl: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._child: list[float] = []  # time spent in children of each open region

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*a: Any, **kw: Any) -> Any:
            self.stack.append(name)
            self._child.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                path = "/".join(self.stack)
                self.excl[path] += dt - self._child.pop()
                self.calls[path] += 1
                self.stack.pop()
                if self._child:
                    self._child[-1] += dt
        return inner

    def wrap_iter(self, name: str, it: Iterator) -> Iterator:
        """Time every ``next()`` of ``it`` as region ``name``."""
        nxt = self.wrap(name, lambda: next(it))
        while True:
            try:
                yield nxt()
            except StopIteration:
                return

    def reset(self) -> dict[str, tuple[float, int]]:
        out = {k: (self.excl[k], self.calls[k]) for k in self.excl}
        self.excl.clear()
        self.calls.clear()
        return out


def patch(obj: Any, attr: str, timer: RegionTimer, name: str) -> None:
    setattr(obj, attr, timer.wrap(name, getattr(obj, attr)))


def instrument(trainer: Any, timer: RegionTimer) -> None:
    """Wrap the trainer's and the components' functions with timers (this process only)."""
    from marl_two_tower.model import buhs, context_gnn
    from marl_two_tower.model.components import GiniTerm, TailLoss
    from marl_two_tower.model.marl import agents, env
    from marl_two_tower.train.trainer import Trainer

    patch(Trainer, "train_epoch", timer, "loop")
    patch(Trainer, "train_step", timer, "step/backward_optimiser")
    patch(Trainer, "losses", timer, "forward")
    patch(Trainer, "validate", timer, "validate")
    patch(context_gnn, "sample_neighbourhood", timer, "context_gnn_sampling")
    patch(context_gnn.ContextGNN, "context", timer, "context_gnn_context")
    patch(context_gnn.ContextGNN, "overrides", timer, "context_gnn_familiar")
    patch(buhs.BUHS, "sample", timer, "buhs_sampling")
    patch(buhs.Synthesis, "forward", timer, "buhs_synthesis")
    patch(agents.GenreAgents, "user_features", timer, "marl_user_features")
    patch(GiniTerm, "loss_terms", timer, "gini_soft_exposure")
    patch(TailLoss, "loss_terms", timer, "tail_loss")
    patch(agents.MARLTrainer, "step", timer, "rl_step")
    patch(env.RecEnvCore, "observe", timer, "observe")
    patch(env.TwoTowerScorer, "__call__", timer, "rescore")
    patch(env.RecEnvCore, "step", timer, "rewards")
    patch(agents.GenreAgents, "update", timer, "update")
    for c in trainer.components:
        patch(c, "after_step", timer, "after_step")
    sampler = trainer.sampler
    batches = sampler.batches
    sampler.batches = lambda epoch: timer.wrap_iter("sampler", batches(epoch))


def label(path: str) -> str:
    """Readable row name: the training loop's own regions renamed."""
    return (path.replace("loop/step/backward_optimiser/forward", "step/forward")
            .replace("loop/step/backward_optimiser", "step/backward_optimiser")
            .replace("loop/", ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--config", default=str(REPO / "configs" / "ablation.yaml"))
    p.add_argument("--repeats", type=int, default=3, help="epochs timed (median over them)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "profile_epoch_ml100k.json"))
    args = p.parse_args()

    from marl_two_tower.config import load_config
    from marl_two_tower.data import load_split
    from marl_two_tower.train.trainer import Trainer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as ck:
        overrides = [f"data.path={args.data}", f"seed={args.seed}", "train.num_threads=1",
                     "train.tensorboard=false", f"checkpoint_dir={ck}",
                     *[f"{c}.enabled=true" for c in FULL], *args.set]
        cfg = load_config(args.config, overrides)
        split = load_split(cfg.data)
        trainer = Trainer(cfg, split, progress=False)
        timer = RegionTimer()
        instrument(trainer, timer)
        load = os.getloadavg()
        epochs: list[dict[str, tuple[float, int]]] = []
        for epoch in range(args.repeats):
            t0 = time.perf_counter()
            trainer.train_epoch(epoch)
            wall = time.perf_counter() - t0
            trainer.validate()
            rec = timer.reset()
            rec["epoch (train)"] = (wall, 1)
            epochs.append(rec)
    paths = sorted({k for e in epochs for k in e})
    rows = []
    for path in paths:
        secs = [e.get(path, (0.0, 0))[0] for e in epochs]
        calls = [e.get(path, (0.0, 0))[1] for e in epochs]
        rows.append({"region": label(path), "s_per_epoch": float(np.median(secs)),
                     "calls_per_epoch": int(np.median(calls)), "all_s": [round(s, 4) for s in secs]})
    epoch_s = next(r["s_per_epoch"] for r in rows if r["region"] == "epoch (train)")
    body = sorted((r for r in rows if r["region"] != "epoch (train)"), key=lambda r: -r["s_per_epoch"])
    print(f"\n{split.dataset.name} full model ({', '.join(FULL)}), one epoch = {len(trainer.sampler)} batches"
          f" of {cfg.train.batch_size}, 1 thread; median of {args.repeats} epochs;"
          f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores\n")
    print("| region (exclusive time) | s/epoch | share of the epoch | calls/epoch |")
    print("|---|---|---|---|")
    for r in body:
        share = "-" if r["region"].startswith("validate") else f"{r['s_per_epoch'] / epoch_s:.1%}"
        print(f"| {r['region']} | {r['s_per_epoch']:.3f} | {share} | {r['calls_per_epoch']} |")
    print(f"| **epoch (train)** | **{epoch_s:.3f}** | 100% | 1 |")
    out = {"command": "benchmarks/profile_epoch.py " + " ".join(f"--set {s}" for s in args.set),
           "config": args.config, "components": list(FULL), "repeats": args.repeats,
           "batches_per_epoch": len(trainer.sampler), "batch_size": cfg.train.batch_size,
           "threads": 1, "load_average": list(load), "cpu_count": os.cpu_count(),
           "epoch_s": epoch_s, "rows": body}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

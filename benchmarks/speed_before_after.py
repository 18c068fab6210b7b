"""What the issue-15 speed work bought, measured in one process: the full ML-100K model
trained epoch by epoch in turns with the replaced routines patched back in ("before")
and with the current ones ("after"), plus the base two-tower.

"Before" = the padded B x max-length BUHS draw, the GINI seen mask scattered from the
CSR every step, GenreAgents.observe without its statistics cache (the oracles of
``tests/test_speed_equivalence.py``, which also prove that both give the same numbers).
ContextGNN's hop-2 product is inline in ``sample_neighbourhood`` and is the new one in
both. Reports wall-clock and process CPU seconds per epoch (medians) and validation
seconds; writes ``benchmarks/results/speed_before_after.json``.

    .venv/bin/python benchmarks/speed_before_after.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
FULL = ("context_gnn", "marl", "fair_sampler", "buhs", "gini", "tail_loss")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speed_before_after.json"))
    args = p.parse_args()
    torch.set_num_threads(1)

    from test_speed_equivalence import padded_draw_biased

    from marl_two_tower.config import load_config
    from marl_two_tower.data import load_split
    from marl_two_tower.fairness import gini_agent as ga
    from marl_two_tower.metrics.gini import gini
    from marl_two_tower.model import buhs
    from marl_two_tower.model.marl import agents as ag
    from marl_two_tower.model.marl.env import build_observations
    from marl_two_tower.train.trainer import Trainer

    new = (buhs.draw_biased, ga.GiniAgent.loss, ag.GenreAgents.observe)

    def old_draw(*a, logit=None, pair_keys=None, **kw):
        return padded_draw_biased(*a, **kw)

    def old_loss(self, user_vecs, item_vecs, users=None, cand=None):
        mask = None
        if self.mask_seen and users is not None:
            mask = ga.seen_mask(self.indptr, self.items, users, self.n_items, cand)
        x = ga.soft_exposure(user_vecs @ item_vecs.T, self.tau, mask)
        return gini(x if self.exposure_reduce is None else self.exposure_reduce(x))

    def old_observe(self, users, e_u):
        stats = self.history.features(users.cpu().numpy(), self.item_embeddings())
        return build_observations(e_u.detach().float(), stats)

    def use(old: bool) -> None:
        buhs.draw_biased, ga.GiniAgent.loss, ag.GenreAgents.observe = (
            (old_draw, old_loss, old_observe) if old else new)

    with tempfile.TemporaryDirectory() as ck:
        def cfg(name: str, full: bool):
            return load_config(str(REPO / "configs" / "ablation.yaml"),
                               [f"data.path={args.data}", "train.num_threads=1", "train.tensorboard=false",
                                f"checkpoint_dir={ck}/{name}", *([f"{c}.enabled=true" for c in FULL] if full
                                                                 else [])])
        split = load_split(cfg("x", False).data)
        trainers = {"before": Trainer(cfg("before", True), split, progress=False),
                    "after": Trainer(cfg("after", True), split, progress=False),
                    "base": Trainer(cfg("base", False), split, progress=False)}
        wall = {k: [] for k in trainers}
        cpu = {k: [] for k in trainers}
        val = {"before": [], "after": []}
        load0 = os.getloadavg()
        names = list(trainers)
        for e in range(args.repeats):
            for k in names[e % 3:] + names[:e % 3]:
                use(k == "before")
                t0, c0 = time.perf_counter(), time.process_time()
                trainers[k].train_epoch(e)
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
                if k != "base":
                    t0 = time.perf_counter()
                    trainers[k].validate()
                    val[k].append(time.perf_counter() - t0)
        use(False)
    med = {k: float(np.median(v)) for k, v in wall.items()}
    mcpu = {k: float(np.median(v)) for k, v in cpu.items()}
    mval = {k: float(np.median(v)) for k, v in val.items()}
    doc = {"command": "benchmarks/speed_before_after.py", "repeats": args.repeats,
           "load_average_start": [round(x, 2) for x in load0],
           "load_average_end": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
           "wall_s_per_epoch": med, "cpu_s_per_epoch": mcpu, "validate_s": mval,
           "all_wall_s": wall, "all_cpu_s": cpu,
           "before_over_after_cpu": mcpu["before"] / mcpu["after"],
           "before_over_after_wall": med["before"] / med["after"],
           "full_over_base_cpu": {k: mcpu[k] / mcpu["base"] for k in ("before", "after")},
           "validate_before_over_after": mval["before"] / mval["after"]}
    print(f"\nML-100K full model, median of {args.repeats} epochs in turns, 1 thread, load average "
          f"{doc['load_average_start']} -> {doc['load_average_end']}\n")
    print("| | before | after | base | before / after | full / base, before -> after |")
    print("|---|---|---|---|---|---|")
    for label, m in (("CPU s/epoch", mcpu), ("wall s/epoch", med)):
        print(f"| {label} | {m['before']:.2f} | {m['after']:.2f} | {m['base']:.2f} | "
              f"{m['before'] / m['after']:.2f}x | {m['before'] / m['base']:.2f}x -> "
              f"{m['after'] / m['base']:.2f}x |")
    print(f"| validation s | {mval['before']:.2f} | {mval['after']:.2f} | - | "
          f"{mval['before'] / mval['after']:.2f}x | - |")
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

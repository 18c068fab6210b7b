"""Baselines and the base two-tower on one protocol, one table (issue: foundation).

    .venv/bin/python benchmarks/baselines_ml100k.py [--data DIR] [--epochs 20] [--seed 42]
    .venv/bin/python benchmarks/baselines_ml100k.py --source ml-1m-ncf \
        --data ../shared/data/ml-1m-ncf --full-model         # the brief's second bar

``--full-model`` adds the full model (every component, ``configs/ablation.yaml``
settings, the GINI agent's exposure budget on test) as the last row; ``--models``
picks rows. With ``--source ml-1m-ncf`` the test split is NCF's (one held-out item
per user, its 99 given negatives for the sampled protocol); validation is each
user's last train interaction.

ML-100K, leave-one-out by time, full ranking (train + validation masked for test)
and the sampled protocol (99 uniform negatives, fixed seed). Prints HR/NDCG/
Coverage/Gini/TailHR @10 and the wall time of each model (fit + evaluation).
EASE appears twice: lambda=500 fitted on train (what every other row sees), and
lambda chosen on validation then refit on train+validation (the reference protocol
for the brief's EASE number).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from marl_two_tower.baselines import BPR, EASE, ItemKNN, MostPop, tune_ease
from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.eval.protocols import evaluate
from marl_two_tower.model.build import COMPONENTS
from marl_two_tower.study.run import train_and_evaluate

KEYS = ["HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10"]
DEFAULT_DATA = Path(os.environ.get("MARL_TWO_TOWER_DATA",
                                   Path(__file__).resolve().parents[2] / "shared" / "data"))


def row(name: str, res: dict, seconds: float) -> str:
    full = res["full"]
    vals = " | ".join(f"{full[k]:.4f}" if full[k] is not None else "n/a" for k in KEYS)
    return f"| {name} | {vals} | {res['sampled']['HR@10']:.4f} | {seconds:.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DEFAULT_DATA / "ml-100k"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--source", default="ml-100k", choices=["ml-100k", "ml-1m", "ml-1m-ncf"])
    ap.add_argument("--full-model", action="store_true", help="add the full model's row")
    ap.add_argument("--models", nargs="*", default=None,
                    help="rows to run (default all): MostPop ItemKNN BPR-MF EASE EASE-val base full")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.source != "ml-100k" and args.data == str(DEFAULT_DATA / "ml-100k"):
        args.data = str(DEFAULT_DATA / args.source)
    common = [f"data.source={args.source}", f"data.path={args.data}", f"seed={args.seed}",
              "output_dir=/tmp/mtt-bench", f"train.num_threads={args.threads}"]
    cfg = load_config("ml100k.yaml", [*common, f"train.epochs={args.epochs}",
                                      "checkpoint_dir=/tmp/mtt-bench/ck", "name=two_tower_base"])
    split = load_split(cfg.data)
    wanted = set(args.models or ["MostPop", "ItemKNN", "BPR-MF", "EASE", "EASE-val", "base"]
                 + (["full"] if args.full_model else []))

    def ev(score_fn):
        return evaluate(split, score_fn, "test", ks=(10,), protocol="both", groups=False)

    lines = ["| model | " + " | ".join(KEYS) + " | sampled HR@10 | wall (s) |",
             "|---" * (len(KEYS) + 3) + "|"]
    models = {"MostPop": MostPop(), "ItemKNN": ItemKNN(), "BPR-MF": BPR(seed=args.seed),
              "EASE": EASE()}
    for name, model in models.items():
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        res = ev(model.fit(split).score)
        lines.append(row(name if name != "EASE" else "EASE (lambda=500)", res, time.perf_counter() - t0))
        print(lines[-1], flush=True)
    if "EASE-val" in wanted:
        t0 = time.perf_counter()
        lam, _ = tune_ease(split, [50.0, 100.0, 200.0, 500.0, 1000.0])
        res = ev(EASE(lam=lam).fit(split, include_val=True).score)
        lines.append(row(f"EASE (lambda={lam:g} on val, refit train+val)", res,
                         time.perf_counter() - t0))
        print(lines[-1], flush=True)
    if "base" in wanted:
        t0 = time.perf_counter()
        _, doc = train_and_evaluate(cfg, progress=False, split=split)
        lines.append(row("two-tower (base)", doc["metrics"]["test"], time.perf_counter() - t0))
        print(lines[-1], flush=True)
    if "full" in wanted:
        on = [f"{c}.enabled=true" for c in COMPONENTS]
        full_cfg = load_config("ablation.yaml", [*common, *on, "checkpoint_dir=/tmp/mtt-bench/ck-full",
                                                 "name=two_tower_full"])
        t0 = time.perf_counter()
        _, doc = train_and_evaluate(full_cfg, progress=False, split=split)
        lines.append(row("full model (exposure budget on)", doc["metrics"]["test"],
                         time.perf_counter() - t0))
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

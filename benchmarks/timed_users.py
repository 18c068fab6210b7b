"""Hit@10 of a trained model and of EASE, split by users with and without timestamps.

For datasets where part of the users' interactions have no timestamps (our ML-1M
NCF copy: users >= 3000), "latest items" are only file order for those users. This
prints, for validation and test, HR@10 over the users whose train interactions are
all timed and over the others, for the model of ``--checkpoint`` (its exposure
budget included when its config has one) and for EASE (lambda ``--ease-lambda``,
fitted on train).

    .venv/bin/python benchmarks/timed_users.py --checkpoint /tmp/mtt-bench/ck-full/model_best.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.baselines import EASE  # noqa: E402
from marl_two_tower.eval.protocols import evaluate_per_user  # noqa: E402
from marl_two_tower.fairness.exposure import budget_from_config  # noqa: E402
from marl_two_tower.model.build import load_trained  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--ease-lambda", type=float, default=200.0)
    p.add_argument("--no-budget", action="store_true", help="score the model's plain top-10")
    args = p.parse_args()
    torch.set_num_threads(2)
    model, cfg, split = load_trained(args.checkpoint, device="cpu")
    timed = split.dataset.timed_users()
    print(f"{int(timed.sum())} users with timestamps, {int((~timed).sum())} without\n")
    print("| model | part | HR@10 timed users | HR@10 untimed users | HR@10 all |")
    print("|---|---|---|---|---|")
    models = [("model", model.scorer(), None if args.no_budget else budget_from_config(cfg)),
              (f"EASE (lambda {args.ease_lambda:g})", EASE(lam=args.ease_lambda).fit(split).score, None)]
    for name, fn, budget in models:
        for part in ("val", "test"):
            res, pu = evaluate_per_user(split, fn, part, ks=(10,), budget=budget)
            h, t = pu["hit@10"], timed[res.users]
            print(f"| {name} | {part} | {h[t].mean():.4f} | {h[~t].mean():.4f} | {h.mean():.4f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The GINI agent's exposure budget on ML-100K: a sweep on validation, then test.

The budget (``marl_two_tower/fairness/exposure.py``) re-allocates the top-K lists of a trained
scorer so that no item enters more than ceil(factor * K * U / N) lists, then (``floor``
> 0) gives items that no list holds a slot with the users who want them most. It acts
after training, so one trained model is swept over (factor, floor, candidates).
The same budget is applied to EASE (lambda chosen on validation) to show what is the
model's and what is the allocation's.

Models: ``--checkpoint PATH ...`` (e.g. the ablation's full runs), or ``--train-seeds``
trains the full model (every component, ``configs/ablation.yaml``) with those seeds.
Leave-one-out by time, full ranking; ``--part val`` for choosing, ``--part test`` once.

    .venv/bin/python benchmarks/exposure_budget_ml100k.py --part val \
        --checkpoint runs/ablation-ml100k/gini/seed42/checkpoints/model_best.pt
    .venv/bin/python benchmarks/exposure_budget_ml100k.py --part test --factors 3 --floors 1 \
        --checkpoint runs/ablation-ml100k/gini/seed4{2,3,4}/checkpoints/model_best.pt
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.baselines import EASE  # noqa: E402
from marl_two_tower.baselines.ease import tune_ease  # noqa: E402
from marl_two_tower.data.movielens import load_ml100k  # noqa: E402
from marl_two_tower.data.split import leave_one_out  # noqa: E402
from marl_two_tower.eval.protocols import evaluate_per_user  # noqa: E402
from marl_two_tower.eval.significance import paired_tests  # noqa: E402
from marl_two_tower.fairness.exposure import ExposureBudget  # noqa: E402
from marl_two_tower.metrics.ranking import compute_metrics  # noqa: E402

METRICS = ("HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10")


def scorers(split, args) -> list[tuple[str, object]]:
    """(label, score_fn) of every model to sweep."""
    from marl_two_tower.config import load_config
    from marl_two_tower.model.build import load_trained
    from marl_two_tower.train.trainer import Trainer

    out = []
    for path in args.checkpoint:
        model, _, _ = load_trained(path, split=split, device="cpu")
        out.append((f"model {Path(path).parent.parent.name}", model.scorer()))
    for seed in args.train_seeds:
        on = [f"{c}.enabled=true" for c in ("context_gnn", "marl", "fair_sampler", "buhs", "gini",
                                            "tail_loss")]
        cfg = load_config("ablation.yaml", [f"data.path={args.data}", f"seed={seed}",
                                            "train.num_threads=1", f"checkpoint_dir=runs/xb_{seed}", *on])
        tr = Trainer(cfg, split, progress=False)
        tr.fit()
        out.append((f"full model seed {seed}", tr.model.scorer()))
    lam, _ = tune_ease(split)
    out.append((f"EASE (lambda {lam:g})", EASE(lam=lam).fit(split).score))
    return out


def row(split, score_fn, part: str, budget: ExposureBudget | None):
    res, per_user = evaluate_per_user(split, score_fn, part, ks=(10,), budget=budget)
    m = compute_metrics(res.recs, res.targets, ks=(10,), n_items=split.n_items,
                        item_pop=split.item_pop, tail_mask=split.tail_mask)
    return {k: m[k] for k in METRICS}, per_user


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--part", choices=["val", "test"], default="val")
    p.add_argument("--checkpoint", nargs="*", default=[])
    p.add_argument("--train-seeds", type=int, nargs="*", default=[])
    p.add_argument("--factors", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0, 4.0, 6.0])
    p.add_argument("--floors", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--candidates", type=int, nargs="+", default=[1000])
    args = p.parse_args()
    torch.set_num_threads(1)
    split = leave_one_out(load_ml100k(args.data))
    print(f"ML-100K, LOO by time, full ranking, {args.part} split; budget cap = "
          f"ceil(factor * 10 * U / N), floor = slots per user for unexposed items\n")
    print("| model | factor | floor | candidates | " + " | ".join(METRICS) + " | p(hit) vs no budget |")
    print("|---" * (len(METRICS) + 5) + "|")
    grid = list(itertools.product(args.factors, args.floors, args.candidates))
    for label, fn in scorers(split, args):
        base, base_pu = row(split, fn, args.part, None)
        print(f"| {label} | - | - | - | " + " | ".join(f"{base[k]:.4f}" for k in METRICS) + " | |",
              flush=True)
        for factor, floor, m in grid:
            r, pu = row(split, fn, args.part, ExposureBudget(factor, k=10, n_candidates=m, floor=floor))
            t = paired_tests(pu["hit@10"], base_pu["hit@10"])
            p_hit = t["p_wilcoxon"] if t["p_wilcoxon"] is not None else 1.0
            print(f"| {label} | {factor:g} | {floor} | {m} | "
                  + " | ".join(f"{r[k]:.4f}" for k in METRICS) + f" | {p_hit:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The brief's bar on ML-100K: the full model vs the most accurate and the fairest peer.

Reads the full model's per-user test arrays from an ablation study folder (its
``exposure_budget`` variant = every component, the exposure budget on; a study from
before the GINI loss, tail loss and budget were separate steps holds it under
``--variant gini``; one ``per_user.npz`` per seed), fits EASE (lambda chosen on validation NDCG@10, refit on
train + validation: the brief's EASE protocol) and BPR-MF on the same split, and
compares them with ``significance.compare``: per-user Wilcoxon for HR/NDCG/TailHR,
paired user bootstrap (B = 1000) for Coverage/Gini.

    marl-two-tower ablate --config ablation.yaml --set data.path=../shared/data/ml-100k \\
        --set train.num_threads=1 --seeds 3 --output-dir runs/ablation-ml100k
    .venv/bin/python benchmarks/bar_ml100k.py --study runs/ablation-ml100k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.baselines import BPR, EASE, tune_ease  # noqa: E402
from marl_two_tower.data.movielens import load_ml100k  # noqa: E402
from marl_two_tower.data.split import leave_one_out  # noqa: E402
from marl_two_tower.eval.arrays import compute_eval_arrays, load_eval_arrays  # noqa: E402
from marl_two_tower.eval.significance import compare  # noqa: E402

METRICS = ["HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10"]
# the brief's reference rows (ML-100K, LOO by time, full ranking, K = 10)
BAR = {"HR@10": (">=", 0.149), "NDCG@10": (">=", 0.072), "Coverage@10": (">=", 0.75),
       "Gini@10": ("<=", 0.61), "TailHR@10": (">=", 0.07)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--study", default="runs/ablation-ml100k")
    p.add_argument("--variant", default="exposure_budget",
                   help="study variant holding the full model (gini in studies of the old ladder)")
    args = p.parse_args()
    torch.set_num_threads(1)
    split = leave_one_out(load_ml100k(args.data))
    seeds = sorted(Path(args.study, args.variant).glob("seed*"))
    full = [a for a in (load_eval_arrays(s) for s in seeds) if a is not None]
    if not full:
        raise SystemExit(f"no per_user.npz under {args.study}/{args.variant}/seed*")
    lam, _ = tune_ease(split)
    ease = compute_eval_arrays(split, EASE(lam=lam).fit(split, include_val=True).score, (10,))
    bpr = compute_eval_arrays(split, BPR(seed=42).fit(split).score, (10,))
    print(f"ML-100K test, full ranking; full model = {args.study}/{args.variant} "
          f"({len(full)} seeds); EASE lambda={lam:g} refit on train+val; BPR-MF seed 42\n")
    print("| metric | bar | full model | EASE | Δ vs EASE, p | BPR-MF | Δ vs BPR-MF, p |")
    print("|---|---|---|---|---|---|---|")
    vs_ease = compare(full, [ease], METRICS)
    vs_bpr = compare(full, [bpr], METRICS)
    for m in METRICS:
        op, ref = BAR[m]
        e, b = vs_ease[m], vs_bpr[m]
        ok = e["value"] >= ref if op == ">=" else e["value"] <= ref
        print(f"| {m} | {op} {ref} | {e['value']:.4f} {'✓' if ok else '✗'} | {e['base_value']:.4f} | "
              f"{e['delta']:+.4f}, p={e['p_value']:.2g} | {b['base_value']:.4f} | "
              f"{b['delta']:+.4f}, p={b['p_value']:.2g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

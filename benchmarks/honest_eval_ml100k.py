"""Issue 13, points 1 and 4 on ML-100K: ties and inference randomness, measured.

Trains the full model (every component) for a few epochs, then, on test:

* **ties** (point 1): a constant scorer (every item tied) and the trained model,
  scored by the harness (expected rank under random tie-breaking) and, for
  comparison, with ties resolved in the target's favour (r_u alone: the rule before
  the fix, which gave the collapsed model MRR 1.0 and sampled HR@10 1.0);
* **inference draws** (point 4): the model scored with one draw at each of 8 seeds,
  and with ``eval.inference_samples`` = 4 (mean score of 4 draws) at 4 disjoint seed
  blocks and = 8, so the spread of a reported number over draws can be read off.

    .venv/bin/python benchmarks/honest_eval_ml100k.py --epochs 2 \\
        --out benchmarks/results/honest_eval_ml100k.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.config import load_config  # noqa: E402
from marl_two_tower.data import load_split  # noqa: E402
from marl_two_tower.eval.protocols import evaluate, rank_full, rank_sampled  # noqa: E402
from marl_two_tower.metrics import ranking as M  # noqa: E402
from marl_two_tower.model.buhs import BUHS  # noqa: E402
from marl_two_tower.model.build import COMPONENTS  # noqa: E402
from marl_two_tower.model.context_gnn import ContextGNN  # noqa: E402
from marl_two_tower.train.trainer import Trainer  # noqa: E402

KEYS = ("HR@10", "NDCG@10", "MRR", "Coverage@10", "Gini@10")


def summary(split, fn) -> dict[str, float]:
    out = evaluate(split, fn, "test", ks=(10,), protocol="both")
    row = {k: out["full"][k] for k in KEYS}
    row |= {"sampled HR@10": out["sampled"]["HR@10"], "sampled MRR": out["sampled"]["MRR"]}
    return row


def in_targets_favour(split, fn) -> dict[str, float]:
    """The pre-fix rule: ties resolved in the target's favour (rank r_u, ties ignored)."""
    full = rank_full(split, fn, "test", k_max=10)
    samp = rank_sampled(split, fn, "test", k_max=10)
    return {"HR@10": float(M.expected_hits(full.ranks, None, 10).mean()),
            "MRR": float(M.expected_rr(full.ranks, None).mean()),
            "sampled HR@10": float(M.expected_hits(samp.ranks, None, 10).mean()),
            "users with a tied target": int((full.ties > 0).sum())}


def set_seed_base(model, base: int) -> None:
    for m in model.modules():
        if isinstance(m, ContextGNN):
            m.cfg.inference_seed, m._cache = base, None
        if isinstance(m, BUHS):
            m.inference_seed = base


def spread(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {"mean": float(np.mean([r[k] for r in rows])),
                "std": float(np.std([r[k] for r in rows], ddof=1))} for k in rows[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "honest_eval_ml100k.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "configs" / "ml100k.yaml", [
            f"data.path={args.data}", f"train.epochs={args.epochs}", "train.num_threads=1",
            f"seed={args.seed}", f"checkpoint_dir={tmp}", "train.tensorboard=false",
            *(f"{c}.enabled=true" for c in COMPONENTS)])
        split = load_split(cfg.data)
        trainer = Trainer(cfg, split, progress=False)
        trainer.fit()
    model = trainer.model.eval()
    const = lambda u: torch.zeros(len(u), split.n_items)  # noqa: E731
    doc: dict = {"command": " ".join(sys.argv), "epochs": args.epochs, "seed": args.seed,
                 "ties": {"constant scorer": {"harness": summary(split, const),
                                              "in the target's favour": in_targets_favour(split, const)},
                          "full model (S=1)": {"harness": summary(split, model.scorer(samples=1)),
                                               "in the target's favour":
                                                   in_targets_favour(split, model.scorer(samples=1))}}}
    singles = []
    for base in range(8):
        set_seed_base(model, base)
        singles.append(summary(split, model.scorer(samples=1)))
    blocks, seconds = [], []
    for base in (0, 4, 8, 12):
        set_seed_base(model, base)
        t = time.perf_counter()
        blocks.append(summary(split, model.scorer(samples=4)))
        seconds.append(time.perf_counter() - t)
    set_seed_base(model, 0)
    doc["draws"] = {"single draw, seeds 0..7": singles, "single draw: spread": spread(singles),
                    "S=4, seed blocks 0,4,8,12": blocks, "S=4: spread": spread(blocks),
                    "S=8, seeds 0..7": summary(split, model.scorer(samples=8)),
                    "S=4 evaluation seconds (both protocols)": float(np.mean(seconds))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["ties"], indent=1))
    for name in ("single draw: spread", "S=4: spread"):
        s = doc["draws"][name]
        print(name, {k: f"{v['mean']:.4f} +- {v['std']:.4f}" for k, v in s.items()})
    print("S=8", doc["draws"]["S=8, seeds 0..7"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

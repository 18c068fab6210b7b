"""Two groups of finished runs (one run per seed each), compared: validation and test.

For settings A and B trained with ``marl-two-tower train`` over the same seeds, reads
each run folder's ``results.json`` and ``per_user.npz`` and reports, per seed and as
the mean over seeds: the validation-selected epoch, validation NDCG@10 / HR@10 at it
(model selection, the only numbers the choice may use), and the test metrics of that
checkpoint; then B vs A on test with the user bootstrap and the Wilcoxon signed-rank
test over users of the seed-mean per-user values
(:func:`marl_two_tower.eval.significance.compare`, the ablation report's tests).

    .venv/bin/python benchmarks/paired_runs.py --a RUN_A_SEED42 RUN_A_SEED43 ... \\
        --b RUN_B_SEED42 ... --labels "history=all" "history=prefix" \\
        --out benchmarks/results/NAME.json

Runs are paired by their position in the two lists (the seeds must agree).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.eval.arrays import load_eval_arrays  # noqa: E402
from marl_two_tower.eval.significance import compare  # noqa: E402
from marl_two_tower.utils.io import to_jsonable, write_text_atomic  # noqa: E402

TEST = ("HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10")


def run_row(run: Path) -> dict[str, Any]:
    """Seed, selected epoch, validation at it, test metrics of one finished run."""
    doc = json.loads((run / "results.json").read_text())
    best = doc["extra"]["best_epoch"]
    at = next(h for h in doc["history"] if h["epoch"] == best)
    test = doc["metrics"]["test"]["full"]
    return {"run": str(run), "seed": doc["run"]["seed"], "best_epoch": best,
            "epochs_run": doc["extra"].get("epochs_run"),
            "val_NDCG@10": at["val/NDCG@10"], "val_HR@10": at["val/HR@10"],
            **{f"test_{m}": test[m] for m in TEST}}


def table(doc: dict[str, Any]) -> str:
    """Markdown: one row per (setting, seed), the means, and B vs A on test."""
    cols = ["best_epoch", "val_NDCG@10", "val_HR@10", *(f"test_{m}" for m in TEST)]
    lines = ["| setting | seed | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for label in doc["labels"]:
        rows = doc["runs"][label]
        for r in rows:
            lines.append(f"| {label} | {r['seed']} | " + " | ".join(
                str(r[c]) if c == "best_epoch" else f"{r[c]:.4f}" for c in cols) + " |")
        lines.append(f"| **{label}** | mean | " + " | ".join(
            f"{np.mean([r[c] for r in rows]):.1f}" if c == "best_epoch"
            else f"**{np.mean([r[c] for r in rows]):.4f}**" for c in cols) + " |")
    a, b = doc["labels"]
    lines += ["", f"Test, {b} vs {a} (seed means; user bootstrap CI, Wilcoxon over users "
              "for per-user metrics, bootstrap p for list metrics):", "",
              "| metric | " + a + " | " + b + " | delta | relative | 95% CI | p |",
              "|---|---|---|---|---|---|---|"]
    for m, e in doc["test_b_vs_a"].items():
        ci = e["delta_ci95"]
        rel = e["delta"] / e["base_value"] if e["base_value"] else float("nan")
        lines.append(f"| {m} | {e['base_value']:.4f} | {e['value']:.4f} | {e['delta']:+.4f} | {rel:+.1%} "
                     f"| [{ci[0]:+.4f}, {ci[1]:+.4f}] | {e['p_value']:.3g} ({e['test']}) |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", nargs="+", type=Path, help="run folders of setting A, one per seed")
    p.add_argument("--b", nargs="+", type=Path, help="run folders of setting B, same seeds, same order")
    p.add_argument("--labels", nargs=2, default=["A", "B"], metavar=("A", "B"))
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: print only)")
    p.add_argument("--table", type=Path, default=None, help="only print the table of this JSON")
    args = p.parse_args()
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return 0
    if not args.a or not args.b or len(args.a) != len(args.b):
        p.error("--a and --b need the same number of run folders (one per seed)")
    rows = {args.labels[0]: [run_row(r) for r in args.a], args.labels[1]: [run_row(r) for r in args.b]}
    seeds = [[r["seed"] for r in v] for v in rows.values()]
    if seeds[0] != seeds[1]:
        p.error(f"the runs are not paired by seed: {seeds[0]} vs {seeds[1]}")
    arrs = [[load_eval_arrays(r) for r in group] for group in (args.a, args.b)]
    if any(x is None for g in arrs for x in g):
        p.error("every run folder needs its per_user.npz (written by train)")
    doc = {"command": "benchmarks/paired_runs.py " + " ".join(sys.argv[1:]), "labels": args.labels,
           "seeds": seeds[0], "runs": rows,
           "test_b_vs_a": compare(arrs[1], arrs[0], TEST, n_boot=args.n_boot)}
    print(table(doc))
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(to_jsonable(doc), indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Validation-only selection on the accuracy-fairness frontier (docs/frontier.md).

For each finished run folder (one holding ``frontier.npz``, as every ``train`` and
``ablate`` run writes), sweeps the exposure budget on the **validation** candidates
and prints validation HR@10 at matched validation Gini@10 (0.70, 0.60, 0.50) beside
the plain validation NDCG@10: the number a weight such as ``loss.l_tail`` is chosen
by. Test candidates are never read.

    .venv/bin/python benchmarks/val_frontier.py runs/a/tail_loss/seed42 runs/b/tail_loss/seed42 \
        --labels l_tail=0.05 l_tail=0.1 --out benchmarks/results/val_frontier_l_tail.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.eval import frontier as F  # noqa: E402
from marl_two_tower.study.results import git_commit  # noqa: E402
from marl_two_tower.utils.io import to_jsonable, write_text_atomic  # noqa: E402


def val_row(run_dir: Path, k: int = 10) -> dict:
    """Validation HR/NDCG@k off and HR@k at matched validation Gini@k of one run."""
    cands = F.load_candidates(run_dir)
    if cands is None or "val" not in cands:
        raise SystemExit(f"{run_dir}: no validation candidates ({F.FRONTIER_FILE}); is the run finished?")
    pts = F.curve(cands["val"], F.budget_curve(F.BUDGET_FACTORS, floor=1), k)
    off = pts[0].metrics
    row = {"run_dir": str(run_dir), "val_off": {m: off[f"{m}@{k}"] for m in F.CURVE_METRICS}}
    for t in F.GINI_TARGETS:
        p = F.match_gini(pts, pts, t, k)
        row[f"val_HR@{k}_at_gini_{t:.2f}"] = p.test.get(f"HR@{k}") if p.ok else None
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run folders (with frontier.npz)")
    p.add_argument("--labels", nargs="*", default=None, help="one label per run (default: the folder)")
    p.add_argument("--out", default=None, help="write the rows as JSON here (default: print only)")
    args = p.parse_args()
    labels = args.labels or args.runs
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(args.runs)} runs")
    rows = [{"label": lab} | val_row(Path(r)) for lab, r in zip(labels, args.runs, strict=True)]
    heads = ["label", "val NDCG@10", "val HR@10", "val Gini@10"] + [
        f"val HR@10 at Gini {t:.2f}" for t in F.GINI_TARGETS]
    print("| " + " | ".join(heads) + " |\n|" + "---|" * len(heads))
    for r in rows:
        cells = [r["label"], r["val_off"]["NDCG"], r["val_off"]["HR"], r["val_off"]["Gini"]] + [
            r[f"val_HR@10_at_gini_{t:.2f}"] for t in F.GINI_TARGETS]
        print("| " + " | ".join(c if isinstance(c, str) else ("-" if c is None else f"{c:.4f}")
                                for c in cells) + " |")
    if args.out:
        doc = {"benchmark": "val_frontier", "git_commit": git_commit(),
               "command": "python benchmarks/val_frontier.py " + " ".join(sys.argv[1:]),
               "rows": rows}
        write_text_atomic(args.out, json.dumps(to_jsonable(doc), indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

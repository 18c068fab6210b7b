"""One table of the per-component frontiers: the base plus one component at a time.

Reads the results of ``benchmarks/frontier_ml100k.py --components C --full-dir only-C``
(one JSON per component, the same base runs and seeds in each) and prints, per
component, its plain test lists (HR@10, Gini@10) and test HR@10 at matched Gini@10
(0.70, 0.60, 0.50; the budget's cap chosen on validation per seed) with the paired
difference to the base under the same budget (Wilcoxon over users, seeds averaged).

    for c in context_gnn marl fair_sampler buhs gini; do
      .venv/bin/python benchmarks/frontier_ml100k.py --seeds 42 1 2 --runs RUNS \\
          --components $c --full-dir only-$c \\
          --output benchmarks/results/frontier_ml100k_transformer_3seeds_only_$c.json
    done
    .venv/bin/python benchmarks/component_frontiers.py      # the table of docs/frontier.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATTERN = "frontier_ml100k_transformer_3seeds_only_*.json"
NAMES = {"context_gnn": "+ ContextGNN", "marl": "+ MARL", "fair_sampler": "+ Fair Sampler",
         "buhs": "+ BUHS", "gini": "+ GINI loss", "tail_loss": "+ tail loss"}


def rows(results: Path) -> list[str]:
    """Markdown rows: the base first (from any file), then one per component file."""
    files = sorted(results.glob(PATTERN))
    if not files:
        raise SystemExit(f"no {PATTERN} under {results}")
    out, base_done = [], False
    for f in files:
        doc = json.loads(f.read_text())
        targets = doc["targets"]
        comp = f.stem.rsplit("_only_", 1)[1]
        fr = doc["frontiers"]
        if not base_done:
            b = fr["base / budget"]
            off = b["test"][0]
            out.append(f"| base (seeds {', '.join(map(str, doc['seeds']))}) | {off['HR@10']:.4f} "
                       f"| {off['Gini@10']:.4f} | " + " | ".join(
                           f"{b['matched'][f'{t:.2f}']['HR@10']['value']:.4f}" for t in targets) + " |")
            base_done = True
        s = fr["full / budget"]
        off = s["test"][0]
        cells = []
        for t in targets:
            v = s["matched"][f"{t:.2f}"]["HR@10"]["value"]
            d = doc["paired"]["full / budget vs base / budget"][f"{t:.2f}"]
            cells.append("not reached" if v is None else
                         f"{v:.4f} ({d['delta']:+.4f}, p={d['p_wilcoxon']:.2g})" if d else f"{v:.4f}")
        out.append(f"| {NAMES.get(comp, comp)} | {off['HR@10']:.4f} | {off['Gini@10']:.4f} | "
                   + " | ".join(cells) + " |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    print("| model (budget knob) | HR@10 off | Gini@10 off | HR@10 at Gini 0.70 (Δ vs base) "
          "| HR@10 at Gini 0.60 (Δ vs base) | HR@10 at Gini 0.50 (Δ vs base) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows(args.results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

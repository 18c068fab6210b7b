"""Which user features the demo's two-tower fuses, chosen on the demo's validation split.

The base two-tower of ``configs/demo.yaml`` is trained once per ``model.user_features``
value on the embedded synthetic data (same seed, same everything else); the value with
the best validation NDCG@10 is the demo's. Test metrics are recorded beside it for the
docs, not used for the choice.

    python benchmarks/demo_settings.py            # ~3 min on one core
    -> benchmarks/results/demo_settings.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from marl_two_tower.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "demo_settings.json"
VALUES = ("all", "demographics", "id", "none")
KEYS = ("HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10")


def run(value: str, out: Path) -> dict[str, Any]:
    """Train the demo's base two-tower with ``model.user_features=value``."""
    from marl_two_tower.study.demo import demo_config
    from marl_two_tower.study.run import train_and_evaluate
    from marl_two_tower.utils.runtime import apply_threads

    cfg = demo_config(out, False, f"user_features_{value}",
                      [f"model.user_features={value}", "train.tensorboard=false"])
    apply_threads(cfg.train.num_threads)
    t0 = time.perf_counter()
    _, doc = train_and_evaluate(cfg, progress=False)
    m = doc["metrics"]
    return {"val": {k: m["val"]["full"][k] for k in KEYS},
            "test": {k: m["test"]["full"][k] for k in KEYS},
            "best_epoch": doc["extra"].get("best_epoch"), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", nargs="+", choices=VALUES, default=list(VALUES),
                    help="model.user_features values to train (default all four)")
    ap.add_argument("--output", default=str(RESULTS), help="result JSON (default %(default)s)")
    args = ap.parse_args(argv)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for value in args.values:
            rows[value] = run(value, Path(tmp))
            r = rows[value]
            print(f"user_features={value:13s} val NDCG@10 {r['val']['NDCG@10']:.4f} "
                  f"HR@10 {r['val']['HR@10']:.4f} | test HR@10 {r['test']['HR@10']:.4f} "
                  f"(best epoch {r['best_epoch']}, {r['seconds']:.0f} s)", flush=True)
    best = max(rows, key=lambda v: rows[v]["val"]["NDCG@10"])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    doc = {"benchmark": "demo_settings", "command": "python benchmarks/demo_settings.py",
           "git_commit": commit, "config": "configs/demo.yaml", "chosen_on": "val NDCG@10",
           "best": best, "rows": rows}
    write_text_atomic(Path(args.output), json.dumps(doc, indent=2) + "\n")
    print(f"best on validation: user_features={best} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

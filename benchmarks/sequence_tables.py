"""Render the sequence-tower results tables (docs/sequence_tower.md, README) from JSON.

    .venv/bin/python benchmarks/sequence_tables.py --source ml-1m-ordered
    .venv/bin/python benchmarks/sequence_tables.py --source ml-100k

Reads every ``benchmarks/results/{sasrec,sequence,baselines,run}_<source>_test*.json``:
those written by ``benchmarks/sasrec_reference.py`` and copies of ``marl-two-tower
train``'s ``results.json`` (``run_*``: the full model's row), and prints one Markdown table: per model,
the mean (and, with more than one seed, the standard deviation) of the test metrics
over seeds, the seeds, seconds per epoch and fit minutes (a resumed run: the sum of its
epochs' training seconds, validation excluded). A model's runs from several
files are pooled by seed; a later file's seed replaces an earlier one's (``--files``
gives the order; default: sorted names). Nothing is typed in: the docs' tables are
this script's output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

KEYS = ["HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10"]
LABELS = {"mostpop": "MostPop", "bpr": "BPR-MF", "ease": "EASE (lambda on val, refit train+val)",
          "itemknn": "ItemKNN", "sasrec": "SASRec reference", "two_tower": "two-tower, transformer tower",
          "full": "full model (every component)"}
ORDER = ["mostpop", "itemknn", "bpr", "ease", "sasrec", "two_tower", "full"]
RESULTS = Path(__file__).parent / "results"


COMPONENTS = ("context_gnn", "marl", "fair_sampler", "buhs", "gini", "tail_loss")


def from_run_results(doc: dict) -> dict[str, dict[str, dict]]:
    """A ``marl-two-tower train`` ``results.json`` (schema ``marl-two-tower/results``) as
    ``{model: {seed: record}}`` in :func:`benchmarks/sasrec_reference.py`'s layout: the
    model is ``full`` with every component enabled, else ``two_tower`` plus the enabled
    ones; epoch seconds are the median over its epoch records, the fit the sum of them
    (training only, validation excluded, like a resumed run's)."""
    cfg = doc["config"]
    on = [c for c in COMPONENTS if cfg.get(c, {}).get("enabled")]
    model = "full" if len(on) == len(COMPONENTS) else ", ".join(["two_tower", *(f"+{c}" for c in on)])
    times = [h["time_s"] for h in doc["history"] if "time_s" in h]
    record = {"test": doc["metrics"]["test"]["full"], "settings": {"overrides": []},
              "epoch_seconds": float(np.median(times)) if times else None,
              "resumed": True, "train_seconds_all_epochs": float(np.sum(times)),
              "best_epoch": doc["extra"].get("best_epoch")}
    return {model: {str(doc["run"]["seed"]): record}}


def collect(files: list[Path]) -> dict[str, dict[str, dict]]:
    """model -> seed -> run record (a later file's seed wins)."""
    out: dict[str, dict[str, dict]] = {}
    for f in files:
        doc = json.loads(f.read_text())
        results = from_run_results(doc) if doc.get("schema") == "marl-two-tower/results" else doc["results"]
        for model, runs in results.items():
            for seed, run in runs.items():
                if "test" in run:
                    out.setdefault(variant(model, run), {})[seed] = run | {"file": f.name}
    return out


# overrides that give a run its own row (never averaged with the default's), with the
# value that means "the default row"
VARIANT_KEYS = {"model.user_features": "all", "train.lr_schedule": "constant",
                "model.train_positions": "window", "model.attn_dropout": "-1",
                "model.full_softmax_bf16": "false", "train.batch_size": "1024"}


def variant(model: str, run: dict) -> str:
    """The row a run belongs to: its model, plus each :data:`VARIANT_KEYS` override the
    run set to something other than its default (``two_tower, user_features=none``)."""
    over = run.get("settings", {}).get("overrides", []) if isinstance(run.get("settings"), dict) else []
    set_to = dict(o.split("=", 1) for o in over if "=" in o)
    tags = [f"{k.split('.')[-1]}={set_to[k]}" for k, default in VARIANT_KEYS.items()
            if set_to.get(k, default) != default]
    return ", ".join([model, *tags])


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def table(runs: dict[str, dict[str, dict]]) -> str:
    lines = ["| model | seeds | " + " | ".join(KEYS) + " | s/epoch | fit (min) | best epoch |",
             "|---" * (len(KEYS) + 5) + "|"]
    def rank(m: str) -> tuple[int, str]:
        base = m.partition(",")[0]
        return (ORDER.index(base) if base in ORDER else len(ORDER), m)

    for model in sorted(runs, key=rank):
        seeds = sorted(runs[model], key=int)
        rs = [runs[model][s] for s in seeds]
        metrics = [cell([r["test"][k] for r in rs]) for k in KEYS]
        eps = [r["epoch_seconds"] for r in rs if r.get("epoch_seconds")]
        # a resumed run's process timed only its own epochs: count every epoch's training
        fits = [(r["train_seconds_all_epochs"] if r.get("resumed") else r["fit_seconds"]) / 60
                for r in rs]
        best = [str(r["best_epoch"]) for r in rs if r.get("best_epoch")]
        base, comma, setting = model.partition(",")
        label = LABELS.get(base, base) + comma + setting
        lines.append(f"| {label} | {', '.join(seeds)} | " + " | ".join(metrics)
                     + f" | {np.mean(eps):.0f} | {np.mean(fits):.1f} | {', '.join(best)} |"
                     if eps else
                     f"| {label} | {', '.join(seeds)} | " + " | ".join(metrics)
                     + f" | | {np.mean(fits):.1f} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="ml-1m-ordered")
    ap.add_argument("--files", nargs="*", type=Path, default=None)
    args = ap.parse_args()
    files = args.files or sorted(p for pat in ("sasrec", "sequence", "baselines", "run")
                                 for p in RESULTS.glob(f"{pat}_{args.source}_test*.json"))
    print(table(collect(files)))
    print("\nfrom: " + ", ".join(f.name for f in files))


if __name__ == "__main__":
    main()

"""``marl-two-tower demo``: the whole job end to end, offline, in a few minutes.

On the embedded synthetic MovieLens-like data it fits the baselines (MostPop,
ItemKNN, BPR-MF, EASE), trains the base two-tower and the full model (every
implemented component on), evaluates everything once on test with the same
harness, and writes a run folder per model (``results.json``/``results.csv``, the
per-user arrays and frontier candidates) plus a Markdown summary table into the
output folder. Baselines go through :func:`study.run.fit_and_evaluate_baseline`, the
same function the ablation study uses.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from marl_two_tower.baselines import BASELINES
from marl_two_tower.config import Config, load_config
from marl_two_tower.data import load_split
from marl_two_tower.model.build import COMPONENTS
from marl_two_tower.study.run import fit_and_evaluate_baseline, train_and_evaluate
from marl_two_tower.utils.io import write_text_atomic
from marl_two_tower.utils.runtime import apply_threads

TABLE_KEYS = ["HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10", "Redundancy@10"]


QUICK = ["data.synthetic.n_users=300", "data.synthetic.n_items=200", "train.epochs=2",
         "train.batch_size=256", "model.dim=16", "model.id_dim=16", "model.hidden=32"]


# What the synthetic rows can and cannot show (measured: docs/results.md, "Demo").
SYNTHETIC_NOTE = """
The synthetic data plants genre tastes and a Zipf popularity that is itself a true
signal, and draws each user's items independently, so their order carries no
signal: the components that flatten exposure (Fair Sampler, the GINI agent's
exposure budget) cost hits here, and ContextGNN's recent-item context has nothing
to find. On MovieLens-100K the same full model is as accurate as EASE (HR@10 0.157
vs 0.149) and fairer than BPR-MF at once: see docs/results.md.
"""


def demo_config(output_dir: Path, quick: bool, name: str = "demo",
                extra: list[str] | None = None) -> Config:
    """Demo settings: ``configs/base.yaml``, sized down with ``quick`` (for tests)."""
    over = [f"output_dir={output_dir}", f"name={name}",
            f"checkpoint_dir={output_dir / 'checkpoints' / name}"]
    return load_config("base.yaml", over + (QUICK if quick else []) + (extra or []))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of {"model", metric: value} -> a Markdown table."""
    head = "| model | " + " | ".join(TABLE_KEYS) + " | time (s) |"
    sep = "|---" * (len(TABLE_KEYS) + 2) + "|"
    lines = [head, sep]
    for r in rows:
        vals = [f"{r[k]:.4f}" if isinstance(r.get(k), float) else "n/a" for k in TABLE_KEYS]
        lines.append(f"| {r['model']} | " + " | ".join(vals) + f" | {r['time_s']:.1f} |")
    return "\n".join(lines)


def run_demo(output_dir: Path, quick: bool = False) -> list[dict[str, Any]]:
    """Run the demo; returns the table rows (also printed and written)."""
    base_cfg = demo_config(output_dir, quick)
    apply_threads(base_cfg.train.num_threads)  # the baselines fit before any Trainer sets it
    split = load_split(base_cfg.data)
    print(f"data: {split.dataset.name}: {split.n_users} users, {split.n_items} items, "
          f"{split.dataset.n_interactions} interactions; tail = {int(split.tail_mask.sum())} "
          f"items ({split.tail_by}, {split.tail_fraction:.0%})")
    rows: list[dict[str, Any]] = []
    for name in BASELINES:
        t0 = time.perf_counter()
        doc = fit_and_evaluate_baseline(name, demo_config(output_dir, quick, name), split)
        rows.append({"model": name, **doc["metrics"]["test"]["full"],
                     "time_s": time.perf_counter() - t0})
        print(f"  {name:10s} HR@10 {doc['metrics']['test']['full']['HR@10']:.4f}")
    variants = {"two-tower (base)": [], "two-tower (full)": [f"{c}.enabled=true" for c in COMPONENTS]}
    for label, extra in variants.items():
        run = "two_tower_base" if "base" in label else "two_tower_full"
        cfg = demo_config(output_dir, quick, run, extra)
        t0 = time.perf_counter()
        _, doc = train_and_evaluate(cfg, progress=not quick, split=split)
        rows.append({"model": label, **doc["metrics"]["test"]["full"],
                     "time_s": time.perf_counter() - t0})
        print(f"  {label:10s} HR@10 {doc['metrics']['test']['full']['HR@10']:.4f}")
    table = markdown_table(rows)
    note = SYNTHETIC_NOTE if base_cfg.data.source == "synthetic" else ""
    write_text_atomic(output_dir / "summary.md",
                      f"# Demo results ({split.dataset.name}, test split, full ranking)\n\n"
                      f"{table}\n\nModel selection used validation only.\n{note}")
    print()
    print(table)
    print(note, end="")
    print(f"\nfiles: {output_dir}/summary.md and {output_dir}/<model>/results.json|csv")
    return rows

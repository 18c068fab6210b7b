"""``marl-two-tower demo``: the whole job end to end, offline, in about three minutes.

On the embedded synthetic MovieLens-like data it fits the baselines (MostPop,
ItemKNN, BPR-MF, EASE, SASRec), trains the base two-tower and the full model (every
implemented component on), evaluates everything once on test with the same
harness, and writes a run folder per model (``results.json``/``results.csv``, the
per-user arrays and frontier candidates), a Markdown summary table
(``summary.md``) and the report of those runs (``report/``: the frontier, ablation
bars and Lorenz plots, :func:`marl_two_tower.study.report.write_report`, the code of
``marl-two-tower report``). Baselines go through
:func:`study.run.fit_and_evaluate_baseline`, the same function the ablation study uses.

Every number the demo prints is one it computed in this run and wrote to its files
(``tests/test_demo.py`` parses the output and checks): data counts, the metrics of
the table (``<model>/results.json``) and wall times, which are labelled as such.
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
from marl_two_tower.utils.runtime import apply_threads, available_cores

TABLE_KEYS = ["HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10", "Redundancy@10"]


# 50 sampled negatives: the longest of 300 synthetic histories leaves fewer than 99 of
# 200 items unseen
QUICK = ["data.synthetic.n_users=300", "data.synthetic.n_items=200", "train.epochs=2",
         "train.batch_size=256", "model.dim=16", "model.id_dim=16", "model.hidden=32",
         "eval.sampled_negatives=50"]

# The demo's own settings are configs/demo.yaml (on top of base.yaml): the transformer
# tower at the demo's size, at most 30 epochs (early stopping on validation).
DEMO_CONFIG = "demo.yaml"

# Baseline constructor arguments of the demo: SASRec reads the last 50 items (the
# two-tower's history_len) for at most 40 epochs at lr 3e-3, instead of 200 items for
# 200 epochs at 1e-3 (the reference setting), to fit the demo's three minutes; the values
# of synthetic_realism.py's FIT_DEMO_SASREC, the SASRec its order knobs were fitted with.
BASELINE_PARAMS: dict[str, dict[str, Any]] = {"sasrec": {"max_len": 50, "epochs": 40,
                                                         "lr": 0.003}}
QUICK_BASELINE_PARAMS: dict[str, dict[str, Any]] = {"sasrec": {"max_len": 20, "epochs": 2,
                                                               "dim": 16}}

# The report's bootstrap resamples (p-values down to ~0.005); the frontier-curve
# section (the exposure budget swept for every run) is left to `marl-two-tower report`,
# whose sweep alone takes minutes. The plots of the report the demo ends with:
N_BOOT = 200
PLOTS = ("frontier", "ablation_bars", "lorenz")

# What the data is, without numbers (the measured comparison with MovieLens: docs/results.md).
SYNTHETIC_NOTE = """
The rows come from the embedded synthetic MovieLens-like data (data/synthetic.py;
what it plants and how it compares with MovieLens-100K: docs/data.md). The
numbers measured on real MovieLens data, and the commands behind them, are in
docs/results.md.
"""

# run folder -> table label, in table order (baselines first)
TWO_TOWER = {"two_tower_base": "two-tower (base)", "two_tower_full": "two-tower (full)"}


def demo_config(output_dir: Path, quick: bool, name: str = "demo",
                extra: list[str] | None = None) -> Config:
    """Demo settings: ``configs/demo.yaml``, or ``configs/base.yaml`` sized down to
    :data:`QUICK` with ``quick`` (for tests); results and checkpoints under ``output_dir``."""
    over = [f"output_dir={output_dir}", f"name={name}",
            f"checkpoint_dir={output_dir / 'checkpoints' / name}"]
    if quick:
        return load_config("base.yaml", over + QUICK + (extra or []))
    return load_config(DEMO_CONFIG, over + (extra or []))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of {"model", metric: value, "time_s"} -> a Markdown table (4 decimals)."""
    head = "| model | " + " | ".join(TABLE_KEYS) + " | time (s) |"
    sep = "|---" * (len(TABLE_KEYS) + 2) + "|"
    lines = [head, sep]
    for r in rows:
        vals = [f"{r[k]:.4f}" if isinstance(r.get(k), float) else "n/a" for k in TABLE_KEYS]
        lines.append(f"| {r['model']} | " + " | ".join(vals) + f" | {r['time_s']:.1f} |")
    return "\n".join(lines)


def _train_full(cfg: Config, split: Any) -> tuple[dict[str, Any], float]:
    """The full model's run in a worker process: (results document, seconds)."""
    apply_threads(cfg.train.num_threads)
    t0 = time.perf_counter()
    _, doc = train_and_evaluate(cfg, progress=False, split=split)
    return doc, time.perf_counter() - t0


def run_demo(output_dir: Path, quick: bool = False, progress: bool = True,
             jobs: int = 2) -> list[dict[str, Any]]:
    """Run the demo; returns the table rows (also printed and written to
    ``summary.md``). ``progress``: per-epoch lines (and bars on a terminal).

    ``jobs`` >= 2 on a machine with two cores or more: the full model (the longest run)
    trains in a second process, one thread each, while this one fits the baselines and
    the base two-tower: the second core without oversubscribing it. Every run seeds
    itself from its config, so the numbers are those of ``jobs=1`` (tested); the worker
    prints no epoch lines.
    """
    from marl_two_tower.study.report import write_report  # matplotlib only when reporting

    t_start = time.perf_counter()
    output_dir = Path(output_dir)
    base_cfg = demo_config(output_dir, quick)
    apply_threads(base_cfg.train.num_threads)  # the baselines fit before any Trainer sets it
    split = load_split(base_cfg.data)
    print(f"data: {split.dataset.name}: {split.n_users} users, {split.n_items} items, "
          f"{split.dataset.n_interactions} interactions, {int(split.tail_mask.sum())} tail items")
    full_extra = [f"{c}.enabled=true" for c in COMPONENTS]
    pool = future = None
    if jobs >= 2 and available_cores() >= 2:  # one core: a second process would only share it
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child would inherit this process's torch thread pools
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        future = pool.submit(_train_full, demo_config(output_dir, quick, "two_tower_full",
                                                      full_extra), split)
        print("  two-tower (full): training in a second process")
    rows: list[dict[str, Any]] = []
    runs: list[str] = []
    for name in BASELINES:
        t0 = time.perf_counter()
        doc = fit_and_evaluate_baseline(name, demo_config(output_dir, quick, name), split,
                                        (QUICK_BASELINE_PARAMS if quick else BASELINE_PARAMS).get(name))
        rows.append({"model": name, **doc["metrics"]["test"]["full"],
                     "time_s": time.perf_counter() - t0})
        runs.append(name)
        print(f"  {name}: fitted and evaluated in {rows[-1]['time_s']:.1f} s")
    for run, label in TWO_TOWER.items():
        t0 = time.perf_counter()
        if run == "two_tower_full" and future is not None:
            doc, seconds = future.result()
            pool.shutdown()
        else:
            extra = full_extra if run == "two_tower_full" else []
            _, doc = train_and_evaluate(demo_config(output_dir, quick, run, extra),
                                        progress=progress and not quick, split=split)
            seconds = time.perf_counter() - t0
        rows.append({"model": label, **doc["metrics"]["test"]["full"], "time_s": seconds})
        runs.append(run)
        print(f"  {label}: trained and evaluated in {rows[-1]['time_s']:.1f} s")
    table = markdown_table(rows)
    note = SYNTHETIC_NOTE if base_cfg.data.source == "synthetic" else ""
    write_text_atomic(output_dir / "summary.md",
                      f"# Demo results ({split.dataset.name}, test split, full ranking)\n\n"
                      f"{table}\n\nModel selection used validation only.\n{note}")
    t0 = time.perf_counter()
    report = output_dir / "report"
    write_report([output_dir / r for r in runs], report, base="two_tower_base", n_boot=N_BOOT,
                 frontier=False)
    t_report = time.perf_counter() - t0
    print()
    print(table)
    print(note, end="")
    plots = [f"{report}/{p}.png" for p in PLOTS if (report / f"{p}.png").exists()]
    print(f"\nplots (report written in {t_report:.1f} s): " + ", ".join(plots))
    print(f"files: {output_dir}/summary.md, {output_dir}/<model>/results.json|csv, "
          f"{report}/ablation.md (p-values vs the base two-tower); the exposure-budget "
          f"frontier curves: marl-two-tower report {output_dir} --base two_tower_base")
    print(f"demo wall time: {time.perf_counter() - t_start:.0f} s")
    return rows

"""Fairness components on ML-100K: base two-tower vs base + each component.

Leave-one-out by time, full ranking (train items masked; for test, the validation
item too). Every two-tower variant is trained with the same seed, epochs and early
stopping on validation NDCG@10; the test split is read only with ``--part test``.
Baselines (MostPop, BPR-MF, EASE with lambda tuned on validation) are fitted on
train only, like the two-tower models, and scored by the same harness.

    .venv/bin/python benchmarks/components_ml100k.py --part val            # tuning
    .venv/bin/python benchmarks/components_ml100k.py --part test --seeds 42 1 2   # the table
    .venv/bin/python benchmarks/components_ml100k.py --part val \\
        --variants "+Fair Sampler" --set fair_sampler.beta=0.75              # one sweep point

    .venv/bin/python benchmarks/components_ml100k.py --sampler-gini         # sampled-item Gini

Every row is scored on the plain top-10 lists: "+GINI agent" is its training-time
arm; its inference-time exposure budget is measured by
``benchmarks/exposure_budget_ml100k.py``.

Each finished row is also written to ``--out`` (JSON lines), so variants can run in
separate processes and ``--collect`` prints the table from the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.baselines import BPR, EASE, MostPop, tune_ease  # noqa: E402
from marl_two_tower.config import load_config  # noqa: E402
from marl_two_tower.data import load_split  # noqa: E402
from marl_two_tower.data.movielens import load_ml100k  # noqa: E402
from marl_two_tower.data.split import leave_one_out  # noqa: E402
from marl_two_tower.eval.protocols import evaluate  # noqa: E402
from marl_two_tower.train.trainer import Trainer  # noqa: E402

METRICS = ("HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10")

# Component defaults live in marl_two_tower/config.py; a variant only switches on.
VARIANTS: dict[str, list[str]] = {
    "Base two-tower": [],
    "+Fair Sampler": ["fair_sampler.enabled=true"],
    "+BUHS": ["buhs.enabled=true"],
    "+GINI agent": ["gini.enabled=true"],
    "+Tail loss": ["tail_loss.enabled=true"],
    "+All four": ["fair_sampler.enabled=true", "buhs.enabled=true", "gini.enabled=true",
                  "tail_loss.enabled=true"],
    # the two components that did not cost accuracy on validation, together
    "+BUHS +Fair Sampler": ["buhs.enabled=true", "fair_sampler.enabled=true"],
    "+BUHS +Fair Sampler +GINI agent": ["buhs.enabled=true", "fair_sampler.enabled=true",
                                        "gini.enabled=true"],
}
# the other two components, for single-component tables on other data (not run by default)
OTHER_COMPONENTS: dict[str, list[str]] = {
    "+ContextGNN": ["context_gnn.enabled=true"],
    "+MARL": ["marl.enabled=true"],
}
# "EASE (train+val)" refits on train + validation after tuning lambda on validation (the
# baselines module's usual last step); the two-tower models never train on validation.
BASELINES = ("MostPop", "BPR-MF", "EASE", "EASE (train+val)")


def metrics_of(split, score_fn, part: str) -> dict[str, float]:
    res = evaluate(split, score_fn, part=part, ks=(10,), protocol="full", groups=False)["full"]
    return {k: float(res[k]) if res[k] is not None else float("nan") for k in METRICS}


def data_overrides(args) -> list[str]:
    """ML-100K from ``--data``, or the embedded synthetic data of ``make demo``."""
    return ["data.source=synthetic"] if args.synthetic else ["data.source=ml-100k",
                                                             f"data.path={args.data}"]


def run_two_tower(split, name: str, overrides: list[str], args, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as ck:
        cfg = load_config(None, [*data_overrides(args),
                                 f"train.epochs={args.epochs}", f"seed={seed}",
                                 "train.num_threads=1", f"checkpoint_dir={ck}",
                                 *overrides, *args.set])
        t0 = time.perf_counter()
        trainer = Trainer(cfg, split, progress=False)
        state = trainer.fit()
        row = {"model": name, "seed": cfg.seed, "overrides": overrides + args.set,
               "best_epoch": state.best_epoch,
               "val_NDCG@10": state.best_metric, "time_s": round(time.perf_counter() - t0, 1)}
        last = state.history[state.best_epoch - 1] if state.best_epoch > 0 else {}
        for key in ("sampler/gini", "gini/lambda", "gini/value"):
            if key in last:
                row[key] = last[key]
        row |= metrics_of(split, trainer.model.scorer(trainer.device), args.part)
    return row


def run_baseline(split, name: str, args, seed: int) -> dict:
    t0 = time.perf_counter()
    if name == "MostPop":
        model = MostPop().fit(split)
        extra = {}
    elif name == "BPR-MF":
        model = BPR(seed=seed).fit(split)
        extra = {}
    else:
        lam, _ = tune_ease(split)  # lambda by validation NDCG@10 only
        refit = name == "EASE (train+val)"
        if refit and args.part == "val":
            raise SystemExit("EASE (train+val) cannot be scored on validation")
        model = EASE(lam).fit(split, include_val=refit)
        extra = {"overrides": [f"lambda={lam}"]}
    return {"model": name, "seed": seed, **extra, "time_s": round(time.perf_counter() - t0, 1),
            **metrics_of(split, model.score, args.part)}


def sampler_gini_table(split, seed: int) -> None:
    """Gini of the items drawn in one epoch (batch 512) by beta and cap, vs uniform."""
    import numpy as np

    from marl_two_tower.data.samplers import PositiveSampler
    from marl_two_tower.fairness.fair_sampler import FairSampler
    from marl_two_tower.metrics.gini import gini

    idx = np.concatenate(list(PositiveSampler(split, 512, seed).batches(0)))
    print(f"uniform sampler: Gini {gini(np.bincount(split.train_items[idx], minlength=split.n_items)):.3f}")
    caps = (1, 2, 4, 10**6)
    print("| beta | " + " | ".join(f"cap {c}" if c < 10**6 else "no cap" for c in caps) + " |")
    print("|---|" + "---|" * len(caps))
    for beta in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        cells = []
        for cap in caps:
            fs = FairSampler(split, 512, seed, beta, cap)
            fs.epoch_indices(0)
            cells.append(f"{fs.last_epoch_gini:.3f}")
        print(f"| {beta} | " + " | ".join(cells) + " |")


def print_table(rows: list[dict], part: str, label: str = "ML-100K") -> None:
    """Mean (and std over seeds when there are several) per model, delta vs the base."""
    import numpy as np

    def key(r: dict) -> tuple[str, str]:  # one row per model and setting; seeds pooled
        return r["model"], " ".join(o for o in r.get("overrides", []) if not o.startswith("seed="))

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    mean = {n: {k: float(np.mean([r[k] for r in g])) for k in METRICS} for n, g in groups.items()}
    base = mean.get(("Base two-tower", ""))
    print(f"\n{label}, LOO by time, full ranking, {part} split "
          "(mean +- std over seeds; delta vs base two-tower)\n")
    print(f"| model | seeds | {' | '.join(METRICS)} | val NDCG@10 | best ep | settings |")
    print("|" + "---|" * (len(METRICS) + 5))
    for (n, setting), g in groups.items():
        cells = []
        for k in METRICS:
            vals = [r[k] for r in g]
            c = f"{np.mean(vals):.4f}"
            if len(vals) > 1:
                c += f" ± {np.std(vals, ddof=1):.4f}"
            if base is not None and (n, setting) != ("Base two-tower", "") and "best_epoch" in g[0]:
                c += f" ({mean[n, setting][k] - base[k]:+.4f})"
            cells.append(c)
        val = [r["val_NDCG@10"] for r in g if "val_NDCG@10" in r]
        vcell = f"{np.mean(val):.4f}" if val else "-"
        ep = ",".join(str(r["best_epoch"]) for r in g if "best_epoch" in r) or "-"
        seeds = ",".join(str(r.get("seed", "-")) for r in g)
        print(f"| {n} | {seeds} | {' | '.join(cells)} | {vcell} | {ep} | {setting} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--part", choices=["val", "test"], default="val")
    p.add_argument("--synthetic", action="store_true",
                   help="the embedded synthetic data (make demo's) instead of ML-100K")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[42],
                   help="training seeds (two-tower and BPR); MostPop and EASE are deterministic")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS) + list(BASELINES),
                   help="rows to run (names from the table)")
    p.add_argument("--set", action="append", default=[], help="extra config override for every "
                   "two-tower variant (repeatable)")
    p.add_argument("--out", default="", help="append each row as a JSON line to this file")
    p.add_argument("--collect", action="store_true", help="only print the table from --out")
    p.add_argument("--sampler-gini", action="store_true",
                   help="only print the Fair Sampler's sampled-item Gini by beta and cap")
    args = p.parse_args()
    torch.set_num_threads(1)

    rows: list[dict] = []
    if args.collect:
        rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
        print_table(rows, args.part, "synthetic (make demo)" if args.synthetic else "ML-100K")
        return 0
    split = (load_split(load_config(None, data_overrides(args)).data) if args.synthetic
             else leave_one_out(load_ml100k(args.data)))
    if args.sampler_gini:
        sampler_gini_table(split, args.seeds[0])
        return 0
    for name in args.variants:
        if name not in VARIANTS and name not in OTHER_COMPONENTS and name not in BASELINES:
            raise SystemExit(f"unknown variant {name!r}; known: "
                             f"{list(VARIANTS) + list(OTHER_COMPONENTS) + list(BASELINES)}")
    for name in args.variants:
        two_tower = VARIANTS.get(name, OTHER_COMPONENTS.get(name))
        seeds = args.seeds if two_tower is not None or name == "BPR-MF" else args.seeds[:1]
        if name == "EASE (train+val)" and args.part == "val":
            continue
        for seed in seeds:
            if two_tower is not None:
                row = run_two_tower(split, name, two_tower, args, seed)
            else:
                row = run_baseline(split, name, args, seed)
            row["part"] = args.part
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print_table(rows, args.part, "synthetic (make demo)" if args.synthetic else "ML-100K")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

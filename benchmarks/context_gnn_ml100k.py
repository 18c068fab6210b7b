"""ContextGNN on ML-100K: base two-tower vs "+ContextGNN", same seed, epochs, split.

Leave-one-out by time, full ranking (train items masked; for test, the validation item
too). Both models train with early stopping on validation NDCG@10; ``--part test``
reads the test split once, at the end. Per-user hit@10 / ndcg@10 / tailhit@10 arrays
(``evaluation.evaluate_per_user``) give paired Wilcoxon signed-rank and paired t-tests
(``significance.paired_tests``: scipy ``wilcoxon`` and ``ttest_rel``) with effect sizes;
Coverage@10, Gini@10 and TailHR@10 are reported with their change. Training time per
epoch is the mean over the epochs run.

Familiar-set diagnostics of the ContextGNN model: ``F-recall`` = share of targets that
are in F(u) (the pair-wise head can only help those), ``F-share`` = share of top-10
slots taken by familiar items.

    .venv/bin/python benchmarks/context_gnn_ml100k.py --part val             # tuning
    .venv/bin/python benchmarks/context_gnn_ml100k.py --part val --variant-only \\
        --set context_gnn.fanout=40                                          # one sweep point
    .venv/bin/python benchmarks/context_gnn_ml100k.py --part test --out runs/cgnn.jsonl   # the table
    .venv/bin/python benchmarks/context_gnn_ml100k.py --part test --variant-only \
        --name "+ContextGNN familiar" --set context_gnn.familiar=true --out runs/cgnn.jsonl
    .venv/bin/python benchmarks/context_gnn_ml100k.py --part test --collect --out runs/cgnn.jsonl
    .venv/bin/python benchmarks/context_gnn_ml100k.py --timing 5           # s/epoch, alternating
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
from marl_two_tower.data.movielens import load_ml100k  # noqa: E402
from marl_two_tower.data.split import leave_one_out  # noqa: E402
from marl_two_tower.eval.protocols import evaluate, evaluate_per_user  # noqa: E402
from marl_two_tower.eval.significance import paired_tests  # noqa: E402
from marl_two_tower.train.trainer import Trainer  # noqa: E402

METRICS = ("HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10")


def train(split, overrides: list[str], args) -> tuple[Trainer, dict]:
    """Fit with early stopping on validation; returns the trainer and a summary row."""
    with tempfile.TemporaryDirectory() as ck:
        cfg = load_config(None, ["data.source=ml-100k", f"data.path={args.data}",
                                 f"train.epochs={args.epochs}", f"seed={args.seed}",
                                 "train.num_threads=1", f"checkpoint_dir={ck}", *overrides])
        t0 = time.perf_counter()
        trainer = Trainer(cfg, split, progress=False)
        state = trainer.fit()
        wall = time.perf_counter() - t0
    epoch_s = [h["time_s"] for h in state.history]
    return trainer, {"overrides": overrides, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                     "val_NDCG@10": state.best_metric, "time_s": round(wall, 1),
                     "s_per_epoch": round(float(np.mean(epoch_s)), 2)}


def familiar_stats(model, split, part: str, recs: np.ndarray, users: np.ndarray) -> dict:
    """F-recall (targets in F(u)) and F-share (top-10 slots from F(u)); F(u) = the union
    of the eval.inference_samples draws' familiar sets, as scored (mean_user_state)."""
    adj = model.score_adjuster
    if adj is None:
        return {}
    model.eval()
    with torch.no_grad():
        items = model.mean_user_state(torch.as_tensor(users))[1]
    items = items.cpu().numpy()
    tgt = split.targets(part)[users]
    in_f = (items == tgt[:, None]).any(1)
    share = (recs[:, :10, None] == items[:, None, :]).any(-1).mean()
    return {"F-recall": float(in_f.mean()), "F-share": float(share)}


def run(split, name: str, overrides: list[str], args) -> dict:
    trainer, row = train(split, overrides, args)
    model = trainer.model
    res = evaluate(split, model.scorer(), part=args.part, ks=(10,), protocol="full", groups=False)
    row |= {k: float(res["full"][k]) if res["full"][k] is not None else float("nan") for k in METRICS}
    rank, per_user = evaluate_per_user(split, model.scorer(), part=args.part, ks=(10,))
    row |= familiar_stats(model, split, args.part, rank.recs, rank.users)
    row["model"] = name
    row["per_user"] = {k: per_user[k].tolist() for k in ("hit@10", "ndcg@10", "tailhit@10")}
    return row


def timing(split, variant: list[str], args) -> None:
    """Median seconds per training epoch, base and variant alternating epoch by epoch
    in one process (so both see the same machine load)."""
    with tempfile.TemporaryDirectory() as ck:
        common = ["data.source=ml-100k", f"data.path={args.data}", f"seed={args.seed}",
                  "train.num_threads=1", f"checkpoint_dir={ck}"]
        trainers = {"Base two-tower": Trainer(load_config(None, common), split, progress=False),
                    args.name: Trainer(load_config(None, common + variant), split, progress=False)}
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for epoch in range(args.timing):
            for name, tr in trainers.items():
                t0 = time.perf_counter()
                tr.train_epoch(epoch)
                times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    base = med["Base two-tower"]
    print(f"\nSeconds per training epoch (median of {args.timing}, alternating, 1 thread)\n")
    print("| model | s/epoch | ratio | all epochs |")
    print("|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / base:.2f}x | {' '.join(f'{t:.1f}' for t in times[k])} |")


def fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def print_table(base: dict | None, rows: list[dict], part: str) -> None:
    print(f"\nML-100K, LOO by time, full ranking, {part} split\n")
    print(f"| model | {' | '.join(METRICS)} | F-recall | F-share | best ep | s/epoch | settings |")
    print("|" + "---|" * (len(METRICS) + 6))
    for r in ([base] if base else []) + rows:
        cells = []
        for k in METRICS:
            d = f" ({r[k] - base[k]:+.4f})" if base is not None and r is not base else ""
            cells.append(f"{r[k]:.4f}{d}")
        fam = [f"{r[k]:.3f}" if k in r else "-" for k in ("F-recall", "F-share")]
        print(f"| {r['model']} | {' | '.join(cells)} | {' | '.join(fam)} | {r['best_epoch']} | "
              f"{r['s_per_epoch']} | {' '.join(r['overrides'])} |")
    if base is None:
        return
    print("\nPaired tests vs base (per user; Wilcoxon signed-rank and paired t-test)\n")
    print("| model | metric | base | variant | delta | p Wilcoxon | p t-test | Cohen d | r rank-biserial |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for m in ("hit@10", "ndcg@10", "tailhit@10"):
            t = paired_tests(np.asarray(r["per_user"][m], dtype=float),
                             np.asarray(base["per_user"][m], dtype=float))
            if not t["n"]:
                continue
            print(f"| {r['model']} | {m} (n={t['n']}) | {t['mean_y']:.4f} | {t['mean_x']:.4f} | "
                  f"{t['delta']:+.4f} | {fmt_p(t['p_wilcoxon'])} | {fmt_p(t['p_ttest'])} | "
                  f"{t['cohen_d'] if t['cohen_d'] is None else round(t['cohen_d'], 3)} | "
                  f"{t['rank_biserial'] if t['rank_biserial'] is None else round(t['rank_biserial'], 3)} |")
    ratio = [r["s_per_epoch"] / base["s_per_epoch"] for r in rows]
    print("\nTraining time per epoch: base "
          f"{base['s_per_epoch']} s; " + "; ".join(f"{r['model']} {r['s_per_epoch']} s "
                                                   f"({x:.1f}x)" for r, x in zip(rows, ratio, strict=True)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--part", choices=["val", "test"], default="val")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", default=[],
                   help="extra config override of the +ContextGNN variant (repeatable)")
    p.add_argument("--variant-only", action="store_true", help="skip the base model")
    p.add_argument("--name", default="+ContextGNN", help="row label of the variant")
    p.add_argument("--out", default="", help="append each row (with per-user arrays) as JSON lines")
    p.add_argument("--collect", action="store_true", help="only print the table from --out")
    p.add_argument("--timing", type=int, default=0,
                   help="only time N alternating epochs of base and variant (no evaluation)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.timing:
        timing(leave_one_out(load_ml100k(args.data)), ["context_gnn.enabled=true", *args.set], args)
        return 0

    rows: list[dict] = []
    if args.collect:
        rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    else:
        split = leave_one_out(load_ml100k(args.data))
        todo = [] if args.variant_only else [("Base two-tower", [])]
        todo.append((args.name, ["context_gnn.enabled=true", *args.set]))
        for name, overrides in todo:
            row = run(split, name, overrides, args) | {"part": args.part}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_user"}), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [r for r in rows if r["part"] == args.part]
    base = next((r for r in rows if r["model"] == "Base two-tower"), None)
    print_table(base, [r for r in rows if r is not base], args.part)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

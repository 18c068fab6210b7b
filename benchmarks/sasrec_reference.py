"""SASRec reference and the transformer two-tower base on one protocol (issue 14).

    .venv/bin/python benchmarks/sasrec_reference.py --source ml-100k
    .venv/bin/python benchmarks/sasrec_reference.py --source ml-1m-ordered --seeds 42 1 2
    .venv/bin/python benchmarks/sasrec_reference.py --source ml-100k --models sasrec \
        --val-only --dropout 0.5 --blocks 1          # one point of the validation grid

Leave-one-out by time (``ml-1m-ordered``: by its ``seq`` column), full ranking over the
catalogue with the user's train items (and, for test, the validation item) masked,
K = 10, through the project's harness (:func:`marl_two_tower.eval.protocols.evaluate`).

Rows (``--models``):

* ``sasrec``: :class:`marl_two_tower.baselines.SASRec`, nothing but the item sequence;
  full-softmax CE on every position; early stopping on validation NDCG@10; for test
  the validation item is appended to the input sequence (``fit(include_val=True)``).
* ``mostpop``, ``bpr``, ``ease``: the project's baselines (EASE: lambda on validation,
  refit on train + validation for test).
* ``two_tower``: the base two-tower with ``model.user_encoder=transformer`` (the same
  encoder fused with the user id and demographics, item tower with genres and year,
  one dot product), trained by the project's Trainer on sequence batches with the
  full-softmax CE (``model.full_softmax_max_items``), early stopping on validation
  NDCG@10; for test its history also gets the validation item appended
  (``eval.test_history=train+val``, :func:`marl_two_tower.eval.scorers.part_scorers`),
  as for SASRec.

``--val-only`` stops after model selection and reports validation metrics (for the
hyper-parameter grid; the test split is not touched). Writes ``--out`` (JSON): per
model and seed the metrics, seconds per epoch, total fit seconds, best epoch,
settings, and the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marl_two_tower.baselines import SASRec
from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.data.split import Split
from marl_two_tower.eval.protocols import evaluate
from marl_two_tower.eval.scorers import part_scorers
from marl_two_tower.utils.io import to_jsonable, write_text_atomic

KEYS = ["HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10"]
DEFAULT_DATA = Path(os.environ.get("MARL_TWO_TOWER_DATA",
                                   Path(__file__).resolve().parents[2] / "shared" / "data"))


def metrics(split: Split, score_fn, part: str) -> dict[str, Any]:
    full = evaluate(split, score_fn, part, ks=(10,), protocol="full", groups=False)["full"]
    return {k: full[k] for k in KEYS}


def run_sasrec(split: Split, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    params = dict(dim=args.dim, max_len=args.max_len, n_blocks=args.blocks, n_heads=args.heads,
                  dropout=args.dropout, lr=args.lr, batch_size=args.batch_size,
                  epochs=args.epochs, patience=args.patience, eval_every=args.eval_every,
                  bf16=args.bf16, seed=seed)
    model = SASRec(verbose=True, **params).fit(split, include_val=not args.val_only)
    out: dict[str, Any] = {"settings": params, "best_epoch": model.best_epoch,
                           "fit_seconds": model.fit_seconds,
                           "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in model.history])),
                           "history": model.history}
    # validation metrics: train-only input sequences, whatever include_val says
    out["val"] = metrics(split, lambda u: model._score_from(u, split.train_indptr,
                                                             split.train_items), "val")
    if not args.val_only:
        out["test"] = metrics(split, model.score, "test")
    return out


def run_two_tower(split: Split, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from marl_two_tower.train.trainer import Trainer

    ck = Path(args.workdir) / f"two_tower_{seed}"
    if not args.resume:
        shutil.rmtree(ck, ignore_errors=True)
    overrides = [
        f"data.source={args.source}", f"data.path={args.data}", f"seed={seed}",
        "model.user_encoder=transformer", f"model.history_len={args.max_len}",
        f"model.n_blocks={args.blocks}", f"model.n_heads={args.heads}",
        f"model.seq_dropout={args.dropout}", f"model.id_dim={args.dim}", f"model.dim={args.dim}",
        "model.full_softmax_max_items=20000", "train.in_batch_negatives=false",
        f"train.batch_size={args.tt_batch_rows}", f"train.lr={args.tt_lr}",
        f"train.epochs={args.epochs}", f"train.patience={args.patience}",
        f"train.eval_every={args.eval_every}", "train.num_threads=1", "train.tensorboard=false",
        f"checkpoint_dir={ck}", f"output_dir={args.workdir}", *args.set]
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, split, progress=False)
    state = trainer.fit(resume=args.resume)  # resume: exact replay (trainer.py), more epochs
    fit_seconds = time.perf_counter() - t0
    model = trainer.model
    epoch_s = [h["time_s"] for h in state.history]
    out: dict[str, Any] = {
        "settings": {"config": args.config, "overrides": overrides},
        "best_epoch": state.best_epoch, "epochs_run": state.epoch,
        # with --resume: this process's seconds only (add the first process's fit_seconds)
        "fit_seconds": fit_seconds, "resumed": bool(args.resume),
        "train_seconds_all_epochs": float(sum(epoch_s)),  # training only, every epoch
        "epoch_seconds": float(np.mean(epoch_s)),
        "history": [{k: v for k, v in h.items() if isinstance(v, (int, float))}
                    for h in state.history]}
    scorers = part_scorers(model, split, cfg, trainer.device)  # test reads train + val
    out["val"] = metrics(split, scorers["val"], "val")
    if not args.val_only:
        out["test"] = metrics(split, scorers["test"], "test")
    return out


def run_classic(name: str):
    """MostPop / BPR-MF / EASE rows of the same table (the project's baselines):
    EASE's lambda is chosen on validation NDCG@10 and the model refit on train +
    validation for test (the reference protocol of benchmarks/baselines_ml100k.py)."""
    from marl_two_tower.baselines import BPR, EASE, MostPop, tune_ease

    def run(split: Split, args: argparse.Namespace, seed: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        settings: dict[str, Any] = {}
        if name == "ease":
            lam, _ = tune_ease(split, [50.0, 100.0, 200.0, 500.0, 1000.0])
            settings = {"lambda": lam, "chosen_on": "validation NDCG@10", "refit": "train+val"}
            val_model = EASE(lam=lam).fit(split)
            test_model = EASE(lam=lam).fit(split, include_val=True)
        else:
            val_model = MostPop() if name == "mostpop" else BPR(seed=seed)
            val_model.fit(split)
            test_model = val_model
            settings = val_model.get_params()
        out = {"settings": settings, "best_epoch": None, "epoch_seconds": None,
               "val": metrics(split, val_model.score, "val")}
        if not args.val_only:
            out["test"] = metrics(split, test_model.score, "test")
        out["fit_seconds"] = time.perf_counter() - t0
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="ml-100k", choices=["ml-100k", "ml-1m-ordered", "ml-1m"])
    ap.add_argument("--data", default=None, help="dataset folder (default: shared data/<source>)")
    ap.add_argument("--models", nargs="*", default=["sasrec", "two_tower"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[42])
    ap.add_argument("--val-only", action="store_true", help="model selection only: no test")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128, help="SASRec: users per step")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (SASRec)")
    ap.add_argument("--config", default="base.yaml", help="two_tower: base config")
    ap.add_argument("--tt-batch-rows", type=int, default=2048, help="two_tower: rows per step")
    ap.add_argument("--tt-lr", type=float, default=1e-3, help="two_tower: learning rate")
    ap.add_argument("--set", nargs="*", default=[], help="two_tower: extra key=value overrides")
    ap.add_argument("--workdir", default="/tmp/mtt-sasrec")
    ap.add_argument("--resume", action="store_true",
                    help="two_tower: continue the run in --workdir (e.g. with more --epochs)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.data = args.data or str(DEFAULT_DATA / args.source)
    split = load_split(load_config(None, [f"data.source={args.source}", f"data.path={args.data}"]).data)
    doc: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]), "source": args.source,
        "n_users": split.n_users, "n_items": split.n_items,
        "protocol": "leave-one-out by time, full ranking, train (+ validation for test) masked, K=10",
        "load_average_start": os.getloadavg(), "results": {}}
    for name in args.models:
        runner = {"sasrec": run_sasrec, "two_tower": run_two_tower,
                  "mostpop": run_classic("mostpop"), "bpr": run_classic("bpr"),
                  "ease": run_classic("ease")}[name]
        for seed in args.seeds:
            res = runner(split, args, seed)
            doc["results"].setdefault(name, {})[str(seed)] = res
            shown = res.get("test", res["val"])
            vals = " ".join(f"{k} {shown[k]:.4f}" for k in KEYS if shown[k] is not None)
            print(f"{name} seed {seed}: {vals} | {res['epoch_seconds']} s/epoch, "
                  f"fit {res['fit_seconds']:.0f} s, best epoch {res['best_epoch']}", flush=True)
    doc["load_average_end"] = os.getloadavg()  # fit times are wall clock on a shared machine
    tag = "val" if args.val_only else "test"
    out = Path(args.out or Path(__file__).parent / "results" / f"sasrec_{args.source}_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(to_jsonable(doc), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

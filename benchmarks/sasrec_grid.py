"""Validation-only grid of the sequence encoder's hyper-parameters (issue 14, docs/sequence_tower.md).

    .venv/bin/python benchmarks/sasrec_grid.py --source ml-100k            # one factor at a time
    .venv/bin/python benchmarks/sasrec_grid.py --source ml-100k --full     # all 16 points

Grid: blocks {1, 2} x dim {64, 128} x dropout {0.2, 0.5} x max length {50, 200}.
Without ``--full`` the points are the centre (2 blocks, d 64, dropout 0.2, length 200:
SASRec's ML-1M settings with SASRec+'s CE loss) and each factor changed alone. Each
point trains the SASRec reference (:mod:`benchmarks.sasrec_reference`) with early
stopping on validation NDCG@10 and records validation metrics only: the test split
is never read. Writes one JSON (``--out``) with every point, its metrics, seconds per
epoch, fit seconds and best epoch, and the command line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sasrec_reference import DEFAULT_DATA, KEYS, run_sasrec  # noqa: E402

from marl_two_tower.config import load_config  # noqa: E402
from marl_two_tower.data import load_split  # noqa: E402
from marl_two_tower.utils.io import to_jsonable, write_text_atomic  # noqa: E402

CENTRE = {"blocks": 2, "dim": 64, "dropout": 0.2, "max_len": 200}
VALUES = {"blocks": [1, 2], "dim": [64, 128], "dropout": [0.2, 0.5], "max_len": [50, 200]}


def points(full: bool) -> list[dict[str, Any]]:
    """The grid points: all 16, or the centre and its one-factor neighbours."""
    if full:
        return [dict(zip(VALUES, v, strict=True)) for v in itertools.product(*VALUES.values())]
    out = [dict(CENTRE)]
    for key, vals in VALUES.items():
        out += [{**CENTRE, key: v} for v in vals if v != CENTRE[key]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="ml-100k", choices=["ml-100k", "ml-1m-ordered"])
    ap.add_argument("--data", default=None)
    ap.add_argument("--full", action="store_true", help="all 16 points (default: one factor at a time)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = args.data or str(DEFAULT_DATA / args.source)
    split = load_split(load_config(None, [f"data.source={args.source}", f"data.path={data}"]).data)
    out = Path(args.out or Path(__file__).parent / "results" / f"sasrec_grid_{args.source}.json")
    doc: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "source": args.source,
                           "selection": "validation NDCG@10 (full ranking, train masked)",
                           "points": []}
    for p in points(args.full):
        ns = argparse.Namespace(dim=p["dim"], max_len=p["max_len"], blocks=p["blocks"], heads=1,
                                dropout=p["dropout"], lr=1e-3, batch_size=128, epochs=args.epochs,
                                patience=args.patience, eval_every=args.eval_every, bf16=False,
                                val_only=True)
        res = run_sasrec(split, ns, args.seed)
        doc["points"].append({"point": p, **{k: res[k] for k in
                                             ("val", "best_epoch", "fit_seconds", "epoch_seconds")}})
        print(p, " ".join(f"{k} {res['val'][k]:.4f}" for k in KEYS[:2]),
              f"best epoch {res['best_epoch']}, {res['fit_seconds']:.0f} s", flush=True)
        write_text_atomic(out, json.dumps(to_jsonable(doc), indent=1))  # partial results survive
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

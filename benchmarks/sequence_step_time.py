"""Time per training row of the sequence-tower base on complete ML-1M (issue 14/15).

    .venv/bin/python benchmarks/sequence_step_time.py                      # this checkout
    .venv/bin/python benchmarks/sequence_step_time.py --specs 1024,none 8192,bf16
    .venv/bin/python benchmarks/sequence_step_time.py --threads 2 \
        --specs 1024,none,model.train_positions=window 1024,none \
                1024,none,model.attn_dropout=0 --repeats 3

For each ``rows,precision[,key=value...]`` spec (``train.batch_size`` rows per step,
``train.mixed_precision``, then any config overrides), builds the Trainer of
``configs/ml1m.yaml`` (transformer tower, full-softmax CE over the 3,416 items), runs one
warm-up epoch of ``--steps`` steps (scaled so every spec trains about the same number of
rows), then times the next one (``--repeats`` times, alternating the specs; the median
is reported). Reports ms per step, microseconds per row and the implied epoch time (the
rows of one epoch of the spec's sampler: 652k with the last-200 windows, 988k with
``train_positions=all``), plus the mean L_rec of the first timed epoch (the same batches
and seed give the same loss, so a speed change that moves it is visible).
Single thread unless ``--threads`` lists more (each spec runs with each count), wall
clock: on the shared machine compare specs of one run.

A ``before=REV`` item in a spec times this checkout with git revision REV's chunked CE
(``model/chunked_ce.py``) and ``torch.nn.Dropout`` in the encoder, alternated in one
process with the other specs: a same-run before/after of those two pieces
(docs/speed.md, "The full-softmax CE and the dropout masks"). For other changes, run
this script on the earlier checkout; e.g. the "before" numbers of
docs/sequence_tower.md are this script run on the checkout before the full-softmax
layout change: ``git worktree add /tmp/before 71fc646``, then from /tmp/before
``MARL_TWO_TOWER_DATA=<shared data> PYTHONPATH=/tmp/before <this venv>/bin/python
benchmarks/sequence_step_time.py`` (the working directory and PYTHONPATH pick that
checkout's package over the editable install).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.model import two_tower
from marl_two_tower.model.dropout import Dropout as BitsDropout
from marl_two_tower.train.trainer import Trainer
from marl_two_tower.utils.io import to_jsonable, write_text_atomic

DATA = Path(os.environ.get("MARL_TWO_TOWER_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
EPOCH_ROWS = 651_909  # sum over users of min(train length, 200) on ML-1M (fallback)


BASE = [f"data.path={DATA / 'ml-1m-ordered'}", "train.num_threads=1", "train.tensorboard=false",
        "checkpoint_dir=/tmp/mtt-step-time", "output_dir=/tmp/mtt-step-time"]


def before_impl(rev: str) -> Callable:
    """The chunked CE function of git revision ``rev`` (its ``model/chunked_ce.py``, read
    with ``git show``), for a same-process before/after comparison."""
    src = subprocess.run(["git", "show", f"{rev}:marl_two_tower/model/chunked_ce.py"],
                         cwd=Path(__file__).resolve().parents[1], check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType(f"chunked_ce_{rev}")
    exec(compile(src, f"{rev}:chunked_ce.py", "exec"), mod.__dict__)  # noqa: S102 (our own file)
    return mod.chunked_softmax_ce_rows


def use_nn_dropout(model: torch.nn.Module) -> int:
    """Swap every :class:`marl_two_tower.model.dropout.Dropout` for ``torch.nn.Dropout``
    of the same rate (the encoder before the bit-mask dropout); returns how many."""
    swaps = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if isinstance(child, BitsDropout)]
    for parent, name, child in swaps:
        setattr(parent, name, torch.nn.Dropout(child.p))
    return len(swaps)


@contextlib.contextmanager
def chunked_ce(fn: Callable | None):
    """Run the block with ``fn`` as the trainer's chunked CE (None: this checkout's)."""
    saved = two_tower.chunked_softmax_ce_rows
    two_tower.chunked_softmax_ce_rows = fn or saved
    try:
        yield
    finally:
        two_tower.chunked_softmax_ce_rows = saved


def build_trainer(split, spec: str, threads: int, rows_per_epoch: int) -> tuple[int, Trainer]:
    """(steps per timed epoch, Trainer) of ``configs/ml1m.yaml`` for one
    ``rows,precision[,key=value...]`` spec: about ``rows_per_epoch`` rows per epoch.
    A ``before=REV`` item is not an override: :func:`main` swaps the CE for it."""
    rows, precision, *extra = spec.split(",")
    extra = [x for x in extra if not x.startswith("before=")]
    steps = max(5, rows_per_epoch // int(rows))
    cfg = load_config("ml1m.yaml", BASE + [f"train.batch_size={rows}",
                                           f"train.mixed_precision={precision}",
                                           f"train.max_steps_per_epoch={steps}",
                                           f"train.num_threads={threads}", *extra])
    trainer = Trainer(cfg, split, progress=False)  # applies train.num_threads
    if "before=" in spec:
        use_nn_dropout(trainer.model)
    return steps, trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", nargs="*", default=["1024,none", "1024,bf16", "4096,none",
                                                    "4096,bf16", "8192,bf16"])
    ap.add_argument("--rows", type=int, default=40 * 1024, help="rows per timed epoch")
    ap.add_argument("--threads", nargs="*", type=int, default=[1],
                    help="intra-op thread counts (train.num_threads), each spec with each")
    ap.add_argument("--repeats", type=int, default=1, help="timed epochs per spec (median)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sequence_step_time.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = load_split(load_config("ml1m.yaml", BASE).data)
    runs = []
    for spec, threads in [(spec, n) for spec in args.specs for n in args.threads]:
        steps, trainer = build_trainer(split, spec, threads, args.rows)
        rev = next((x.split("=", 1)[1] for x in spec.split(",") if x.startswith("before=")), None)
        ce = before_impl(rev) if rev else None
        with chunked_ce(ce):
            trainer.train_epoch(0)  # warm-up: allocator, caches
        runs.append((spec, threads, steps, trainer, [], ce))
    for rep in range(args.repeats):  # alternate the specs: load drifts hit them alike
        for _spec, threads, _steps, trainer, secs, ce in runs:
            torch.set_num_threads(threads)
            with chunked_ce(ce):
                t0 = time.perf_counter()
                terms = trainer.train_epoch(1 + rep)
                secs.append((time.perf_counter() - t0, terms.get("rec")))
    rows_out = []
    for spec, threads, steps, trainer, secs, _ce in runs:
        rows = int(spec.split(",")[0])
        sec = float(np.median([t for t, _ in secs]))
        epoch_rows = int(getattr(trainer.sampler, "total", 0)) or EPOCH_ROWS
        row = {"spec": spec, "rows": rows, "precision": spec.split(",")[1], "threads": threads,
               "steps": steps, "repeats": len(secs), "seconds": [t for t, _ in secs],
               "ms_per_step": 1000 * sec / steps, "us_per_row": 1e6 * sec / steps / rows,
               "epoch_rows": epoch_rows, "epoch_seconds_implied": sec / steps / rows * epoch_rows,
               "rec_loss": secs[0][1]}
        rows_out.append(row)
        print(f"{spec:>40} {threads} thr: {row['ms_per_step']:.0f} ms/step, "
              f"{row['us_per_row']:.1f} us/row -> {row['epoch_seconds_implied']:.0f} s/epoch "
              f"({epoch_rows} rows), L_rec {row['rec_loss']:.4f}", flush=True)
    doc = {"command": " ".join(["python", *sys.argv]), "load_average": os.getloadavg(),
           "results": rows_out}
    write_text_atomic(Path(args.out), json.dumps(to_jsonable(doc), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

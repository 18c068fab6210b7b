"""The subnormal slow path of ``exp`` on CPU, and what flooring the logits saves.

    .venv/bin/python benchmarks/exp_slow_path.py      # -> benchmarks/results/exp_slow_path.json

Single thread, medians of ``--repeats`` timings of each op (milliseconds), all in one
run (compare the rows, not the absolute values, on a shared machine):

* ``torch.exp`` of 256 x 3,416 constants, per argument value: the arguments whose
  results are fp32 subnormals (about -87.3 to -104) take a ~100x slower path;
* ``torch.softmax`` and ``F.cross_entropy`` (forward + backward) of 1,024 x 1,682
  Gaussian logits (ML-100K's catalogue) of standard deviation 1 ... 60, raw and through
  :func:`marl_two_tower.utils.numerics.floor_logits`;
* the chunked full-softmax CE of 1,024 rows against 3,416 items (d = 64, ML-1M's
  sequence step) with the softmax kept for the backward and recomputed;
* ``--train``: seconds per epoch of the ML-100K base and full model
  (``configs/ablation.yaml``, seed 42), each trained with the floors and the kept
  softmax ("after") and with them patched out ("before": identity floor, no exp clamp,
  recomputed softmax), epoch by epoch in turns in this process; medians over
  ``--epochs`` epochs, wall and process CPU.

    .venv/bin/python benchmarks/exp_slow_path.py --train --epochs 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from marl_two_tower.model import chunked_ce
from marl_two_tower.utils.io import to_jsonable, write_text_atomic
from marl_two_tower.utils.numerics import floor_logits


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall milliseconds of ``fn`` over ``repeats`` calls after two warm-ups."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@contextlib.contextmanager
def before_floors() -> Iterator[None]:
    """The code before the floors: identity ``floor_logits`` where it is used, no exp
    clamp and the recomputed softmax in the chunked CE."""
    from marl_two_tower.baselines import sasrec
    from marl_two_tower.fairness import gini_agent
    from marl_two_tower.model import components, losses

    users = (sasrec, gini_agent, components, losses)
    saved = (chunked_ce.EXP_FLOOR, chunked_ce.STORE_ELEMENTS)
    chunked_ce.EXP_FLOOR, chunked_ce.STORE_ELEMENTS = float("-inf"), 0
    for m in users:
        m.floor_logits = lambda z, dim=-1, margin=0.0, keep=None, raw=None: z  # type: ignore[attr-defined]
    try:
        yield
    finally:
        chunked_ce.EXP_FLOOR, chunked_ce.STORE_ELEMENTS = saved
        for m in users:
            m.floor_logits = floor_logits  # type: ignore[attr-defined]


def train_part(epochs: int) -> dict[str, dict[str, float]]:
    """Median seconds per epoch, before / after, of the ML-100K base and full model."""
    sys.path.insert(0, str(Path(__file__).parent))
    from speed import COMPONENTS, DATA, config  # the speed table's configs

    from marl_two_tower.data import load_split
    from marl_two_tower.train.trainer import Trainer

    data = [f"data.path={DATA / 'ml-100k'}", "seed=42"]
    split = load_split(config(data, [], "/tmp/mtt-exp-slow", 0).data)
    runs = {}
    for model, extra in [("base", []), ("full", [f"{c}.enabled=true" for c in COMPONENTS])]:
        for code in ("before", "after"):
            runs[f"{model} {code}"] = Trainer(config(data, extra, f"/tmp/mtt-exp-slow/{model}-{code}", 0),
                                              split, progress=False)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for epoch in range(epochs):
        names = list(runs)
        for name in names[epoch % 4:] + names[: epoch % 4]:  # rotate: same load for all
            ctx = before_floors() if name.endswith("before") else contextlib.nullcontext()
            with ctx:
                t0, c0 = time.perf_counter(), time.process_time()
                runs[name].train_epoch(epoch)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    out = {k: {"s_per_epoch": statistics.median(wall[k]), "cpu_s_per_epoch": statistics.median(cpu[k]),
               "all_s": [round(t, 3) for t in wall[k]]} for k in runs}
    for k, row in out.items():
        print(f"{k:12s} {row['s_per_epoch']:6.2f} s/epoch wall, "
              f"{row['cpu_s_per_epoch']:6.2f} s CPU", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--train", action="store_true", help="also time ML-100K epochs before/after")
    ap.add_argument("--epochs", type=int, default=4, help="--train: epochs per run (median)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "exp_slow_path.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    doc: dict = {"command": " ".join(["python", *sys.argv]), "threads": 1,
                 "load_average_start": os.getloadavg(), "exp_by_argument": {}, "softmax": [],
                 "chunked_ce": {}}
    for c in [-80.0, -87.0, -87.5, -90.0, -100.0, -110.0]:
        z = torch.full((256, 3416), c)
        doc["exp_by_argument"][str(c)] = ms = median_ms(lambda z=z: torch.exp(z), args.repeats)
        print(f"exp({c:7.1f}) x 874,496: {ms:6.2f} ms", flush=True)
    target = torch.randint(0, 1682, (1024,), generator=g)
    for sd in [1, 5, 15, 30, 60]:
        z = (torch.randn(1024, 1682, generator=g) * sd).requires_grad_()
        row = {"logit_std": sd}
        for name, pre in [("raw", lambda x: x), ("floored", lambda x: floor_logits(x, 1, keep=target))]:
            with torch.no_grad():
                row[f"softmax_{name}_ms"] = median_ms(lambda pre=pre, z=z: torch.softmax(pre(z), 1),
                                                      args.repeats)
            row[f"ce_fwd_bwd_{name}_ms"] = median_ms(
                lambda pre=pre, z=z: F.cross_entropy(pre(z), target).backward(), args.repeats)
        doc["softmax"].append(row)
        print(f"logit sd {sd:3d}: softmax {row['softmax_raw_ms']:6.2f} -> "
              f"{row['softmax_floored_ms']:6.2f} ms, CE fwd+bwd {row['ce_fwd_bwd_raw_ms']:6.2f} -> "
              f"{row['ce_fwd_bwd_floored_ms']:6.2f} ms",
              flush=True)
    h = (torch.randn(1024, 64, generator=g) * 0.3).requires_grad_()
    e = (torch.randn(3416, 64, generator=g) * 0.3).requires_grad_()
    y = torch.randint(0, 3416, (1024,), generator=g)
    kept = chunked_ce.STORE_ELEMENTS
    for name, limit in [("softmax_kept", kept), ("recomputed", 0)]:
        chunked_ce.STORE_ELEMENTS = limit
        doc["chunked_ce"][f"{name}_ms"] = ms = median_ms(
            lambda: chunked_ce.chunked_softmax_ce(h, e, y).backward(), args.repeats)
        print(f"chunked CE 1,024 x 3,416 fwd+bwd, {name}: {ms:6.2f} ms", flush=True)
    chunked_ce.STORE_ELEMENTS = kept
    if args.train:
        doc["train_ml100k"] = train_part(args.epochs)
    doc["load_average_end"] = os.getloadavg()
    write_text_atomic(Path(args.out), json.dumps(to_jsonable(doc), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The CPU kernel effects behind the chunked CE and dropout choices (docs/speed.md).

    .venv/bin/python benchmarks/cpu_kernels.py --threads 2

Each pair is timed alternately in one process (medians over ``--repeats``), at the
shapes of an ML-1M sequence step (P rows x 3,416 items, d = 64):

* ``bf16 matmul``, the same shape every call vs a shape that changes every call (P
  varying): oneDNN builds a kernel per new shape; the CE pads P to whole chunks.
* ``scale + cast to bf16``: one mixed-dtype ``torch.mul(..., out=bf16)`` vs an fp32
  ``mul_`` then ``copy_``.
* ``dropout mask``: ``torch.nn.functional.dropout`` (``bernoulli_``) vs the bit-mask
  dropout of ``model/dropout.py``, forward and backward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from marl_two_tower.model.dropout import dropout
from marl_two_tower.utils.io import to_jsonable, write_text_atomic

N_ITEMS, DIM = 3416, 64


def timed(fns: dict[str, Callable[[int], object]], repeats: int) -> dict[str, float]:
    """Median ms per call of each function, the functions alternated call by call."""
    for f in fns.values():
        f(0)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(r + 1)
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_kernels.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    e16 = torch.randn(N_ITEMS, DIM).bfloat16()
    h = {p: torch.randn(p, DIM) for p in range(200, 257)}
    # col near 1: the in-place variant scales the same buffer every call without drifting
    # it towards subnormal values (slow on CPU)
    probs, col = torch.rand(1024, N_ITEMS), 1 + 1e-4 * torch.rand(1024, 1)
    out16 = torch.empty(1024, N_ITEMS, dtype=torch.bfloat16)
    x = torch.randn(25, 200, DIM, requires_grad=True)  # ~5k rows of padded user blocks
    pairs = {
        "bf16 matmul [256 x 64] x [64 x 3416]": {
            "same shape": lambda r: h[256].bfloat16() @ e16.T,
            "shape changing every call": lambda r: h[200 + r % 56].bfloat16() @ e16.T},
        "scale + cast to bf16 [1024 x 3416]": {
            "mul(out=bf16)": lambda r: torch.mul(probs, col, out=out16),
            "mul_ then copy_": lambda r: out16.copy_(probs.mul_(col))},
        "dropout p=0.2 on [25 x 200 x 64], forward + backward": {
            "nn.functional.dropout": lambda r: torch.nn.functional.dropout(x, 0.2, True).sum().backward(),
            "bit-mask dropout": lambda r: dropout(x, 0.2, True).sum().backward()},
    }
    results = {}
    for name, fns in pairs.items():
        ms = timed(fns, args.repeats)
        (a, ta), (b, tb) = ms.items()
        results[name] = {"ms": ms, "ratio": ta / tb}
        print(f"{name}: {a} {ta:.3f} ms, {b} {tb:.3f} ms ({ta / tb:.2f}x)", flush=True)
    doc = {"command": " ".join(["python", *sys.argv]), "threads": args.threads,
           "load_average": os.getloadavg(), "results": results}
    write_text_atomic(Path(args.out), json.dumps(to_jsonable(doc), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

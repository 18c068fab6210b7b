"""bf16 autocast vs fp32 on ML-100K (DESIGN §9 "mixed precision"; issue #8).

Base two-tower, default config, leave-one-out by time, early stopping on validation
NDCG@10, test read once per run (full ranking). For each seed the fp32 and the
bf16 run are trained back to back (same data, split, seed), so the speed ratio
compares runs under the same machine load. Reported per seed and as mean +- std over
seeds: test HR@10 / NDCG@10, best epoch, and the training time per supervised step
(the epochs' train time, validation excluded); plus a paired test over users of the
per-user test hits (Wilcoxon signed-rank via marl_two_tower.significance) of the
seed-42 pair.

The wall-clock speed of a shared machine is noisy, so ``--speed`` measures it apart:
the same ``--speed-steps`` supervised steps (same batches, same negatives) in fp32 and
in bf16, alternating for ``--speed-rounds`` rounds, timed in CPU seconds of this
process (single thread); the ratio of the medians is reported.

    .venv/bin/python benchmarks/mixed_precision.py --seeds 42,43,44
    .venv/bin/python benchmarks/mixed_precision.py --speed
"""

from __future__ import annotations

import argparse
import json
import resource
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
from marl_two_tower.train.trainer import Trainer  # noqa: E402


def run(split, seed: int, mode: str, args) -> tuple[dict, np.ndarray]:
    with tempfile.TemporaryDirectory() as ck:
        cfg = load_config(None, ["data.source=ml-100k", f"data.path={args.data}", f"seed={seed}",
                                 f"train.epochs={args.epochs}", "train.num_threads=1",
                                 "train.device=cpu", f"train.mixed_precision={mode}",
                                 f"checkpoint_dir={ck}", *args.set])
        t0 = time.perf_counter()
        trainer = Trainer(cfg, split, progress=False)
        state = trainer.fit()
        wall = time.perf_counter() - t0
        steps = len(trainer.sampler) * len(state.history)
        train_s = sum(r["time_s"] for r in state.history)
        score = trainer.model.scorer(trainer.device)
        full = evaluate(split, score, "test", ks=(10,), protocol="full", groups=False)["full"]
        _, per_user = evaluate_per_user(split, score, "test", ks=(10,))
    return ({"seed": seed, "mode": mode, "HR@10": full["HR@10"], "NDCG@10": full["NDCG@10"],
             "best_epoch": state.best_epoch, "epochs": len(state.history),
             "ms_per_step": 1000 * train_s / steps, "wall_s": wall}, per_user["hit@10"])


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure_speed(split, args) -> None:
    """CPU seconds per supervised step, fp32 vs bf16 autocast, alternating rounds."""
    from marl_two_tower.utils.runtime import epoch_rng

    trainers = {}
    for mode in ("none", "bf16"):
        with tempfile.TemporaryDirectory() as ck:
            cfg = load_config(None, ["data.source=ml-100k", f"data.path={args.data}", "seed=42",
                                     "train.num_threads=1", "train.device=cpu",
                                     f"train.mixed_precision={mode}", f"checkpoint_dir={ck}", *args.set])
            trainers[mode] = Trainer(cfg, split, progress=False)
    batches = list(trainers["none"].sampler.batches(0))[: args.speed_steps]
    per_step: dict[str, list[float]] = {"none": [], "bf16": []}
    for _ in range(args.speed_rounds):
        for mode, tr in trainers.items():
            rng = epoch_rng(42, 0, 2)
            t0 = cpu_s()
            for idx in batches:
                tr.train_step(idx, rng)
            per_step[mode].append(1000 * (cpu_s() - t0) / len(batches))
    med = {m: float(np.median(v)) for m, v in per_step.items()}
    print(f"CPU ms per step over {len(batches)} steps x {args.speed_rounds} rounds (batch "
          f"{trainers['none'].cfg.train.batch_size}, {trainers['none'].cfg.train.num_negatives} sampled "
          f"negatives): fp32 {med['none']:.1f} (rounds {np.round(per_step['none'], 1).tolist()}), "
          f"bf16 {med['bf16']:.1f} (rounds {np.round(per_step['bf16'], 1).tolist()}); "
          f"fp32/bf16 = {med['none'] / med['bf16']:.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    p.add_argument("--out", default="", help="append each run as a JSON line")
    p.add_argument("--speed", action="store_true", help="only the CPU-time speed comparison")
    p.add_argument("--speed-steps", type=int, default=60)
    p.add_argument("--speed-rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    split = leave_one_out(load_ml100k(Path(args.data)))
    if args.speed:
        measure_speed(split, args)
        return 0
    rows, hits = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for mode in ("none", "bf16"):
            row, hit = run(split, seed, mode, args)
            rows.append(row)
            hits[(seed, mode)] = hit
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| seed | fp32 HR@10 | bf16 HR@10 | fp32 NDCG@10 | bf16 NDCG@10 | fp32 ms/step | "
          "bf16 ms/step | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    by = {(r["seed"], r["mode"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    for s in seeds:
        a, b = by[(s, "none")], by[(s, "bf16")]
        speed = a["ms_per_step"] / b["ms_per_step"]
        print(f"| {s} | {a['HR@10']:.4f} | {b['HR@10']:.4f} | {a['NDCG@10']:.4f} | {b['NDCG@10']:.4f} | "
              f"{a['ms_per_step']:.1f} | {b['ms_per_step']:.1f} | {speed:.2f}x |")

    def ms(mode: str, key: str) -> str:
        v = np.array([by[(s, mode)][key] for s in seeds])
        return f"{v.mean():.4f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"

    print(f"| mean +- std | {ms('none', 'HR@10')} | {ms('bf16', 'HR@10')} | {ms('none', 'NDCG@10')} | "
          f"{ms('bf16', 'NDCG@10')} | | | |")
    ratio = np.array([by[(s, "none")]["ms_per_step"] / by[(s, "bf16")]["ms_per_step"] for s in seeds])
    diff = np.array([by[(s, "bf16")]["HR@10"] - by[(s, "none")]["HR@10"] for s in seeds])
    print(f"\nHR@10 bf16 - fp32 per seed: {np.round(diff, 4).tolist()} (mean {diff.mean():+.4f}); "
          f"fp32/bf16 time per step: {ratio.mean():.2f}x (min {ratio.min():.2f}, max {ratio.max():.2f})")
    from marl_two_tower.eval.significance import paired_tests

    s0 = seeds[0]
    res = paired_tests(hits[(s0, "bf16")], hits[(s0, "none")])
    print(f"paired test of per-user test hits@10, seed {s0} (bf16 vs fp32): {res}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

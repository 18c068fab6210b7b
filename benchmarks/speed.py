"""The speed table of issue 15, in one run: training, evaluation, serving, threads.

1. **Training, seconds per epoch** on ML-100K (``configs/ablation.yaml``, 1 thread):
   the base two-tower, base + each component alone, and the full model (every
   component), one trainer each, trained epoch by epoch in turns in one process (the
   order rotates every round), so all see the same machine load; the median over
   ``--repeats`` epochs and its ratio to the base.
   Wall-clock time on a shared machine swings with the others' load during an epoch;
   the CPU time of the process (``time.process_time``; one intra-op thread, so it is
   the work done) is reported beside it and is the steadier ratio.
2. **Threads**: ``--thread-steps`` supervised steps of the base and the full model
   and one ML-100K evaluation, with 1 intra-op thread and with torch's default (one
   per core), alternating; the ratio default / 1.
3. **Full-ranking evaluation** (test split, every metric of ``eval.ks`` and the
   per-group fairness breakdown, ``eval.inference_samples`` draws) of ML-100K (the
   models of part 1) and of complete ML-1M (``ml-1m-ordered``: 6,040 users x 3,416
   items; models built untrained, since the cost does not depend on the weights):
   the first call (it builds the per-draw inference caches) and the median of the
   following ones.
4. **In-process serving**, single-user top-10 of the full ML-100K model of part 1:
   p50/p99 wall and thread-CPU milliseconds for the precomputed path (z_u from the
   bundle + exact index + seen filter, what ``serve`` does) and the per-request
   user-tower path (z_u and F(u) computed by the model for the request).

The load average is printed and stored: compare ratios of one run, never absolute
times across runs on a shared machine.

    .venv/bin/python benchmarks/speed.py                        # the table of docs/speed.md
    .venv/bin/python benchmarks/speed.py --repeats 1 --max-steps 20 --skip-ml1m   # smoke

Writes ``benchmarks/results/speed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_THREADS = torch.get_num_threads()  # torch's own default, before anything sets it

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
COMPONENTS = ("context_gnn", "marl", "fair_sampler", "buhs", "gini", "tail_loss")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def config(data_args: list[str], extra: list[str], ck: str, max_steps: int):
    from marl_two_tower.config import load_config

    return load_config(str(REPO / "configs" / "ablation.yaml"),
                       [*data_args, "train.num_threads=1", "train.tensorboard=false",
                        f"checkpoint_dir={ck}", f"train.max_steps_per_epoch={max_steps}", *extra])


def variants() -> dict[str, list[str]]:
    out = {"base": []}
    out |= {f"+{c}": [f"{c}.enabled=true"] for c in COMPONENTS}
    out["full"] = [f"{c}.enabled=true" for c in COMPONENTS]
    return out


def train_part(args, split, ck: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Part 1: median seconds per epoch of every variant, trained in turns."""
    from marl_two_tower.train.trainer import Trainer

    data = [f"data.source={args.source}", f"data.path={args.data}", f"seed={args.seed}"]
    chosen = {k: v for k, v in variants().items() if not args.variants or k in args.variants}
    trainers = {name: Trainer(config(data, extra, f"{ck}/{name}", args.max_steps), split, progress=False)
                for name, extra in chosen.items()}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    cpu: dict[str, list[float]] = {k: [] for k in trainers}
    names = list(trainers)
    for epoch in range(args.repeats):
        shift = epoch % len(names)
        for name in names[shift:] + names[:shift]:
            t0, c0 = time.perf_counter(), time.process_time()
            trainers[name].train_epoch(epoch)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    rows = {k: {"s_per_epoch": med[k], "ratio_to_base": med[k] / med["base"],
                "cpu_s_per_epoch": med_cpu[k], "cpu_ratio_to_base": med_cpu[k] / med_cpu["base"],
                "all_s": [round(t, 3) for t in times[k]], "all_cpu_s": [round(t, 3) for t in cpu[k]],
                "batches": min(args.max_steps or len(trainers[k].sampler), len(trainers[k].sampler))}
            for k in trainers}
    return rows, trainers


def thread_part(args, trainers, split) -> dict[str, Any]:
    """Part 2: 1 thread vs torch's default, same work, alternating."""
    from marl_two_tower.eval.protocols import evaluate

    out: dict[str, Any] = {"default_threads": DEFAULT_THREADS}
    jobs = {}
    for name in ("base", "full"):
        tr = trainers[name]

        def steps(tr=tr) -> None:
            saved = tr.cfg.train.max_steps_per_epoch
            tr.cfg.train.max_steps_per_epoch = args.thread_steps
            try:
                tr.train_epoch(1000)
            finally:
                tr.cfg.train.max_steps_per_epoch = saved

        jobs[f"{name}: {args.thread_steps} steps"] = steps
    model = trainers["full"].model
    jobs["full: ML-100K test evaluation"] = lambda: evaluate(split, model.scorer(), part="test",
                                                             ks=(10,), protocol="full", groups=False)
    for name, fn in jobs.items():
        t: dict[int, list[float]] = {1: [], DEFAULT_THREADS: []}
        for _ in range(args.thread_repeats):
            for n in (1, DEFAULT_THREADS):
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                fn()
                t[n].append(time.perf_counter() - t0)
        torch.set_num_threads(1)
        one, dflt = float(np.median(t[1])), float(np.median(t[DEFAULT_THREADS]))
        out[name] = {"s_1_thread": one, "s_default_threads": dflt, "ratio_default_to_1": dflt / one}
    return out


def time_eval(split, model, cfg, repeats: int) -> dict[str, Any]:
    """First and median later full-ranking evaluations (test, every metric)."""
    from marl_two_tower.eval.protocols import evaluate

    secs = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        evaluate(split, model.scorer(), part="test", ks=tuple(cfg.eval.ks), protocol="full",
                 batch_size=cfg.eval.batch_size, groups=True)
        secs.append(time.perf_counter() - t0)
    return {"first_s": secs[0], "median_s": float(np.median(secs[1:])), "all_s": [round(s, 3) for s in secs],
            "users": int(len(split.eval_users("test"))), "items": int(split.n_items),
            "inference_samples": int(cfg.eval.inference_samples)}


def eval_part(args, trainers, split) -> dict[str, Any]:
    from marl_two_tower.data import load_split
    from marl_two_tower.model.build import build_model

    out = {f"ML-100K {k}": time_eval(split, trainers[k].model, trainers[k].cfg, args.eval_repeats)
           for k in ("base", "full")}
    if args.skip_ml1m:
        return out
    with tempfile.TemporaryDirectory() as ck:
        data = ["data.source=ml-1m-ordered", f"data.path={args.ml1m}", f"seed={args.seed}"]
        split1m = load_split(config(data, [], ck, 0).data)
        for name in ("base", "full"):
            cfg = config(data, variants()[name], ck, 0)
            t0 = time.perf_counter()
            model = build_model(cfg, split1m).eval()
            built = time.perf_counter() - t0
            out[f"ML-1M {name}"] = time_eval(split1m, model, cfg, args.eval_repeats) | {"build_s": built}
    return out


def pct(a: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def serving_part(args, trainers, split) -> dict[str, Any]:
    """Part 4: single-user top-10 of the full model, precomputed vs per-request tower."""
    from marl_two_tower.serving.export import bundle_from_model
    from marl_two_tower.serving.recommender import Recommender

    tr = trainers["full"]
    model = tr.model.eval()
    rec = Recommender(bundle_from_model(model, tr.cfg, split), tr.cfg.serving)
    adj = model.score_adjuster

    items_t = torch.from_numpy(rec.bundle.item_vectors)

    @torch.no_grad()
    def tower(u: int):
        # the bundle's state computed live (mean over eval.inference_samples draws)
        z, ov_i, ov_v = model.mean_user_state(torch.tensor([u]), item_vecs=items_t)
        fam = None
        if adj is not None and adj.max_items and ov_i is not None and ov_v is not None:
            fam = (ov_i.numpy(), ov_v.float().numpy())
        return rec.recommend([u], 10, vectors=z.float().numpy(), familiar=fam)

    users = np.random.default_rng(0).integers(0, split.n_users, args.requests)
    out: dict[str, Any] = {"requests": int(args.requests), "index": rec.index.describe()}
    for name, fn in (("precomputed", lambda u: rec.recommend([u], 10)), ("user tower per request", tower)):
        for u in users[:50]:
            fn(int(u))
        wall, cpu = np.empty(len(users)), np.empty(len(users))
        for j, u in enumerate(users):
            c0, t0 = time.thread_time(), time.perf_counter()
            fn(int(u))
            wall[j], cpu[j] = (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3
        out[name] = {"wall": pct(wall), "cpu": pct(cpu)}
    same = all(tower(int(u))[0].items.tolist() == rec.recommend([int(u)], 10)[0].items.tolist()
               for u in users[:100])
    out["tower_lists_equal_precomputed"] = bool(same)
    return out


def print_tables(doc: dict[str, Any]) -> None:
    default = doc.get("threads", {}).get("default_threads", DEFAULT_THREADS)
    print(f"\nload average {doc.get('load_average_start')} at the start, {doc['load_average']} at the "
          f"end, on {doc['cpu_count']} cores; 1 intra-op thread unless stated; torch default = "
          f"{default}\n")
    if "train" in doc:
        t = doc["train"]
        print(f"Training, {doc.get('source', 'ml-100k')} (configs/ablation.yaml), seconds per epoch, "
              f"median of "
              f"{doc['repeats']} epochs in turns (wall clock, and CPU time of this process)\n")
        print("| model | batches | wall s/epoch | x base | CPU s/epoch | x base |")
        print("|---|---|---|---|---|---|")
        for k, r in t.items():
            print(f"| {k} | {r['batches']} | {r['s_per_epoch']:.2f} | {r['ratio_to_base']:.2f}x | "
                  f"{r['cpu_s_per_epoch']:.2f} | {r['cpu_ratio_to_base']:.2f}x |")
    if "threads" in doc:
        print(f"\nThreads: 1 vs torch default ({default}), same work, alternating\n")
        print("| work | s, 1 thread | s, default | default / 1 |")
        print("|---|---|---|---|")
        for k, r in doc["threads"].items():
            if isinstance(r, dict):
                print(f"| {k} | {r['s_1_thread']:.2f} | {r['s_default_threads']:.2f} | "
                      f"{r['ratio_default_to_1']:.2f}x |")
    if "eval" in doc:
        print("\nFull-ranking evaluation, test split, every metric (+ per-group fairness)\n")
        print("| data, model | users x items | draws | first s | median s | build s |")
        print("|---|---|---|---|---|---|")
        for k, r in doc["eval"].items():
            b = f"{r['build_s']:.1f}" if "build_s" in r else "-"
            print(f"| {k} | {r['users']:,} x {r['items']:,} | {r['inference_samples']} | "
                  f"{r['first_s']:.2f} | {r['median_s']:.2f} | {b} |")
    if "serving" in doc:
        s = doc["serving"]
        print(f"\nIn-process serving, full ML-100K model, single-user top-10, {s['requests']} requests, "
              f"index {s['index']}\n")
        print("| path | wall p50 ms | wall p99 ms | CPU p50 ms | CPU p99 ms |")
        print("|---|---|---|---|---|")
        for k in ("precomputed", "user tower per request"):
            r = s[k]
            print(f"| {k} | {r['wall']['p50_ms']:.3f} | {r['wall']['p99_ms']:.3f} | "
                  f"{r['cpu']['p50_ms']:.3f} | {r['cpu']['p99_ms']:.3f} |")
        print(f"\nper-request lists equal the precomputed ones (100 users): "
              f"{s['tower_lists_equal_precomputed']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA / "ml-100k"))
    p.add_argument("--ml1m", default=str(DATA / "ml-1m-ordered"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=3, help="training epochs per variant (median)")
    p.add_argument("--max-steps", type=int, default=0, help="batches per epoch (0 = full epochs)")
    p.add_argument("--thread-steps", type=int, default=10)
    p.add_argument("--thread-repeats", type=int, default=3)
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--skip-ml1m", action="store_true")
    p.add_argument("--skip-threads", action="store_true")
    p.add_argument("--source", default="ml-100k",
                   help="data.source of the training part (e.g. ml-1m-ordered with --data .../ml-1m-ordered)")
    p.add_argument("--variants", nargs="*", default=None,
                   help="training variants to time (default: all; 'base' is always needed for the ratios)")
    p.add_argument("--train-only", action="store_true", help="only the training part (1)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speed.json"))
    p.add_argument("--table", type=Path, metavar="JSON", default=None,
                   help="only print the tables of an earlier run's JSON")
    args = p.parse_args()
    if args.table is not None:
        print_tables(json.loads(args.table.read_text()))
        return 0

    from marl_two_tower.data import load_split

    torch.set_num_threads(1)
    doc: dict[str, Any] = {"command": "benchmarks/speed.py", "argv": vars(args) | {"out": None},
                           "cpu_count": os.cpu_count(), "load_average_start": load_avg(),
                           "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as ck:
        if args.variants and "base" not in args.variants:
            p.error("--variants must include base (the ratios are to it)")
        split = load_split(config([f"data.source={args.source}", f"data.path={args.data}"], [], ck, 0).data)
        doc["source"] = args.source
        doc["train"], trainers = train_part(args, split, ck)
        if not args.train_only:
            if not args.skip_threads:
                doc["threads"] = thread_part(args, trainers, split)
            doc["eval"] = eval_part(args, trainers, split)
            doc["serving"] = serving_part(args, trainers, split)
    doc["load_average"] = load_avg()
    print_tables(doc)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""In-process serving latency (DESIGN §5 "Latency") and ANN recall (DESIGN §8).

Part 1, on a trained model (bundle or checkpoint): single-user end-to-end top-K
latency p50/p95/p99 over ``--requests`` random known users, for
  * ``precomputed``: z_u from the bundle + FAISS top-K + seen filter (what `serve` does);
  * ``user tower``: z_u (and, with ContextGNN, F(u) and its logits) computed by the
    model per request (towers, contexts, agents), then the same search + filter +
    merge, i.e. the cost for a user whose state is not cached;
  * ``cold start``: the unknown-user list;
plus batch throughput (users/s at batch 256), and a check that the served top-K
equals the offline evaluator's (``rank_full``, validation protocol) for every user.

Part 2, on a clustered synthetic catalogue (``--ann-items``, default 100k): build
time, recall@10 against exact search and single-query latency for the exact, IVF
(default and other nprobe) and HNSW indexes; one row on isotropic Gaussian vectors
(no cluster structure: the hardest case for IVF).

    python benchmarks/serving_latency.py --checkpoint /tmp/ml100k_ck/model_best.pt \
        --set data.path=/work/shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np
import torch

from marl_two_tower.config import ServingConfig
from marl_two_tower.eval.protocols import rank_full
from marl_two_tower.serving.commands import build_recommender
from marl_two_tower.serving.index import IndexSettings, ItemIndex, recall_at_k, synthetic_catalogue


def pct(ms: list[float] | np.ndarray, over: float | None = None) -> str:
    """p50 | p95 | p99 (and, with ``over``, the share of calls slower than it)."""
    a = np.asarray(ms)
    cells = [f"{np.percentile(a, q):.3f}" for q in (50, 95, 99)]
    if over is not None:
        cells.append(f"{np.mean(a > over):.1%}")
    return " | ".join(cells)


def time_calls(fn, args_list) -> tuple[np.ndarray, np.ndarray]:
    """Per-call (wall-clock ms, CPU ms of this thread). On a shared machine the wall
    clock includes time spent waiting for a core; the thread CPU time does not."""
    for a in args_list[:50]:  # warm-up (allocations, caches)
        fn(a)
    wall, cpu = np.empty(len(args_list)), np.empty(len(args_list))
    for j, a in enumerate(args_list):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(a)
        wall[j], cpu[j] = (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3
    return wall, cpu


def model_part(args: argparse.Namespace) -> None:
    rec = build_recommender(args.bundle, args.checkpoint, args.overrides)
    b = rec.bundle
    rng = np.random.default_rng(0)
    users = rng.integers(0, b.n_users, args.requests)
    k = args.k
    print(f"## In-process single-user latency: {b.dataset_name} ({b.n_users} users, {b.n_items} items, "
          f"D={b.item_vectors.shape[1]}), index {rec.index.describe()}, k={k}, 1 thread\n")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| path | wall p50 ms | wall p95 ms | wall p99 ms | wall > 5 ms | CPU p50 ms | CPU p95 ms "
          "| CPU p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    wall, cpu = time_calls(lambda u: rec.recommend([u], k), users)
    print(f"| precomputed z_u + FAISS top-{k} + seen filter | {pct(wall, 5.0)} | {pct(cpu)} |")

    model = b.model if b.model is not None else b.build_model()
    model.eval()

    adj = getattr(model, "score_adjuster", None)

    items_t = torch.from_numpy(b.item_vectors)

    @torch.no_grad()
    def tower(u: int):
        # the bundle's state computed live: mean z_u over eval.inference_samples draws
        # and, with ContextGNN, the union of the draws' F(u) with mean fused scores
        z, ov_i, ov_v = model.mean_user_state(torch.tensor([u]), item_vecs=items_t)
        fam = None
        if adj is not None and adj.max_items and ov_i is not None and ov_v is not None:
            fam = (ov_i.numpy(), ov_v.float().numpy())
        return rec.recommend([u], k, vectors=z.float().numpy(), familiar=fam)

    same = all(tower(int(u))[0].items.tolist() == rec.recommend([u], k)[0].items.tolist()
               for u in users[:100])

    wall, cpu = time_calls(tower, users)
    print(f"| user tower{' + ContextGNN familiar head' if adj is not None else ''} per request + FAISS "
          f"top-{k} + seen filter | {pct(wall, 5.0)} | {pct(cpu)} |")
    wall, cpu = time_calls(lambda u: rec.cold_start(k), users[:500])
    print(f"| cold start (unknown user) | {pct(wall, 5.0)} | {pct(cpu)} |")

    batch = 256
    t0 = time.perf_counter()
    n = 0
    for s in range(0, len(users), batch):
        rec.recommend(users[s : s + batch], k)
        n += len(users[s : s + batch])
    dt = time.perf_counter() - t0
    print(f"\nbatch throughput (batch {batch}, precomputed): {n / dt:,.0f} users/s")
    print(f"per-request model path gives the precomputed lists (100 users): {same}")

    if args.checkpoint or b.model_state is not None:
        split = b.split()
        rec_train = build_recommender(args.bundle, args.checkpoint, args.overrides + ["serving.seen=train"])
        res = rank_full(split, model.scorer(), "val", k_max=k)
        served = np.stack([lst.items for lst in rec_train.recommend(res.users, k)])
        bad = int((served != res.recs).any(1).sum())
        print(f"served top-{k} vs offline rank_full (val protocol): {bad} of {len(res.users)} users differ")


def ann_part(args: argparse.Namespace) -> None:
    n, dim = args.ann_items, args.ann_dim
    items, queries = synthetic_catalogue(n_items=n, dim=dim, n_queries=args.ann_queries, seed=0)
    cfg = ServingConfig()
    print(f"\n## ANN on a clustered synthetic catalogue: {n:,} items, D={dim}, "
          f"{args.ann_queries} queries, recall@10 vs exact, 1 thread\n")
    print("| index | build s | recall@10 | wall p50 ms | wall p95 ms | wall p99 ms | CPU p50 ms | "
          "CPU p95 ms | CPU p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    exact = ItemIndex(items, IndexSettings(kind="flat"))
    _, truth = exact.exact_search(queries, 10)
    excl = [np.random.default_rng(i).choice(n, 50, replace=False) for i in range(len(queries))]
    rows = [("flat (exact)", IndexSettings(kind="flat")),
            ("ivf default", IndexSettings.from_config(cfg, n))]
    rows += [(f"ivf nprobe={p}", IndexSettings(kind="ivf", nprobe=p)) for p in (16, 32, 128)]
    rows.append((f"hnsw M={cfg.hnsw_m} ef={cfg.hnsw_ef_search}",
                 IndexSettings(kind="hnsw", hnsw_m=cfg.hnsw_m, ef_search=cfg.hnsw_ef_search)))
    built: dict[str, ItemIndex] = {}
    for name, st in rows:
        key = f"{st.kind}:{st.nlist}"
        t0 = time.perf_counter()
        if st.kind == "ivf" and key in built:
            idx = built[key]
            idx.index.nprobe = st.nprobe  # same cells, other search width
            build = float("nan")
        else:
            idx = ItemIndex(items, st)
            build = time.perf_counter() - t0
            built[key] = idx
        _, got = idx.search(queries, 10)
        r = recall_at_k(got, truth, 10)
        wall, cpu = time_calls(lambda j, idx=idx: idx.search_filtered(queries[j : j + 1], 10, [excl[j]]),
                               list(range(len(queries))))
        bs = "(same)" if np.isnan(build) else f"{build:.1f}"
        if name == "ivf default":
            name += f" (nlist={idx.index.nlist}, nprobe={idx.index.nprobe})"
        print(f"| {name} | {bs} | {r:.4f} | {pct(wall)} | {pct(cpu)} |")
    rng = np.random.default_rng(1)
    g_items = rng.normal(size=(n, dim)).astype(np.float32)
    g_q = rng.normal(size=(args.ann_queries, dim)).astype(np.float32)
    idx = ItemIndex(g_items, IndexSettings.from_config(cfg, n))
    _, got = idx.search(g_q, 10)
    _, truth = idx.exact_search(g_q, 10)
    print(f"| ivf default, isotropic Gaussian vectors (worst case) | - | {recall_at_k(got, truth, 10):.4f} "
          "| - | - | - | - | - | - |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle")
    src.add_argument("--checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--requests", type=int, default=3000, help="single-user requests timed")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--ann-items", type=int, default=100_000)
    p.add_argument("--ann-dim", type=int, default=64)
    p.add_argument("--ann-queries", type=int, default=500)
    p.add_argument("--skip-ann", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    if args.bundle or args.checkpoint:
        model_part(args)
    if not args.skip_ann:
        ann_part(args)


if __name__ == "__main__":
    main()

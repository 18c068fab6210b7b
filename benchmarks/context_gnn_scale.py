"""ContextGNN tree size vs graph size: per-batch memory must not grow with the users.

Synthetic MovieLens-like data (data/synthetic.py) with a growing number of users and a
fixed catalogue; for one batch of 512 root users (default settings: temporal hop 1 of
5 items, hop 2 fan-out 20, two-hop item operator with 100 links per item) prints the
non-zeros of P1, P2, P3 and the sampling time, plus the one-off cost of building the
graph and the operator.

    .venv/bin/python benchmarks/context_gnn_scale.py --users 10000 100000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.config import ContextGNNConfig, load_config  # noqa: E402
from marl_two_tower.data import load_split  # noqa: E402
from marl_two_tower.model.context_gnn import BipartiteGraph, sample_neighbourhood, two_hop_items  # noqa: E402


def nnz(m) -> int:
    return int(m.nnz) if hasattr(m, "nnz") else int(np.count_nonzero(m))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--batch", type=int, default=512)
    args = p.parse_args()
    c = ContextGNNConfig()
    print("| users | train interactions | graph + operator (s) | P1 nnz | P2 nnz | P3 nnz | sample (ms) |")
    print("|---|---|---|---|---|---|---|")
    for n in args.users:
        split = load_split(load_config(None, [f"data.synthetic.n_users={n}",
                                              f"data.synthetic.n_items={args.items}"]).data)
        t0 = time.perf_counter()
        graph = BipartiteGraph.from_split(split)
        op = two_hop_items(graph, c.item_neighbours)
        t_build = time.perf_counter() - t0
        users = np.arange(args.batch)
        t0 = time.perf_counter()
        nb = sample_neighbourhood(graph, users, None, c.fanout, c.familiar_size, 0, True,
                                  recent=c.recent, item_item=op)
        t_s = time.perf_counter() - t0
        print(f"| {n} | {len(split.train_items)} | {t_build:.1f} | {nnz(nb.p1)} | {nnz(nb.p2)} | "
              f"{nnz(nb.p3)} | {1000 * t_s:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

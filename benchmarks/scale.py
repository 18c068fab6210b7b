"""Cost of every pipeline stage vs data size (DESIGN §9; issue #8).

For each size (users; items fixed; ~``--ipu`` interactions per user, exact lengths)
the stages below run in a **fresh subprocess each**, which redoes the stages it
depends on untimed; the reported peak memory is that process's ``ru_maxrss`` (so it
includes the data the stage needs, as a real run would hold it), the time is the
stage's own wall clock:

* ``generate``: stream the synthetic generator into Parquet (row group per chunk);
* ``load``: read the Parquet back with the vectorised fast path;
* ``split_graph``: leave-one-out split (train CSR, popularity, tail) + the ContextGNN
  bipartite train graph (both directions, edge keys);
* ``train``: model build (towers, recent-history buffer) + the first epoch's sampler
  permutation + ``--steps`` supervised steps of batch ``--batch`` (base two-tower);
* ``eval``: full-catalogue ranking (test protocol, train+val masked) of a fixed
  random sample of ``--eval-users`` users, metrics @5/10/20;
* ``load_generic`` (only with ``--stages load_generic``): the same file through the
  generic table loader (pandas, id re-indexing), for comparison with ``load``.

A watchdog kills a stage whose resident memory passes ``--max-rss-gib`` (the machine
is shared), so the benchmark cannot exhaust memory. Results go to a JSON file
(appended per stage, so an interrupted run keeps what it measured); ``--report``
prints the table, fits the scaling exponent of each stage (least-squares slope of
log cost vs log interactions) and draws the log-log plot.

    nohup .venv/bin/python benchmarks/scale.py --sizes 100000,300000,1000000 \\
        > runs/scale.log 2>&1 &
    .venv/bin/python benchmarks/scale.py --report --plot docs/scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

STAGES = ("generate", "load", "split_graph", "train", "eval")
EXTRA_STAGES = ("load_generic",)  # run on request (--stages load_generic)
REPO = Path(__file__).resolve().parent.parent


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _data_path(args: argparse.Namespace, users: int) -> Path:
    return Path(args.data_dir) / f"synth-{users}x{args.items}-ipu{args.ipu:g}.parquet"


def _synthetic_cfg(args: argparse.Namespace, users: int):
    from marl_two_tower.config import SyntheticConfig

    return SyntheticConfig(n_users=users, n_items=args.items, interactions_per_user=args.ipu,
                           exact_lengths=True, seed=7)


# ---------------------------------------------------------------------------
# One stage, inside its own process
# ---------------------------------------------------------------------------


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Clock:
    """Wall-clock and CPU seconds (user + system of this process) of a timed region.

    CPU time is what the scaling exponents use: the machine is shared, so wall time
    also measures the other engineers' load."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), _cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu_s() - self.cpu


def run_stage(args: argparse.Namespace) -> dict:
    """Run ``args.stage`` for ``args.users`` users; returns its measurements."""
    import numpy as np
    import torch

    import marl_two_tower.train.trainer  # noqa: F401  (imports count in the baseline, not the stage)

    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # Adam's lazy torch._dynamo import
    users, path = args.users, _data_path(args, args.users)
    # resident memory of the interpreter + imports: subtracted for the data-memory exponent
    out: dict = {"stage": args.stage, "users": users, "items": args.items, "base_rss_mib": _rss_mib()}

    def done(*clocks: _Clock, **extra) -> dict:
        return out | {"seconds": sum(c.wall for c in clocks), "cpu_s": sum(c.cpu for c in clocks),
                      "peak_rss_mib": _rss_mib(), **extra}

    if args.stage == "generate":
        from marl_two_tower.data.synthetic_parquet import write_synthetic_parquet

        with _Clock() as c:
            info = write_synthetic_parquet(_synthetic_cfg(args, users), path)
        return done(c, interactions=info["n_interactions"], file_mib=info["bytes"] / 2**20)

    from marl_two_tower.data.synthetic_parquet import read_native, side_paths

    if args.stage == "load_generic":
        from marl_two_tower.data.generic import load_table

        items, users_table = side_paths(path)
        alias = items.with_name(items.name.replace(".items.", ".items-generic."))
        if not alias.exists():  # another item-table name than the header's -> the generic route
            alias.symlink_to(items.name)
        with _Clock() as c:
            ds = load_table(path, alias, users_table)
        return done(c, interactions=ds.n_interactions)
    with _Clock() as c_load:
        ds = read_native(path)
    out["interactions"] = ds.n_interactions
    if args.stage == "load":
        return done(c_load)

    from marl_two_tower.data.split import leave_one_out
    from marl_two_tower.model.context_gnn import BipartiteGraph

    out["rss_before_mib"] = _rss_mib()
    with _Clock() as c_split:
        split = leave_one_out(ds)
    if args.stage == "split_graph":
        with _Clock() as c_graph:
            graph = BipartiteGraph.from_split(split)
        return done(c_split, c_graph, split_s=c_split.cpu, graph_s=c_graph.cpu,
                    graph_edges=int(len(graph.keys)))

    from marl_two_tower.config import Config
    from marl_two_tower.train.trainer import Trainer
    from marl_two_tower.utils.runtime import epoch_rng

    cfg = Config()
    cfg.train.batch_size = args.batch
    cfg.train.device = "cpu"
    cfg.train.num_threads = 1
    cfg.checkpoint_dir = str(Path(args.data_dir) / "ckpt-unused")
    out["rss_before_mib"] = _rss_mib()
    if args.stage == "train":
        with _Clock() as c_build:
            trainer = Trainer(cfg, split, progress=False)
        with _Clock() as c_perm:
            batches = trainer.sampler.batches(0)
            idx = next(batches)
        rng = epoch_rng(cfg.seed, 0, 2)
        losses = []
        with _Clock() as c_steps:
            for _ in range(args.steps):
                losses.append(trainer.train_step(idx, rng)["total"])
                idx = next(batches)
        return done(c_build, c_perm, c_steps, build_s=c_build.cpu, perm_s=c_perm.cpu,
                    steps_s=c_steps.cpu, step_ms=1000 * c_steps.cpu / args.steps,
                    loss_first=losses[0], loss_last=losses[-1])

    if args.stage == "eval":
        from marl_two_tower.eval.protocols import rank_full, summarize
        from marl_two_tower.model.build import build_model
        from marl_two_tower.utils.runtime import set_seed

        set_seed(cfg.seed)
        model = build_model(cfg, split)
        sample = np.sort(np.random.default_rng(0).choice(
            split.eval_users("test"), size=min(args.eval_users, len(split.eval_users("test"))),
            replace=False))
        with _Clock() as c:
            res = rank_full(split, model.scorer(), "test", k_max=20, batch_size=1024, users=sample)
            metrics = summarize(res, split, (5, 10, 20), "full", groups=True)
        return done(c, eval_users=int(len(sample)), **{"HR@10_untrained": metrics["HR@10"]})
    raise ValueError(f"unknown stage {args.stage!r}")


# ---------------------------------------------------------------------------
# Driver: one subprocess per (size, stage), memory watchdog, JSON log
# ---------------------------------------------------------------------------


def _watch(proc: subprocess.Popen, limit_mib: float, state: dict) -> None:
    """Kill ``proc`` when its resident memory passes ``limit_mib`` (polls /proc)."""
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            rss_kib = next(int(line.split()[1]) for line in status.read_text().splitlines()
                           if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            rss_kib = 0
        state["max_seen_mib"] = max(state.get("max_seen_mib", 0.0), rss_kib / 1024.0)
        if rss_kib / 1024.0 > limit_mib:
            state["killed"] = True
            proc.kill()
            return
        time.sleep(0.5)


def drive(args: argparse.Namespace) -> None:
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    stages = args.stages.split(",")
    for users in sizes:
        for stage in stages:
            if stage == "generate" and _data_path(args, users).exists() and not args.regenerate:
                print(f"[{users}] generate: reusing {_data_path(args, users)}", flush=True)
                continue
            cmd = [sys.executable, __file__, "--stage", stage, "--users", str(users),
                   "--items", str(args.items), "--ipu", str(args.ipu), "--steps", str(args.steps),
                   "--batch", str(args.batch), "--eval-users", str(args.eval_users),
                   "--data-dir", args.data_dir]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO,
                                    env=os.environ | {"OMP_NUM_THREADS": "1"})
            state: dict = {}
            watcher = threading.Thread(target=_watch, args=(proc, args.max_rss_gib * 1024, state),
                                       daemon=True)
            watcher.start()
            stdout, _ = proc.communicate()
            watcher.join()
            wall = time.perf_counter() - t0
            if proc.returncode != 0 or state.get("killed"):
                why = "memory limit" if state.get("killed") else f"exit {proc.returncode}"
                print(f"[{users}] {stage}: FAILED ({why}, {wall:.0f}s, max RSS seen "
                      f"{state.get('max_seen_mib', 0):.0f} MiB)", flush=True)
                rec = {"stage": stage, "users": users, "failed": why}
            else:
                rec = json.loads(stdout.strip().splitlines()[-1])
                rec["process_wall_s"] = wall
                print(f"[{users}] {stage}: {rec['seconds']:.1f}s ({rec.get('cpu_s', 0):.1f}s CPU), peak RSS "
                      f"{rec['peak_rss_mib']:.0f} MiB ({rec.get('interactions', '?')} interactions)",
                      flush=True)
            with results_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------------------
# Report: table, exponents, plot
# ---------------------------------------------------------------------------


def _latest(results_path: Path) -> dict[tuple[str, int], dict]:
    recs: dict[tuple[str, int], dict] = {}
    for line in results_path.read_text().splitlines():
        rec = json.loads(line)
        if "failed" not in rec:
            recs[(rec["stage"], rec["users"])] = rec  # the last measurement wins
    return recs


def report(args: argparse.Namespace) -> None:
    import numpy as np

    recs = _latest(Path(args.results))
    inter = {u: r["interactions"] for (s, u), r in recs.items() if "interactions" in r}
    sizes = sorted({u for (_, u) in recs})
    print("CPU time (wall) / peak RSS of each stage's process (RSS above the import baseline in "
          "brackets); exponents: slope of log CPU time and log RSS-above-baseline vs log interactions")
    print("| stage | " + " | ".join(f"{u:,} users ({inter.get(u, 0) / 1e6:.1f}M inter.)"
                                      for u in sizes) + " | time exponent | memory exponent |")
    print("|---|" + "---|" * len(sizes) + "---|---|")
    fits = {}
    for stage in STAGES + EXTRA_STAGES:
        row = [recs.get((stage, u)) for u in sizes]
        if not any(row):
            continue
        cells = [f"{r.get('cpu_s', r['seconds']):.1f} s ({r['seconds']:.0f} s wall) / "
                 f"{r['peak_rss_mib'] / 1024:.2f} GiB ({(r['peak_rss_mib'] - r['base_rss_mib']) / 1024:.2f})"
                 if r else "-" for r in row]
        pts = [(inter[u], r.get("cpu_s", r["seconds"]), r["peak_rss_mib"] - r["base_rss_mib"])
               for u, r in zip(sizes, row, strict=True) if r]
        if len(pts) >= 2:
            x = np.log([p[0] for p in pts])
            slope_t = float(np.polyfit(x, np.log([p[1] for p in pts]), 1)[0])
            slope_m = float(np.polyfit(x, np.log([p[2] for p in pts]), 1)[0])
            fits[stage] = (slope_t, slope_m, pts)
            cells += [f"{slope_t:.2f}", f"{slope_m:.2f}"]
        else:
            cells += ["-", "-"]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    details = {"split_graph": ("split_s", "graph_s"),  # CPU seconds of the parts
               "train": ("build_s", "perm_s", "steps_s", "step_ms")}
    for stage, keys in details.items():
        for u in sizes:
            r = recs.get((stage, u))
            if r:
                print(f"  {stage} {u}: " + ", ".join(f"{k}={r[k]:.2f}" for k in keys if k in r))
    if args.plot and fits:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for stage, (st, sm, pts) in fits.items():
            n = [p[0] for p in pts]
            axes[0].loglog(n, [p[1] for p in pts], "o-", label=f"{stage} (slope {st:.2f})")
            axes[1].loglog(n, [p[2] / 1024 for p in pts], "o-", label=f"{stage} (slope {sm:.2f})")
        for ax, what in zip(axes, ("CPU time (s)", "peak RSS above imports (GiB)"), strict=True):
            ax.set_xlabel("interactions")
            ax.set_ylabel(what)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        n_min = min(p[0] for f in fits.values() for p in f[2])
        t_ref = fits[next(iter(fits))][2][0][1]
        xs = np.array([n_min, max(p[0] for f in fits.values() for p in f[2])])
        axes[0].loglog(xs, t_ref * xs / n_min, "k:", lw=1, label="linear")
        axes[0].legend(fontsize=8)
        fig.suptitle("marl-two-tower: cost per stage vs interactions (benchmarks/scale.py)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated user counts")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--ipu", type=float, default=50.0, help="interactions per user (mean)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--eval-users", type=int, default=2000)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--data-dir", default="data/scale")
    p.add_argument("--results", default="runs/scale/results.jsonl")
    p.add_argument("--max-rss-gib", type=float, default=12.0, help="watchdog: kill a stage above this")
    p.add_argument("--regenerate", action="store_true", help="regenerate existing Parquet files")
    p.add_argument("--report", action="store_true", help="print the table from --results")
    p.add_argument("--plot", default="", help="with --report: write the log-log plot here")
    p.add_argument("--stage", choices=STAGES + EXTRA_STAGES, help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args)), flush=True)
    elif args.report:
        report(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()

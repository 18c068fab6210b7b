"""Accuracy-fairness frontiers on ML-100K (docs/frontier.md).

Trains (or reuses, when ``<runs>/<model>/seed<S>`` holds a finished run with the same
config) the base two-tower and the full model (every component, ``configs/ablation.yaml``),
then puts on the frontier, from candidates computed once per split:

* the base two-tower under the exposure budget, and under the popularity penalty;
* the full model under the exposure budget (offline joint allocation) and under the
  online budget (what ``serve`` returns, one window over all users, in user order);
* both under per-item prices (the budget's dual variables fitted on the evaluated
  users' candidates; a stateless item bias a server applies per request);
* the full model with the genre agents' actions zeroed (the controller part of z_u
  set to 0 on the same checkpoint) under the budget;
* EASE (lambda chosen on validation, fitted on train) under the budget.

HR@10 at matched Gini@10 (0.70, 0.60, 0.50) is chosen on validation per seed and
reported on test with user-bootstrap 95% CIs; paired comparisons are Wilcoxon
signed-rank over users on per-user hit@10 at each model's own matched setting.

    .venv/bin/python benchmarks/frontier_ml100k.py --data ../shared/data/ml-100k --seeds 42

``--components C ... --full-dir NAME`` makes the "full" model the base plus those
components only (one component's own frontier against the same base runs); the
zeroed-actions curve is left out when the genre agents are not among them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.baselines.ease import EASE, tune_ease  # noqa: E402
from marl_two_tower.config import Config, load_config  # noqa: E402
from marl_two_tower.data import load_split  # noqa: E402
from marl_two_tower.eval import frontier as F  # noqa: E402
from marl_two_tower.eval.scorers import part_scorers  # noqa: E402
from marl_two_tower.model.build import COMPONENTS, load_trained  # noqa: E402
from marl_two_tower.study.ablation import run_status  # noqa: E402
from marl_two_tower.study.results import git_commit, read_results  # noqa: E402
from marl_two_tower.study.run import frontier_candidates, train_and_evaluate  # noqa: E402
from marl_two_tower.utils.io import to_jsonable, write_text_atomic  # noqa: E402

TARGETS = F.GINI_TARGETS
COMPARISONS = (  # (model, against): paired at matched Gini
    ("full / budget", "base / budget"),
    ("full / budget", "base / popularity penalty"),
    ("full / budget", "full, MARL actions zeroed / budget"),
    ("full / budget", "EASE / budget"),
    ("full / online budget", "base / budget"),
    ("full / online budget", "full / budget"),
    ("full / item prices", "full / budget"),
    ("full / item prices", "full / online budget"),
    ("base / item prices", "base / budget"),
)


def model_config(args: argparse.Namespace, model: str, seed: int) -> Config:
    on = [f"{c}.enabled=true" for c in (args.components or COMPONENTS)] if model == "full" else []
    if model == "full":
        on += list(args.full_set)
    run = Path(args.runs) / (args.full_dir if model == "full" else model)
    return load_config("ablation.yaml", [f"data.path={args.data}", "train.num_threads=1",
                                         f"seed={seed}", f"name=seed{seed}", f"output_dir={run}",
                                         f"checkpoint_dir={run}/seed{seed}/checkpoints", *on])


def trained(args: argparse.Namespace, model: str, seed: int, split) -> tuple[Config, dict]:
    """The finished run of ``model`` and ``seed`` (trained now unless it exists)."""
    cfg = model_config(args, model, seed)
    run_dir = Path(cfg.output_dir) / cfg.name
    if run_status(cfg, split, clean=False) == "done" and (run_dir / F.FRONTIER_FILE).exists():
        print(f"{model} seed {seed}: reusing {run_dir}", flush=True)
        return cfg, read_results(run_dir) | {"reused": True}
    t0 = time.perf_counter()
    _, doc = train_and_evaluate(cfg, progress=False, split=split)
    print(f"{model} seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return cfg, doc | {"reused": False}


@contextlib.contextmanager
def actions_zeroed(model):
    """The genre agents' actions (the controller's user features [b_u ; t_u]) set to 0:
    z_u = [scale * e_u ; 0], the same checkpoint otherwise."""
    ctrl = model.controller
    ctrl.user_features = lambda users, e_u: e_u.new_zeros(len(users), 2 * ctrl.n_agents)
    try:
        yield model
    finally:
        del ctrl.user_features  # back to the class method


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--runs", default="runs/frontier-ml100k", help="run folders (reused when finished)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "frontier_ml100k.json"))
    p.add_argument("--plot", default=str(REPO / "docs" / "img" / "frontier_ml100k.png"))
    p.add_argument("--replot", action="store_true", help="only redraw --plot from --output")
    p.add_argument("--full-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of the full model only (repeatable; default: none)")
    p.add_argument("--components", nargs="+", choices=COMPONENTS, default=None,
                   help="the components the 'full' model switches on (default: all), e.g. "
                        "--components buhs exposure_budget for the base plus BUHS; use with --full-dir")
    p.add_argument("--full-dir", default="full",
                   help="the full model's folder under --runs (default: full), so variants "
                        "of it share the base runs")
    args = p.parse_args()
    if args.replot:
        plot(json.loads(Path(args.output).read_text()), args.plot)
        return 0
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    split = load_split(model_config(args, "base", args.seeds[0]).data)

    cands: dict[str, list[dict[str, F.Candidates]]] = {}
    runs_info: dict[str, list[dict]] = {}
    for model in ("base", "full"):
        for seed in args.seeds:
            cfg, doc = trained(args, model, seed, split)
            run_dir = Path(cfg.output_dir) / cfg.name
            cands.setdefault(model, []).append(F.load_candidates(run_dir))
            runs_info.setdefault(model, []).append({
                "seed": seed, "run_dir": str(run_dir), "reused": doc["reused"],
                "best_epoch": doc["extra"].get("best_epoch"),
                "test_full": {k: doc["metrics"]["test"]["full"].get(k)
                              for k in ("HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10")}})
            if model == "full" and cfg.marl.enabled:  # the same checkpoint, agents' actions zeroed
                m, _, _ = load_trained(Path(cfg.checkpoint_dir) / "model_best.pt", cfg=cfg, split=split,
                                       device="cpu")
                with actions_zeroed(m):
                    cands.setdefault("zeroed", []).append(
                        frontier_candidates(cfg, split, part_scorers(m, split, cfg)))
    t0 = time.perf_counter()
    lam, grid = tune_ease(split)
    ease = EASE(lam).fit(split)
    base_cfg = model_config(args, "base", args.seeds[0])
    cands["ease"] = [frontier_candidates(base_cfg, split, part_scorers(ease, split, base_cfg))]
    ease_s = time.perf_counter() - t0

    budget = F.budget_curve(F.BUDGET_FACTORS, floor=1)
    curves = {
        "base / budget": ("base", budget), "base / popularity penalty": ("base", F.popularity_curve()),
        "full / budget": ("full", budget), "full / online budget": ("full", F.online_curve()),
        "full, MARL actions zeroed / budget": ("zeroed", budget), "EASE / budget": ("ease", budget),
        "base / item prices": ("base", F.price_curve()), "full / item prices": ("full", F.price_curve()),
    }
    if "zeroed" not in cands:  # a "full" model without the genre agents (e.g. base + one component)
        del curves["full, MARL actions zeroed / budget"]
    fronts, timings = {}, {}
    for name, (key, settings) in curves.items():
        t0 = time.perf_counter()
        fronts[name] = F.frontier_of(name, cands[key], settings, TARGETS)
        timings[name] = time.perf_counter() - t0
        print(f"{name}: {len(settings)} settings x {len(cands[key])} seed(s) x 2 splits "
              f"in {timings[name]:.1f} s", flush=True)
    summaries = {name: F.frontier_summary(f, args.n_boot) for name, f in fronts.items()}
    paired = {f"{a} vs {b}": {f"{t:.2f}": F.paired_matched(fronts[a].matched[t], fronts[b].matched[t])
                              for t in TARGETS} for a, b in COMPARISONS if a in fronts and b in fronts}
    doc = {
        "benchmark": "frontier_ml100k", "git_commit": git_commit(),
        "command": "python benchmarks/frontier_ml100k.py " + " ".join(sys.argv[1:]),
        "data": {"name": split.dataset.name, "fingerprint": split.dataset.fingerprint(),
                 "n_users": split.n_users, "n_items": split.n_items},
        "seeds": args.seeds, "targets": list(TARGETS), "n_boot": args.n_boot,
        "full_overrides": list(args.full_set), "full_components": list(args.components or COMPONENTS),
        "knobs": {"budget": {"factors": list(F.BUDGET_FACTORS), "floor": 1, "k": 10},
                  "online": {"factors": list(F.BUDGET_FACTORS), "window": "all evaluated users",
                             "order": "user index"},
                  "prices": {"factors": list(F.BUDGET_FACTORS), "k": 10,
                             "fit": "fairness/exposure.py fit_item_prices on the split's candidates"},
                  "popularity": {"weights": list(F.POPULARITY_WEIGHTS),
                                 "score": "s(u,i) - w * log(1 + pop(i))"}},
        "ease": {"lambda": lam, "val_ndcg10": grid, "fit": "train only", "wall_s": ease_s},
        "runs": runs_info, "frontiers": summaries, "paired": paired, "sweep_wall_s": timings,
        "wall_s": time.perf_counter() - t_start,
    }
    write_text_atomic(args.output, json.dumps(to_jsonable(doc), indent=2))
    plot(doc, args.plot)
    print(markdown(doc))
    print(f"wrote {args.output}")
    return 0


def plot(doc: dict, path: str) -> None:
    """Test HR@10 against Gini@10 and Coverage@10 of every curve (the report's plot)."""
    from marl_two_tower.study.frontier_report import benchmark_section, plot_frontier_curves

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    plot_frontier_curves(benchmark_section(doc)).savefig(path, dpi=110, bbox_inches="tight")


def _cell(m: dict) -> str:
    v = m["HR@10"]["value"]
    if v is None:
        return "not reached"
    lo, hi = m["HR@10"]["ci95"]
    flag = " (off ≤ target)" if "off_below_target" in m["status"] else ""
    return f"{v:.4f} [{lo:.4f}, {hi:.4f}]{flag}"


def markdown(doc: dict) -> str:
    """The tables of docs/frontier.md."""
    t = doc["targets"]
    lines = ["| model / knob | HR@10 off | Gini@10 off | Coverage@10 off | "
             + " | ".join(f"HR@10 at Gini {g:.2f}" for g in t) + " |",
             "|---|---|---|---|" + "---|" * len(t)]
    for name, s in doc["frontiers"].items():
        off = s["test"][0]
        lines.append(f"| {name} | {off['HR@10']:.4f} | {off['Gini@10']:.4f} | {off['Coverage@10']:.4f} | "
                     + " | ".join(_cell(s["matched"][f"{g:.2f}"]) for g in t) + " |")
    lines += ["", "| comparison (paired, per-user hit@10) | " + " | ".join(f"Δ at {g:.2f}" for g in t) + " |",
              "|---|" + "---|" * len(t)]
    for name, per in doc["paired"].items():
        cells = []
        for g in t:
            r = per[f"{g:.2f}"]
            cells.append("n/a" if r is None else f"{r['delta']:+.4f} (p={r['p_wilcoxon']:.3g})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

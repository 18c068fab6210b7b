"""Accuracy-fairness frontiers of already trained checkpoints (docs/frontier.md).

``benchmarks/frontier_ml100k.py`` trains its own runs; this script puts checkpoints that
exist already (one per seed, e.g. the ``benchmarks/sasrec_reference.py`` runs of
complete ML-1M) on the same axes, beside EASE, without training anything:

* each model (``--model LABEL CHECKPOINT...``, one checkpoint per seed) under the exposure
  budget (the offline joint allocation's cap swept, floor 1) and under the one-knob
  popularity penalty ``s(u,i) - w log(1 + pop(i))``;
* EASE (lambda chosen on validation, fitted on train) under the budget.

HR@10 at matched Gini@10 (0.70, 0.60, 0.50) is chosen on validation per seed and
reported on test with user-bootstrap 95% CIs; paired comparisons are Wilcoxon
signed-rank over users on per-user hit@10 (seed-averaged) at each curve's own matched
setting: every model's budget curve against its popularity penalty, EASE, the same
checkpoints with the genre agents' actions zeroed (models with MARL) and every earlier
``--model``'s budget curve. Every
checkpoint is scored with its stored config (``eval.test_history``: test reads train +
validation), only ``data.path`` replaced.

    .venv/bin/python benchmarks/frontier_checkpoints.py --data ../shared/data/ml-1m-ordered \\
        --model base /tmp/mtt-sasrec/two_tower_{42,1,2}/model_best.pt \\
        --output benchmarks/results/frontier_ml-1m-ordered_base.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from frontier_ml100k import actions_zeroed, markdown  # noqa: E402  (docs/frontier.md's tables)

from marl_two_tower import checkpoint as ckpt_io  # noqa: E402
from marl_two_tower.baselines.ease import EASE, tune_ease  # noqa: E402
from marl_two_tower.config import config_from_dict  # noqa: E402
from marl_two_tower.data import load_split  # noqa: E402
from marl_two_tower.eval import frontier as F  # noqa: E402
from marl_two_tower.eval.scorers import part_scorers  # noqa: E402
from marl_two_tower.model.build import load_trained  # noqa: E402
from marl_two_tower.study.results import git_commit  # noqa: E402
from marl_two_tower.study.run import frontier_candidates  # noqa: E402
from marl_two_tower.utils.io import to_jsonable, write_text_atomic  # noqa: E402


def stored_config(path: str, data: str | None):
    """A checkpoint's own config, with ``data.path`` replaced when ``data`` is given."""
    cfg = config_from_dict(json.loads(ckpt_io.load(path)["config"]))
    return replace(cfg, data=replace(cfg.data, path=data)) if data else cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", action="append", required=True, metavar="LABEL CHECKPOINT",
                   help="a label and its checkpoints (one model_best.pt per seed); repeatable")
    p.add_argument("--data", default=None, help="dataset folder (default: each checkpoint's data.path)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--no-ease", action="store_true", help="leave EASE out")
    p.add_argument("--output", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    models = {spec[0]: spec[1:] for spec in args.model}
    if any(not paths for paths in models.values()):
        p.error("--model needs a label and at least one checkpoint")
    cfgs = {label: [stored_config(c, args.data) for c in paths] for label, paths in models.items()}
    first = next(iter(cfgs.values()))[0]
    split = load_split(first.data)
    curves, runs = {}, {}
    for label, paths in models.items():
        cands, zeroed = [], []
        for path, cfg in zip(paths, cfgs[label], strict=True):
            t0 = time.perf_counter()
            model, _, _ = load_trained(path, cfg=cfg, split=split, device="cpu")
            cands.append(frontier_candidates(cfg, split, part_scorers(model, split, cfg)))
            if cfg.marl.enabled:  # the same checkpoint with the genre agents' actions zeroed
                with actions_zeroed(model):
                    zeroed.append(frontier_candidates(cfg, split, part_scorers(model, split, cfg)))
            plain = F.plain_metrics(cands[-1]["test"])
            runs.setdefault(label, []).append({"checkpoint": path, "seed": cfg.seed,
                                               "scoring_s": time.perf_counter() - t0,
                                               "test_HR@10": float(plain["hit@10"].mean())})
            print(f"{label}: {path} (seed {cfg.seed}) scored in {runs[label][-1]['scoring_s']:.0f} s, "
                  f"test HR@10 {runs[label][-1]['test_HR@10']:.4f}", flush=True)
        budget = F.budget_curve(F.BUDGET_FACTORS, floor=1)
        curves[f"{label} / budget"] = (cands, budget)
        curves[f"{label} / popularity penalty"] = (cands, F.popularity_curve())
        if zeroed:
            curves[f"{label}, MARL actions zeroed / budget"] = (zeroed, budget)
    ease_doc = None
    if not args.no_ease:
        t0 = time.perf_counter()
        lam, grid = tune_ease(split)
        ease = EASE(lam).fit(split)
        curves["EASE / budget"] = ([frontier_candidates(first, split, part_scorers(ease, split, first))],
                                   F.budget_curve(F.BUDGET_FACTORS, floor=1))
        ease_doc = {"lambda": lam, "val_ndcg10": grid, "fit": "train only",
                    "wall_s": time.perf_counter() - t0}
    labels = list(models)
    comparisons = [(f"{m} / budget", other) for i, m in enumerate(labels)
                   for other in [f"{m} / popularity penalty", "EASE / budget",
                                 f"{m}, MARL actions zeroed / budget",
                                 *(f"{e} / budget" for e in labels[:i])]]
    fronts = {name: F.frontier_of(name, c, settings, F.GINI_TARGETS)
              for name, (c, settings) in curves.items()}
    doc = {
        "benchmark": "frontier_checkpoints", "git_commit": git_commit(),
        "command": "python benchmarks/frontier_checkpoints.py " + " ".join(sys.argv[1:]),
        "data": {"name": split.dataset.name, "fingerprint": split.dataset.fingerprint(),
                 "n_users": split.n_users, "n_items": split.n_items},
        "targets": list(F.GINI_TARGETS), "n_boot": args.n_boot, "runs": runs, "ease": ease_doc,
        "knobs": {"budget": {"factors": list(F.BUDGET_FACTORS), "floor": 1, "k": 10},
                  "popularity": {"weights": list(F.POPULARITY_WEIGHTS),
                                 "score": "s(u,i) - w * log(1 + pop(i))"}},
        "frontiers": {name: F.frontier_summary(f, args.n_boot) for name, f in fronts.items()},
        "paired": {f"{a} vs {b}": {f"{t:.2f}": F.paired_matched(fronts[a].matched[t], fronts[b].matched[t])
                                   for t in F.GINI_TARGETS}
                   for a, b in comparisons if a in fronts and b in fronts},
        "wall_s": time.perf_counter() - t_start,
    }
    write_text_atomic(args.output, json.dumps(to_jsonable(doc), indent=2))
    print(markdown(doc))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

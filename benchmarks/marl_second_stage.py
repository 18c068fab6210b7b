"""The genre agents' second stage on frozen towers, measured (docs/marl.md, issue 17).

Loads a finished full-model run (its validation-selected ``model_best.pt``), replaces
its genre agents by fresh ones under each setting of :data:`SETTINGS` (``marl.*``
overrides), runs the after-fit stage (:meth:`MARLTrainer.after_fit`, the towers
frozen) and puts the result on the accuracy-fairness frontier beside the same
checkpoint with the agents' actions zeroed and the base two-tower under the
popularity-penalty re-ranker and the exposure budget: HR@10 at matched Gini@10
(0.70, 0.60, 0.50; chosen on validation, reported on test) and paired Wilcoxon tests
over users. The stage's record (learning curve, the judge's curve, train and held-out
users' reward-target HR against zero actions) is kept per setting.

    .venv/bin/python benchmarks/marl_second_stage.py --run runs/abl/gini/seed42 \\
        --base-run runs/frontier/base/seed42 --output benchmarks/results/marl_second_stage_ml100k.json

``--run`` is the "+GINI" variant of ``marl-two-tower ablate -c ablation.yaml`` (every
component but the tail loss, so the genre agents' towers), ``--base-run`` the base.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marl_two_tower.eval import frontier as F  # noqa: E402
from marl_two_tower.eval.protocols import evaluate  # noqa: E402
from marl_two_tower.eval.scorers import part_scorers  # noqa: E402
from marl_two_tower.model.build import load_trained  # noqa: E402
from marl_two_tower.model.marl.agents import MARLTrainer, build_genre_agents  # noqa: E402
from marl_two_tower.study.results import git_commit  # noqa: E402
from marl_two_tower.study.run import frontier_candidates  # noqa: E402
from marl_two_tower.utils.io import to_jsonable, write_text_atomic  # noqa: E402

# shared by every setting: actions in units of the user's score spread, up to 2 sigma,
# the stage only (no interleaved steps), exploration std exp(-1)
COMMON = {"action_units": "score_std", "action_scale": 2.0, "schedule": "after_fit",
          "init_log_std": -1.0, "entropy_coef": 0.0}
ACCURACY_REWARD = {"beta": 0.0, "gamma": 0.0, "eta": 0.0}  # R = HR@10 + 0.5 TailHR@10
SETTINGS: dict[str, dict] = {
    "team credit, default reward": {"finetune_steps": 300, "lr": 3e-4, "agent_credit": "team",
                                    "finetune_judge": "holdout"},
    "difference credit, default reward": {"finetune_steps": 200, "lr": 3e-3,
                                          "agent_credit": "difference", "finetune_judge": "holdout"},
    "difference credit, HR+TailHR reward, cost 0.05, judged on held-out users": {
        "finetune_steps": 400, "lr": 1e-3, "agent_credit": "difference", "action_cost": 0.05,
        "finetune_judge": "holdout", **ACCURACY_REWARD},
    "difference credit, HR+TailHR reward, cost 0.05, judged on validation": {
        "finetune_steps": 400, "lr": 1e-3, "agent_credit": "difference", "action_cost": 0.05,
        "finetune_judge": "validation", **ACCURACY_REWARD},
}
AGAINST = ("zeroed / budget", "base / popularity penalty", "base / budget")


def zeroed(model):
    """The model's scorers with the controller's user features set to 0."""
    ctrl = model.controller
    ctrl.user_features = lambda users, e_u: e_u.new_zeros(len(users), 2 * ctrl.n_agents)
    return ctrl


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="finished full-model run folder (checkpoints/model_best.pt)")
    p.add_argument("--base-run", required=True, help="finished base run folder (frontier.npz)")
    p.add_argument("--only", nargs="*", default=None, help="setting names (default: all)")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "marl_second_stage_ml100k.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = Path(args.run) / "checkpoints" / "model_best.pt"
    base = F.load_candidates(args.base_run)
    if base is None:
        raise SystemExit(f"{args.base_run}: no {F.FRONTIER_FILE}")
    budget = F.budget_curve(F.BUDGET_FACTORS, floor=1)
    rows = {}
    zero_front = None
    for name, over in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        model, cfg, split = load_trained(ckpt, device="cpu")
        for k, v in (COMMON | over).items():
            setattr(cfg.marl, k, v)
        torch.manual_seed(cfg.seed)
        model.set_controller(build_genre_agents(cfg, split, model))  # fresh agents
        model.eval()
        stage = MARLTrainer(cfg, split, model, torch.device("cpu"))

        def validate(model=model, split=split):
            res = evaluate(split, model.scorer(torch.device("cpu")), part="val", ks=(10,),
                           protocol="full", groups=False)
            return {k: v for k, v in res["full"].items() if isinstance(v, (int, float))}

        record = stage.after_fit(cfg.seed, validate)
        model.eval()
        fronts = {"agents / budget": F.frontier_of(
            "agents", [frontier_candidates(cfg, split, part_scorers(model, split, cfg))],
            budget, F.GINI_TARGETS)}
        if zero_front is None:  # the same checkpoint's towers for every setting
            ctrl = zeroed(model)
            zero_front = F.frontier_of("zeroed", [frontier_candidates(
                cfg, split, part_scorers(model, split, cfg))], budget, F.GINI_TARGETS)
            del ctrl.user_features
        fronts["zeroed / budget"] = zero_front
        fronts["base / popularity penalty"] = F.frontier_of("pop", [base], F.popularity_curve(),
                                                            F.GINI_TARGETS)
        fronts["base / budget"] = F.frontier_of("base", [base], budget, F.GINI_TARGETS)
        summ = {k: F.frontier_summary(f, args.n_boot) for k, f in fronts.items()}
        rows[name] = {
            "overrides": COMMON | over, "stage": record,
            "test_HR@10": {k: {"off": s["test"][0]["HR@10"],
                               **{t: s["matched"][t]["HR@10"]["value"] for t in s["matched"]}}
                           for k, s in summ.items()},
            "paired": {o: {f"{t:.2f}": F.paired_matched(fronts["agents / budget"].matched[t],
                                                        fronts[o].matched[t])
                           for t in F.GINI_TARGETS} for o in AGAINST},
            "wall_s": time.perf_counter() - t0}
        hr = rows[name]["test_HR@10"]
        print(f"{name}: kept step {record['marl_finetune/kept_step']:.0f}; test HR@10 at Gini 0.60 "
              f"agents {hr['agents / budget']['0.60']}, zeroed {hr['zeroed / budget']['0.60']}",
              flush=True)
    doc = {"benchmark": "marl_second_stage", "git_commit": git_commit(),
           "command": "python benchmarks/marl_second_stage.py " + " ".join(sys.argv[1:]),
           "run": args.run, "base_run": args.base_run, "settings": rows}
    write_text_atomic(args.output, json.dumps(to_jsonable(doc), indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

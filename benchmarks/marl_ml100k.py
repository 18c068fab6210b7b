"""ML-100K: the two-tower with and without the MARL genre agents (same seed, epochs).

    .venv/bin/python benchmarks/marl_ml100k.py --data ../shared/data/ml-100k

Both models train ``--epochs`` epochs (no early stop; the checkpoint with the best
validation NDCG@10 is kept, as in every run) and are evaluated once on test with
the full-ranking protocol. Prints (and writes to ``--out``):

1. HR@10, NDCG@10, Coverage@10, Gini@10, TailHR@10 of both, the delta with its
   p-value: per-user metrics by the paired Wilcoxon signed-rank test and the paired
   t-test (scipy, on the per-user arrays of the same test users), list metrics by a
   paired user bootstrap (:func:`marl_two_tower.significance.compare`); plus the
   +MARL model with its controller detached ("towers only"), which separates the
   agents' effect from the effect of holding the reward targets out of training;
2. the learning curve of the mean RL reward (per epoch, and per tenth of all RL steps);
3. the spread of the agents' deterministic actions over test users and genres;
4. the training time per epoch of both and the controller's share (RL steps).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.eval.arrays import compute_eval_arrays
from marl_two_tower.eval.significance import compare, paired_tests
from marl_two_tower.metrics.ranking import per_user
from marl_two_tower.model.build import build_model
from marl_two_tower.train.trainer import Trainer

METRICS = ["HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10"]
CKPT = "runs/marl_ml100k"  # checkpoints of the two runs (--out's stem when --out is given)


def run(cfg, split, name: str):
    cfg = copy.deepcopy(cfg)
    cfg.checkpoint_dir = f"{CKPT}/{name}"
    t0 = time.perf_counter()
    tr = Trainer(cfg, split, progress=False)
    st = tr.fit()
    wall = time.perf_counter() - t0
    arrays = compute_eval_arrays(split, tr.model.scorer(), ks=(10,))
    return tr, st, arrays, wall


def comparisons(split, arr_b, arr_m, model) -> dict:
    """+MARL vs base, and the +MARL model's agents vs its own towers (controller detached)."""
    ctrl = model.controller
    model.controller = None  # towers only: the same weights without the agents' dimensions
    arr_t = compute_eval_arrays(split, model.scorer(), ks=(10,))
    model.controller = ctrl
    pb = per_user(arr_b.recs, arr_b.targets, arr_b.tail_mask, (10,), ranks=arr_b.ranks)
    pm = per_user(arr_m.recs, arr_m.targets, arr_m.tail_mask, (10,), ranks=arr_m.ranks)
    ttests = {name: paired_tests(pm[f"{key}@10"], pb[f"{key}@10"])
              for name, key in (("HR@10", "hit"), ("NDCG@10", "ndcg"), ("TailHR@10", "tailhit"))}
    return {"vs_base": compare([arr_m], [arr_b], METRICS, n_boot=1000, seed=0),
            "towers_vs_base": compare([arr_t], [arr_b], METRICS, n_boot=1000, seed=0),
            "agents_vs_towers": compare([arr_m], [arr_t], METRICS, n_boot=1000, seed=0),
            "ttests": ttests}


def print_table(title: str, c: dict) -> None:
    print(f"\n{title}")
    print("| metric | base | +MARL | delta | p (Wilcoxon / bootstrap) | p (t-test) "
          "| +MARL towers only | agents vs own towers: delta | p |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in METRICS:
        v, t, a = c["vs_base"][k], c["towers_vs_base"][k], c["agents_vs_towers"][k]
        pt = f"{c['ttests'][k]['p_ttest']:.3g}" if k in c["ttests"] else "-"
        print(f"| {k} | {v['base_value']:.4f} | {v['value']:.4f} | {v['delta']:+.4f} "
              f"| {v['p_value']:.3g} | {pt} | {t['value']:.4f} | {a['delta']:+.4f} | {a['p_value']:.3g} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/ml-100k")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="overrides for the +MARL run (e.g. marl.beta=0.1)")
    p.add_argument("--out", default="runs/marl_ml100k.json")
    args = p.parse_args()
    global CKPT
    CKPT = str(Path(args.out).with_suffix(""))
    torch.set_num_threads(1)
    common = [f"data.path={args.data}", f"train.epochs={args.epochs}", f"seed={args.seed}",
              "train.patience=1000"]
    cfg_base = load_config("ml100k", common + ["marl.enabled=false"])
    cfg_marl = load_config("ml100k", common + ["marl.enabled=true"] + args.overrides)
    split = load_split(cfg_base.data)

    _, st_b, arr_b, wall_b = run(cfg_base, split, "base")
    tr_m, st_m, arr_m, wall_m = run(cfg_marl, split, "marl")
    best = comparisons(split, arr_b, arr_m, tr_m.model)
    # the same comparison at the last epoch (equal training for both, no selection)
    last = {}
    for name, cfg in (("base", cfg_base), ("marl", cfg_marl)):
        m = build_model(cfg, split)
        m.load_state_dict(ckpt_io.load(f"{CKPT}/{name}/last.pt")["model"])
        last[name] = m
    arr_bl = compute_eval_arrays(split, last["base"].scorer(), ks=(10,))
    arr_ml = compute_eval_arrays(split, last["marl"].scorer(), ks=(10,))
    final = comparisons(split, arr_bl, arr_ml, last["marl"])

    # the fully trained agents' deterministic actions on the test users (inference observations)
    lm = last["marl"].eval()
    ctrl = lm.controller
    users = torch.as_tensor(arr_m.users)
    with torch.no_grad():
        a = ctrl.act(ctrl.observe(users, lm.encode_users(users))).numpy()
    per_genre = {name: {"b_mean": float(a[:, g, 0].mean()), "b_std": float(a[:, g, 0].std()),
                        "t_mean": float(a[:, g, 1].mean()), "t_std": float(a[:, g, 1].std())}
                 for g, name in enumerate(ctrl.agent_names)}
    spread = {"b_std_over_users_mean": float(a[..., 0].std(0).mean()),
              "t_std_over_users_mean": float(a[..., 1].std(0).mean()),
              "b_std_over_genres": float(a[..., 0].mean(0).std()),
              "t_std_over_genres": float(a[..., 1].mean(0).std()),
              "b_range": [float(a[..., 0].min()), float(a[..., 0].max())],
              "t_range": [float(a[..., 1].min()), float(a[..., 1].max())]}

    ep_b = [h["time_s"] for h in st_b.history]
    ep_m = [h["time_s"] for h in st_m.history]
    rl_s = [h["marl/time_s"] for h in st_m.history]
    reward_epoch = [h["marl/reward"] for h in st_m.history]
    reward_zero_epoch = [h["marl/reward_zero_action"] for h in st_m.history]
    reward_det_epoch = [h["marl/reward_deterministic"] for h in st_m.history]
    marl = tr_m.component("marl")
    curve, curve_d, curve0 = marl.curve, marl.curve_det, marl.curve_zero
    n = max(1, len(curve) // 10)

    def tenths(c: list[float]) -> list[float]:
        return [float(np.mean(c[i:i + n])) for i in range(0, len(c), n)]

    print(f"\nML-100K test, full ranking, seed {args.seed}, {args.epochs} epochs")
    print_table(f"best validation epoch (base {st_b.best_epoch}, +MARL {st_m.best_epoch})", best)
    print_table(f"last epoch ({args.epochs})", final)
    print("\nmean RL reward per epoch (RL batches; sampled / deterministic / zero action):")
    for label, c in (("sampled", reward_epoch), ("deterministic", reward_det_epoch),
                     ("zero action", reward_zero_epoch)):
        print(f"  {label:<14}", " ".join(f"{r:.3f}" for r in c))
    print("per tenth of all RL steps:")
    for label, c in (("sampled", curve), ("deterministic", curve_d), ("zero action", curve0)):
        print(f"  {label:<14}", " ".join(f"{r:.3f}" for r in tenths(c)))
    print("\naction spread (last-epoch agents, deterministic actions, test users):", json.dumps(
        {k: (round(v, 4) if isinstance(v, float) else [round(x, 3) for x in v]) for k, v in spread.items()}))
    print("| genre | b mean | b std (users) | t mean | t std (users) |\n|---|---|---|---|---|")
    for name, d in per_genre.items():
        print(f"| {name} | {d['b_mean']:+.3f} | {d['b_std']:.3f} | {d['t_mean']:+.3f} | {d['t_std']:.3f} |")
    print(f"\ntime per epoch: base {np.mean(ep_b):.1f}s, +MARL {np.mean(ep_m):.1f}s "
          f"(ratio {np.mean(ep_m) / np.mean(ep_b):.2f}); RL steps {np.mean(rl_s):.1f}s/epoch "
          f"= {100 * np.sum(rl_s) / np.sum(ep_m):.0f}% of +MARL epoch time; "
          f"{marl.cfg.marl.rl_every} supervised steps per RL step of "
          f"{marl.cfg.marl.rl_batch_users} users; total wall base {wall_b:.0f}s, +MARL {wall_m:.0f}s")
    out = {"seed": args.seed, "epochs": args.epochs, "overrides": args.overrides,
           "best_epoch": {"base": st_b.best_epoch, "marl": st_m.best_epoch},
           "best": best, "last": final, "reward_per_epoch": reward_epoch,
           "reward_zero_action_per_epoch": reward_zero_epoch,
           "reward_deterministic_per_epoch": reward_det_epoch,
           "reward_curve": curve, "reward_curve_deterministic": curve_d,
           "reward_curve_zero_action": curve0,
           "action_spread": spread, "actions_per_genre": per_genre,
           "epoch_time_s": {"base": ep_b, "marl": ep_m, "marl_rl": rl_s},
           "val_history": {"base": [h.get("val/NDCG@10") for h in st_b.history],
                           "marl": [h.get("val/NDCG@10") for h in st_m.history]}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

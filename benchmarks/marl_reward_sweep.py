"""Sweep of the genre agents' reward weights on ML-100K validation (DESIGN §3: the
defaults of alpha..eta and jaccard_weight are justified by this sweep).

    .venv/bin/python benchmarks/marl_reward_sweep.py --data ../shared/data/ml-100k

To isolate the reward, the towers are trained once (20 epochs, reward targets held
out of the supervised positives exactly as in MARL training, best epoch by
validation NDCG@10) and then frozen; for every weight setting fresh agents (same
seed) are trained with the trainer's RL step for ``--rl-steps`` steps of
``rl_batch_users`` users, attached to the frozen model, and the model is evaluated
on **validation** only (the test split is never touched here). Prints one table row
per setting: validation HR@10, NDCG@10, Coverage@10, Gini@10, TailHR@10, the mean
reward of the last 50 RL steps and the spread (std over users and genres) of the
deterministic actions.
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
from marl_two_tower.eval.protocols import evaluate
from marl_two_tower.model.marl.agents import MARLTrainer, build_genre_agents
from marl_two_tower.model.marl.reward import reward_targets
from marl_two_tower.train.trainer import Trainer
from marl_two_tower.utils.runtime import set_seed

# (name, overrides of cfg.marl); alpha = 1 throughout (HR@K is the unit of reward)
SETTINGS: list[tuple[str, dict]] = [
    ("hr_only", dict(beta=0.0, gamma=0.0, delta=0.0, eta=0.0, jaccard_weight=0.0)),
    ("hr+tail", dict(beta=0.0, gamma=0.0, delta=1.0, eta=0.0, jaccard_weight=0.0)),
    ("light", dict(beta=0.1, gamma=0.1, delta=1.0, eta=0.05, jaccard_weight=0.1)),
    ("medium", dict(beta=0.25, gamma=0.25, delta=1.0, eta=0.1, jaccard_weight=0.1)),
    ("issue_default", dict(beta=0.5, gamma=0.5, delta=1.0, eta=0.2, jaccard_weight=0.1)),
    ("light_nojac", dict(beta=0.1, gamma=0.1, delta=1.0, eta=0.05, jaccard_weight=0.0)),
    ("light_shared", dict(beta=0.1, gamma=0.1, delta=1.0, eta=0.05, jaccard_weight=0.1,
                          credit="shared")),
    ("light_jac0.02", dict(beta=0.1, gamma=0.1, delta=1.0, eta=0.05, jaccard_weight=0.02)),
    ("light_nojac_shared", dict(beta=0.1, gamma=0.1, delta=1.0, eta=0.05, jaccard_weight=0.0,
                                credit="shared")),
    ("lighter_nojac", dict(beta=0.05, gamma=0.05, delta=1.0, eta=0.02, jaccard_weight=0.0)),
    ("cov_gini_only", dict(beta=0.1, gamma=0.1, delta=0.0, eta=0.0, jaccard_weight=0.0)),
    ("light_nojac_smooth", dict(beta=0.1, gamma=0.1, delta=1.0, eta=0.05, jaccard_weight=0.0,
                                tail_feature="smooth")),
    ("fair_nojac", dict(beta=0.5, gamma=0.5, delta=1.0, eta=0.2, jaccard_weight=0.0)),
    ("fair_mid", dict(beta=0.25, gamma=0.25, delta=0.5, eta=0.05, jaccard_weight=0.0)),
    ("cov_gini_heavy", dict(beta=0.5, gamma=0.5, delta=0.0, eta=0.0, jaccard_weight=0.0)),
    ("light_nojac_lr1e-3", dict(beta=0.1, gamma=0.1, delta=1.0, eta=0.05, jaccard_weight=0.0,
                                lr=1e-3)),
]

METRICS = ("HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10")


def train_frozen_base(cfg, split, ckpt_dir: Path):
    """Two-tower trained without the reward targets as positives (as under MARL).

    Reuses ``ckpt_dir/model_best.pt`` when present (delete the folder to retrain)."""
    cfg = copy.deepcopy(cfg)
    cfg.marl.enabled = False
    cfg.checkpoint_dir = str(ckpt_dir)
    tr = Trainer(cfg, split, progress=False)
    if (ckpt_dir / "model_best.pt").exists():
        tr.model.load_state_dict(ckpt_io.load(ckpt_dir / "model_best.pt")["model"])
        return tr.model, 0.0
    keep = np.ones(len(split.train_items), dtype=bool)
    held = reward_targets(split)
    keep[held[held >= 0]] = False
    step = tr.train_step
    tr.train_step = lambda idx, rng: step(idx[keep[idx]], rng)
    t0 = time.perf_counter()
    tr.fit()
    return tr.model, time.perf_counter() - t0


def val_metrics(model, split) -> dict[str, float]:
    r = evaluate(split, model.scorer(), "val", ks=(10,), groups=False)["full"]
    return {k: float(r[k]) for k in METRICS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/ml-100k")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--rl-steps", type=int, default=400)
    p.add_argument("--only", nargs="*", default=None, help="subset of setting names")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides applied to every setting (e.g. marl.action_scale=2)")
    p.add_argument("--out", default="runs/marl_reward_sweep.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("ml100k", [f"data.path={args.data}", f"train.epochs={args.epochs}",
                                 "train.patience=100"] + args.overrides)
    split = load_split(cfg.data)
    base, t_base = train_frozen_base(cfg, split, Path("runs/marl_sweep_base"))
    rows = [{"setting": "frozen base (no agents)", **val_metrics(base, split)}]
    print(f"base trained in {t_base:.0f}s", flush=True)
    for name, over in SETTINGS:
        if args.only and name not in args.only:
            continue
        c = copy.deepcopy(cfg)
        c.marl.enabled = True
        for k, v in over.items():
            setattr(c.marl, k, v)
        set_seed(c.seed)
        model = copy.deepcopy(base)
        model.set_controller(build_genre_agents(c, split, model))
        rl = MARLTrainer(c, split, model, torch.device("cpu"))
        rng = np.random.default_rng([c.seed, 99])
        t0 = time.perf_counter()
        for _ in range(args.rl_steps):
            rl.step(rng)
        secs = time.perf_counter() - t0
        model.eval()
        users = rl.core.eligible
        with torch.no_grad():
            a = model.controller.act(model.controller.observe(torch.as_tensor(users),
                                                              model.encode_users(torch.as_tensor(users))))
        row = {"setting": name, **val_metrics(model, split),
               "reward_last50": float(np.mean(rl.curve[-50:])),
               "b_std_users": float(a[..., 0].std(0).mean()), "t_std_users": float(a[..., 1].std(0).mean()),
               "b_std_genres": float(a[..., 0].mean(0).std()), "t_mean": float(a[..., 1].mean()),
               "rl_s_per_step": secs / args.rl_steps, **over}
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
              flush=True)
    hdr = f"{'setting':<24}" + "".join(f"{m:>12}" for m in METRICS) + f"{'reward':>9}{'b sd':>7}{'t mean':>8}"
    print(hdr)
    for r in rows:
        line = f"{r['setting']:<24}" + "".join(f"{r[m]:>12.4f}" for m in METRICS)
        if "reward_last50" in r:
            line += f"{r['reward_last50']:>9.3f}{r['b_std_users']:>7.3f}{r['t_mean']:>8.3f}"
        print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Train the genre agents through the PettingZoo environment of a frozen recommender.

    .venv/bin/python examples/train_agents_pettingzoo.py                 # synthetic data
    .venv/bin/python examples/train_agents_pettingzoo.py -c ml100k \\
        --set data.path=../shared/data/ml-100k --base-epochs 20 --episodes 40

1. train the base two-tower (no controller) for ``--base-epochs`` epochs, holding out
   every user's reward target from the supervised positives, as MARL training does;
2. wrap it in :class:`marl_two_tower.model.marl.env.GenreRecEnv` (agents = genres, one step
   = one batch of users) and train :class:`marl_two_tower.model.marl.agents.GenreAgents`
   only through the env API (reset / step / state), with the configured A2C or PPO
   update, treating every user of a batch as a one-step episode;
3. attach the agents to the model and report validation metrics with and without them.

Any other PettingZoo-compatible MARL library can replace step 2: it sees the same
observations, action spaces and rewards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.eval.protocols import evaluate
from marl_two_tower.model.build import build_model
from marl_two_tower.model.marl.agents import GenreAgents, Rollout, build_genre_agents
from marl_two_tower.model.marl.env import GenreRecEnv, RecEnvCore, TwoTowerScorer
from marl_two_tower.model.marl.reward import reward_targets
from marl_two_tower.train.trainer import Trainer


def train_through_env(env: GenreRecEnv, agents: GenreAgents, episodes: int, lr: float,
                      seed: int = 0) -> list[float]:
    """Actor-critic on the env; returns the mean team reward of every step."""
    opt = torch.optim.Adam(agents.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    names = env.possible_agents
    curve: list[float] = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        while env.agents:
            o = torch.from_numpy(np.stack([obs[a] for a in names], axis=1))  # [B, G, obs]
            state = torch.from_numpy(env.state())
            with torch.no_grad():
                raw, logp, _ = agents.sample(o, gen)
            act = agents.squash(raw).numpy()
            obs, _, _, _, infos = env.step({a: act[:, g] for g, a in enumerate(names)})
            team = torch.from_numpy(infos[names[0]]["team_rewards"]).float()
            per_agent = torch.from_numpy(np.stack([infos[a]["user_rewards"] for a in names], 1)).float()
            agents.update(Rollout(obs=o, state=state, raw=raw, logp=logp, reward=team,
                                  agent_reward=per_agent), opt)
            curve.append(float(team.mean()))
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=None, help="YAML config (default: synthetic data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--base-epochs", type=int, default=5)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--steps-per-episode", type=int, default=10)
    p.add_argument("--batch-users", type=int, default=256)
    p.add_argument("--checkpoint-dir", default="runs/pettingzoo_example")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    cfg = load_config(args.config, args.overrides + ["marl.enabled=false"])
    cfg.train.epochs = args.base_epochs
    cfg.checkpoint_dir = args.checkpoint_dir
    split = load_split(cfg.data)
    # 1. base recommender, reward targets held out from the supervised positives
    trainer = Trainer(cfg, split, model=build_model(cfg, split), progress=False)
    held = reward_targets(split)
    held = held[held >= 0]
    keep = np.ones(len(split.train_items), dtype=bool)
    keep[held] = False
    orig_step = trainer.train_step
    trainer.train_step = lambda idx, rng: orig_step(idx[keep[idx]], rng)
    trainer.fit()
    model = trainer.model.eval()

    def val() -> dict[str, float]:
        r = evaluate(split, model.scorer(), "val", ks=(10,), groups=False)["full"]
        return {k: r[k] for k in ("HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10")}

    before = val()
    # 2. the agents, trained only through the PettingZoo API
    cfg.marl.enabled = True
    agents = build_genre_agents(cfg, split, model)
    core = RecEnvCore(split, cfg.marl, TwoTowerScorer(model))
    env = GenreRecEnv(core, split.dataset.genre_names, batch_users=args.batch_users,
                      max_steps=args.steps_per_episode, seed=cfg.seed)
    curve = train_through_env(env, agents, args.episodes, cfg.marl.lr, seed=cfg.seed)
    # 3. the agents steer the frozen model
    model.set_controller(agents)
    model.eval()
    after = val()
    n = max(1, len(curve) // 10)
    print("mean team reward per tenth of training:",
          " ".join(f"{np.mean(curve[i:i + n]):.3f}" for i in range(0, len(curve), n)))
    print(f"{'metric':<12} {'frozen base':>12} {'+ agents':>12}")
    for k in before:
        print(f"{k:<12} {before[k]:>12.4f} {after[k]:>12.4f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())

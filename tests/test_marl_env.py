"""The PettingZoo environment of the genre agents: API and seed conformance, rewards
identical to the simulation core, and agents trained through it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from marl_toy import PLANTED, hr_only_config, toy_core, toy_split
from pettingzoo.test import parallel_api_test, parallel_seed_test

from marl_two_tower.model.marl.agents import GenreAgents
from marl_two_tower.model.marl.env import GenreRecEnv, agent_names


def _example():
    """examples/train_agents_pettingzoo.py as a module (examples/ is not a package)."""
    path = Path(__file__).resolve().parent.parent / "examples" / "train_agents_pettingzoo.py"
    spec = importlib.util.spec_from_file_location("train_agents_pettingzoo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_env(batch_users: int = 16, max_steps: int = 5, **cfg_over) -> GenreRecEnv:
    split = toy_split()
    cfg = hr_only_config(beta=0.5, gamma=0.5, delta=1.0, eta=0.2, jaccard_weight=0.1, **cfg_over)
    core, _ = toy_core(split, cfg)
    return GenreRecEnv(core, split.dataset.genre_names, batch_users=batch_users, max_steps=max_steps)


def test_parallel_api_test():
    parallel_api_test(make_env(), num_cycles=20)


def test_parallel_seed_test():
    parallel_seed_test(make_env, num_cycles=20)


def test_agent_ids_and_spaces():
    env = make_env(batch_users=8)
    assert env.possible_agents == ["genre_g0", "genre_g1", "genre_g2", "genre_g3"]
    assert agent_names(["Children's", "Sci-Fi", "???"]) == ["genre_children_s", "genre_sci_fi",
                                                            "genre_2"]
    obs, _ = env.reset(seed=1)
    assert obs["genre_g0"].shape == (8, 2 * 8 + 2) and obs["genre_g0"].dtype == np.float32
    assert env.action_space("genre_g1").shape == (8, 2)
    assert env.state().shape == (8, 8 + 4 * (8 + 2))


def test_env_rewards_equal_the_core_and_episode_truncates():
    env = make_env(batch_users=12, max_steps=3)
    obs, _ = env.reset(seed=7)
    batch = env._batch
    rng = np.random.default_rng(0)
    actions = {a: rng.uniform(-1, 1, (12, 2)).astype(np.float32) for a in env.agents}
    stacked = torch.from_numpy(np.stack([actions[a] for a in env.possible_agents], axis=1))
    expect = env.core.step(batch, stacked)
    _, rew, term, trunc, info = env.step(actions)
    for g, a in enumerate(env.possible_agents):
        assert rew[a] == float(expect.agent_reward[:, g].mean())
    assert info["genre_g0"]["team_reward"] == float(expect.reward.mean())
    assert not any(term.values()) and not any(trunc.values())
    env.step(actions)
    _, _, _, trunc, _ = env.step(actions)
    assert all(trunc.values()) and env.agents == []


def test_seeded_resets_replay_the_same_users():
    env = make_env()
    env.reset(seed=3)
    u1 = env._batch.users.copy()
    env.reset(seed=4)
    assert not np.array_equal(u1, env._batch.users)
    env.reset(seed=3)
    assert np.array_equal(u1, env._batch.users)


def test_agents_trained_through_the_env_find_the_planted_genre():
    """The loop of examples/train_agents_pettingzoo.py on the toy env (HR reward)."""
    split = toy_split()
    cfg = hr_only_config()
    core, scorer = toy_core(split, cfg)
    env = GenreRecEnv(core, split.dataset.genre_names, batch_users=48, max_steps=10)
    torch.manual_seed(0)
    agents = GenreAgents(split, cfg, dim=8, item_encoder=lambda: scorer.e_i)
    curve = _example().train_through_env(env, agents, episodes=6, lr=cfg.lr, seed=0)
    assert np.mean(curve[:5]) < 0.6 and np.mean(curve[-10:]) > 0.9, curve
    obs, _ = env.reset(seed=0)
    o = torch.from_numpy(np.stack([obs[a] for a in env.possible_agents], axis=1))
    b = agents.act(o)[..., 0].mean(0)
    assert int(torch.argmax(b)) == PLANTED

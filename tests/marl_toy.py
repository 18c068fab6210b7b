"""A toy recommender environment whose optimal genre-agent action is known.

G genres with ``per_genre`` single-genre items each. Every user's history is random,
but its most recent train interaction (the reward target) is always an item of the
planted genre 0, and the base scores are small noise. With reward = HR@K only, the
best action is to boost genre 0 (b_{u,0} = +scale) so that all of its unseen items
fill the top-K list; the zero action leaves the target at a random rank.
"""

from __future__ import annotations

import numpy as np
import torch

from marl_two_tower.config import MARLConfig
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.split import Split, leave_one_out
from marl_two_tower.model.marl.env import BaseScores, RecEnvCore

PLANTED = 0


def toy_split(n_users: int = 48, n_genres: int = 4, per_genre: int = 5, hist: int = 6,
              seed: int = 0) -> Split:
    """Histories of ``hist`` random items, then a genre-0 item, then val and test items."""
    rng = np.random.default_rng(seed)
    n_items = n_genres * per_genre
    genre_of = np.repeat(np.arange(n_genres), per_genre)
    users, items = [], []
    for u in range(n_users):
        other = np.flatnonzero(genre_of != PLANTED)
        seq = list(rng.choice(other, size=hist, replace=False))
        seq.append(int(rng.choice(np.flatnonzero(genre_of == PLANTED))))  # reward target
        rest = np.setdiff1d(np.arange(n_items), seq)
        seq += list(rng.choice(rest, size=2, replace=False))  # validation, test
        users += [u] * len(seq)
        items += seq
    users_a, items_a = np.asarray(users), np.asarray(items)
    ts = np.arange(len(users_a), dtype=np.float64)
    genres = np.zeros((n_items, n_genres), dtype=bool)
    genres[np.arange(n_items), genre_of] = True
    ds = Dataset(name="toy-marl", users=users_a, items=items_a, timestamps=ts, n_users=n_users,
                 n_items=n_items, user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                 item_genres=genres, genre_names=[f"g{g}" for g in range(n_genres)],
                 item_year=np.zeros(n_items, dtype=np.int32))
    return leave_one_out(ds, tail_fraction=0.2)


class NoiseScorer:
    """Fixed random user/item embeddings, base score = noise_scale * <e_u, e_i>."""

    def __init__(self, split: Split, dim: int = 8, noise_scale: float = 0.3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.e_u = torch.nn.functional.normalize(torch.randn(split.n_users, dim, generator=g), dim=1)
        self.e_i = torch.nn.functional.normalize(torch.randn(split.n_items, dim, generator=g), dim=1)
        self.noise_scale = noise_scale
        self.calls: list[torch.Tensor] = []  # the `exclude` items of every call

    def __call__(self, users: torch.Tensor, exclude: torch.Tensor) -> BaseScores:
        self.calls.append(exclude.clone())
        e = self.e_u[users]
        return BaseScores(e_u=e, scores=self.noise_scale * e @ self.e_i.T, item_emb=self.e_i)


def hr_only_config(**over) -> MARLConfig:
    """Reward = HR@K only (the planted optimum is then exactly 'boost genre 0')."""
    cfg = MARLConfig(enabled=True, alpha=1.0, beta=0.0, gamma=0.0, delta=0.0, eta=0.0,
                     jaccard_weight=0.0, k=5, action_scale=1.0, lr=3e-3, rl_batch_users=48,
                     hidden=32, entropy_coef=0.0)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def toy_core(split: Split, cfg: MARLConfig, **scorer_kw) -> tuple[RecEnvCore, NoiseScorer]:
    scorer = NoiseScorer(split, **scorer_kw)
    return RecEnvCore(split, cfg, scorer), scorer


# ---------------------------------------------------------------------------
# A planted tail-loving segment: what a single global knob cannot express
# ---------------------------------------------------------------------------

SEGMENT_GENRE = 1  # the genre whose tail items the segment's users prefer


def tail_segment_split(n_users: int = 120, n_genres: int = 4, per_genre: int = 12,
                       segment_share: float = 0.3, seed: int = 0):
    """(split, segment mask ``[n_users]``): each genre has ``per_genre // 2`` head items
    and as many tail items (``split.tail_mask`` set to exactly those). Users outside
    the segment have 6 head items of random genres and a head reward target; segment
    users have 3 head items, 3 tail items of genre :data:`SEGMENT_GENRE` and a target
    among that genre's other tail items. So the right tail boost is large for the
    segment in that genre only, and 0 elsewhere."""
    rng = np.random.default_rng(seed)
    n_items = n_genres * per_genre
    genre_of = np.repeat(np.arange(n_genres), per_genre)
    tail = (np.arange(n_items) % per_genre) >= per_genre // 2
    head_items = np.flatnonzero(~tail)
    seg_tail = np.flatnonzero(tail & (genre_of == SEGMENT_GENRE))
    segment = rng.random(n_users) < segment_share
    users, items = [], []
    for u in range(n_users):
        if segment[u]:
            seq = list(rng.choice(head_items, size=3, replace=False))
            liked = rng.permutation(seg_tail)
            seq += list(liked[:3]) + [int(liked[3])]  # 3 tail items, then the target
        else:
            picks = rng.choice(head_items, size=7, replace=False)
            seq = list(picks)  # 6 history items, the 7th is the target
        rest = np.setdiff1d(np.arange(n_items), seq)
        seq += list(rng.choice(rest, size=2, replace=False))  # validation, test
        users += [u] * len(seq)
        items += seq
    users_a, items_a = np.asarray(users), np.asarray(items)
    genres = np.zeros((n_items, n_genres), dtype=bool)
    genres[np.arange(n_items), genre_of] = True
    ds = Dataset(name="toy-tail-segment", users=users_a, items=items_a,
                 timestamps=np.arange(len(users_a), dtype=np.float64), n_users=n_users,
                 n_items=n_items, user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                 item_genres=genres, genre_names=[f"g{g}" for g in range(n_genres)],
                 item_year=np.zeros(n_items, dtype=np.int32))
    split = leave_one_out(ds, tail_fraction=0.2)
    split.tail_mask = tail
    return split, segment


class PopularityScorer:
    """Base score = head bonus (1 on head items, 0 on tail items) + small fixed noise:
    the zero action recommends head items only."""

    def __init__(self, split: Split, dim: int = 8, noise_scale: float = 0.3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.e_u = torch.nn.functional.normalize(torch.randn(split.n_users, dim, generator=g), dim=1)
        self.e_i = torch.nn.functional.normalize(torch.randn(split.n_items, dim, generator=g), dim=1)
        self.head = torch.as_tensor(~split.tail_mask, dtype=torch.float32)
        self.noise_scale = noise_scale

    def __call__(self, users: torch.Tensor, exclude: torch.Tensor) -> BaseScores:
        e = self.e_u[users]
        return BaseScores(e_u=e, scores=self.head + self.noise_scale * e @ self.e_i.T,
                          item_emb=self.e_i)


def train_greedy(split: Split, cfg: MARLConfig, core: RecEnvCore, item_encoder, steps: int,
                 seed: int = 0):
    """Genre agents trained ``steps`` actor-critic updates on ``core``'s eligible users
    (``seed`` seeds the rollouts): (agents, the eligible users' RL batch, their greedy
    actions). Seed torch before building ``core`` when it draws parameters."""
    from marl_two_tower.model.marl.agents import GenreAgents, collect

    agents = GenreAgents(split, cfg, dim=8, item_encoder=item_encoder)
    opt = torch.optim.Adam(agents.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ro, _, _ = collect(agents, core, core.eligible, gen)
        agents.update(ro, opt)
    batch = core.observe(core.eligible)
    with torch.no_grad():
        greedy = agents.act(batch.obs)
    return agents, batch, greedy

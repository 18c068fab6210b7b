"""The recommender as a multi-agent environment for the genre agents (DESIGN §3).

Agents are genres g = 1..G. One step is one batch B of users: every agent observes
its genre's view of each user, acts with a 2-D action per user, and is rewarded
with the list-level reward of :mod:`marl_two_tower.marl_reward`.

* Observation o_{u,g} = [e_u ; mean e_i over u's history items in genre g (0 if
  none) ; share of u's history in g ; tail share of u's history in g]
  (:class:`GenreHistory`, :func:`build_observations`); e_u is the (stop-gradient)
  user-tower output. The centralised state s_u (CTDE critic) is the concatenation
  of all agents' observations with e_u written once (:func:`critic_state`).
* Action a_{u,g} = (b_{u,g}, t_{u,g}) in [-scale, scale]^2. It enters the score as
  s(u, i) = scale_T <e_u, e_i> + sum_g m_{i,g} (b_{u,g} + t_{u,g} tail(i))
  (:func:`steered_scores`), the same number as the dot product of the exported
  vectors z_u = [scale_T e_u ; b_u ; t_u] and y_i = [e_i ; m_i ; m_i * tail(i)].
* Reward target, RL state and list mask (:class:`RecEnvCore`): each user's reward
  target is its most recent train interaction; it is removed from the history the
  state is built from (e_u is encoded with it excluded, the genre statistics leave
  it out) and it is the only item of u's history that stays rankable.

:class:`RecEnvCore` is the simulation the trainer's RL steps use; :class:`GenreRecEnv`
wraps it as a PettingZoo ``ParallelEnv`` so external MARL libraries can train the
same agents (it passes ``parallel_api_test`` and ``parallel_seed_test``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from marl_two_tower.config import MARLConfig
from marl_two_tower.data.split import Split
from marl_two_tower.model.marl.reward import (
    RewardWeights,
    list_rewards,
    masked_topk,
    pairwise_jaccard,
    reward_targets,
)
from marl_two_tower.model.two_tower import TwoTower
from marl_two_tower.utils.csr import expand_ranges

# ---------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------


def tail_feature(split: Split, kind: Literal["binary", "smooth"] = "binary") -> np.ndarray:
    """tail(i) of the item vector y_i = [e_i ; m_i ; m_i * tail(i)].

    ``binary``: 1[i in tail] (``split.tail_mask``). ``smooth``: an inverse-popularity
    score 1 - log(1 + pop_i) / log(1 + max_j pop_j) in [0, 1] (train popularity).
    """
    if kind == "binary":
        return split.tail_mask.astype(np.float32)
    if kind == "smooth":
        pop = np.log1p(split.item_pop.astype(np.float64))
        return (1.0 - pop / max(pop.max(), 1e-12)).astype(np.float32)
    raise ValueError(f"tail_feature must be 'binary' or 'smooth', got {kind!r}")


@dataclass
class GenreStats:
    """Per-(user, genre) statistics of a batch of histories."""

    mean: torch.Tensor  # [B, G, d] mean item embedding of the user's items in g (0 if none)
    share: torch.Tensor  # [B, G] |H_u ∩ g| / |H_u|
    tail_share: torch.Tensor  # [B, G] |H_u ∩ g ∩ tail| / |H_u ∩ g| (0 if none)
    count: torch.Tensor  # [B, G] |H_u ∩ g|


class GenreHistory:
    """Users' histories (a binary CSR ``[n_users, n_items]``) seen through genres.

    Multi-genre items count in each of their genres, so shares of one user may sum
    to more than 1. Vectorised over the CSR (no per-user loop).
    """

    def __init__(self, matrix: sp.csr_matrix, item_genres: np.ndarray, tail_mask: np.ndarray) -> None:
        matrix = sp.csr_matrix(matrix)
        self.indptr, self.indices = matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64)
        g = sp.csr_matrix(np.asarray(item_genres, dtype=bool))
        self.gptr, self.gidx = g.indptr.astype(np.int64), g.indices.astype(np.int64)
        self.n_genres = int(item_genres.shape[1])
        self.tail = np.asarray(tail_mask, dtype=np.float64)

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch row, item) pairs of the users' histories."""
        rows, pos = expand_ranges(self.indptr[users], self.indptr[users + 1])
        return rows, self.indices[pos]

    def mask(self, users: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
        """Dense bool ``[B, n_items]``: True on the users' history items."""
        rows, items = self.rows(users)
        out = torch.zeros(len(users), n_items, dtype=torch.bool, device=device)
        out[torch.from_numpy(rows).to(device), torch.from_numpy(items).to(device)] = True
        return out

    def features(self, users: np.ndarray, item_emb: torch.Tensor) -> GenreStats:
        """Genre statistics of ``users`` with item embeddings ``item_emb [n_items, d]``."""
        b, g_n, dev = len(users), self.n_genres, item_emb.device
        rows, items = self.rows(users)
        length = np.bincount(rows, minlength=b).astype(np.float64)
        # expand every (row, item) pair into one (row, genre, item) triple per genre
        pair, gpos = expand_ranges(self.gptr[items], self.gptr[items + 1])
        flat = rows[pair] * g_n + self.gidx[gpos]
        it = items[pair]
        count = np.bincount(flat, minlength=b * g_n).astype(np.float64)
        tail = np.bincount(flat, weights=self.tail[it], minlength=b * g_n)
        summed = torch.zeros(b * g_n, item_emb.shape[1], dtype=item_emb.dtype, device=dev)
        summed.index_add_(0, torch.from_numpy(flat).to(dev), item_emb[torch.from_numpy(it).to(dev)])
        cnt = torch.from_numpy(count).to(dev, item_emb.dtype)
        mean = (summed / cnt.clamp(min=1.0)[:, None]).view(b, g_n, -1)
        share = count.reshape(b, g_n) / np.maximum(length, 1.0)[:, None]
        tail_share = tail / np.maximum(count, 1.0)

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x.reshape(b, g_n)).to(dev, item_emb.dtype)

        return GenreStats(mean=mean, share=t(share), tail_share=t(tail_share), count=t(count))


def build_observations(e_u: torch.Tensor, stats: GenreStats) -> torch.Tensor:
    """o_{u,g} = [e_u ; mean_g ; share_g ; tail_share_g]: ``[B, G, 2d + 2]``."""
    b, g_n, _ = stats.mean.shape
    return torch.cat([e_u[:, None, :].expand(b, g_n, -1), stats.mean,
                      stats.share[..., None], stats.tail_share[..., None]], dim=-1)


def critic_state(obs: torch.Tensor, dim: int) -> torch.Tensor:
    """s_u = [e_u ; o_{u,1}[d:] ; ... ; o_{u,G}[d:]]: ``[B, d + G (d + 2)]``."""
    return torch.cat([obs[:, 0, :dim], obs[:, :, dim:].flatten(1)], dim=1)


def steered_scores(base: torch.Tensor, actions: torch.Tensor, item_genres: torch.Tensor,
                   tail_feat: torch.Tensor) -> torch.Tensor:
    """s(u, i) = base(u, i) + sum_g m_{i,g} (b_{u,g} + t_{u,g} tail(i)).

    ``base [..., B, n]``, ``actions [..., B, G, 2]`` (b, t), ``item_genres [n, G]``.
    """
    return (base + actions[..., 0] @ item_genres.T
            + actions[..., 1] @ (item_genres * tail_feat[:, None]).T)


# ---------------------------------------------------------------------------
# Base scores of the recommender
# ---------------------------------------------------------------------------


@dataclass
class BaseScores:
    """What the recommender gives the environment for a batch of users."""

    e_u: torch.Tensor  # [B, d] user-tower output (no gradient)
    scores: torch.Tensor  # [B, n] base dot-product scores scale_T <e_u, e_i>
    item_emb: torch.Tensor  # [n, d] e_i
    overrides: tuple[torch.Tensor, torch.Tensor] | None = None  # score adjuster (items, logits)


BaseScorer = Callable[[torch.Tensor, torch.Tensor], BaseScores]
"""(users ``[B]``, items to leave out of u's state ``[B]``) -> :class:`BaseScores`."""


class TwoTowerScorer:
    """Base scores of a :class:`~marl_two_tower.model.two_tower.TwoTower` (eval mode, no grad).

    e_u is encoded with the reward target excluded from the user's pooled history
    (and from every user context), so the RL state never contains it.
    """

    def __init__(self, model: TwoTower) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, users: torch.Tensor, exclude: torch.Tensor) -> BaseScores:
        m = self.model
        was_training = m.training
        m.eval()
        try:
            e_u = m.encode_users(users, exclude)
            e_i = m.encode_items()
            scores = (e_u * m.scale) @ e_i.T
            adj = m.score_adjuster
            ov = adj.overrides(users, m, exclude) if adj is not None else None
        finally:
            m.train(was_training)
        return BaseScores(e_u=e_u, scores=scores, item_emb=e_i, overrides=ov)


def _apply_overrides(scores: torch.Tensor, ov: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Scores with a score adjuster's per-user items replaced (as in TwoTower.scorer)."""
    if ov is None:
        return scores
    items, values = ov
    rows, slots = torch.nonzero(items >= 0, as_tuple=True)
    out = scores.clone()
    out[..., rows, items[rows, slots]] = values[rows, slots].to(out.dtype)
    return out


# ---------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------


@dataclass
class RLBatch:
    """The state of one environment step (one batch of users)."""

    users: np.ndarray  # [B]
    targets: torch.Tensor  # [B] reward-target items
    base: BaseScores
    mask: torch.Tensor  # [B, n] bool: items that may not be recommended (u's state history)
    obs: torch.Tensor  # [B, G, obs_dim]
    state: torch.Tensor  # [B, state_dim]
    active: torch.Tensor  # [A, B] genre index of u's a-th most frequent genre
    active_ok: torch.Tensor  # [A, B] bool, that genre occurs in u's history
    units: torch.Tensor | None = None  # [B] action multiplier (sigma_u or 1), see RecEnvCore

    def subset(self, rows: torch.Tensor) -> RLBatch:
        """The batch of users ``rows`` (indices into this batch): every per-user field
        sliced, so one observation of frozen towers serves many RL steps."""
        b = self.base
        ov = None if b.overrides is None else (b.overrides[0][rows], b.overrides[1][rows])
        return RLBatch(users=self.users[rows.cpu().numpy()], targets=self.targets[rows],
                       base=BaseScores(e_u=b.e_u[rows], scores=b.scores[rows],
                                       item_emb=b.item_emb, overrides=ov),
                       mask=self.mask[rows], obs=self.obs[rows], state=self.state[rows],
                       active=self.active[:, rows], active_ok=self.active_ok[:, rows],
                       units=None if self.units is None else self.units[rows])


@dataclass
class StepResult:
    """Rewards of one step."""

    reward: torch.Tensor  # [B] team reward R_u (with the mean Jaccard penalty)
    agent_reward: torch.Tensor  # [B, G] r_{u,g} = R_u without Jaccard - w_J * J_{u,g}
    lists: torch.Tensor  # [B, K]
    terms: dict[str, torch.Tensor]  # see marl_reward.list_rewards, plus "jaccard"


class RecEnvCore:
    """Observations and rewards of the genre agents for batches of users."""

    def __init__(self, split: Split, cfg: MARLConfig, scorer: BaseScorer,
                 device: torch.device | str = "cpu") -> None:
        ds = split.dataset
        if ds.n_genres == 0:
            raise ValueError("the genre agents need item genres; this dataset has none")
        self.cfg, self.scorer, self.device = cfg, scorer, torch.device(device)
        self.n_items, self.n_agents = split.n_items, ds.n_genres
        self.weights = RewardWeights.from_config(cfg)
        self.target_index = reward_targets(split)
        self.eligible = np.flatnonzero(self.target_index >= 0)
        targets = np.full(split.n_users, -1, dtype=np.int64)
        targets[self.eligible] = split.train_items[self.target_index[self.eligible]]
        self.target_items = torch.from_numpy(targets).to(self.device)
        # RL-state history: train items minus the reward target
        coo = split.train_matrix.tocoo()
        keep = targets[coo.row] != coo.col
        state = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32),
                               (coo.row[keep], coo.col[keep])), shape=coo.shape)
        self.history = GenreHistory(state, ds.item_genres, split.tail_mask)
        self.item_genres = torch.as_tensor(ds.item_genres, dtype=torch.float32, device=self.device)
        self.tail_feat = torch.from_numpy(tail_feature(split, cfg.tail_feature)).to(self.device)
        self.tail_mask = torch.as_tensor(split.tail_mask, device=self.device)

    def observe(self, users: np.ndarray) -> RLBatch:
        """RL state of a batch of users (``users`` must be in :attr:`eligible`)."""
        users = np.asarray(users, dtype=np.int64)
        u = torch.from_numpy(users).to(self.device)
        targets = self.target_items[u]
        if (targets < 0).any():
            raise ValueError("some users have no reward target (fewer than 2 train interactions)")
        base = self.scorer(u, targets)
        stats = self.history.features(users, base.item_emb.float())
        obs = build_observations(base.e_u.float(), stats)
        a = min(self.cfg.jaccard_max_genres, self.n_agents)
        top_count, top_genre = torch.topk(stats.count, a, dim=1)
        return RLBatch(users=users, targets=targets, base=base,
                       mask=self.history.mask(users, self.n_items, self.device), obs=obs,
                       state=critic_state(obs, base.e_u.shape[1]), active=top_genre.T,
                       active_ok=(top_count > 0).T, units=self.units(base))

    def units(self, base: BaseScores) -> torch.Tensor:
        """Action multiplier ``[B]``: sigma_u = std over items of u's base dot-product
        scores (``action_units="score_std"``; the same number as
        :meth:`GenreAgents.spread`, which the user tower uses at inference) or 1."""
        if self.cfg.action_units == "score_std":
            return base.scores.float().std(-1, unbiased=False)
        return torch.ones(base.scores.shape[0], device=base.scores.device)

    def _scaled(self, batch: RLBatch, actions: torch.Tensor) -> torch.Tensor:
        """Actions ``[..., B, G, 2]`` in score units (times sigma_u when configured)."""
        return actions if batch.units is None else actions * batch.units[:, None, None]

    def scores(self, batch: RLBatch, actions: torch.Tensor) -> torch.Tensor:
        """Steered scores ``[..., B, n]`` for actions ``[..., B, G, 2]``."""
        s = steered_scores(batch.base.scores.float(), self._scaled(batch, actions),
                           self.item_genres, self.tail_feat)
        return _apply_overrides(s, batch.base.overrides)

    @torch.no_grad()
    def step(self, batch: RLBatch, actions: torch.Tensor, jaccard: bool | None = None) -> StepResult:
        """Rewards of ``actions [B, G, 2]`` (already squashed to the action bounds).

        The per-agent lists of the Jaccard term are computed when ``jaccard`` is True,
        or by default when ``jaccard_weight > 0`` (otherwise J = 0, at no cost).
        """
        w = self.weights
        if jaccard is None:
            jaccard = w.jaccard > 0
        lists = masked_topk(self.scores(batch, actions), batch.mask, w.k)
        terms = list_rewards(lists, batch.targets, self.tail_mask, self.n_items, w)
        b = len(batch.users)
        j_user = torch.zeros(b, dtype=torch.float64, device=self.device)
        j_agent = torch.zeros(b, self.n_agents, dtype=torch.float64, device=self.device)
        if jaccard and batch.active.shape[0] >= 2:
            # agent g's own effect: only its action applied to u's base scores
            # (only the genre's own items move: s + m_{i,g} (b_{u,g} + t_{u,g} tail(i)))
            rows = torch.arange(b, device=self.device)[None, :]
            act = self._scaled(batch, actions)[rows, batch.active]  # [A, B, 2]
            own = (batch.base.scores.float()[None]
                   + self.item_genres.T[batch.active]
                   * (act[..., 0, None] + act[..., 1, None] * self.tail_feat))
            own = _apply_overrides(own, batch.base.overrides)
            per_agent = masked_topk(own, batch.mask, w.k)  # [A, B, K]
            j_user, j_slot = pairwise_jaccard(per_agent, batch.active_ok)
            j_agent.scatter_(1, batch.active.T, j_slot.T)
        terms["jaccard"] = j_user
        # control cost of each agent's action (in the action's own units)
        cost = self.cfg.action_cost * (actions.double() ** 2).sum(-1)  # [B, G]
        terms["action_cost"] = cost.mean(1)
        reward = terms["reward"] - w.jaccard * j_user - terms["action_cost"]
        agent_reward = terms["reward"][:, None] - w.jaccard * j_agent - cost
        return StepResult(reward=reward, agent_reward=agent_reward, lists=lists, terms=terms)


    @torch.no_grad()
    def difference_rewards(self, batch: RLBatch, actions: torch.Tensor,
                           result: StepResult) -> torch.Tensor:
        """r_{u,g} = R_u(a) - R_u(a_{-g}) - rho |a_{u,g}|^2 ``[B, G]``: each agent's
        difference reward (R_u here without control costs), a_{-g} = the joint action
        with agent g's (b, t) set to 0 (Wolpert & Tumer, 2001), minus its own cost.

        The other agents' exploration noise cancels from agent g's reward, so its policy
        gradient is not drowned by the G - 1 others (the team reward gives all agents
        the same number). One extra list evaluation per agent."""
        out = torch.empty(len(batch.users), self.n_agents, dtype=result.reward.dtype,
                          device=result.reward.device)
        # the list part of R without any control cost; agent g then pays its own cost
        listed = result.reward + result.terms["action_cost"]
        for g in range(self.n_agents):
            without = actions.clone()
            without[:, g] = 0.0
            res = self.step(batch, without)
            out[:, g] = listed - (res.reward + res.terms["action_cost"])
        return out - self.cfg.action_cost * (actions.double() ** 2).sum(-1).to(out.dtype)


# ---------------------------------------------------------------------------
# PettingZoo environment
# ---------------------------------------------------------------------------


def agent_names(genre_names: list[str]) -> list[str]:
    """PettingZoo agent ids ``genre_<name>`` (lower case, [a-z0-9_])."""
    out = []
    for g, name in enumerate(genre_names):
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or str(g)
        out.append(f"genre_{slug}")
    return out


class GenreRecEnv(ParallelEnv):
    """PettingZoo ``ParallelEnv`` of the recommender; agents are genres.

    One step = one batch of ``batch_users`` users drawn without replacement from the
    users with a reward target; an episode is ``max_steps`` batches (then every
    agent is truncated). Agent g observes ``o_{u,g}`` for every user of the batch
    (``Box [B, 2d + 2]``), acts with ``(b_{u,g}, t_{u,g})`` for every user
    (``Box [-scale, scale]^{B x 2}``) and receives the batch mean of its reward
    r_{u,g} (:class:`StepResult`); ``infos[agent]["user_rewards"]`` holds the
    per-user r_{u,g} and ``["team_rewards"]`` the per-user team reward R_u, for
    learners that treat every user as its own one-step episode. ``state()`` is the
    centralised critic input of the batch. The recommender itself is frozen: only
    the agents learn here.
    """

    metadata = {"name": "genre_rec_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, core: RecEnvCore, genre_names: list[str], batch_users: int | None = None,
                 max_steps: int = 10, seed: int | None = None) -> None:
        self.core = core
        if batch_users is None:  # the trainer's RL batch (marl.rl_batch_users)
            batch_users = core.cfg.rl_batch_users
        self.batch_users = min(batch_users, len(core.eligible))
        self.max_steps = max_steps
        self.possible_agents = agent_names(genre_names)
        self.agents: list[str] = []
        self.render_mode = None
        self._rng = np.random.default_rng(seed)
        self._batch: RLBatch | None = None
        self._t = 0
        probe = core.observe(core.eligible[:1])
        self._obs_dim = int(probe.obs.shape[-1])
        self._state_dim = int(probe.state.shape[-1])
        scale = float(core.cfg.action_scale)
        self._obs_space = spaces.Box(-np.inf, np.inf, (self.batch_users, self._obs_dim), np.float32)
        self._act_spaces = {a: spaces.Box(-scale, scale, (self.batch_users, 2), np.float32)
                            for a in self.possible_agents}
        self.state_space = spaces.Box(-np.inf, np.inf, (self.batch_users, self._state_dim),
                                      np.float32)

    def observation_space(self, agent: str) -> spaces.Box:
        return self._obs_space  # the same object every call (PettingZoo seeds it)

    def action_space(self, agent: str) -> spaces.Box:
        return self._act_spaces[agent]

    def _draw(self) -> None:
        users = self._rng.choice(self.core.eligible, size=self.batch_users, replace=False)
        self._batch = self.core.observe(np.sort(users))

    def _observations(self) -> dict[str, np.ndarray]:
        assert self._batch is not None
        obs = self._batch.obs.cpu().numpy().astype(np.float32)
        return {a: obs[:, g] for g, a in enumerate(self.possible_agents) if a in self.agents}

    def reset(self, seed: int | None = None,
              options: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self._t = 0
        self._draw()
        return self._observations(), {a: {} for a in self.agents}

    def state(self) -> np.ndarray:
        assert self._batch is not None
        return self._batch.state.cpu().numpy().astype(np.float32)

    def step(self, actions: dict[str, np.ndarray]):
        """Score the current batch with every agent's action (missing agent = 0)."""
        assert self._batch is not None and self.agents, "call reset() first"
        scale = float(self.core.cfg.action_scale)
        a = np.zeros((self.batch_users, len(self.possible_agents), 2), dtype=np.float32)
        for g, name in enumerate(self.possible_agents):
            if name in actions:
                a[:, g] = np.clip(np.asarray(actions[name], dtype=np.float32), -scale, scale)
        res = self.core.step(self._batch, torch.from_numpy(a).to(self.core.device))
        per_user = res.agent_reward.cpu().numpy()
        team = res.reward.cpu().numpy()
        live = list(self.agents)
        rewards = {n: float(res.agent_reward[:, g].mean()) for g, n in enumerate(self.possible_agents)
                   if n in live}
        infos = {n: {"user_rewards": per_user[:, g], "team_rewards": team,
                     "team_reward": float(res.reward.mean()),
                     "hr": float(res.terms["hr"].mean()),
                     "coverage": float(res.terms["coverage"]),
                     "gini": float(res.terms["gini"])}
                 for g, n in enumerate(self.possible_agents) if n in live}
        self._t += 1
        done = self._t >= self.max_steps
        self._draw()
        obs = self._observations()
        terminations = {n: False for n in live}
        truncations = {n: done for n in live}
        if done:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

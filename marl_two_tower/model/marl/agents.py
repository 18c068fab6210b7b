"""MARL controller: genre agents (actor-critic) inside the user tower (DESIGN §3, §4).

One agent per genre g. For user u, agent g observes
o_{u,g} = [stop_grad(e_u) ; mean e_i of u's items in g ; share of u's history in g ;
tail share of u's items in g] (:mod:`marl_two_tower.marl_env`) and acts with a
squashed Gaussian policy

    x ~ N(mu_g(o_{u,g}), diag(exp(log_std_g))^2),   a_{u,g} = (b_{u,g}, t_{u,g}) = s_a tanh(x)

(learned mean, learned state-independent log-std, bound s_a = ``action_scale``).
The controller acts inside the user tower: z_u = [scale_T e_u ; b_u ; t_u] and
y_i = [e_i ; m_i ; m_i * tail(i)], so s(u, i) = <z_u, y_i> is still one dot product
(ANN retrieval keeps working). At inference the action is the deterministic
s_a tanh(mu); during RL rollouts actions are sampled.

Critic (CTDE): V(s_u) over the concatenation of all agents' observations, with
optional per-agent heads V_g(s_u) that predict each agent's own reward r_{u,g}
(the team reward with that agent's own Jaccard overlap, see
:class:`marl_two_tower.marl_env.StepResult`). Each user is a one-step episode, so
the return is the reward and the advantage is A_{u,g} = r_{u,g} - V_g(s_u) (per-agent
heads) or R_u - V(s_u), normalised over the batch.

Update (L_MARL, weighted by l_RL in the composite objective):
    A2C (default): L = -mean(A log pi(x|o)) + c_v MSE(V, R) - c_H mean H[pi]
    PPO (Schulman et al., 2017): the policy term becomes
        -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)),  rho = pi(x|o) / pi_old(x|o),
    for ``ppo_epochs`` passes over the collected batch.
log pi is the Gaussian log-density of the pre-squash sample x: the tanh Jacobian
depends on x only, not on the parameters, so it cancels from every gradient and
ratio. H is the entropy of the pre-squash Gaussian (the squashed one has no closed
form). Gradients are clipped to ``grad_clip``; a non-finite loss skips the update.

Per-agent parameters (``shared_actor=False``) are grouped linear layers
``[G, in, out]`` applied with one einsum (no Python loop over agents); shared
parameters append a one-hot agent id to the observation instead.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marl_two_tower.config import Config, MARLConfig
from marl_two_tower.data.split import Split
from marl_two_tower.model.components import TrainingComponent
from marl_two_tower.model.marl.env import (
    GenreHistory,
    GenreStats,
    RecEnvCore,
    RLBatch,
    TwoTowerScorer,
    build_observations,
    tail_feature,
)
from marl_two_tower.model.two_tower import Controller, TwoTower

log = logging.getLogger(__name__)


class GroupedLinear(nn.Module):
    """y[b, g] = x[b, g] @ W[g] + c[g] with ``groups`` weight sets (1 = shared)."""

    def __init__(self, groups: int, inp: int, out: int, std: float | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(inp)
        self.weight = nn.Parameter(torch.empty(groups, inp, out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(groups, out))
        if std is not None:
            nn.init.normal_(self.weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.shape[1]
        w = self.weight.expand(g, -1, -1)
        return torch.einsum("bgi,gio->bgo", x, w) + self.bias.expand(g, -1)


@dataclass
class Rollout:
    """One collected RL batch: what the update needs."""

    obs: torch.Tensor  # [B, G, obs_dim]
    state: torch.Tensor  # [B, state_dim]
    raw: torch.Tensor  # [B, G, 2] pre-squash sampled actions x
    logp: torch.Tensor  # [B, G] log pi_old(x | o)
    reward: torch.Tensor  # [B] team reward R_u
    agent_reward: torch.Tensor  # [B, G] per-agent reward r_{u,g}


class GenreAgents(Controller):
    """The genre agents: actors, centralised critic, and the two-tower controller API."""

    def __init__(self, split: Split, cfg: MARLConfig, dim: int,
                 item_encoder: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        ds = split.dataset
        if ds.n_genres == 0:
            raise ValueError("the genre agents need item genres; this dataset has none")
        self.cfg, self.dim = cfg, dim
        self.n_agents = g_n = ds.n_genres
        self.agent_names = list(ds.genre_names)
        # e_i source for the genre-mean observation; a bound method of the model, so
        # it is not registered as a submodule (no parameter is owned twice).
        self.item_encoder = item_encoder
        self._item_cache: tuple[Any, torch.Tensor] | None = None
        self._cov_cache: tuple[Any, torch.Tensor] | None = None  # see spread()
        self._stats_cache: tuple[Any, GenreStats] | None = None  # see observe()
        self.history = GenreHistory(split.train_matrix, ds.item_genres, split.tail_mask)
        self.register_buffer("item_genres", torch.as_tensor(ds.item_genres, dtype=torch.float32))
        self.register_buffer("tail_feat", torch.from_numpy(tail_feature(split, cfg.tail_feature)))
        self.obs_dim = 2 * dim + 2
        groups = 1 if cfg.shared_actor else g_n
        inp = self.obs_dim + (g_n if cfg.shared_actor else 0)
        h = cfg.hidden
        self.actor = nn.Sequential(GroupedLinear(groups, inp, h), nn.Tanh(),
                                   GroupedLinear(groups, h, h), nn.Tanh(),
                                   GroupedLinear(groups, h, 2, std=0.01))
        self.log_std = nn.Parameter(torch.full((groups, 2), float(cfg.init_log_std)))
        self.state_dim = dim + g_n * (dim + 2)
        self.critic = nn.Sequential(nn.Linear(self.state_dim, h), nn.Tanh(), nn.Linear(h, h),
                                    nn.Tanh(), nn.Linear(h, 1 + (g_n if cfg.per_agent_critic else 0)))

    # --- policy -------------------------------------------------------------
    def _actor_input(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.cfg.shared_actor:
            return obs
        b, g_n, _ = obs.shape
        eye = torch.eye(g_n, device=obs.device, dtype=obs.dtype)
        return torch.cat([obs, eye[None].expand(b, -1, -1)], dim=-1)

    def policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu ``[B, G, 2]``, log_std ``[G, 2]``) of the pre-squash Gaussian."""
        mu = self.actor(self._actor_input(obs))
        return mu, self.log_std.expand(obs.shape[1], -1)

    def squash(self, raw: torch.Tensor) -> torch.Tensor:
        """a = action_scale * tanh(x)."""
        return self.cfg.action_scale * torch.tanh(raw)

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, log pi(x|o), s_a tanh(mu)): pre-squash sample x ~ N(mu, sigma^2) ``[B, G, 2]``
        (noise from ``generator``, on the CPU), its log-density ``[B, G]`` and the
        deterministic action ``[B, G, 2]``, from one actor pass."""
        mu, log_std = self.policy(obs)
        noise = torch.randn(mu.shape, generator=generator).to(mu.device, mu.dtype)
        raw = mu + log_std.exp() * noise
        return raw, self._log_prob(mu, log_std, raw), self.squash(mu)

    @staticmethod
    def _log_prob(mu: torch.Tensor, log_std: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        var = (2 * log_std).exp()
        logp = -((raw - mu) ** 2) / (2 * var) - log_std - 0.5 * math.log(2 * math.pi)
        return logp.sum(-1)

    def log_prob_entropy(self, obs: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log N(x; mu, sigma^2) and the Gaussian entropy, summed over (b, t): ``[B, G]`` each."""
        mu, log_std = self.policy(obs)
        ent = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).expand_as(mu)
        return self._log_prob(mu, log_std, raw), ent.sum(-1)

    def values(self, state: torch.Tensor) -> torch.Tensor:
        """``[B, 1 (+ G)]``: V(s_u) and, with per-agent heads, V_g(s_u)."""
        return self.critic(state)

    # --- controller API ------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        """e_i of all items (no gradient), cached until the item tower's weights change."""
        owner = getattr(self.item_encoder, "__self__", None)
        key = None
        if isinstance(owner, nn.Module):
            key = (owner.training, tuple((p._version, p.data_ptr()) for p in owner.parameters()))
        if key is None or self._item_cache is None or self._item_cache[0] != key:
            with torch.no_grad():
                emb = self.item_encoder().detach().float()
            self._item_cache = (key, emb)
        return self._item_cache[1]

    def observe(self, users: torch.Tensor, e_u: torch.Tensor) -> torch.Tensor:
        """Observations ``[B, G, obs_dim]`` from u's full train history (inference).

        The genre statistics depend on the users and the item embeddings only, so the
        last batch's are kept while both are unchanged: the draws of
        ``TwoTower.scorer`` (``eval.inference_samples``) score the same users again
        with another e_u and reuse them."""
        u = users.cpu().numpy()
        item_emb = self.item_embeddings()
        key = None if self._item_cache is None or self._item_cache[0] is None else (
            self._item_cache[0], u.tobytes())
        if key is None or self._stats_cache is None or self._stats_cache[0] != key:
            self._stats_cache = (key, self.history.features(u, item_emb))
        return build_observations(e_u.detach().float(), self._stats_cache[1])

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action s_a tanh(mu): ``[B, G, 2]``."""
        return self.squash(self.policy(obs)[0])

    def spread(self, e_u: torch.Tensor) -> torch.Tensor:
        """sigma_u ``[B]``: the standard deviation over the catalogue of u's base scores.

        With s_0(u, i) = scale_T <e_u, e_i> and C the (population) covariance of the e_i,
        std_i s_0(u, i) = scale_T sqrt(e_u^T C e_u): O(d^2) per user, no [B, n] product.
        It is what :func:`marl_two_tower.model.marl.env.RecEnvCore.observe` measures on
        the base scores directly (tested equal). C is cached with the item embeddings.
        """
        emb = self.item_embeddings()
        key = self._item_cache[0] if self._item_cache is not None else None
        if key is None or self._cov_cache is None or self._cov_cache[0] != key:
            centred = emb - emb.mean(0, keepdim=True)
            self._cov_cache = (key, centred.T @ centred / max(len(emb), 1))
        cov = self._cov_cache[1]
        e = e_u.float()
        var = ((e @ cov) * e).sum(-1).clamp(min=0.0)
        # scale_T of the owning model (the item encoder is its bound method; 1 otherwise)
        scale = getattr(getattr(self.item_encoder, "__self__", None), "scale", 1.0)
        scale = scale.detach() if isinstance(scale, torch.Tensor) else scale
        return var.sqrt() * scale

    def units(self, e_u: torch.Tensor) -> torch.Tensor:
        """Multiplier ``[B]`` of every action: sigma_u (``action_units="score_std"``) or 1."""
        if self.cfg.action_units == "score_std":
            return self.spread(e_u)
        return e_u.new_ones(len(e_u), dtype=torch.float32)

    def user_features(self, users: torch.Tensor, e_u: torch.Tensor) -> torch.Tensor:
        """[b_u ; t_u] ``[B, 2G]`` appended to z_u (deterministic actions, times sigma_u
        with ``action_units="score_std"``).

        In training mode with ``steer_supervised=False`` the features are zero: the
        supervised loss then fits the base score, so the towers never learn to cancel
        the agents' boosts (the agents learn from the RL reward only).
        """
        if self.training and not self.cfg.steer_supervised:
            return e_u.new_zeros(len(users), 2 * self.n_agents)
        with torch.no_grad():
            a = self.act(self.observe(users, e_u)) * self.units(e_u)[:, None, None]
        return torch.cat([a[..., 0], a[..., 1]], dim=-1).to(e_u.dtype)

    def item_features(self) -> torch.Tensor:
        """[m_i ; m_i * tail(i)] ``[n_items, 2G]``."""
        return torch.cat([self.item_genres, self.item_genres * self.tail_feat[:, None]], dim=-1)

    # --- learning -----------------------------------------------------------
    def loss(self, ro: Rollout, adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_MARL = policy loss + c_v value loss - c_H entropy on one rollout."""
        cfg = self.cfg
        logp, ent = self.log_prob_entropy(ro.obs, ro.raw)
        if cfg.algorithm == "ppo":
            ratio = (logp - ro.logp).exp()
            clipped = ratio.clamp(1 - cfg.ppo_clip, 1 + cfg.ppo_clip)
            pg = -torch.min(ratio * adv, clipped * adv).mean()
        else:
            pg = -(adv * logp).mean()
        v = self.values(ro.state)
        v_loss = F.mse_loss(v[:, 0], ro.reward)
        if cfg.per_agent_critic:
            v_loss = v_loss + F.mse_loss(v[:, 1:], ro.agent_reward)
        entropy = ent.mean()
        total = pg + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
        return total, {"policy_loss": pg, "value_loss": v_loss, "entropy": entropy}

    def update(self, ro: Rollout, optimizer: torch.optim.Optimizer,
               weight: float = 1.0) -> dict[str, float]:
        """A2C (one step) or PPO (``ppo_epochs`` steps) on a rollout; returns stats."""
        cfg = self.cfg
        with torch.no_grad():
            v = self.values(ro.state)
            if cfg.per_agent_critic:
                adv = ro.agent_reward - v[:, 1:]
            else:
                adv = (ro.reward - v[:, 0])[:, None].expand(-1, self.n_agents)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        stats: dict[str, float] = {}
        for _ in range(cfg.ppo_epochs if cfg.algorithm == "ppo" else 1):
            total, terms = self.loss(ro, adv)
            total = weight * total
            if not torch.isfinite(total):
                log.warning("non-finite MARL loss (%s); RL update skipped",
                            {k: float(t) for k, t in terms.items()})
                optimizer.zero_grad(set_to_none=True)
                return {"skipped": 1.0}
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.grad_clip)
            optimizer.step()
            stats = {k: float(t.detach()) for k, t in terms.items()}
        return stats


# ---------------------------------------------------------------------------
# Training-time RL loop (interleaved with the supervised steps by the Trainer)
# ---------------------------------------------------------------------------


def collect(agents: GenreAgents, core: RecEnvCore, users: np.ndarray,
            generator: torch.Generator | None = None) -> tuple[Rollout, RLBatch, dict[str, Any]]:
    """Observe a batch, sample actions, score them: one rollout of the genre agents."""
    batch = core.observe(users)
    ro, res, greedy = rollout(agents, core, batch, generator)
    return ro, batch, {"result": res, "greedy": greedy}


def rollout(agents: GenreAgents, core: RecEnvCore, batch: RLBatch,
            generator: torch.Generator | None = None) -> tuple[Rollout, Any, torch.Tensor]:
    """Sample actions on an observed batch and score them: (rollout, step result,
    deterministic actions). Per-agent rewards are the step's, or the difference
    rewards with ``agent_credit="difference"``."""
    with torch.no_grad():
        raw, logp, greedy = agents.sample(batch.obs, generator)
        actions = agents.squash(raw)
        res = core.step(batch, actions)
        agent_reward = res.agent_reward
        if agents.cfg.agent_credit == "difference":
            agent_reward = core.difference_rewards(batch, actions, res)
    ro = Rollout(obs=batch.obs, state=batch.state, raw=raw, logp=logp,
                 reward=res.reward.float(), agent_reward=agent_reward.float())
    return ro, res, greedy


class MARLTrainer(TrainingComponent):
    """The RL half of training: rollouts on RL batches and actor-critic updates.

    A :class:`~marl_two_tower.model.components.TrainingComponent`: owns the
    actor/critic optimiser (the supervised optimiser never sees the controller,
    :meth:`TwoTower.supervised_parameters`) and the reward targets;
    :meth:`filter_positives` drops reward targets from every supervised batch,
    :meth:`after_batch` runs :meth:`step` every ``rl_every`` supervised batches on the
    epoch's component stream, :meth:`epoch_summary` gives the ``marl/*`` record
    entries, and the optimiser state is checkpointed under ``marl``.
    """

    name = "marl"
    state_key = "marl"

    def __init__(self, cfg: Config, split: Split, model: TwoTower, device: torch.device) -> None:
        if not isinstance(model.controller, GenreAgents):
            raise TypeError("MARL training needs model.controller to be GenreAgents")
        if cfg.marl.schedule == "after_fit" and cfg.marl.finetune_steps <= 0:
            raise ValueError("marl.schedule='after_fit' trains the agents only after the fit: "
                             "set marl.finetune_steps > 0 (got 0), or schedule='interleaved'")
        self.cfg, self.agents = cfg, model.controller
        self.core = RecEnvCore(split, cfg.marl, TwoTowerScorer(model), device)
        self.optimizer = torch.optim.Adam(self.agents.parameters(), lr=cfg.marl.lr)
        # bool over train interactions: True = a reward target, never a supervised positive
        self.holdout = np.zeros(len(split.train_items), dtype=bool)
        self.holdout[self.core.target_index[self.core.eligible]] = True
        self.curve: list[float] = []  # mean sampled reward of every RL step (learning curve)
        self.curve_det: list[float] = []  # the same batches' reward with deterministic actions
        self.curve_zero: list[float] = []  # the same batches' reward with all actions zero
        self._reset_acc()

    def _reset_acc(self) -> None:
        self._n = 0
        self._skipped = 0
        self._seconds = 0.0  # wall time of the RL steps (the controller's training overhead)
        self._scalars: dict[str, float] = {}
        g_n = self.agents.n_agents
        self._agent = {k: np.zeros(g_n) for k in ("reward", "b_mean", "b_std", "t_mean", "t_std")}

    def filter_positives(self, idx: np.ndarray) -> np.ndarray:
        """Drop reward-target interactions from a batch of supervised positives (unless
        ``marl.holdout_positives`` is False: then every train interaction stays)."""
        if not self.cfg.marl.holdout_positives:
            return idx
        return idx[~self.holdout[idx]]

    def after_batch(self, index: int, rng: np.random.Generator) -> None:
        """One RL step after every ``rl_every``-th supervised batch of the epoch
        (``schedule="interleaved"``)."""
        if self.cfg.marl.schedule == "interleaved" and (index + 1) % self.cfg.marl.rl_every == 0:
            self.step(rng)

    def after_fit(self, seed: int,
                  validate: Callable[[], dict[str, float]] | None = None) -> dict[str, Any] | None:
        """Second stage: ``finetune_steps`` RL steps on the frozen, validation-selected
        towers (``schedule="after_fit"``, or after interleaved steps when
        ``finetune_steps > 0``).

        The towers no longer move, so the base scores, masks and observations of all
        eligible users are computed once (:meth:`RecEnvCore.observe`) and every step
        draws ``rl_batch_users`` of them (:meth:`RLBatch.subset`): a step is then one
        actor pass, a top-K (G + 1 with difference credit) and an update.

        With fixed observations and one target per user an actor can memorise its
        users' targets, and on ML-100K agents that raise HR@10 on held-out users' reward
        targets still lowered it on validation and test (docs/marl.md), so snapshots are
        judged every ``finetune_eval_every`` steps and the best is kept, the agents
        before the stage included: by validation NDCG@10 (``finetune_judge=
        "validation"``, ``validate()``), or by the deterministic reward on the targets of
        a share ``finetune_holdout`` of the users that never train (``"holdout"``).
        Returns the stage's record (learning-curve ends, the judge's curve, the step
        kept, train/held-out HR of the kept agents against zero actions)."""
        mc = self.cfg.marl
        steps = mc.finetune_steps
        if steps <= 0:
            return None
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, 7, 1])  # the stage's own stream
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        users = rng.permutation(self.core.eligible)
        n_hold = int(round(mc.finetune_holdout * len(users)))
        train_users, hold_users = np.sort(users[n_hold:]), np.sort(users[:n_hold])
        if len(train_users) == 0:
            raise ValueError("marl.finetune_holdout leaves no user to train the agents on")
        everyone = self.core.observe(train_users)
        held = self.core.observe(hold_users) if n_hold else None
        zero_hold = (float(self.core.step(held, torch.zeros(n_hold, self.agents.n_agents, 2,
                                                                device=held.obs.device)).reward.mean())
                     if held is not None else float("nan"))

        by_val = mc.finetune_judge == "validation"
        if by_val and validate is None:
            raise ValueError("marl.finetune_judge='validation' needs the trainer's validate()")

        def judged() -> float:
            self.agents.eval()
            if by_val:
                assert validate is not None
                return float(validate().get("NDCG@10", 0.0))
            if held is None:
                return float("nan")
            with torch.no_grad():
                return float(self.core.step(held, self.agents.act(held.obs)).reward.mean())

        best = (judged(), 0, copy.deepcopy(self.agents.state_dict()))
        evals = [(0, best[0])]
        n = len(train_users)
        size = min(mc.rl_batch_users, n)
        curve = []
        for i in range(steps):
            self.agents.train()
            rows = torch.from_numpy(np.sort(rng.choice(n, size=size, replace=False)))
            batch = everyone.subset(rows.to(everyone.targets.device))
            ro, _, _ = rollout(self.agents, self.core, batch, gen)
            if "skipped" in self._learn(ro):
                continue
            curve.append(float(ro.reward.mean()))
            if (by_val or held is not None) and ((i + 1) % mc.finetune_eval_every == 0
                                                 or i + 1 == steps):
                r = judged()
                evals.append((i + 1, r))
                if r > best[0]:
                    best = (r, i + 1, copy.deepcopy(self.agents.state_dict()))
        if by_val or held is not None:
            self.agents.load_state_dict(best[2])
        self.agents.eval()
        out = {"marl_finetune/steps": float(len(curve)), "marl_finetune/kept_step": float(best[1]),
               "marl_finetune/reward_first": _tenth(curve, first=True),
               "marl_finetune/reward_last": _tenth(curve, first=False),
               "marl_finetune/holdout_users": float(n_hold),
               "marl_finetune/judge": mc.finetune_judge,
               "marl_finetune/judged_kept": best[0],
               "marl_finetune/judged_curve": {str(s): r for s, r in evals},
               "marl_finetune/holdout_reward_zero_action": zero_hold}
        out |= self._kept_vs_zero({"train": everyone, "holdout": held})
        out["marl_finetune/time_s"] = time.perf_counter() - t0
        return out

    @torch.no_grad()
    def _kept_vs_zero(self, batches: dict[str, RLBatch | None]) -> dict[str, float]:
        """HR@K of the current deterministic actions and of zero actions, and the actions'
        spread, on each named observed batch (``marl_finetune/<name>_*``)."""
        out = {}
        for name, b in batches.items():
            if b is None:
                continue
            greedy = self.agents.act(b.obs)
            det, zero = self.core.step(b, greedy), self.core.step(b, torch.zeros_like(greedy))
            out[f"marl_finetune/{name}_hr_kept"] = float(det.terms["hr"].mean())
            out[f"marl_finetune/{name}_hr_zero_action"] = float(zero.terms["hr"].mean())
            out[f"marl_finetune/{name}_action_b_spread"] = float(greedy[..., 0].std())
            out[f"marl_finetune/{name}_action_t_spread"] = float(greedy[..., 1].std())
        return out

    def _learn(self, ro: Rollout) -> dict[str, float]:
        """The actor-critic update on a rollout; a non-finite reward or loss skips it
        (counted in ``marl/skipped``, returned as ``{"skipped": 1.0}``)."""
        if not (torch.isfinite(ro.reward).all() and torch.isfinite(ro.agent_reward).all()):
            log.warning("non-finite MARL reward; RL step skipped")
            self._skipped += 1
            return {"skipped": 1.0}
        stats = self.agents.update(ro, self.optimizer, self.cfg.loss.l_rl)
        if "skipped" in stats:
            self._skipped += 1
        return stats

    def step(self, rng: np.random.Generator) -> dict[str, float]:
        """One RL step on ``rl_batch_users`` users drawn with ``rng``."""
        t0 = time.perf_counter()
        try:
            return self._step(rng)
        finally:
            self._seconds += time.perf_counter() - t0

    def _step(self, rng: np.random.Generator) -> dict[str, float]:
        eligible = self.core.eligible
        users = np.sort(rng.choice(eligible, size=min(self.cfg.marl.rl_batch_users, len(eligible)),
                                   replace=False))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.agents.train()
        ro, batch, info = collect(self.agents, self.core, users, gen)
        stats = self._learn(ro)
        if "skipped" in stats:
            return stats
        res, greedy = info["result"], info["greedy"]
        terms = res.terms
        # the same batch with the deterministic (inference) actions and without the agents:
        # the learning curve of the policy and its baseline
        det = self.core.step(batch, greedy).reward
        zero = self.core.step(batch, torch.zeros_like(greedy)).reward
        out = {"reward": float(ro.reward.mean()), "reward_deterministic": float(det.mean()),
               "reward_zero_action": float(zero.mean()),
               "hr": float(terms["hr"].mean()), "tail_hr": float(terms["tail_hr"].mean()),
               "coverage": float(terms["coverage"]), "gini": float(terms["gini"]),
               "redundancy": float(terms["redundancy"].mean()),
               "policy_std": float(self.agents.log_std.detach().exp().mean()),
               "action_b_spread": float(greedy[..., 0].std()),
               "action_t_spread": float(greedy[..., 1].std()), **stats}
        if self.core.weights.jaccard > 0:
            out["jaccard"] = float(terms["jaccard"].mean())
        self.curve.append(out["reward"])
        self.curve_det.append(out["reward_deterministic"])
        self.curve_zero.append(out["reward_zero_action"])
        for k, v in out.items():
            self._scalars[k] = self._scalars.get(k, 0.0) + v
        acc = self._agent
        acc["reward"] += ro.agent_reward.mean(0).cpu().numpy()
        g = greedy.cpu().numpy()
        acc["b_mean"] += g[..., 0].mean(0)
        acc["b_std"] += g[..., 0].std(0)
        acc["t_mean"] += g[..., 1].mean(0)
        acc["t_std"] += g[..., 1].std(0)
        self._n += 1
        return out

    def epoch_summary(self, epoch: int = 0) -> dict[str, Any]:
        """Mean RL statistics since the last call (``marl/*`` keys; per-agent ones nested
        under ``marl/agents``: reward, mean/std over users of the deterministic b and t;
        the trainer writes them to TensorBoard)."""
        n = max(self._n, 1)
        out: dict[str, Any] = {f"marl/{k}": v / n for k, v in self._scalars.items()}
        out["marl/steps"] = float(self._n)
        out["marl/skipped"] = float(self._skipped)
        out["marl/time_s"] = self._seconds
        out["marl/agents"] = {name: {k: float(v[g] / n) for k, v in self._agent.items()}
                              for g, name in enumerate(self.agents.agent_names)}
        self._reset_acc()
        return out

    def state_dict(self) -> dict[str, Any]:
        """The actor/critic optimiser (the agents' weights are in the model's state)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def _tenth(curve: list[float], first: bool) -> float:
    """Mean of the first (or last) tenth of a learning curve (nan when empty)."""
    if not curve:
        return float("nan")
    k = max(len(curve) // 10, 1)
    return float(np.mean(curve[:k] if first else curve[-k:]))


def build_genre_agents(cfg: Config, split: Split, model: TwoTower) -> GenreAgents:
    """The controller for ``model`` (``model.set_controller`` is the caller's)."""
    return GenreAgents(split, cfg.marl, cfg.model.dim, item_encoder=model.encode_items)

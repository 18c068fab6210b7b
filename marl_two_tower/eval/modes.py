"""The extra sections of ``marl-two-tower evaluate`` (DESIGN §5, §11).

* :func:`agent_breakdown` (``-m agents``, part of ``comprehensive``): for a model with
  genre agents, each agent's deterministic action a_{u,g} = (b, t) (mean and std over
  users) and its reward r_{u,g} (the MARL reward of :mod:`marl_two_tower.marl_env`
  with that agent's own Jaccard overlap), over every user that has a reward target.
* :func:`inference_latency` (``-m inference``, part of ``comprehensive``): single-user
  latency p50/p95/p99 in milliseconds and batch throughput in users per second of two
  named paths: the *tower path* (the user tower per request + scores against the cached
  item vectors + top-K; CPU, and CUDA when present) and the *serving path* (what
  ``serve`` does: precomputed user vectors + the item index, seen items excluded).
* :func:`statistical_test` (``--statistical-test BASELINE_CKPT``): paired tests and
  user-bootstrap CIs of the model against a baseline checkpoint (a two-tower
  checkpoint or a saved baseline recommender), see :mod:`marl_two_tower.significance`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marl_two_tower.config import Config
from marl_two_tower.data.split import Split
from marl_two_tower.eval.arrays import compute_eval_arrays
from marl_two_tower.eval.significance import compare, metric_names
from marl_two_tower.fairness.exposure import budget_from_config
from marl_two_tower.model.two_tower import TwoTower, apply_overrides

NO_AGENTS = "this model has no MARL controller (marl.enabled was false): no per-agent breakdown"


@torch.no_grad()
def agent_breakdown(model: TwoTower, cfg: Config, split: Split, device: str | torch.device = "cpu",
                    batch_users: int | None = None) -> dict[str, Any]:
    """Per-genre-agent mean/std action and mean reward over all eligible users.

    The reward has batch-level terms (Coverage(B), Gini(B)), so users are scored in
    consecutive batches of ``batch_users`` (default ``marl.rl_batch_users``, the
    batch size the agents were trained with), in user order. Returns
    ``{"available": False, "message": ...}`` for a model without genre agents.
    """
    from marl_two_tower.model.marl.agents import GenreAgents
    from marl_two_tower.model.marl.env import RecEnvCore, TwoTowerScorer

    agents = model.controller
    if not isinstance(agents, GenreAgents):
        return {"available": False, "message": NO_AGENTS}
    model.eval()
    core = RecEnvCore(split, cfg.marl, TwoTowerScorer(model), device)
    g_n = agents.n_agents
    batch_users = batch_users or cfg.marl.rl_batch_users
    sums = {k: np.zeros(g_n) for k in ("reward", "b_mean", "t_mean", "b_sq", "t_sq")}
    team = {"reward": 0.0, "hr": 0.0, "tail_hr": 0.0, "jaccard": 0.0}
    n = 0
    for s in range(0, len(core.eligible), batch_users):
        users = core.eligible[s : s + batch_users]
        batch = core.observe(users)
        act = agents.act(batch.obs)  # [B, G, 2], deterministic
        res = core.step(batch, act)
        a = act.double().cpu().numpy()
        sums["reward"] += res.agent_reward.double().sum(0).cpu().numpy()
        sums["b_mean"] += a[..., 0].sum(0)
        sums["t_mean"] += a[..., 1].sum(0)
        sums["b_sq"] += (a[..., 0] ** 2).sum(0)
        sums["t_sq"] += (a[..., 1] ** 2).sum(0)
        team["reward"] += float(res.reward.double().sum())
        team["hr"] += float(res.terms["hr"].double().sum())
        team["tail_hr"] += float(res.terms["tail_hr"].double().sum())
        team["jaccard"] += float(res.terms["jaccard"].double().sum())
        n += len(users)
    per_agent = {}
    for g, name in enumerate(agents.agent_names):
        b, t = sums["b_mean"][g] / n, sums["t_mean"][g] / n
        per_agent[name] = {
            "mean_reward": sums["reward"][g] / n, "mean_boost": b, "mean_tail_boost": t,
            "std_boost": float(np.sqrt(max(sums["b_sq"][g] / n - b * b, 0.0))),
            "std_tail_boost": float(np.sqrt(max(sums["t_sq"][g] / n - t * t, 0.0))),
        }
    return {"available": True, "n_users": n, "k": cfg.marl.k, "batch_users": batch_users,
            "team": {k: v / n for k, v in team.items()}, "agents": per_agent}


TOWER_PATH = ("per request: user tower forward pass (history, features, "
              "components, eval.inference_samples draws of the sampling ones, "
              "familiar-item scores) + scores against the cached item vectors + top-K; no HTTP")
SERVING_PATH = ("what `serve` does per request: the precomputed user vector "
                "+ item-index search with the seen items excluded (+ ContextGNN's stored "
                "familiar items); serving/recommender.py Recommender.recommend, no HTTP")

RequestFn = Callable[[np.ndarray], Any]
"""Answers one request for the user indices ``[B]`` (its result is not inspected)."""


def time_requests(request: RequestFn, n_users: int, n_single: int = 200, batch_size: int = 1024,
                  seed: int = 0, sync: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Latency of ``request``: ``n_single`` single-user calls (after 10 untimed warm-up
    calls) -> p50/p95/p99/mean in ms, and up to 20 batches of ``batch_size`` users ->
    users per second. ``sync`` waits for the device (CUDA) before each clock read."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_single + 10)
    times = []
    for i in range(len(users)):
        sync()
        t0 = time.perf_counter()
        request(users[i : i + 1])
        sync()
        if i >= 10:  # warm-up calls are not timed
            times.append((time.perf_counter() - t0) * 1e3)
    all_users = np.arange(n_users)
    n_batches = max(1, min(20, n_users // batch_size))
    request(all_users[:batch_size])  # warm-up
    sync()
    t0 = time.perf_counter()
    done = 0
    for b in range(n_batches):
        ub = all_users[(b * batch_size) % n_users :][:batch_size]
        request(ub)
        done += len(ub)
    sync()
    elapsed = time.perf_counter() - t0
    t = np.asarray(times)
    return {"single_user_ms": {"p50": float(np.percentile(t, 50)), "p95": float(np.percentile(t, 95)),
                               "p99": float(np.percentile(t, 99)), "mean": float(t.mean()),
                               "n_calls": int(t.size)},
            "batch": {"batch_size": batch_size, "users_per_s": done / elapsed, "n_users": done}}


@torch.no_grad()
def _tower_latency_on(model: TwoTower, split: Split, device: torch.device, k: int, n_single: int,
                      batch_size: int, seed: int) -> dict[str, Any]:
    m = copy.deepcopy(model).to(device).eval()
    items = m.item_vectors()  # the catalogue vectors a server keeps in memory
    k = min(k, split.n_items)

    def request(users: np.ndarray) -> Any:
        # the evaluated (and served) score: mean over the inference draws, with the
        # familiar items' fused scores (TwoTower.mean_user_state)
        z, ov_items, ov_vals = m.mean_user_state(torch.as_tensor(users, device=device),
                                                 item_vecs=items)
        s = z @ items.T
        if ov_items is not None and ov_vals is not None:
            s = apply_overrides(s, ov_items, ov_vals)
        return torch.topk(s, k, dim=1)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = time_requests(request, split.n_users, n_single, batch_size, seed, sync)
    out["threads"] = torch.get_num_threads() if device.type == "cpu" else None
    return out


def inference_latency(model: TwoTower, split: Split, k: int = 10, n_single: int = 200,
                      batch_size: int = 1024, seed: int = 0,
                      serving: RequestFn | None = None,
                      serving_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Latency p50/p95/p99 and throughput of the two ways a list can be computed, each
    named in the result (``what``):

    * ``tower`` (:data:`TOWER_PATH`): the model recomputes the user vector per request,
      on CPU, and on CUDA when available (``tower["cuda"]``);
    * ``serving`` (:data:`SERVING_PATH`), when ``serving`` (a request function, e.g. a
      :class:`~marl_two_tower.serving.recommender.Recommender`'s ``recommend`` for top-``k``)
      is given: precomputed vectors + index, on CPU; ``serving_info`` (e.g. the index
      kind) is stored beside it.

    The same users (``seed``) and harness (:func:`time_requests`) time both paths.
    """
    tower: dict[str, Any] = {"what": TOWER_PATH,
                             "cpu": _tower_latency_on(model, split, torch.device("cpu"), k,
                                                      n_single, batch_size, seed)}
    if torch.cuda.is_available():
        tower["cuda"] = _tower_latency_on(model, split, torch.device("cuda"), k, n_single,
                                          batch_size, seed)
        tower["cuda"]["device_name"] = torch.cuda.get_device_name(0)
    out: dict[str, Any] = {"k": k, "n_items": split.n_items, "tower": tower}
    if serving is not None:
        out["serving"] = {"what": SERVING_PATH, **(serving_info or {}),
                          **time_requests(serving, split.n_users, n_single, batch_size, seed),
                          "threads": torch.get_num_threads()}
    return out


def _baseline_score_fn(path: str | Path, split: Split, device: str, cfg: Config):
    """Test score function of a baseline checkpoint (two-tower or saved baseline
    recommender), reading the histories ``cfg.eval.test_history`` says."""
    from marl_two_tower import checkpoint as ckpt_io
    from marl_two_tower.eval.scorers import part_scorers

    ck = ckpt_io.load(path)
    if isinstance(ck.get("model"), str):  # a saved baseline recommender (MostPop, EASE, ...)
        from marl_two_tower.baselines import load_recommender

        return part_scorers(load_recommender(path), split, cfg)["test"]
    from marl_two_tower.model.build import load_trained

    model, _, _ = load_trained(path, split=split, device=device)
    return part_scorers(model, split, cfg, next(model.parameters()).device)["test"]


def statistical_test(score_fn: Any, baseline_ckpt: str | Path, split: Split, cfg: Config,
                     device: str = "auto", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every metric of the model vs the baseline checkpoint on the test users."""
    if not baseline_ckpt:
        raise ValueError("--statistical-test needs the baseline checkpoint to compare with")
    ks = tuple(cfg.eval.ks)
    base_fn = _baseline_score_fn(baseline_ckpt, split, device, cfg)
    a = compute_eval_arrays(split, score_fn, ks, cfg.eval.batch_size, budget_from_config(cfg))
    b = compute_eval_arrays(split, base_fn, ks, cfg.eval.batch_size)
    res = compare([a], [b], metric_names(ks), n_boot=n_boot, seed=seed)
    return {"baseline": str(baseline_ckpt), "n_boot": n_boot, "bootstrap_seed": seed,
            "protocol": "test split, full ranking", "metrics": res}


def format_sections(metrics: dict[str, Any]) -> str:
    """Short text of the agents / latency / significance sections for the console."""
    lines = []
    ag = metrics.get("agents")
    if ag is not None:
        if not ag["available"]:
            lines.append(f"agents: {ag['message']}")
        else:
            lines.append(f"agents (n_users={ag['n_users']}, team reward {ag['team']['reward']:.4f}):")
            lines.append(f"  {'agent':24s} {'reward':>8s} {'boost':>8s} {'tail':>8s}")
            for name, a in ag["agents"].items():
                lines.append(f"  {name:24s} {a['mean_reward']:8.4f} {a['mean_boost']:+8.4f} "
                             f"{a['mean_tail_boost']:+8.4f}")
    lat = metrics.get("latency")
    if lat is not None:
        timed = [(f"tower path {dev}", lat["tower"][dev]) for dev in ("cpu", "cuda")
                 if dev in lat["tower"]]
        if "serving" in lat:
            timed.append(("serving path cpu", lat["serving"]))
        for name, r in timed:
            s, b = r["single_user_ms"], r["batch"]
            lines.append(f"latency, {name}: single user p50 {s['p50']:.3f} ms, p95 {s['p95']:.3f} "
                         f"ms, p99 {s['p99']:.3f} ms; batch {b['batch_size']}: "
                         f"{b['users_per_s']:,.0f} users/s")
        lines.append(f"  tower path = {lat['tower']['what']}")
        if "serving" in lat:
            lines.append(f"  serving path = {lat['serving']['what']}")
    sig = metrics.get("significance")
    if sig is not None:
        lines.append(f"vs {sig['baseline']}: delta [95% CI], p")
        for name, e in sig["metrics"].items():
            ci = e.get("delta_ci95") or [float("nan")] * 2
            lines.append(f"  {name:14s} {e['delta']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] "
                         f"p={e['p_value']:.4g} ({e['test']})")
    return "\n".join(lines)

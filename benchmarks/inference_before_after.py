"""What the transformer tower's inference fast paths buy, measured in one process.

Two changes (session 6, issue 15), both exact up to float rounding:

* ``SASRecEncoder.last``: only the last slot's query goes through the final block
  (the earlier blocks still run every position, as keys); rows that read their
  window's last slot through the ``exclude`` path (the RL state: one row per user,
  its reward target left out) take it too.
* ``TwoTower.mean_user_state``: the ``eval.inference_samples`` draws (ContextGNN's
  and BUHS's samples) share one user-tower pass, instead of one pass per draw.

"Before" patches the replaced behaviour back in (the full forward sliced at its last
column; one tower pass per draw). The full model (every component, the transformer
tower of ``configs/ablation.yaml``) is built untrained: the cost does not depend on
the weights. Timed, in turns, before and after, median of ``--repeats``:

* ``rl_state``: the RL step's re-scoring (``TwoTowerScorer``) of ``marl.rl_batch_users``
  users with their last train item excluded;
* ``evaluation``: full-ranking test evaluation (every metric of ``eval.ks``, groups);
* ``per_request``: one user's serving state computed live (``mean_user_state``);
* the same evaluation on complete ML-1M (``--ml1m``, skipped when absent).

The outputs of both are compared (max abs difference). Writes
``benchmarks/results/inference_before_after.json``.

    .venv/bin/python benchmarks/inference_before_after.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
FULL = ("context_gnn", "marl", "fair_sampler", "buhs", "gini", "tail_loss")


@contextmanager
def before() -> Any:
    """The replaced routines: the full forward sliced at its last slot, and one
    user-tower pass per inference draw."""
    from marl_two_tower.model.sequence import SASRecEncoder
    from marl_two_tower.model.two_tower import TwoTower

    fwd, uv = SASRecEncoder.forward, TwoTower.user_vectors

    def full_forward(self, x, valid, last_only=False):
        out = fwd(self, x, valid)
        return out[:, -1:] if last_only else out

    def per_draw(self, users, exclude=None, tower=None):
        return uv(self, users, exclude)

    SASRecEncoder.forward, TwoTower.user_vectors = full_forward, per_draw
    try:
        yield
    finally:
        SASRecEncoder.forward, TwoTower.user_vectors = fwd, uv


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def jobs(source: str, path: str, seed: int) -> dict[str, Callable[[], Any]]:
    from marl_two_tower.config import load_config
    from marl_two_tower.data import load_split
    from marl_two_tower.eval.protocols import evaluate
    from marl_two_tower.model.build import build_model
    from marl_two_tower.model.marl.env import TwoTowerScorer

    cfg = load_config(str(REPO / "configs" / "ablation.yaml"),
                      [f"data.source={source}", f"data.path={path}", f"seed={seed}",
                       "train.num_threads=1", *(f"{c}.enabled=true" for c in FULL)])
    split = load_split(cfg.data)
    torch.manual_seed(seed)
    model = build_model(cfg, split).eval()
    rng = np.random.default_rng(seed)
    users = rng.choice(split.n_users, min(cfg.marl.rl_batch_users, split.n_users), replace=False)
    last = split.train_items[split.train_indptr[users + 1] - 1]
    u_t, last_t = torch.from_numpy(users), torch.from_numpy(last)
    one = torch.tensor([int(users[0])])
    name = "ML-1M" if source == "ml-1m-ordered" else "ML-100K"

    def rl_state():
        torch.manual_seed(seed)  # BUHS draws the RL state's samples afresh: the same draw in both arms
        return TwoTowerScorer(model)(u_t, last_t).scores

    def evaluation():
        return evaluate(split, model.scorer(), part="test", ks=tuple(cfg.eval.ks), protocol="full",
                        batch_size=cfg.eval.batch_size, groups=True)

    def per_request():
        with torch.no_grad():
            return model.mean_user_state(one)[0]

    out = {f"{name} evaluation": evaluation}
    if source != "ml-1m-ordered":
        out = {f"{name} rl_state": rl_state, **out, f"{name} per_request": per_request}
    return out


def difference(a: Any, b: Any) -> float:
    """Max abs difference of two results (tensors, or metric dicts of floats)."""
    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max())
    if isinstance(a, dict):
        return max((difference(a[k], b[k]) for k in a if k in b), default=0.0)
    if isinstance(a, float | int | np.floating):
        return abs(float(a) - float(b)) if np.isfinite(a) and np.isfinite(b) else 0.0
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA / "ml-100k"))
    p.add_argument("--ml1m", default=str(DATA / "ml-1m-ordered"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "inference_before_after.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    todo = jobs("ml-100k", args.data, args.seed)
    if Path(args.ml1m).is_dir():
        todo |= jobs("ml-1m-ordered", args.ml1m, args.seed)
    rows: dict[str, Any] = {}
    for name, fn in todo.items():

        def run(arm: str, fn: Callable[[], Any] = fn) -> tuple[float, Any]:
            if arm == "before":
                with before():
                    return timed(fn)
            return timed(fn)

        fn()  # warm-up: caches (BUHS inference samples, seen masks) built once
        res = {arm: run(arm)[1] for arm in ("before", "after")}  # outputs compared, untimed
        t: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.repeats):  # in turns, the order alternating
            for arm in (("before", "after") if r % 2 == 0 else ("after", "before")):
                t[arm].append(run(arm)[0])
        b, a = (float(np.median(t[k])) for k in ("before", "after"))
        rows[name] = {"before_s": b, "after_s": a, "speed_up": b / a,
                      "max_abs_difference": difference(res["before"], res["after"]),
                      "all_before_s": [round(x, 4) for x in t["before"]],
                      "all_after_s": [round(x, 4) for x in t["after"]]}
        print(f"{name}: before {b:.4f} s, after {a:.4f} s, {b / a:.2f}x; "
              f"max |difference| {rows[name]['max_abs_difference']:.2e}", flush=True)
    out = {"command": "benchmarks/inference_before_after.py", "argv": vars(args),
           "load_average_start": [round(x, 2) for x in load0],
           "load_average_end": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The planted tail-loving segment of tests/test_genre_agents.py, measured (docs/marl.md).

30% of the users of a toy catalogue like the tail items of one genre, the others head
items; base scores favour the head. The genre agents (reward = HR@5 only) train for
150 A2C steps in each action unit; the script writes their HR@5 beside the zero
action and the best single global tail knob (one t for all users and genres, and one
t on the planted genre only), and the learned mean tail boost per genre for the
segment's users and for the others.

    .venv/bin/python benchmarks/marl_planted_segment.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from marl_toy import PopularityScorer, hr_only_config, tail_segment_split, train_greedy  # noqa: E402

from marl_two_tower.model.marl.env import RecEnvCore  # noqa: E402
from marl_two_tower.study.results import git_commit  # noqa: E402
from marl_two_tower.utils.io import write_text_atomic  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "marl_planted_segment.json"


def run(units: str, scale: float, steps: int = 150) -> dict:
    """Train the agents on the planted toy; HR@5 of them and of the knobs."""
    torch.manual_seed(0)
    split, segment = tail_segment_split()
    cfg = hr_only_config(action_units=units, action_scale=scale, rl_batch_users=120)
    core = RecEnvCore(split, cfg, PopularityScorer(split))
    _, batch, greedy = train_greedy(split, cfg, core, lambda: core.scorer.e_i, steps)
    seg = torch.as_tensor(segment[core.eligible])
    g_n = greedy.shape[1]

    def knob(value: float, genres: list[int]) -> float:
        a = torch.zeros_like(greedy)
        a[:, genres, 1] = value
        return float(core.step(batch, a).terms["hr"].mean())

    grid = np.linspace(-3.0, 3.0, 25)
    return {"units": units, "action_scale": scale, "steps": steps,
            "hr@5_learned": float(core.step(batch, greedy).terms["hr"].mean()),
            "hr@5_zero": knob(0.0, []),
            "hr@5_best_global_knob": max(knob(v, list(range(g_n))) for v in grid),
            "hr@5_best_planted_genre_knob": max(knob(v, [1]) for v in grid),
            "tail_boost_segment": greedy[seg, :, 1].mean(0).tolist(),
            "tail_boost_others": greedy[~seg, :, 1].mean(0).tolist()}


def main() -> int:
    torch.set_num_threads(1)
    rows = [run("score_std", 3.0), run("absolute", 1.0)]
    doc = {"benchmark": "marl_planted_segment", "git_commit": git_commit(),
           "command": "python benchmarks/marl_planted_segment.py", "planted_genre": 1, "rows": rows}
    write_text_atomic(OUT, json.dumps(doc, indent=2))
    for r in rows:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
               if not k.startswith("tail_boost")})
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

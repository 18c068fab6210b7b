"""evaluate -m agents|inference, --statistical-test, and simulate on the tiny study."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _tiny_study import tiny_config, tiny_study

from marl_two_tower.cli.main import main
from marl_two_tower.data import load_split
from marl_two_tower.eval.modes import NO_AGENTS, agent_breakdown
from marl_two_tower.model.build import build_model
from marl_two_tower.study.report import read_report


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return tiny_study(str(tmp_path_factory.getbasetemp()))


def test_statistical_test_against_itself_and_inference(study, tmp_path, capsys):
    ckpt = study / "base" / "seed1" / "checkpoints" / "model_best.pt"
    out = tmp_path / "eval"
    assert main(["evaluate", "-p", str(ckpt), "-m", "inference", "--statistical-test", str(ckpt),
                 "-o", str(out), "-f", "json", "--device", "cpu"]) == 0
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert "test" not in m  # inference mode: no ranking metrics
    lat = m["latency"]["tower"]["cpu"]["single_user_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert m["latency"]["tower"]["cpu"]["batch"]["users_per_s"] > 0
    assert m["latency"]["serving"]["batch"]["users_per_s"] > 0
    for name, e in m["significance"]["metrics"].items():
        assert e["delta"] == 0.0 and e["p_value"] == 1.0, name
    assert "latency, tower path cpu: single user p50" in capsys.readouterr().out
    assert not (out / "results.csv").exists()


def test_agents_mode_without_marl_says_so(study, tmp_path, capsys):
    ckpt = study / "tail" / "seed2" / "checkpoints" / "model_best.pt"
    assert main(["evaluate", "-p", str(ckpt), "-m", "agents", "-o", str(tmp_path / "e")]) == 0
    assert NO_AGENTS in capsys.readouterr().out
    m = json.loads((tmp_path / "e" / "results.json").read_text())["metrics"]
    assert m["agents"]["available"] is False


def test_agent_breakdown_matches_the_environment():
    from marl_two_tower.model.marl.env import RecEnvCore, TwoTowerScorer

    cfg = tiny_config("marl.enabled=true")
    split = load_split(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, split).eval()
    res = agent_breakdown(model, cfg, split, batch_users=37)  # several uneven batches
    core = RecEnvCore(split, cfg.marl, TwoTowerScorer(model))
    users = core.eligible
    with torch.no_grad():
        batch = core.observe(users)
        act = model.controller.act(batch.obs)
        step = core.step(batch, act)
    assert res["n_users"] == len(users)
    assert list(res["agents"]) == model.controller.agent_names
    a0 = res["agents"][model.controller.agent_names[0]]
    assert a0["mean_boost"] == pytest.approx(float(act[:, 0, 0].double().mean()), abs=1e-6)
    assert a0["std_tail_boost"] == pytest.approx(float(act[:, 0, 1].double().std(unbiased=False)),
                                                 abs=1e-5)
    # rewards have batch-level terms (Coverage(B), Gini(B)): compare with one batch
    one = agent_breakdown(model, cfg, split, batch_users=len(users))
    a0 = one["agents"][model.controller.agent_names[0]]
    assert a0["mean_reward"] == pytest.approx(float(step.agent_reward[:, 0].double().mean()), abs=1e-6)
    assert one["team"]["reward"] == pytest.approx(float(step.reward.double().mean()), abs=1e-6)


def test_simulate_from_the_report(study, tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--report", str(study / "report"), "--set", "n_samples=200",
                 "--output", str(out)]) == 0
    res = json.loads((out / "simulation.json").read_text())
    doc = read_report(study / "report")
    row = next(r for r in doc["rows"] if r["label"] == "+Tail loss")
    assert res["inputs"]["hr"] == row["metrics"]["HR@10"]["delta"]
    assert res["inputs"]["coverage"] == row["metrics"]["Coverage@10"]["delta"]
    assert res["label"].startswith("SIMULATED")
    text = capsys.readouterr().out
    assert "SIMULATED BUSINESS IMPACT" in text and "n_samples = 200" in text
    assert np.isfinite(res["point"]["roi"])
    with pytest.raises(SystemExit):
        main(["simulate", "--bogus"])
    assert main(["simulate"]) == 2  # no deltas given: a clear error

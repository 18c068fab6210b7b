"""Ablation runner: variant planning, resumability after a kill, redo on config change."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _tiny_study import SEEDS, VARIANTS, tiny_config

from marl_two_tower.config import config_from_dict
from marl_two_tower.data import load_split
from marl_two_tower.study.ablation import plan_variants, run_study
from marl_two_tower.study.results import read_results
from marl_two_tower.study.variants import VARIANTS as STUDY_VARIANTS
from marl_two_tower.train import trainer as trainer_mod


def test_plan_excludes_components_from_the_whole_study():
    plan = {p.variant.key: p for p in plan_variants(STUDY_VARIANTS)}
    assert list(plan) == ["base", "context_gnn", "marl", "fair_sampler", "buhs", "gini",
                          "tail_loss", "exposure_budget"]
    assert plan["base"].available and plan["base"].components == []
    # the GINI loss, the tail loss and the exposure budget are separate steps
    assert plan["gini"].components == ["context_gnn", "marl", "fair_sampler", "buhs", "gini"]
    assert plan["tail_loss"].components == plan["gini"].components + ["tail_loss"]
    full = plan["gini"].components + ["tail_loss", "exposure_budget"]
    assert plan["exposure_budget"].components == full
    # the budget trains nothing: it evaluates the +Tail loss models
    assert plan["exposure_budget"].evaluates == "tail_loss"
    assert all(p.evaluates is None for k, p in plan.items() if k != "exposure_budget")
    plan = {p.variant.key: p for p in plan_variants(STUDY_VARIANTS, exclude=["buhs"])}
    assert not plan["buhs"].available and "--no-buhs" in plan["buhs"].reason
    assert plan["gini"].components == ["context_gnn", "marl", "fair_sampler", "gini"]
    # without the tail loss the budget evaluates the latest model with the same training
    plan = {p.variant.key: p for p in plan_variants(STUDY_VARIANTS, exclude=["tail_loss"])}
    assert not plan["tail_loss"].available and plan["exposure_budget"].evaluates == "gini"
    plan = {p.variant.key: p for p in plan_variants(STUDY_VARIANTS, exclude=["exposure_budget"])}
    assert not plan["exposure_budget"].available
    # a subset keeps the cumulative stack of the whole study
    (buhs,) = plan_variants(STUDY_VARIANTS, only=["buhs"])
    assert buhs.components == ["context_gnn", "marl", "fair_sampler", "buhs"]


class Counter:
    """Counts Trainer.train_epoch calls; raises KeyboardInterrupt at call ``kill_at``."""

    def __init__(self, monkeypatch, kill_at: int | None = None) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.kill_at = kill_at
        original = trainer_mod.Trainer.train_epoch

        def wrapped(tr, epoch):
            self.calls.append((tr.cfg.output_dir.rsplit("/", 1)[-1], tr.cfg.seed, epoch))
            if self.kill_at is not None and len(self.calls) == self.kill_at:
                raise KeyboardInterrupt  # the study is killed mid-epoch
            return original(tr, epoch)

        monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", wrapped)


def test_killed_study_finishes_only_the_missing_runs(tmp_path, monkeypatch):
    cfg = tiny_config()
    split = load_split(cfg.data)
    out = tmp_path / "study"
    # 2 variants x 2 seeds x 2 epochs = 8 epochs; kill during the 6th (tail, seed 1, epoch 2)
    counter = Counter(monkeypatch, kill_at=6)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, SEEDS, out, variants=VARIANTS, baselines=False, progress=False,
                  report=False, split=split)
    assert (out / "base" / "seed1" / "results.json").exists()
    assert (out / "base" / "seed2" / "results.json").exists()
    assert not (out / "tail" / "seed1" / "results.json").exists()
    assert (out / "tail" / "seed1" / "checkpoints" / "last.pt").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("base/seed*/results.json")}

    counter = Counter(monkeypatch)
    study = run_study(cfg, SEEDS, out, variants=VARIANTS, baselines=False, progress=False,
                      report=False, split=split)
    # only the missing work: epoch 2 of (tail, 1) resumed from last.pt, then (tail, 2)
    assert counter.calls == [("tail", 1, 1), ("tail", 2, 0), ("tail", 2, 1)]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    status = {(v["key"], r["seed"]): r["status"] for v in study["variants"] for r in v["runs"]}
    assert status == {("base", 1): "done", ("base", 2): "done", ("tail", 1): "resumed",
                      ("tail", 2): "trained"}
    assert json.loads((out / "study.json").read_text())["seeds"] == list(SEEDS)

    # the resumed run equals an uninterrupted one
    doc = read_results(out / "tail" / "seed1")
    assert doc["extra"]["epochs_run"] == 2 and doc["config"]["tail_loss"]["enabled"]
    fresh = tmp_path / "fresh"
    run_study(cfg, (1,), fresh, variants=VARIANTS[1:], baselines=False, progress=False,
              report=False, split=split)
    assert read_results(fresh / "tail" / "seed1")["metrics"]["test"] == doc["metrics"]["test"]

    # a third call has nothing to do
    counter = Counter(monkeypatch)
    run_study(cfg, SEEDS, out, variants=VARIANTS, baselines=False, progress=False, report=False,
              split=split)
    assert counter.calls == []

    # a changed config redoes the runs it affects (here: every run, one seed asked)
    counter = Counter(monkeypatch)
    run_study(tiny_config("train.lr=0.01"), (1,), out, variants=VARIANTS[:1], baselines=False,
              progress=False, report=False, split=split)
    assert counter.calls == [("base", 1, 0), ("base", 1, 1)]


def test_runs_share_data_and_differ_only_in_components_and_seed(tmp_path):
    cfg = tiny_config("train.epochs=1")
    out = tmp_path / "s"
    run_study(cfg, (3,), out, variants=VARIANTS, baselines=False, progress=False, report=False)
    a, b = read_results(out / "base" / "seed3"), read_results(out / "tail" / "seed3")
    assert a["run"]["data"]["fingerprint"] == b["run"]["data"]["fingerprint"]
    assert a["run"]["seed"] == b["run"]["seed"] == 3
    ca, cb = a["config"], b["config"]
    assert not ca["tail_loss"]["enabled"] and cb["tail_loss"]["enabled"]
    for c in (ca, cb):
        c.pop("tail_loss"), c.pop("output_dir"), c.pop("checkpoint_dir")
    assert ca == cb
    assert (out / "base" / "seed3" / "per_user.npz").exists()


def test_a_run_claimed_by_a_live_worker_is_skipped(tmp_path, monkeypatch):
    import os
    import subprocess

    from marl_two_tower.study.ablation import claim, release

    cfg = tiny_config("train.epochs=1")
    out = tmp_path / "s"
    busy = out / "tail" / "seed1"
    busy.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])  # a live "other worker"
    try:
        (busy / ".lock").write_text(str(sleeper.pid))
        counter = Counter(monkeypatch)
        study = run_study(cfg, (1,), out, variants=VARIANTS, baselines=False, progress=False,
                          report=False)
        assert counter.calls == [("base", 1, 0)]
        assert study["variants"][1]["runs"][0]["status"] == "busy"
    finally:
        sleeper.kill()
        sleeper.wait()
    # its process is gone: the lock is stale and the run is taken over
    counter = Counter(monkeypatch)
    run_study(cfg, (1,), out, variants=VARIANTS, baselines=False, progress=False, report=False)
    assert counter.calls == [("tail", 1, 0)]
    assert not (busy / ".lock").exists()
    assert claim(busy) and (busy / ".lock").read_text() == str(os.getpid())
    release(busy)


def test_the_exposure_budget_step_evaluates_the_previous_steps_models(tmp_path, monkeypatch):
    from marl_two_tower.eval.arrays import load_eval_arrays
    from marl_two_tower.eval.frontier import load_candidates
    from marl_two_tower.eval.protocols import evaluate
    from marl_two_tower.eval.scorers import part_scorers
    from marl_two_tower.fairness.exposure import budget_from_config
    from marl_two_tower.model.build import load_trained
    from marl_two_tower.study.ablation import Variant

    cfg = tiny_config("train.epochs=1", "gini.exposure_cap=1.5")
    split = load_split(cfg.data)
    out = tmp_path / "s"
    variants = (*VARIANTS, Variant("budget", "+Exposure budget", ("exposure_budget",)))
    counter = Counter(monkeypatch)
    study = run_study(cfg, (1,), out, variants=variants, baselines=False, progress=False,
                      report=False, split=split)
    assert counter.calls == [("base", 1, 0), ("tail", 1, 0)]  # the budget step trains nothing
    status = {v["key"]: (v["evaluates"], v["runs"][0]["status"]) for v in study["variants"]}
    assert status["budget"] == ("tail", "evaluated")
    doc = read_results(out / "budget" / "seed1")
    tail_ckpt = out / "tail" / "seed1" / "checkpoints" / "model_best.pt"
    assert doc["extra"]["checkpoint"] == str(tail_ckpt) and doc["extra"]["evaluation_only"]
    assert doc["config"]["exposure_budget"]["enabled"] and doc["config"]["tail_loss"]["enabled"]
    assert not read_results(out / "tail" / "seed1")["config"]["exposure_budget"]["enabled"]
    # its numbers are the tail model's under the budget, and the budget changed the lists
    model, _, _ = load_trained(tail_ckpt, split=split)
    run_cfg = config_from_dict(doc["config"])
    budget = budget_from_config(run_cfg)
    test_fn = part_scorers(model, split, run_cfg)["test"]  # test reads train + val histories
    ref = evaluate(split, test_fn, "test", ks=(5, 10), groups=False, budget=budget)
    assert doc["metrics"]["test"]["full"]["Gini@10"] == pytest.approx(ref["full"]["Gini@10"])
    assert doc["metrics"]["test"]["full"]["HR@10"] == pytest.approx(ref["full"]["HR@10"])
    tail_arr, budget_arr = (load_eval_arrays(out / k / "seed1") for k in ("tail", "budget"))
    assert not np.array_equal(tail_arr.recs, budget_arr.recs)
    # both runs carry the frontier candidates, identical (same model)
    a, b = load_candidates(out / "tail" / "seed1"), load_candidates(out / "budget" / "seed1")
    assert np.array_equal(a["test"].cand, b["test"].cand) and np.array_equal(a["val"].logp, b["val"].logp)
    # nothing left to do; a run finished before the candidates existed gets them back
    (out / "base" / "seed1" / "frontier.npz").unlink()
    counter = Counter(monkeypatch)
    study = run_study(cfg, (1,), out, variants=variants, baselines=False, progress=False,
                      report=False, split=split)
    assert counter.calls == [] and {v["runs"][0]["status"] for v in study["variants"]} == {"done"}
    assert (out / "base" / "seed1" / "frontier.npz").exists()


def test_a_run_stored_before_the_budget_switch_stays_done(tmp_path):
    from marl_two_tower.study.ablation import PlannedVariant, run_config, run_status

    cfg = tiny_config("train.epochs=1")
    split = load_split(cfg.data)
    out = tmp_path / "s"
    run_study(cfg, (1,), out, variants=VARIANTS[:1], baselines=False, progress=False, report=False,
              split=split)
    path = out / "base" / "seed1" / "results.json"
    doc = json.loads(path.read_text())
    del doc["config"]["exposure_budget"]  # the layout of older results
    path.write_text(json.dumps(doc))
    rc = run_config(cfg, PlannedVariant(VARIANTS[0], [], True), 1, out)
    assert run_status(rc, split, clean=False) == "done"

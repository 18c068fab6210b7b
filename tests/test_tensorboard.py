"""TensorBoard event files (DESIGN §11): every number of every epoch record, read back
with tensorboard's own event reader, equals the run's history in results.json; a
resumed run leaves one event per epoch; writing events changes no training number."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from marl_two_tower.config import load_config
from marl_two_tower.data import load_split
from marl_two_tower.study.run import train_and_evaluate
from marl_two_tower.train.trainer import Trainer

TINY = ["data.synthetic.n_users=120", "data.synthetic.n_items=80",
        "data.synthetic.interactions_per_user=15", "data.synthetic.n_genres=4", "model.dim=16",
        "model.id_dim=16", "model.hidden=32", "train.batch_size=128", "train.epochs=2",
        "train.patience=10", "train.num_negatives=16", "fair_sampler.enabled=true",
        "gini.enabled=true", "tail_loss.enabled=true", "marl.enabled=true", "marl.rl_every=2",
        "marl.rl_batch_users=32", "marl.hidden=16", "eval.ks=[10]", "eval.sampled_negatives=20"]


def cfg_for(root: Path, *extra: str):
    return load_config(None, [*TINY, f"output_dir={root}", "name=run",
                              f"checkpoint_dir={root / 'ck'}", *extra])


def read_events(tb: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the event files in ``tb`` (tensorboard's reader)."""
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})  # 0 = keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """The oracle, written out by hand: each number of each record at step = epoch, nested
    dicts (marl/agents) as key/sub/subsub, stored as float32 (TensorBoard's precision)."""
    out: dict[str, list[tuple[int, float]]] = {}

    def put(tag: str, step: int, v: float) -> None:
        out.setdefault(tag, []).append((step, float(np.float32(v))))

    for rec in history:
        for k, v in rec.items():
            if k == "epoch":
                continue
            if isinstance(v, dict):
                for agent, stats in v.items():
                    for s, x in stats.items():
                        put(f"{k}/{agent}/{s}", rec["epoch"], x)
            else:
                put(k, rec["epoch"], v)
    return out


def assert_same(events: dict, expected: dict) -> None:
    assert set(events) == set(expected)
    for tag, exp in expected.items():
        got = events[tag]
        assert [s for s, _ in got] == [s for s, _ in exp], tag
        for (_, a), (_, b) in zip(got, exp, strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == b, (tag, a, b)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    _, doc = train_and_evaluate(cfg_for(root), progress=False)
    return root, doc


def test_event_values_equal_the_history_in_results_json(run):
    root, _ = run
    history = json.loads((root / "run" / "results.json").read_text())["history"]
    assert len(history) == 2
    events = read_events(root / "run" / "tb")
    # every family DESIGN §11 asks for is there
    for tag in ("loss/rec", "loss/tail", "loss/gini", "loss/total", "val/NDCG@10", "val/HR@10",
                "sampler/gini", "gini/value", "gini/lambda", "marl/reward", "marl/entropy"):
        assert tag in events, tag
    assert any(t.startswith("marl/agents/") and t.endswith("/reward") for t in events)
    assert_same(events, expected_scalars(history))


def test_events_do_not_change_training(run, tmp_path):
    _, doc = run
    _, off = train_and_evaluate(cfg_for(tmp_path, "train.tensorboard=false"), progress=False)
    assert not (tmp_path / "run" / "tb").exists()

    def numbers(d):
        return [{k: v for k, v in r.items() if "time_s" not in k} for r in d["history"]], d["metrics"]

    assert numbers(off) == numbers(doc)


def test_resumed_run_has_one_event_per_epoch(tmp_path):
    """Events written after the checkpoint a run resumes from are purged (purge_step):
    here epoch 2 is trained twice, and the reader sees it once, with the resumed values."""
    cfg = cfg_for(tmp_path)
    split = load_split(cfg.data)
    saved = tmp_path / "epoch1.pt"

    def keep_epoch1(trainer):
        if trainer.state.epoch == 1:
            shutil.copy(trainer.ckpt_dir / "last.pt", saved)

    first = Trainer(cfg, split, progress=False, run_dir=tmp_path / "run")
    first.callbacks.append(keep_epoch1)
    first.fit()
    shutil.copy(saved, tmp_path / "ck" / "last.pt")  # as if killed before epoch 2's checkpoint
    state = Trainer(cfg, split, progress=False, run_dir=tmp_path / "run").fit(resume=True)
    assert len(list((tmp_path / "run" / "tb").iterdir())) == 2  # one event file per fit
    assert_same(read_events(tmp_path / "run" / "tb"), expected_scalars(state.history))

"""The seed's commands agree (issue 16, points 4 and 5): ``evaluate`` of a checkpoint
reports what ``train`` reported for it, the model and its components rebuilt from the
checkpoint's own config; ``-c``/``--set`` change evaluation settings only; the
inference mode names both paths it times; runs with different names keep their own
checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from marl_two_tower.cli import main as cli
from marl_two_tower.model.build import COMPONENTS

TINY = ["data.synthetic.n_users=120", "data.synthetic.n_items=90", "data.synthetic.n_genres=5",
        "model.dim=8", "model.id_dim=8", "model.hidden=16", "model.history_len=10",
        "train.batch_size=256", "train.epochs=2", "train.patience=10", "train.num_negatives=32",
        "train.num_threads=1", "train.tensorboard=false", "eval.ks=[5,10]",
        "eval.sampled_negatives=20", "eval.inference_samples=2", "marl.rl_batch_users=64"]
SETS = [a for kv in TINY for a in ("--set", kv)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """``train --mode full`` (every component on) of the tiny config, once."""
    w = tmp_path_factory.mktemp("seed")
    assert cli.main(["train", "-q", "--mode", "full", "--name", "full", *SETS,
                     "--set", f"output_dir={w / 'runs'}",
                     "--set", f"checkpoint_dir={w / 'ck'}"]) == 0
    return w


def _test_metrics(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())["metrics"]["test"]


def test_train_and_evaluate_report_the_same_metrics(full_run, tmp_path):
    """Every component on; evaluate with a -c file that switches none of them on (the
    seed's `evaluate.sh -c movielens.yaml ...` after `run_training.sh --mode full`)."""
    trained = _test_metrics(full_run / "runs" / "full")
    stored = json.loads((full_run / "runs" / "full" / "results.json").read_text())["config"]
    assert all(stored[c]["enabled"] for c in COMPONENTS)
    cfg_file = tmp_path / "train-file.yaml"  # a training file: other epochs and batch size
    cfg_file.write_text(yaml.safe_dump({"train": {"epochs": 50, "batch_size": 64},
                                        "model": {"dim": 8}}))
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "-c", str(cfg_file), "-p", str(full_run / "ck" / "model_best.pt"),
                     "-m", "comprehensive", "-o", str(out), "--device", "cpu", "-q", *SETS]) == 0
    evaluated = _test_metrics(out)
    assert {"full", "sampled"} <= trained.keys() and trained["full"]["HR@10"] > 0
    assert evaluated == trained  # bit for bit: the same model, budget and protocol
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert all(cfg[c]["enabled"] for c in COMPONENTS)  # from the checkpoint, not the defaults
    assert cfg["train"]["batch_size"] == 256  # the -c file's training keys are ignored


def test_evaluation_settings_do_change(full_run, tmp_path):
    """``--set eval.*`` and the exposure budget are evaluation settings: they apply."""
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "-p", str(full_run / "ck" / "model_best.pt"), "-m", "quick",
                     "-o", str(out), "--set", "eval.ks=[3]",
                     "--set", "exposure_budget.enabled=false"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["eval"]["ks"] == [3] and not doc["config"]["exposure_budget"]["enabled"]
    assert "HR@3" in doc["metrics"]["test"]["full"] and "HR@10" not in doc["metrics"]["test"]["full"]


@pytest.mark.parametrize("source, key", [("set", "gini.enabled"), ("set", "model.dim"),
                                         ("file", "marl.enabled")])
def test_conflicting_model_or_component_setting_is_an_error(full_run, tmp_path, capsys, source,
                                                            key):
    value = 4 if key == "model.dim" else False
    argv = ["evaluate", "-p", str(full_run / "ck" / "model_best.pt"), "-m", "quick",
            "-o", str(tmp_path / "never")]
    if source == "set":
        argv += ["--set", f"{key}={str(value).lower()}"]
    else:
        section, name = key.split(".")
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({section: {name: value}}))
        argv += ["-c", str(tmp_path / "c.yaml")]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {key}: ") and "trained with" in err[0]
    assert not (tmp_path / "never").exists()


def test_inference_mode_names_and_times_both_paths(full_run, tmp_path, capsys):
    out = tmp_path / "lat"
    capsys.readouterr()
    assert cli.main(["evaluate", "-p", str(full_run / "ck" / "model_best.pt"), "-m", "inference",
                     "-o", str(out), "--device", "cpu"]) == 0
    lat = json.loads((out / "results.json").read_text())["metrics"]["latency"]
    assert "user tower" in lat["tower"]["what"] and "precomputed" in lat["serving"]["what"]
    assert lat["serving"]["index"]["kind"] == "flat" and lat["serving"]["index"]["n_items"] == 90
    for r in (lat["tower"]["cpu"], lat["serving"]):
        s = r["single_user_ms"]
        assert 0 < s["p50"] <= s["p95"] <= s["p99"] and s["n_calls"] == 200
        assert r["batch"]["users_per_s"] > 0
    text = capsys.readouterr().out
    assert "latency, tower path cpu: single user p50" in text
    assert "latency, serving path cpu: single user p50" in text
    assert "serving path = " in text and "tower path = " in text


# ---------------------------------------------------------------------------
# point 5: per-run checkpoints
# ---------------------------------------------------------------------------


def test_runs_with_different_names_keep_both_checkpoints(tmp_path, monkeypatch, capsys):
    """The default ``checkpoint_dir`` (``checkpoints/{name}``): ``train --name a`` then
    ``--name b`` leave ``checkpoints/a/`` and ``checkpoints/b/`` intact, and
    ``checkpoints/model_best.pt`` (the seed's path) is the latest run's best model."""
    import os

    import torch

    from marl_two_tower.config import Config

    assert Config().checkpoint_dir == "checkpoints/{name}"
    monkeypatch.chdir(tmp_path)
    short = [a for kv in TINY if kv != "train.epochs=2" for a in ("--set", kv)]
    short += ["--set", "train.epochs=1"]
    for name, seed in (("a", "1"), ("b", "2")):
        assert cli.main(["train", "-q", "--name", name, "--seed", seed, *short]) == 0
    ck = tmp_path / "checkpoints"
    a, b = (torch.load(ck / n / "model_best.pt", weights_only=True) for n in ("a", "b"))
    assert json.loads(a["config"])["name"] == "a" and json.loads(b["config"])["name"] == "b"
    assert (ck / "a" / "last.pt").exists() and (ck / "b" / "last.pt").exists()
    assert any(not a["model"][k].equal(b["model"][k]) for k in a["model"])  # two models
    latest = ck / "model_best.pt"
    assert latest.is_symlink() and latest.resolve() == (ck / "b" / "model_best.pt").resolve()
    assert os.readlink(latest) == os.path.join("b", "model_best.pt")  # relative: movable
    # the seed's evaluate command on the seed's path evaluates the latest run
    assert cli.main(["evaluate", "-p", "checkpoints/model_best.pt", "-m", "quick",
                     "-o", str(tmp_path / "ev")]) == 0
    quick, trained = (_test_metrics(p)["full"] for p in (tmp_path / "ev", tmp_path / "runs" / "b"))
    assert quick["HR@10"] > 0 and quick == {k: trained[k] for k in quick}
    results = json.loads((tmp_path / "runs" / "b" / "results.json").read_text())
    assert results["extra"]["checkpoint"] == str(Path("checkpoints") / "b" / "model_best.pt")


def test_latest_link_never_replaces_an_older_checkpoint_file(tmp_path, caplog):
    """A ``checkpoints/model_best.pt`` written by an earlier version (a real file) is
    kept; a link or a copy this code made is replaced."""
    from marl_two_tower import checkpoint as ckpt_io

    root = tmp_path / "checkpoints"
    (root / "run").mkdir(parents=True)
    best = root / "run" / "model_best.pt"
    best.write_bytes(b"new")
    (root / "model_best.pt").write_bytes(b"old")
    assert ckpt_io.link_latest(best, root / "model_best.pt") is None
    assert (root / "model_best.pt").read_bytes() == b"old" and "left as it is" in caplog.text
    (root / "model_best.pt").unlink()
    assert ckpt_io.link_latest(best, root / "model_best.pt") == root / "model_best.pt"
    assert (root / "model_best.pt").read_bytes() == b"new"
    other = root / "other" / "model_best.pt"
    other.parent.mkdir()
    other.write_bytes(b"newer")
    ckpt_io.link_latest(other, root / "model_best.pt")  # replaces its own link
    assert (root / "model_best.pt").read_bytes() == b"newer"

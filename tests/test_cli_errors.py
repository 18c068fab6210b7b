"""Every user error ends in one ``error:`` line and exit status 2, never a traceback
(issue 13, points 10-16), and the CLI items of issue 12 (evaluate overrides without
``--config``, no ``ablate --resume/--name``, one ``generate --exact-lengths`` default).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from marl_two_tower.cli import main as cli
from marl_two_tower.config import SyntheticConfig
from marl_two_tower.train.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
TINY = ["data.synthetic.n_users=150", "data.synthetic.n_items=100", "model.dim=8", "model.id_dim=8",
        "model.hidden=16", "train.batch_size=256", "train.epochs=1", "train.num_threads=1",
        "eval.ks=[10]", "eval.sampled_negatives=20"]
SETS = [a for kv in TINY for a in ("--set", kv)]


class Refused:
    """Not a tensor or plain value: ``torch.load(weights_only=True)`` refuses it."""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with one tiny trained run (``ck/``, ``runs/``) and hostile files."""
    w = tmp_path_factory.mktemp("cli")
    assert cli.main(["train", "-q", *SETS, "--set", f"checkpoint_dir={w / 'ck'}",
                     "--set", f"output_dir={w / 'runs'}"]) == 0
    torch.save({"x": Refused()}, w / "refused.pt")
    torch.save({"weights": torch.zeros(2)}, w / "foreign.pt")  # a .pt that is not ours
    torch.save([1, 2, 3], w / "list.pt")
    (w / "empty.pt").write_bytes(b"")
    good = (w / "ck" / "model_best.pt").read_bytes()
    (w / "truncated.pt").write_bytes(good[: len(good) // 3])
    (w / "a.yaml").write_text("extends: b.yaml\n")
    (w / "b.yaml").write_text("train:\n  lr: 0.001\nextends: a.yaml\n")
    (w / "folder.yaml").mkdir()
    (w / "binary.yaml").write_bytes(bytes(range(256)))
    (w / "other-data.yaml").write_text("data:\n  synthetic:\n    seed: 8\n")
    (w / "a-file").write_text("not a folder\n")
    (w / "dl" / "ml-100k").mkdir(parents=True)  # unpacked by hand: not ours to replace
    return w


def run_cli(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err, [line for line in err.splitlines() if line.startswith("error:")]


BEST = "ck/model_best.pt"
# (id, argv with {w} for the work folder, a phrase the error line must hold)
CASES = [
    # 10. CheckpointMismatch: evaluate / export / resume on other data or config
    ("evaluate-other-data", ["evaluate", "-p", "{w}/" + BEST, "-m", "quick",
                             "--set", "data.synthetic.seed=8"], "trained on data"),
    ("evaluate-other-data-config", ["evaluate", "-p", "{w}/" + BEST, "-m", "quick", "-c",
                                    "{w}/other-data.yaml", *SETS], "trained on data"),
    ("export-other-data", ["export", "-p", "{w}/" + BEST, "-o", "{w}/bundle",
                           "--set", "data.synthetic.seed=8"], "trained on data"),
    ("resume-other-config", ["train", "-q", "--resume", *SETS, "--set", "model.hidden=32",
                             "--set", "checkpoint_dir={w}/ck-copy", "--set", "output_dir={w}/r2"],
     "ck-copy/last.pt: checkpoint config differs in: model.hidden"),
    # DownloadError (no network: the foreign folder is found first); 12. names the flag
    ("download-foreign-folder", ["download", "ml-100k", "--root", "{w}/dl"], "--force"),
    # 11. refused pickle at every loading command, without torch's advice
    ("evaluate-refused", ["evaluate", "-p", "{w}/refused.pt"], "refused for safety"),
    ("export-refused", ["export", "-p", "{w}/refused.pt", "-o", "{w}/b2"], "refused for safety"),
    ("serve-refused", ["serve", "--bundle", "{w}/refused.pt"], "refused for safety"),
    ("statistical-test-refused", ["evaluate", "-p", "{w}/" + BEST, "-m", "quick",
                                  "--statistical-test", "{w}/refused.pt"], "refused for safety"),
    # truncated / empty / foreign / not a file
    ("truncated", ["evaluate", "-p", "{w}/truncated.pt"], "truncated or corrupt"),
    ("empty", ["evaluate", "-p", "{w}/empty.pt"], "empty file"),
    ("foreign-pt", ["evaluate", "-p", "{w}/foreign.pt"], "not a marl-two-tower checkpoint"),
    ("list-pt", ["export", "-p", "{w}/list.pt", "-o", "{w}/b3"], "not a marl-two-tower checkpoint"),
    ("checkpoint-is-folder", ["evaluate", "-p", "{w}/ck"], "is a folder"),
    ("checkpoint-missing", ["evaluate", "-p", "{w}/nope.pt"], "not found"),
    # configs
    ("extends-cycle", ["train", "-c", "{w}/a.yaml"], "'extends' cycle: a.yaml -> b.yaml -> a.yaml"),
    ("bad-override-yaml", ["train", "--set", "train.lr=["], "override 'train.lr=['"),
    ("config-is-folder", ["train", "-c", "{w}/folder.yaml"], "is a folder"),
    ("config-is-binary", ["train", "-c", "{w}/binary.yaml"], "binary.yaml: not a text"),
    ("config-missing", ["train", "-c", "{w}/missing.yaml"], "config file not found"),
    ("device-bogus", ["train", "--device", "bogus", *SETS], "train.device"),
    ("evaluate-device-bogus", ["evaluate", "-p", "{w}/" + BEST, "--device", "bogus"], "--device"),
    # serve flags are checked before the bundle is even looked for
    ("serve-threads-0", ["serve", "--bundle", "{w}/nope", "--threads", "0"], "--threads"),
    ("serve-port", ["serve", "--bundle", "{w}/nope", "--port", "99999"],
     "--port: expected a value in [1, 65535]"),
    # OSError: an output folder that is a file
    ("evaluate-output-is-file", ["evaluate", "-p", "{w}/" + BEST, "-m", "quick", "-o", "{w}/a-file"],
     "a-file is a file"),
    # 13. nothing to train
    ("epochs-0", ["train", "-q", *SETS, "--epochs", "0", "--set", "checkpoint_dir={w}/ck",
                  "--set", "output_dir={w}/runs"], "train.epochs: expected a value >= 1, got 0"),
    ("epochs-negative", ["train", "-q", *SETS, "--epochs", "-2"], "train.epochs"),
    ("patience-0", ["train", "-q", *SETS, "--set", "train.patience=0"], "train.patience"),
    # 16. paths checked before training; names cannot escape output_dir
    ("output-dir-is-file", ["train", "-q", *SETS, "--set", "output_dir={w}/a-file",
                            "--set", "checkpoint_dir={w}/ck-never"], "output_dir: "),
    ("checkpoint-dir-below-file", ["train", "-q", *SETS, "--set", "checkpoint_dir={w}/a-file/ck",
                                   "--set", "output_dir={w}/r3"], "checkpoint_dir: "),
    ("name-escapes", ["train", "-q", *SETS, "--name", "../../x"], "name: expected a relative"),
    ("name-absolute", ["train", "-q", *SETS, "--name", "{w}/abs"], "name: expected a relative"),
    ("generate-no-users", ["generate", "--users", "0", "--output", "{w}/g.parquet"], "n_users"),
]


@pytest.mark.parametrize("argv,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_and_exit_2(work, capsys, argv, phrase):
    if not (work / "ck-copy").exists():
        shutil.copytree(work / "ck", work / "ck-copy")
    rc, err, errors = run_cli([a.replace("{w}", str(work)) for a in argv], capsys)
    assert rc == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    assert phrase in errors[0], errors[0]
    assert "weights_only" not in err  # 11: never pass on torch's advice to unpickle
    assert not (work / "ck-never").exists()  # 16: refused before anything ran
    assert not (work.parent / "x").exists() and not (work / "abs").exists()


def test_oserror_is_a_user_error_but_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/srv/data/ratings.dat")

    monkeypatch.setattr(cli, "cmd_demo", denied)
    rc, err, errors = run_cli(["demo"], capsys)
    assert rc == 2 and errors == ["error: /srv/data/ratings.dat: Permission denied"]

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_demo", bug)
    with pytest.raises(KeyError):
        cli.main(["demo"])


def test_resume_without_last_pt_says_so(work, caplog, capsys):
    """15. ``--resume`` with no ``last.pt`` trains from scratch and says so."""
    fresh = work / "fresh-ck"
    with caplog.at_level(logging.WARNING):
        rc = cli.main(["train", "-q", "--resume", *SETS, "--set", f"checkpoint_dir={fresh}",
                       "--set", f"output_dir={work / 'fresh-runs'}"])
    assert rc == 0
    assert f"no last.pt in {fresh}: starting from scratch" in caplog.text


def test_a_run_never_reports_another_runs_model_best(work, capsys, monkeypatch):
    """13. A run whose validation never gives a number saves no model_best.pt; the
    folder's older model_best.pt (same config: it would load) must not be reported."""
    old = work / "old-ck"
    shutil.copytree(work / "ck", old)
    monkeypatch.setattr(Trainer, "validate", lambda self: {"NDCG@10": float("nan")})
    rc, err, errors = run_cli(["train", "-q", *SETS, "--set", f"checkpoint_dir={old}",
                               "--set", f"output_dir={work / 'old-runs'}"], capsys)
    assert rc == 2 and len(errors) == 1 and "saved no best model" in errors[0], err
    assert not (work / "old-runs" / "run" / "results.json").exists()


# ---------------------------------------------------------------------------
# issue 12, CLI items
# ---------------------------------------------------------------------------


def test_evaluate_overrides_apply_to_the_stored_config(work, capsys):
    """(a) ``evaluate --set`` without ``--config`` changes the checkpoint's stored config."""
    out = work / "eval-set"
    assert cli.main(["evaluate", "-p", str(work / BEST), "-m", "quick", "-o", str(out),
                     "--set", "eval.sampled_seed=777", "--set", "eval.batch_size=7"]) == 0
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert cfg["eval"]["sampled_seed"] == 777 and cfg["eval"]["batch_size"] == 7
    assert cfg["model"]["dim"] == 8  # the rest is the stored config, not the defaults


def test_ablate_has_no_noop_flags(capsys):
    """(b) ``ablate --resume`` / ``--name`` are gone (the study always resumes)."""
    parser = cli.build_parser()
    for flag in (["--resume"], ["--name", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["ablate", *flag])


def test_run_training_wrapper_adapts_ablation_flags(tmp_path):
    """(b) ``scripts/run_training.sh --mode ablation --resume --name N`` -> ``ablate
    --output-dir runs/N`` (no --resume); train keeps both flags."""
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    fake = tmp_path / ".venv" / "bin" / "marl-two-tower"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)

    def wrapper(*args: str) -> str:
        return subprocess.run(["bash", str(tmp_path / "scripts" / "run_training.sh"), *args],
                              capture_output=True, text=True, check=True,
                              env={**os.environ}).stdout.strip()

    assert wrapper("--mode", "ablation", "--resume", "--name", "exp1", "--seeds", "2") == \
        "ablate --output-dir runs/exp1 --seeds 2"
    assert wrapper("--mode", "full", "--resume", "--name", "exp1") == \
        "train --mode full --resume --name exp1"


def test_generate_exact_lengths_default_is_the_config(monkeypatch, tmp_path, capsys):
    """(c) one default for ``exact_lengths``: the config's."""
    seen = []

    def fake_write(cfg, path, log=None):
        seen.append(cfg)
        return {"path": path, "n_users": cfg.n_users, "n_items": cfg.n_items, "n_interactions": 0,
                "row_groups": 0, "bytes": 0, "seconds": 0.0}

    import marl_two_tower.data.synthetic_parquet as sp

    monkeypatch.setattr(sp, "write_synthetic_parquet", fake_write)
    out = str(tmp_path / "g.parquet")
    for flags, want in (([], SyntheticConfig().exact_lengths), (["--exact-lengths"], True),
                        (["--no-exact-lengths"], False)):
        assert cli.main(["generate", "--users", "5", "--items", "5", "--output", out, *flags]) == 0
        assert seen[-1].exact_lengths is want


def test_data_and_download_errors_are_user_errors() -> None:
    """DataError and DownloadError derive from UserError (and keep their old bases for
    callers that catch those), so cli.main needs no special case for them."""
    from marl_two_tower.cli.main import USER_ERRORS
    from marl_two_tower.data.download import DownloadError
    from marl_two_tower.data.errors import DataError
    from marl_two_tower.errors import UserError

    assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)
    assert issubclass(DownloadError, UserError) and issubclass(DownloadError, RuntimeError)
    assert DownloadError not in USER_ERRORS and DataError not in USER_ERRORS
    assert str(DataError("f.csv", "bad value", line=3)) == "f.csv:3: bad value"

"""Every flag of every command has help text and shows its default; ``--version``;
the smoke-run flag of ``scripts/run_training.sh`` (issue 16, point 7)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from marl_two_tower import __version__
from marl_two_tower.cli import main as cli

REPO = Path(__file__).resolve().parent.parent


def _parsers(parser: argparse.ArgumentParser, path: str = "marl-two-tower"):
    """(command path, parser) of the top parser and every subcommand, recursively."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _documented_actions():
    for path, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                yield path, parser, action


def test_there_are_many_commands_and_flags():
    """The walk below sees every subcommand (a walk that found nothing would pass)."""
    paths = {p for p, _ in _parsers(cli.build_parser())}
    assert {"marl-two-tower train", "marl-two-tower evaluate", "marl-two-tower generate",
            "marl-two-tower download", "marl-two-tower demo", "marl-two-tower ablate",
            "marl-two-tower serve", "marl-two-tower metrics"} <= paths
    assert sum(1 for _ in _documented_actions()) > 100


@pytest.mark.parametrize("path, parser, action",
                         [pytest.param(p, s, a, id=f"{p} {'/'.join(a.option_strings) or a.dest}")
                          for p, s, a in _documented_actions()])
def test_every_flag_has_help_and_shows_its_default(path, parser, action):
    assert action.help and action.help.strip(), f"{path}: {action.option_strings or action.dest}"
    formatter = parser._get_formatter()
    text = formatter._expand_help(action) if action.help else ""
    d = action.default
    if action.option_strings and d not in (None, False, [], argparse.SUPPRESS):
        assert "default" in text.lower(), f"{path} {action.option_strings}: {text!r}"
        assert str(d) in text or "default:" in text.lower(), text


def test_help_shows_defaults_in_the_rendered_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 1000000)" in out and "(default: 7)" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"marl-two-tower {__version__}"


def test_log_level_and_quiet_flags():
    from marl_two_tower.cli.common import log_level

    p = cli.build_parser()
    assert log_level(p.parse_args(["train"])) == 20
    assert log_level(p.parse_args(["train", "-q"])) == 30
    assert log_level(p.parse_args(["-v", "evaluate", "-p", "x.pt"])) == 10
    assert log_level(p.parse_args(["train", "-q", "--log-level", "debug"])) == 10
    assert log_level(p.parse_args(["demo", "--log-level", "ERROR"])) == 40
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--log-level", "LOUD"])


def test_run_training_max_steps_smoke_flag(tmp_path):
    """``--max-steps N`` = ``--set train.max_steps_per_epoch=N`` (train and ablate)."""
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    fake = tmp_path / ".venv" / "bin" / "marl-two-tower"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)

    def wrapper(*args: str) -> str:
        return subprocess.run(["bash", str(tmp_path / "scripts" / "run_training.sh"), *args],
                              capture_output=True, text=True, check=True,
                              env={**os.environ}).stdout.strip()

    assert wrapper("--mode", "full", "--max-steps", "5") == \
        "train --mode full --set train.max_steps_per_epoch=5"
    assert wrapper("--mode", "ablation", "--max-steps", "3") == \
        "ablate --set train.max_steps_per_epoch=3"
    assert "--max-steps N" in wrapper("--help")

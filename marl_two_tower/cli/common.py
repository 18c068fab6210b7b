"""Pieces shared by the CLI commands: config arguments and the --no-X component flags."""

from __future__ import annotations

import argparse

from marl_two_tower.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``-c/--config`` and the repeatable ``--set KEY=VALUE`` of every config-driven command."""
    p.add_argument("-c", "--config", help="YAML config (a bare name resolves in configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=1e-3 (repeatable)")


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """The config of ``-c`` with the ``--set`` overrides, then ``extra`` ones, applied."""
    return load_config(args.config, list(args.overrides) + (extra or []))


NO_FLAGS = {"no_context_gnn": "context_gnn", "no_marl": "marl",
             "no_fair_sampling": "fair_sampler", "no_buhs": "buhs",
             "no_gini_agent": "gini", "no_tail_loss": "tail_loss",
             "no_exposure_budget": "exposure_budget"}

"""Pieces shared by the CLI commands: config arguments, output/logging flags, the help
formatter and the --no-X component flags."""

from __future__ import annotations

import argparse
import logging

from marl_two_tower.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``-c/--config`` and the repeatable ``--set KEY=VALUE`` of every config-driven command."""
    p.add_argument("-c", "--config", help="YAML config (a bare name resolves in configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=1e-3 (repeatable)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, ``(default: X)``, unless the help
    already states it or there is nothing to state (a flag that is off unless given, or
    ``None``, whose help says what applies instead, e.g. the config's value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if ("default" in text.lower() or d is None or d is False or d == []
                or d is argparse.SUPPRESS or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``--log-level`` of the commands that train or evaluate."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars and no per-epoch lines; log warnings and errors only "
                        "(unless --log-level says otherwise)")
    p.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper,
                   help="logging level (default: INFO, WARNING with --quiet, DEBUG with -v)")


def log_level(args: argparse.Namespace) -> int:
    """The logging level the flags ask for: ``--log-level``, else DEBUG for ``-v``,
    WARNING for ``--quiet``, INFO otherwise."""
    if getattr(args, "log_level", None):
        return getattr(logging, args.log_level)
    if getattr(args, "verbose", False):
        return logging.DEBUG
    return logging.WARNING if getattr(args, "quiet", False) else logging.INFO


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """The config of ``-c`` with the ``--set`` overrides, then ``extra`` ones, applied."""
    return load_config(args.config, list(args.overrides) + (extra or []))


NO_FLAGS = {"no_context_gnn": "context_gnn", "no_marl": "marl",
             "no_fair_sampling": "fair_sampler", "no_buhs": "buhs",
             "no_gini_agent": "gini", "no_tail_loss": "tail_loss",
             "no_exposure_budget": "exposure_budget"}

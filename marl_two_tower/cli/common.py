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


# Shortcut flags of `train` and `ablate` (and the seed's run_training.sh) -> config keys.
TRAIN_FLAGS = (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("lr", "train.lr"),
               ("device", "train.device"), ("mixed_precision", "train.mixed_precision"))


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """``--epochs``, ``--batch-size``, ``--lr``, ``--device``, ``--mixed-precision``: each one
    a shortcut for ``--set`` of its config key (:data:`TRAIN_FLAGS`)."""
    p.add_argument("--epochs", type=int, help="= --set train.epochs (default: the config's)")
    p.add_argument("--batch-size", type=int,
                   help="= --set train.batch_size (default: the config's)")
    p.add_argument("--lr", type=float, help="= --set train.lr (default: the config's)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's)")
    p.add_argument("--mixed-precision", choices=["none", "bf16", "fp16"],
                   help="autocast dtype, = --set train.mixed_precision (default: the config's)")


def flag_overrides(args: argparse.Namespace, flags: tuple[tuple[str, str], ...]) -> list[str]:
    """``key=value`` overrides of the shortcut flags in ``flags`` that were given."""
    return [f"{key}={getattr(args, flag)}" for flag, key in flags if getattr(args, flag) is not None]


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """The config of ``-c`` with the ``--set`` overrides, then ``extra`` ones, applied."""
    return load_config(args.config, list(args.overrides) + (extra or []))


NO_FLAGS = {"no_context_gnn": "context_gnn", "no_marl": "marl",
             "no_fair_sampling": "fair_sampler", "no_buhs": "buhs",
             "no_gini_agent": "gini", "no_tail_loss": "tail_loss",
             "no_exposure_budget": "exposure_budget"}

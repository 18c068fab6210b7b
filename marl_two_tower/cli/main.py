"""Command-line interface: ``marl-two-tower <command> --help``.

Commands mirror the workflow: ``download`` -> ``train`` -> ``evaluate`` -> ``report``;
``metrics`` scores recommendation lists produced elsewhere; ``demo`` runs the whole
job offline on the embedded synthetic dataset.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from marl_two_tower import __version__
from marl_two_tower.cli.common import (
    NO_FLAGS,
    TRAIN_FLAGS,
    HelpFormatter,
    add_config_args,
    add_output_args,
    add_train_flags,
    config_from_args,
    flag_overrides,
    log_level,
)
from marl_two_tower.errors import UserError

# What a user can fix: printed as one ``error:`` line, exit status 2. UserError covers
# ConfigError, CheckpointError/CheckpointMismatch, UsageError, DataError and
# DownloadError; OSError = a file or folder the user named; ValueError and
# NotImplementedError = a value or combination the code refuses outside those types.
# Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError, ValueError,
                                                NotImplementedError)


def cmd_train(args: argparse.Namespace) -> int:
    from marl_two_tower.study.run import train_and_evaluate
    from marl_two_tower.utils import distributed

    extra = flag_overrides(args, (*TRAIN_FLAGS, ("name", "name"), ("seed", "seed")))
    extra += _component_overrides(args)
    cfg = config_from_args(args, extra)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # spawn the ranks; each re-enters here
        distributed.launch(_train_rank, args.nproc, args)
        return 0
    ctx = distributed.init_from_env(cfg.train.device)  # None unless torchrun / --nproc set WORLD_SIZE
    try:
        _, doc = train_and_evaluate(cfg, resume=args.resume, progress=not args.quiet)
    finally:
        distributed.shutdown()
    if ctx is None or ctx.is_main:
        _print_summary(doc)
        print(f"results: {Path(cfg.output_dir) / cfg.name}/results.json; "
              f"checkpoint: {doc['extra']['checkpoint']}")
    return 0


def _train_rank(args: argparse.Namespace) -> None:
    """One spawned process of ``train --nproc N`` (distributed.launch sets its rank)."""
    logging.basicConfig(level=log_level(args), format="%(levelname)s %(name)s: %(message)s")
    cmd_train(args)


# --no-X flags of scripts/run_training.sh -> config sections.


def _component_overrides(args: argparse.Namespace) -> list[str]:
    """``--mode full`` switches every component on, ``baseline`` all off; ``--no-X``
    then switches X off."""
    from marl_two_tower.model.build import COMPONENTS

    out = []
    if args.mode == "full":
        out += [f"{name}.enabled=true" for name in COMPONENTS]
    elif args.mode == "baseline":
        out += [f"{name}.enabled=false" for name in COMPONENTS]
    for flag, name in NO_FLAGS.items():
        if getattr(args, flag):
            out.append(f"{name}.enabled=false")
    return out


# evaluate -m MODE -> (protocol, per-group fairness)
_EVAL_MODES = {"comprehensive": ("both", True), "quick": ("full", False),
               "fairness": ("full", True)}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from marl_two_tower.config import TrainConfig, check_device
    from marl_two_tower.eval import modes as eval_modes
    from marl_two_tower.eval.scorers import part_scorers
    from marl_two_tower.model.build import load_trained
    from marl_two_tower.study.results import build_results, write_results
    from marl_two_tower.study.run import check_output_folder, evaluate_model
    from marl_two_tower.utils.runtime import apply_threads

    check_device(args.device, "--device")
    if args.output:
        check_output_folder(args.output, "--output")
    # the checkpoint's own config; -c and --set change evaluation settings only
    cfg = evaluation_config(args.checkpoint, args.config, args.overrides)
    # threads of this run, not of the training run: a stored config keeps its own value
    # (old checkpoints: 0 = all cores), so only -c or --set train.num_threads=N chooses
    apply_threads(cfg.train.num_threads if args.config or any(
        o.split("=", 1)[0].strip() == "train.num_threads" for o in args.overrides)
        else TrainConfig.num_threads)
    model, _, split = load_trained(args.checkpoint, cfg, device=args.device)
    device = next(model.parameters()).device
    score_fn = part_scorers(model, split, cfg, device)["test"]  # eval.test_history
    metrics: dict = {}
    if args.mode in _EVAL_MODES:
        protocol, groups = _EVAL_MODES[args.mode]
        metrics["test"] = evaluate_model(split, score_fn, cfg, "test", protocol=protocol,
                                         groups=groups)
    if args.mode in ("agents", "comprehensive"):
        metrics["agents"] = eval_modes.agent_breakdown(model, cfg, split, device)
    if args.mode in ("inference", "comprehensive"):
        metrics["latency"] = _latency(model, cfg, split, args.checkpoint)
    if args.statistical_test is not None:
        metrics["significance"] = eval_modes.statistical_test(score_fn, args.statistical_test,
                                                              split, cfg, args.device)
    doc = build_results(cfg, split, metrics, extra={"checkpoint": str(args.checkpoint),
                                                    "mode": args.mode})
    out = Path(args.output) if args.output else Path(cfg.output_dir) / f"{cfg.name}-eval"
    write_results(out, doc)
    if args.format == "json":
        (out / "results.csv").unlink()
    elif args.format == "csv":
        (out / "results.json").unlink()
    _print_summary(doc)
    print(eval_modes.format_sections(metrics))
    print(f"results: {out}/")
    return 0


def _latency(model, cfg, split, checkpoint: str | Path) -> dict:
    """``-m inference``: the tower path and the serving path (a :class:`Recommender`
    over the model's precomputed vectors and the configured index) timed alike."""
    from marl_two_tower.eval import modes as eval_modes
    from marl_two_tower.serving.export import bundle_from_model
    from marl_two_tower.serving.recommender import Recommender

    k = 10
    rec = Recommender(bundle_from_model(model, cfg, split, source=str(checkpoint)), cfg.serving)
    return eval_modes.inference_latency(
        model, split, k=k, batch_size=cfg.eval.batch_size,
        serving=lambda users: rec.recommend(users, k), serving_info={"index": rec.index.describe()})


# Settings `evaluate` may change on a checkpoint: how it is evaluated, on which data
# (the data fingerprint must still match), where results go. Everything else (model,
# loss, training, components) is rebuilt from the checkpoint's own config.
EVALUATION_SECTIONS = ("eval", "serving", "exposure_budget", "data")
EVALUATION_KEYS = ("name", "output_dir", "checkpoint_dir", "train.device", "train.num_threads",
                   "train.tensorboard")


def _leaves(data: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested dict (``{"a": {"b": 1}}`` -> ``["a.b"]``)."""
    out = []
    for k, v in data.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def _get(data: dict, key: str):
    for part in key.split("."):
        data = data[part]
    return data


def _set(data: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for part in path:
        data = data[part]
    data[last] = value


def is_evaluation_key(key: str) -> bool:
    """Whether ``evaluate`` takes ``key`` (dotted) from ``-c``/``--set`` rather than
    from the checkpoint."""
    return key in EVALUATION_KEYS or key.split(".", 1)[0] in EVALUATION_SECTIONS


def evaluation_config(checkpoint: str | Path, config: str | Path | None = None,
                      overrides: list[str] | None = None):
    """The config ``evaluate`` runs a checkpoint under: the checkpoint's stored config
    (model, training and component settings, so the model is rebuilt as trained and
    train's report and evaluate's report of it agree), with the evaluation settings
    (:func:`is_evaluation_key`) that the ``-c`` file or ``--set`` give explicitly
    (a key the file does not mention keeps the checkpoint's value, not the default).

    A key the user set that the checkpoint fixes is refused with a
    :class:`~marl_two_tower.config.ConfigError` naming it when it is a component
    switch (``<component>.enabled``, from either source) or comes from ``--set`` and
    differs from the checkpoint's value; the ``-c`` file's other such keys (a training
    file's epochs, batch size, ...) are ignored, and logged."""
    import json

    from marl_two_tower import checkpoint as ckpt_io
    from marl_two_tower.config import (
        ConfigError,
        apply_overrides,
        config_from_dict,
        load_yaml,
        parse_override,
    )
    from marl_two_tower.model.build import COMPONENTS

    ck = ckpt_io.load(checkpoint)
    try:
        stored = config_from_dict(json.loads(ck["config"]))
    except (TypeError, ValueError) as exc:
        raise ckpt_io.CheckpointError(f"{checkpoint}: unreadable stored config ({exc})") from None
    file_data = load_yaml(config) if config else {}
    user = config_from_dict(apply_overrides(file_data, overrides)).to_dict()  # types + ranges
    set_keys = {k for o in overrides or [] for k in _leaves(parse_override(o))}
    merged, have, ignored = stored.to_dict(), stored.to_dict(), []
    switches = {f"{c}.enabled" for c in COMPONENTS}
    for key in sorted(set(_leaves(file_data)) | set_keys):
        value = _get(user, key)
        if is_evaluation_key(key):
            _set(merged, key, value)
        elif value != _get(have, key):
            if key in switches or key in set_keys:
                src = "--set" if key in set_keys else f"-c {config}"
                raise ConfigError(
                    f"{key}: {src} asks for {value!r}, but {checkpoint} was trained with "
                    f"{_get(have, key)!r}; evaluate rebuilds the model and its components from "
                    "the checkpoint, only evaluation settings (eval.*, serving.*, "
                    "exposure_budget.*, data.*, name, output_dir, train.device) may change")
            ignored.append(key)
    if ignored:
        logging.getLogger(__name__).info(
            "evaluate: the checkpoint's own values are used for %s (set in %s)",
            ", ".join(ignored), config)
    return config_from_dict(merged)

def cmd_download(args: argparse.Namespace) -> int:
    from marl_two_tower.data.download import download

    path = download(args.name, root=args.root, force=args.force)
    print(path)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from marl_two_tower.config import SyntheticConfig, validate
    from marl_two_tower.data.synthetic_parquet import write_synthetic_parquet

    cfg = SyntheticConfig(n_users=args.users, n_items=args.items,
                          interactions_per_user=args.interactions_per_user, n_genres=args.genres,
                          seed=args.seed)
    if args.exact_lengths is not None:  # default: the config's data.synthetic.exact_lengths
        cfg.exact_lengths = args.exact_lengths
    validate(cfg, "data.synthetic.")
    info = write_synthetic_parquet(cfg, args.output,
                                   log=None if args.quiet else lambda m: print(m, file=sys.stderr))
    print(f"{info['path']}: {info['n_users']} users, {info['n_items']} items, "
          f"{info['n_interactions']} interactions, {info['row_groups']} row groups, "
          f"{info['bytes'] / 2**20:.0f} MiB in {info['seconds']:.0f}s "
          f"(load with --set data.source=parquet --set data.path={info['path']})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from marl_two_tower.study.demo import run_demo

    run_demo(Path(args.output_dir), quick=args.quick, progress=not args.quiet, jobs=args.jobs)
    return 0


def _print_summary(doc: dict) -> None:
    test = doc["metrics"].get("test", {})
    full = test.get("full", {})
    keys = ["HR@10", "NDCG@10", "MRR", "Coverage@10", "Gini@10", "TailHR@10", "Redundancy@10"]
    print(" | ".join(f"{k} {full[k]:.4f}" for k in keys if isinstance(full.get(k), float)))
    if "sampled" in test:
        print(f"sampled HR@10 {test['sampled'].get('HR@10', float('nan')):.4f}")


def _synthetic_default(key: str = "exact_lengths"):
    """A default of the synthetic generator's config (one source of defaults)."""
    from marl_two_tower.config import SyntheticConfig

    return getattr(SyntheticConfig(), key)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(prog="marl-two-tower", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback behind an error: line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model, then evaluate it once on test")
    add_config_args(p)
    add_train_flags(p)
    p.add_argument("--name", help="run name: results in <output_dir>/<name>/, checkpoints in "
                                  "checkpoints/<name>/ (default: the config's name)")
    p.add_argument("--seed", type=int, help="the one seed of the run (default: the config's seed)")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (DDP: gloo on CPU, nccl on CUDA); "
                        "train.batch_size is the global batch; torchrun launches work too")
    p.add_argument("--resume", action="store_true",
                   help="continue from <checkpoint_dir>/last.pt (the same run name)")
    p.add_argument("--mode", choices=["config", "full", "baseline"], default="config",
                   help="full = every component on, baseline = plain two-tower, "
                        "config = as the config says (default)")
    for flag in NO_FLAGS:
        p.add_argument("--" + flag.replace("_", "-"), action="store_true",
                       help=f"switch {NO_FLAGS[flag]} off")
    add_output_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test split")
    add_config_args(p)
    p.add_argument("-p", "--checkpoint", required=True,
                   help="training checkpoint (model_best.pt); the model and its components "
                        "are rebuilt from the config stored in it")
    p.add_argument("-m", "--mode", default="comprehensive",
                   choices=["comprehensive", "quick", "fairness", "agents", "inference"],
                   help="comprehensive = both protocols + group fairness + per-agent "
                        "breakdown + latency; quick = full ranking only; fairness = full "
                        "ranking + per-group HR; agents = genre agents' mean action and "
                        "reward; inference = latency p50/p95/p99 and throughput")
    p.add_argument("-f", "--format", choices=["json", "csv", "both"], default="both",
                   help="results files to write")
    p.add_argument("--statistical-test", metavar="BASELINE_CKPT",
                   help="paired Wilcoxon/t-tests, bootstrap CIs and effect sizes against "
                        "a baseline checkpoint (two-tower or saved baseline)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("-o", "--output", help="output folder for results.json/csv "
                                          "(default: <output_dir>/<name>-eval)")
    add_output_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("download", help="fetch a MovieLens archive (checksum-verified)")
    p.add_argument("name", choices=["ml-100k", "ml-1m"], help="dataset to fetch")
    p.add_argument("--root", default="data",
                   help="folder that receives the archive and <root>/<name>/")
    p.add_argument("--force", action="store_true",
                   help="download and unpack again over a folder this command made")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("generate", help="write the synthetic dataset to Parquet (streamed, any size)")
    p.add_argument("--users", type=int, default=1_000_000,
                   help="number of users (the scale benchmark's size; the demo uses 1500)")
    p.add_argument("--items", type=int, default=100_000, help="number of items")
    p.add_argument("--interactions-per-user", type=float,
                   default=_synthetic_default("interactions_per_user"),
                   help="mean history length (default: data.synthetic.interactions_per_user "
                        f"= {_synthetic_default('interactions_per_user')})")
    p.add_argument("--genres", type=int, default=_synthetic_default("n_genres"),
                   help=f"number of genres (default: data.synthetic.n_genres = "
                        f"{_synthetic_default('n_genres')})")
    p.add_argument("--seed", type=int, default=7, help="generator seed")
    p.add_argument("--exact-lengths", action=argparse.BooleanOptionalAction, default=None,
                   help="redraw repeated (user, item) draws so histories have their drawn "
                        "length; --no-exact-lengths keeps first occurrences only (default: "
                        f"data.synthetic.exact_lengths = {str(_synthetic_default()).lower()})")
    p.add_argument("--output", required=True, help="interactions file (.parquet); side tables "
                                                   "<stem>.items.parquet / <stem>.users.parquet")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-chunk progress")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="train + evaluate + report on the embedded synthetic data")
    p.add_argument("--output-dir", default="runs/demo",
                   help="folder of the demo's run folders, summary and report")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--jobs", type=int, default=2,
                   help="processes (one torch thread each): 2 trains the full model beside "
                        "the other runs where there are two cores or more, 1 runs "
                        "everything in turn; same numbers (default: %(default)s)")
    add_output_args(p)
    p.set_defaults(func=cmd_demo)

    try:
        from marl_two_tower.eval.external import add_metrics_subparser
    except ImportError:  # pragma: no cover - evaluation is part of the package
        pass
    else:
        add_metrics_subparser(sub)

    from marl_two_tower.cli.study import add_subparsers as add_study_subparsers  # ablate, report, simulate

    add_study_subparsers(sub)

    from marl_two_tower.serving.commands import add_subparsers as add_serving_subparsers

    add_serving_subparsers(sub)
    for sp in sub.choices.values():  # every subcommand shows its defaults
        sp.formatter_class = HelpFormatter
    return parser


def error_message(exc: BaseException) -> str:
    """The one-line text of a user error (an OSError as ``path: reason``)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
        if exc.filename2:
            text += f" ({exc.filename2})"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``marl-two-tower`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level(args), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.verbose:  # -v: the traceback too, for bug reports
            logging.exception("traceback of the error below")
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Command-line interface: ``marl-two-tower <command> --help``.

Commands mirror the workflow: ``download`` -> ``train`` -> ``evaluate`` -> ``report``;
``metrics`` scores recommendation lists produced elsewhere; ``demo`` runs the whole
job offline on the embedded synthetic dataset.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config (a bare name resolves in configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=1e-3 (repeatable)")


def _config(args: argparse.Namespace, extra: list[str] | None = None):
    return load_config(args.config, list(args.overrides) + (extra or []))


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import train_and_evaluate

    extra = []
    for flag, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("lr", "train.lr"), ("device", "train.device"),
                      ("mixed_precision", "train.mixed_precision"), ("name", "name"),
                      ("seed", "seed")):
        val = getattr(args, flag)
        if val is not None:
            extra.append(f"{key}={val}")
    cfg = _config(args, extra)
    _, doc = train_and_evaluate(cfg, resume=args.resume, progress=not args.quiet)
    _print_summary(doc)
    print(f"results: {Path(cfg.output_dir) / cfg.name}/results.json; "
          f"checkpoint: {Path(cfg.checkpoint_dir) / 'model_best.pt'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .pipeline import evaluate_model, load_trained
    from .results import build_results, write_results

    cfg = _config(args) if args.config else None
    model, stored, split = load_trained(args.checkpoint, cfg, device=args.device)
    cfg = cfg or stored
    score_fn = model.scorer()
    metrics = {"test": evaluate_model(split, score_fn, cfg, "test", protocol=args.protocol)}
    doc = build_results(cfg, split, metrics, extra={"checkpoint": str(args.checkpoint)})
    out = Path(args.output) if args.output else Path(cfg.output_dir) / f"{cfg.name}-eval"
    write_results(out, doc)
    _print_summary(doc)
    print(f"results: {out}/results.json")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data.download import download

    path = download(args.name, root=args.root, force=args.force)
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.output_dir), quick=args.quick)
    return 0


def _print_summary(doc: dict) -> None:
    test = doc["metrics"].get("test", {})
    full = test.get("full", {})
    keys = ["HR@10", "NDCG@10", "MRR", "Coverage@10", "Gini@10", "TailHR@10", "Redundancy@10"]
    print(" | ".join(f"{k} {full[k]:.4f}" for k in keys if isinstance(full.get(k), float)))
    if "sampled" in test:
        print(f"sampled HR@10 {test['sampled'].get('HR@10', float('nan')):.4f}")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(prog="marl-two-tower", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model, then evaluate it once on test")
    _add_config_args(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--mixed-precision", choices=["none", "bf16", "fp16"])
    p.add_argument("--name", help="run name (results in <output_dir>/<name>/)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from <checkpoint_dir>/last.pt")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test split")
    _add_config_args(p)
    p.add_argument("-p", "--checkpoint", required=True)
    p.add_argument("--protocol", choices=["full", "sampled", "both"], default="both")
    p.add_argument("--device", default="auto")
    p.add_argument("-o", "--output", help="output folder for results.json/csv")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("download", help="fetch a MovieLens archive (checksum-verified)")
    p.add_argument("name", choices=["ml-100k", "ml-1m"])
    p.add_argument("--root", default="data")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("demo", help="train + evaluate + report on the embedded synthetic data")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.set_defaults(func=cmd_demo)

    try:
        from .evaluation import add_metrics_subparser
    except ImportError:  # pragma: no cover - evaluation is part of the package
        pass
    else:
        add_metrics_subparser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``marl-two-tower`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

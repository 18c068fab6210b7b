"""``marl-two-tower export`` and ``marl-two-tower serve``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module to build its parser: keep that light
    from marl_two_tower.serving.recommender import Recommender

log = logging.getLogger(__name__)


def build_recommender(bundle: str | None = None, checkpoint: str | None = None,
                      overrides: list[str] | None = None) -> Recommender:
    """A :class:`Recommender` from a bundle folder or straight from a training
    checkpoint; ``overrides`` (``key=value``) apply to the stored config, e.g.
    ``serving.ivf_nprobe=32`` or, for a checkpoint, ``data.path=...``."""
    from marl_two_tower.config import with_overrides
    from marl_two_tower.serving.export import bundle_from_model, load_bundle
    from marl_two_tower.serving.recommender import Recommender

    if (bundle is None) == (checkpoint is None):
        raise ValueError("give exactly one of --bundle and --checkpoint")
    if bundle is not None:
        b = load_bundle(bundle)
        b.cfg = with_overrides(b.cfg, overrides)
    else:
        from marl_two_tower.serving.export import load_checkpoint_for_serving

        model, cfg, split = load_checkpoint_for_serving(checkpoint, overrides)
        b = bundle_from_model(model, cfg, split, source=str(checkpoint))
    return Recommender(b, b.cfg.serving)


def display_name(path: str) -> str:
    """What ``/health`` calls a bundle or checkpoint: its folder or file name, never the
    path (``bundles/ml100k/`` and ``bundles/ml100k/bundle.pt`` -> ``ml100k``)."""
    from pathlib import Path

    from marl_two_tower.serving.export import BUNDLE_FILE

    p = Path(path).resolve()
    return p.parent.name if p.name == BUNDLE_FILE else p.name


def cmd_export(args: argparse.Namespace) -> int:
    from marl_two_tower.serving.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, args.overrides, include_model=not args.no_model)
    print(f"bundle: {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import faiss
    import torch

    from marl_two_tower.config import AT_LEAST_1, CHECKS, ServingConfig
    from marl_two_tower.serving.service import create_app, run

    # flags first: a bad value must not wait for the bundle to load
    AT_LEAST_1(args.threads, "--threads")
    AT_LEAST_1(args.workers, "--workers")
    if args.port is not None:
        CHECKS[ServingConfig]["port"](args.port, "--port")
    # one request is a few small matrix products: extra threads only add contention
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rec = build_recommender(args.bundle, args.checkpoint, args.overrides)
    cfg = rec.cfg
    host = args.host or cfg.host
    port = args.port if args.port is not None else cfg.port
    log.info("serving %s (%d users, %d items, index %s) on http://%s:%d%s", rec.bundle.source,
             rec.bundle.n_users, rec.bundle.n_items, rec.index.describe(), host, port,
             f" with {args.workers} worker processes" if args.workers > 1 else "")
    name = display_name(args.bundle or args.checkpoint)
    if args.workers > 1:  # every worker builds its own recommender (app_from_env)
        del rec
        os.environ[WORKER_ENV] = json.dumps({"bundle": args.bundle, "checkpoint": args.checkpoint,
                                             "overrides": list(args.overrides), "threads": args.threads,
                                             "name": name})
        run(f"{__name__}:app_from_env", host=host, port=port, access_log=args.access_log,
            workers=args.workers)
        return 0
    run(create_app(rec, cfg, name=name), host=host, port=port, access_log=args.access_log)
    return 0


# environment variable through which `serve --workers N` hands its settings to the workers
WORKER_ENV = "MARL_TWO_TOWER_SERVE_WORKER"


def app_from_env():
    """The app of one worker process of ``serve --workers N``: the recommender built
    from the bundle or checkpoint, overrides and thread count that ``serve`` put in
    :data:`WORKER_ENV` (uvicorn's workers are fresh processes that import this)."""
    import faiss
    import torch

    from marl_two_tower.serving.service import create_app

    spec = json.loads(os.environ[WORKER_ENV])
    torch.set_num_threads(spec["threads"])
    faiss.omp_set_num_threads(spec["threads"])
    rec = build_recommender(spec["bundle"], spec["checkpoint"], spec["overrides"])
    return create_app(rec, rec.cfg, name=spec["name"])


def add_subparsers(sub) -> None:
    """Register ``export`` and ``serve`` on the CLI's subparser set."""
    p = sub.add_parser("export", help="export a checkpoint to a serving bundle")
    p.add_argument("-p", "--checkpoint", required=True, help="training checkpoint (model_best.pt)")
    p.add_argument("-o", "--out", required=True, help="bundle folder to write")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a stored config key, e.g. data.path=... (repeatable)")
    p.add_argument("--no-model", action="store_true",
                   help="omit the model state (vectors only; no re-scoring hooks)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP recommendation API (FastAPI + uvicorn)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="serving bundle folder (from `export`)")
    src.add_argument("--checkpoint", help="training checkpoint (the data must be loadable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. serving.ivf_nprobe=32 (repeatable)")
    p.add_argument("--host", default=None, help="bind address (default serving.host = 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default serving.port = 8000)")
    p.add_argument("--threads", type=int, default=1, help="torch/FAISS threads per process (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes, each with its own copy of the model (default 1)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

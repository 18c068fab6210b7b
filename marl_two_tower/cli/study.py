"""Subcommands of the study workflow: ``ablate`` -> ``report`` -> ``simulate``.

* ``marl-two-tower ablate [--config C] [--seeds 3] [--output-dir runs/ablation] [--set k=v]``
  runs (or finishes) the six-variant ablation study (:mod:`marl_two_tower.ablation`);
* ``marl-two-tower report RUN_DIR... [--output DIR]`` renders tables and plots from run
  folders (:mod:`marl_two_tower.report`);
* ``marl-two-tower simulate`` turns measured deltas into a SIMULATED business impact
  (:mod:`marl_two_tower.business`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def cmd_ablate(args: argparse.Namespace) -> int:
    from marl_two_tower.cli.common import NO_FLAGS, TRAIN_FLAGS, config_from_args, flag_overrides
    from marl_two_tower.study.ablation import run_study
    from marl_two_tower.study.variants import VARIANTS

    cfg = config_from_args(args, flag_overrides(args, (*TRAIN_FLAGS, ("seed", "seed"))))
    exclude = [comp for flag, comp in NO_FLAGS.items() if getattr(args, flag)]
    only = None
    if args.variants:
        only = args.variants.split(",")
        unknown = sorted(set(only) - {v.key for v in VARIANTS})
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; known: {[v.key for v in VARIANTS]}")
    seeds = [cfg.seed + i for i in range(args.seeds)]
    out = Path(args.output_dir)
    t0 = time.perf_counter()
    run_study(cfg, seeds, out, exclude=exclude, only=only, baselines=not args.no_baselines,
              progress=not args.quiet)
    print((out / "report" / "ablation.md").read_text())
    print(f"study: {out}/study.json; report: {out}/report/ (wall {time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from marl_two_tower.study.report import markdown, write_report

    out = Path(args.output) if args.output else Path(args.run_dirs[0]) / "report"
    doc = write_report(args.run_dirs, out, base=args.base, k=args.k, n_boot=args.n_boot)
    print(markdown(doc))
    print(f"report: {out}/ (ablation.json, ablation.csv, ablation.md, *.png)")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from marl_two_tower.study.business import (
        MetricDeltas,
        deltas_from_report,
        deltas_from_runs,
        format_text,
        load_business_config,
        simulate,
        write_simulation,
    )

    cfg = load_business_config(args.config, args.overrides)
    given = [args.delta_hr, args.delta_coverage, args.delta_tail_hr]
    if args.report:
        deltas = deltas_from_report(args.report, args.variant, cfg.k)
    elif args.base or args.candidate:
        if not (args.base and args.candidate):
            raise ValueError("--base and --candidate go together")
        deltas = deltas_from_runs(args.base, args.candidate, cfg.k)
    elif all(v is not None for v in given):
        deltas = MetricDeltas(*given, source="command line")
    else:
        raise ValueError("give the measured deltas: --report ablation.json, --base/--candidate "
                         "run folders, or all of --delta-hr --delta-coverage --delta-tail-hr")
    res = simulate(cfg, deltas)
    print(format_text(res))
    if args.output:
        write_simulation(res, args.output)
        print(f"SIMULATED results: {args.output}/simulation.json")
    return 0


def add_subparsers(sub: argparse._SubParsersAction) -> None:
    """Register ``ablate``, ``report`` and ``simulate``."""
    from marl_two_tower.cli.common import NO_FLAGS, add_config_args, add_output_args, add_train_flags
    from marl_two_tower.study.variants import VARIANTS

    # no --resume (a study always resumes its finished and interrupted runs) and no
    # --name (runs are named <variant>/seed<S> inside --output-dir)
    p = sub.add_parser("ablate", help="run the six-variant ablation study (always resumes)")
    add_config_args(p)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds: seed, seed+1, ...")
    p.add_argument("--output-dir", default="runs/ablation", help="study folder")
    p.add_argument("--variants", help="comma-separated subset of "
                                      f"{','.join(v.key for v in VARIANTS)} (default: all)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip MostPop/ItemKNN/BPR/EASE (shown on the frontier plot)")
    add_train_flags(p)
    p.add_argument("--seed", type=int, help="first seed (default: the config's seed)")
    for flag, comp in NO_FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), action="store_true",
                       help=f"leave {comp} out of the whole study")
    add_output_args(p)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("report", help="ablation table (JSON/CSV/Markdown) and plots from runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="study folder, run folder, or folder of run folders")
    p.add_argument("--output", help="output folder (default: <first RUN_DIR>/report)")
    p.add_argument("--base", help="label or key of the reference (default: the Base variant)")
    p.add_argument("-k", type=int, help="cut-off of the tables and plots (default 10)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("simulate", help="SIMULATED business impact of measured metric deltas")
    p.add_argument("-c", "--config", default="business.yaml",
                   help="assumptions YAML (default configs/business.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an assumption, e.g. --set arpu_month=12 (repeatable)")
    p.add_argument("--report", help="ablation.json (or its folder): deltas of a variant vs Base")
    p.add_argument("--variant", help="variant label/key in the report (default: the full model)")
    p.add_argument("--base", help="run folder of the reference model")
    p.add_argument("--candidate", help="run folder of the new model")
    p.add_argument("--delta-hr", type=float, help="HR@K(new) - HR@K(reference)")
    p.add_argument("--delta-coverage", type=float, help="Coverage@K delta")
    p.add_argument("--delta-tail-hr", type=float, help="TailHR@K delta")
    p.add_argument("--output", help="write simulation.json and simulation.txt here")
    p.set_defaults(func=cmd_simulate)

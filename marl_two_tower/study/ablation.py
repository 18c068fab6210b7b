"""Ablation study (DESIGN §6): eight cumulative variants on the same data, split and seeds.

    Base two-tower -> +ContextGNN -> +MARL -> +Fair Sampler -> +BUHS -> +GINI loss
    -> +Tail loss -> +Exposure budget (= full)

Each variant switches on the components of the previous one plus its own. The GINI
training loss, the tail loss and the evaluation-time exposure budget are separate
steps (they were one "+GINI (full)" step before). A step that only adds
evaluation-time components (:data:`EVAL_ONLY_COMPONENTS`: the exposure budget) trains
nothing: its runs evaluate the ``model_best.pt`` of the latest earlier step with the
same trained components, seed by seed (:func:`study.run.evaluate_checkpoint`), so its
difference to that step is the budget alone, on the same models.

Exclusions. ``--no-X`` removes component X from the whole study: its own variant is
skipped (reported as *not available*), later variants run without it.

Layout of ``output_dir``::

    study.json                       manifest: variants, seeds, status, wall times
    <variant>/seed<S>/results.json   one run (results schema) + results.csv
    <variant>/seed<S>/per_user.npz   test lists and ranks (significance, plots)
    <variant>/seed<S>/checkpoints/   last.pt (resume) and model_best.pt
    baselines/<name>/...             MostPop, ItemKNN, BPR, EASE (for the frontier plot)
    report/                          ablation table (JSON, CSV, Markdown) and plots

Resumable: a run whose ``results.json`` exists with the same config is not retrained;
an interrupted run continues from its ``last.pt`` (the trainer's exact resume); a run
whose config changed since (e.g. a component landed, more epochs) is redone.

Parallel workers: several ``ablate`` processes may work on one study folder on one
machine. Each run is claimed with a lock file (``<run>/.lock`` holding the PID) and
its status is checked when it is claimed, so a run finished or in progress elsewhere
is skipped; a lock whose process is gone is taken over. A last plain ``ablate`` call
after the workers end writes the complete ``study.json`` and report.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.config import Config, config_from_dict, fingerprint_config
from marl_two_tower.data import load_split
from marl_two_tower.data.split import Split
from marl_two_tower.model.build import COMPONENTS, EVAL_ONLY_COMPONENTS
from marl_two_tower.study.results import git_commit, read_results
from marl_two_tower.study.variants import VARIANTS, Variant
from marl_two_tower.utils.io import write_text_atomic
from marl_two_tower.utils.runtime import interactive_output

log = logging.getLogger(__name__)

STUDY_SCHEMA = "marl-two-tower/ablation-study"
STUDY_SCHEMA_VERSION = 1






@dataclass
class PlannedVariant:
    """A variant resolved against the study's exclusions."""

    variant: Variant
    components: list[str]  # switched on in this variant's runs
    available: bool
    reason: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    # evaluation-only step: the key of the earlier variant whose checkpoints it evaluates
    evaluates: str | None = None


def plan_variants(variants: Sequence[Variant] = VARIANTS, exclude: Sequence[str] = (),
                  only: Sequence[str] | None = None) -> list[PlannedVariant]:
    """Resolve which variants can run and which components each switches on.

    ``exclude`` removes components from the whole study (``--no-buhs``): their own
    variant is skipped and later variants run without them. ``only`` (variant keys)
    keeps a subset; the cumulative stack is still built over all ``variants``, so
    ``only=["buhs"]`` runs BUHS on top of ContextGNN, MARL and the Fair Sampler.
    """
    out: list[PlannedVariant] = []
    stack: list[str] = []
    trained: dict[tuple[str, ...], str] = {}  # trained components -> latest variant key
    for v in variants:
        stack += [c for c in v.adds if c not in stack]
        on = [c for c in stack if c not in exclude]
        own_excluded = [c for c in v.adds if c in exclude]
        reason = f"excluded by --no-{own_excluded[0].replace('_', '-')}" if own_excluded else ""
        train_key = tuple(c for c in on if c not in EVAL_ONLY_COMPONENTS)
        evaluates = None
        if not reason and v.adds and all(c in EVAL_ONLY_COMPONENTS for c in v.adds):
            evaluates = trained.get(train_key)
        if not reason and evaluates is None:
            trained[train_key] = v.key
        if only is None or v.key in only:
            out.append(PlannedVariant(v, on, available=not reason, reason=reason,
                                      evaluates=evaluates))
    return out


def run_config(cfg: Config, pv: PlannedVariant, seed: int, output_dir: Path) -> Config:
    """The config of one (variant, seed) run: components, seed and folders set."""
    c = copy.deepcopy(cfg)
    for name in COMPONENTS:
        getattr(c, name).enabled = name in pv.components
    c.seed = seed
    c.name = f"seed{seed}"
    c.output_dir = str(output_dir / pv.variant.key)
    c.checkpoint_dir = str(output_dir / pv.variant.key / f"seed{seed}" / "checkpoints")
    return c


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """Config dict without the keys that do not change a run's numbers (a stored config
    of an older version is read through :func:`config_from_dict` first, so that its
    legacy keys mean what they meant then)."""
    d = config_from_dict(d).to_dict()
    for k in ("name", "output_dir", "checkpoint_dir"):
        d.pop(k, None)
    for k in ("device", "num_threads"):
        d.get("train", {}).pop(k, None)
    return d


def run_status(cfg: Config, split: Split, clean: bool = True) -> str:
    """'done' (finished with this config), 'resume' (compatible last.pt), or 'todo'.

    With ``clean`` (only while holding the run's lock) stale artefacts from another
    config or data are removed so they cannot be mixed in.
    """
    run_dir = Path(cfg.output_dir) / cfg.name
    ck_dir = Path(cfg.checkpoint_dir)
    res = run_dir / "results.json"
    if res.exists():
        try:
            doc = read_results(res)
            same = (_comparable(doc["config"]) == _comparable(cfg.to_dict())
                    and doc["run"]["data"]["fingerprint"] == split.dataset.fingerprint())
        except (ValueError, KeyError, json.JSONDecodeError):
            same = False
        if same:
            return "done"
        if not clean:
            return "todo"
        log.warning("%s: config or data changed since it finished; redoing it", run_dir)
        res.unlink()
    last = ck_dir / "last.pt"
    if last.exists():
        try:
            ckpt_io.check_compatible(ckpt_io.load(last), split.dataset.fingerprint(),
                                     fingerprint_config(cfg))
            return "resume"
        except (ckpt_io.CheckpointMismatch, RuntimeError, KeyError) as exc:
            if not clean:
                return "todo"
            log.warning("%s: not resumable (%s); starting it afresh", last, exc)
            shutil.rmtree(ck_dir)
    return "todo"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(run_dir: Path) -> bool:
    """Take ``run_dir/.lock`` (O_EXCL); False while another live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                return False
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def release(run_dir: Path) -> None:
    (run_dir / ".lock").unlink(missing_ok=True)


def _ensure_candidates(rc: Config, pv: PlannedVariant, split: Split) -> None:
    """A finished run from before ``frontier.npz`` existed gets it from its checkpoint
    (the frontier report needs it; a few seconds on ML-100K)."""
    from marl_two_tower.eval.frontier import FRONTIER_FILE
    from marl_two_tower.study.run import backfill_candidates

    run_dir = Path(rc.output_dir) / rc.name
    if (run_dir / FRONTIER_FILE).exists():
        return
    ckpt = Path(read_results(run_dir).get("extra", {}).get("checkpoint")
                or Path(rc.checkpoint_dir) / "model_best.pt")
    if ckpt.exists():
        backfill_candidates(rc, split, ckpt)
    else:
        log.warning("%s: no %s and no checkpoint to compute it from; the report leaves this "
                    "run off the frontier", run_dir, FRONTIER_FILE)


def source_config(cfg: Config, pv: PlannedVariant, seed: int, output_dir: Path) -> Config:
    """The config of the trained run an evaluation-only variant ``pv`` evaluates."""
    trained = [c for c in pv.components if c not in EVAL_ONLY_COMPONENTS]
    src = PlannedVariant(Variant(pv.evaluates or "", ""), trained, available=True)
    return run_config(cfg, src, seed, output_dir)


def _evaluate_only(cfg: Config, pv: PlannedVariant, seed: int, rc: Config, output_dir: Path,
                   split: Split) -> dict[str, Any]:
    """Evaluate the source run's ``model_best.pt`` under ``rc`` (an evaluation-only
    step); ``{"status": "waiting"}`` while the source run is not finished."""
    from marl_two_tower.study.run import evaluate_checkpoint

    src = source_config(cfg, pv, seed, output_dir)
    ckpt = Path(src.checkpoint_dir) / "model_best.pt"
    if run_status(src, split, clean=False) != "done" or not ckpt.exists():
        log.warning("%s seed %d: waiting for %s/seed%d to finish (its model is evaluated "
                    "here)", pv.variant.key, seed, pv.evaluates, seed)
        return {"status": "waiting", "evaluates": str(ckpt)}
    evaluate_checkpoint(rc, ckpt, split=split,
                        source=read_results(Path(src.output_dir) / src.name))
    return {"status": "evaluated", "evaluates": str(ckpt)}


def _run_baselines(cfg: Config, split: Split, output_dir: Path) -> list[dict[str, Any]]:
    """Fit and evaluate the classical baselines once (resumable by results.json)."""
    from marl_two_tower.baselines import BASELINES
    from marl_two_tower.study.run import fit_and_evaluate_baseline

    rows = []
    for name in BASELINES:
        run_dir = output_dir / "baselines" / name
        c = copy.deepcopy(cfg)
        for comp in COMPONENTS:
            getattr(c, comp).enabled = False
        c.name, c.output_dir = name, str(output_dir / "baselines")
        status = run_status(c, split) if (run_dir / "results.json").exists() else "todo"
        if not (run_dir / "frontier.npz").exists():
            status = "todo"  # predates the frontier candidates: refit (deterministic)
        t0 = time.perf_counter()
        if status != "done":
            fit_and_evaluate_baseline(name, c, split)
        rows.append({"name": name, "run_dir": str(run_dir), "status": status,
                     "wall_s": time.perf_counter() - t0})
    return rows


def run_study(cfg: Config, seeds: Sequence[int], output_dir: str | Path,
              variants: Sequence[Variant] = VARIANTS, exclude: Sequence[str] = (),
              baselines: bool = True, progress: bool = True, report: bool = True,
              split: Split | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or finish) the ablation study; returns and writes ``study.json``.

    Every (variant, seed) run goes through :func:`pipeline.train_and_evaluate`, so
    its folder has the same results schema as a plain ``train``. A progress bar runs
    over all (variant, seed) pairs with an ETA. With ``report`` the ablation report
    (:func:`report.write_report`) is rendered into ``output_dir/report``.
    """
    from marl_two_tower.study.run import train_and_evaluate

    output_dir = Path(output_dir)
    t_start = time.perf_counter()
    split = split or load_split(cfg.data)
    planned = plan_variants(variants, exclude=exclude, only=only)
    for pv in planned:
        if not pv.available:
            print(f"ablation: variant {pv.variant.label!r} not available ({pv.reason}); skipped")
    jobs = []
    for pv in planned:
        if not pv.available:
            continue
        for seed in seeds:
            rc = run_config(cfg, pv, seed, output_dir)
            jobs.append((pv, seed, rc, run_status(rc, split, clean=False)))
    n_done = sum(1 for j in jobs if j[3] == "done")
    bar = tqdm(total=len(jobs), initial=n_done, desc="ablation", unit="run",
               disable=not (progress and interactive_output()))
    for pv, seed, rc, status in jobs:
        run_dir = Path(rc.output_dir) / rc.name
        entry: dict[str, Any] = {"seed": seed, "run_dir": str(run_dir), "status": status}
        pv.runs.append(entry)
        if status == "done":
            _ensure_candidates(rc, pv, split)
            continue
        if not claim(run_dir):
            entry["status"] = "busy"  # another worker is training it
            bar.update(1)
            continue
        try:
            # re-checked under the lock: another worker may have finished it meanwhile
            status = entry["status"] = run_status(rc, split)
            if status == "done":
                bar.update(1)
                continue
            bar.set_postfix_str(f"{pv.variant.key} seed {seed}")
            t0 = time.perf_counter()
            if pv.evaluates is not None:
                entry |= _evaluate_only(cfg, pv, seed, rc, output_dir, split)
                entry["wall_s"] = time.perf_counter() - t0
                bar.update(1)
                continue
            try:
                train_and_evaluate(rc, resume=status == "resume", progress=progress, split=split)
            except RuntimeError as exc:
                if status != "resume":
                    raise
                # same config but the model code changed (state-dict keys differ)
                log.warning("%s: cannot resume (%s); training it afresh", run_dir, exc)
                shutil.rmtree(rc.checkpoint_dir)
                status = "todo"
                train_and_evaluate(rc, resume=False, progress=progress, split=split)
            entry |= {"status": "trained" if status == "todo" else "resumed",
                      "wall_s": time.perf_counter() - t0}
            bar.update(1)
        finally:
            release(run_dir)
    bar.close()
    base_rows = _run_baselines(cfg, split, output_dir) if baselines else []
    study = {
        "schema": STUDY_SCHEMA, "schema_version": STUDY_SCHEMA_VERSION,
        "git_commit": git_commit(), "seeds": list(seeds),
        "data": {"name": split.dataset.name, "fingerprint": split.dataset.fingerprint()},
        "config": cfg.to_dict(),
        "note": "the GINI loss, the tail loss and the exposure budget are separate steps; "
                "the exposure-budget step trains nothing and evaluates the previous step's "
                "checkpoints under the budget",
        "variants": [{"key": pv.variant.key, "label": pv.variant.label,
                      "adds": list(pv.variant.adds), "components": pv.components,
                      "available": pv.available, "reason": pv.reason,
                      "evaluates": pv.evaluates,
                      "runs": pv.runs} for pv in planned],
        "baselines": base_rows,
        "wall_s_this_invocation": time.perf_counter() - t_start,
    }
    write_text_atomic(output_dir / "study.json", json.dumps(study, indent=2))
    if report:
        from marl_two_tower.study.report import write_report

        write_report([output_dir], output_dir / "report")
    return study

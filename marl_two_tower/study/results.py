"""Run results on disk: one versioned JSON schema plus a flat CSV (DESIGN §7).

``results.json`` (schema ``marl-two-tower/results``, version ``RESULTS_SCHEMA_VERSION``)::

    {
      "schema": "marl-two-tower/results", "schema_version": 1,
      "run": {"name", "created", "seed", "git_commit", "versions": {...},
              "data": {"name", "fingerprint", "n_users", "n_items", "n_interactions",
                       "tail": {"by", "fraction", "n_tail_items"}},
              "model_selection": "validation only; test touched once at the end"},
      "config": {...full config...},
      "metrics": {"test": {"full": {...}, "sampled": {...}}, "val": {...}},
      "history": [{"epoch": 1, "loss/rec": ..., "val/NDCG@10": ...}, ...],
      "extra": {...}
    }

``results.csv`` has one row per (split part, protocol, metric) with its value.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marl_two_tower.config import Config
from marl_two_tower.data.split import Split
from marl_two_tower.utils.io import atomic_write, to_jsonable, write_text_atomic

RESULTS_SCHEMA = "marl-two-tower/results"
RESULTS_SCHEMA_VERSION = 1


def git_commit() -> str:
    """Current git commit of the package's repository, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers."""
    import scipy

    from marl_two_tower import __version__

    return {"marl_two_tower": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__}


def data_info(split: Split) -> dict[str, Any]:
    """Identity and shape of the data a run used."""
    ds = split.dataset
    return {"name": ds.name, "fingerprint": ds.fingerprint(), "n_users": ds.n_users,
            "n_items": ds.n_items, "n_interactions": ds.n_interactions,
            "tail": {"by": split.tail_by, "fraction": split.tail_fraction,
                     "n_tail_items": int(split.tail_mask.sum())}}






def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metric dict -> [("test/full/HR@10", 0.12), ...] for scalar leaves."""
    rows: list[tuple[str, Any]] = []
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += flatten_metrics(v, key + "/")
        elif isinstance(v, (int, float)) or v is None:
            rows.append((key, v))
    return rows


def build_results(cfg: Config, split: Split, metrics: dict[str, Any],
                  history: list[dict[str, Any]] | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results document (see module docstring)."""
    return to_jsonable({
        "schema": RESULTS_SCHEMA,
        "schema_version": RESULTS_SCHEMA_VERSION,
        "run": {"name": cfg.name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "seed": cfg.seed, "git_commit": git_commit(), "versions": versions(),
                "data": data_info(split),
                "model_selection": "validation only; the test split is evaluated once, "
                                   "after training"},
        "config": cfg.to_dict(),
        "metrics": metrics,
        "history": history or [],
        "extra": extra or {},
    })


def write_results(run_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Write results.json and results.csv into ``run_dir``; returns the JSON path."""
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / "results.json", json.dumps(doc, indent=2))
    rows = flatten_metrics(doc["metrics"])
    with atomic_write(run_dir / "results.csv", "w") as fh:  # newline="": the csv module's choice
        w = csv.writer(fh)
        w.writerow(["run", "seed", "metric", "value"])
        for k, v in rows:
            w.writerow([doc["run"]["name"], doc["run"]["seed"], k, v])
    return run_dir / "results.json"


def read_versioned_json(path: str | Path, file_name: str, schema: str, version: int,
                        what: str) -> dict[str, Any]:
    """Read ``path`` (or ``path/file_name`` for a folder) and check its schema tag and
    that its ``schema_version`` is not newer than ``version``."""
    p = Path(path)
    if p.is_dir():
        p = p / file_name
    doc = json.loads(p.read_text())
    if doc.get("schema") != schema:
        raise ValueError(f"{p}: not a marl-two-tower {what}")
    if doc.get("schema_version", 0) > version:
        raise ValueError(f"{p}: {what} schema version {doc['schema_version']} is newer than "
                         f"this package understands ({version})")
    return doc


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json (or the one inside a run folder), checking its schema."""
    return read_versioned_json(path, "results.json", RESULTS_SCHEMA, RESULTS_SCHEMA_VERSION,
                               "results file")

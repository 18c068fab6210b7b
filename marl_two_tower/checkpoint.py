"""Atomic, pickle-free checkpoints (DESIGN §10).

A checkpoint is a dict of tensors and plain Python values written with
``torch.save`` through :func:`marl_two_tower.utils.io.atomic_write` (temporary file
in the target folder, fsync, rename), so a killed run never leaves a half-written
file. Loading uses ``torch.load(weights_only=True)``: no arbitrary pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from marl_two_tower.utils.io import atomic_write


class CheckpointMismatch(RuntimeError):
    """A checkpoint belongs to another dataset or config."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` with ``torch.save``, atomically (temp file + fsync + rename)."""
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def check_compatible(ckpt: dict[str, Any], data_fingerprint: str,
                     config_fingerprint: dict[str, Any]) -> None:
    """Refuse a checkpoint from another dataset or an incompatible config."""
    if ckpt.get("data_fingerprint") != data_fingerprint:
        raise CheckpointMismatch(
            f"checkpoint was trained on data {ckpt.get('data_fingerprint')!r}, "
            f"this run uses {data_fingerprint!r}: refusing to resume/evaluate on other data")
    theirs = json.loads(ckpt.get("config_fingerprint", "{}"))
    if theirs != config_fingerprint:
        diff = sorted(_diff_keys(theirs, config_fingerprint))
        raise CheckpointMismatch(f"checkpoint config differs in: {', '.join(diff[:10])}")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]

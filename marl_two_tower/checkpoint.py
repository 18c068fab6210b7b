"""Atomic, pickle-free checkpoints (DESIGN §10).

A checkpoint is a dict of tensors and plain Python values written with
``torch.save`` through :func:`marl_two_tower.utils.io.atomic_write` (temporary file
in the target folder, fsync, rename), so a killed run never leaves a half-written
file. Loading uses ``torch.load(weights_only=True)``: no arbitrary pickle.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from marl_two_tower.errors import UserError
from marl_two_tower.utils.io import atomic_write

# keys every training checkpoint holds (Trainer.checkpoint_dict); bundles and saved
# baselines carry a "format" marker instead and are checked by their own readers
TRAINING_KEYS = ("model", "config", "data_fingerprint")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or bundle file cannot be used: unreadable, empty, truncated, refused
    by the safe loader, or not one of ours. The message names the file."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint belongs to another dataset or config."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` with ``torch.save``, atomically (temp file + fsync + rename)."""
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return path


LATEST_MARKER = ".model_best.latest"  # names the run a copied latest model_best.pt is of


def link_latest(best: str | Path, link: str | Path) -> Path | None:
    """Point ``link`` (``checkpoints/model_best.pt``) at ``best`` (a run's
    ``checkpoints/<name>/model_best.pt``), so the commands written for one shared
    ``checkpoints/`` folder keep working with per-run folders.

    A relative symbolic link, swapped in atomically; where links cannot be made, a copy
    (recorded in :data:`LATEST_MARKER` beside it). A ``link`` that is a file this
    function did not make (a checkpoint of an earlier version) is never replaced:
    returns None then, and logs where the latest best model is.
    """
    import logging
    import os
    import shutil

    best, link = Path(best), Path(link)
    marker = link.parent / LATEST_MARKER
    if link.exists() and not link.is_symlink() and not marker.exists():
        logging.getLogger(__name__).warning(
            "%s is a checkpoint of an earlier run without per-run folders; left as it is "
            "(this run's best model: %s)", link, best)
        return None
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(best.resolve(), link.parent.resolve()), tmp)
        os.replace(tmp, link)
        marker.unlink(missing_ok=True)
    except OSError:  # no symbolic links here (some Windows setups): copy instead
        tmp.unlink(missing_ok=True)
        with atomic_write(link, "wb") as fh, open(best, "rb") as src:
            shutil.copyfileobj(src, fh)
        marker.write_text(f"{best}\n", encoding="utf-8")
    return link


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint, serving bundle or saved baseline safely
    (``weights_only=True``: tensors and plain values only, never arbitrary pickle).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: ``path`` is a folder, empty, truncated or corrupt, holds
            Python objects the safe loader refuses, or is not a marl-two-tower file
            (a dict with the training keys or a ``format`` marker).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            # torch's message suggests weights_only=False: never pass that advice on
            raise CheckpointError(
                f"{path}: not a marl-two-tower checkpoint or bundle (it holds Python objects "
                "other than tensors and plain values); refused for safety") from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # torch reports a truncated zip as RuntimeError, EOFError, OSError...
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint, cannot be read "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a marl-two-tower checkpoint or bundle "
                              f"(holds a {type(obj).__name__}, expected a dict)")
    missing = [k for k in TRAINING_KEYS if k not in obj]
    if "format" not in obj and missing:
        raise CheckpointError(f"{path}: not a marl-two-tower checkpoint or bundle "
                              f"(missing {', '.join(missing)})")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no detail"


def check_compatible(ckpt: dict[str, Any], data_fingerprint: str,
                     config_fingerprint: dict[str, Any], path: str | Path | None = None) -> None:
    """Refuse a checkpoint from another dataset or an incompatible config (the
    message starts with ``path`` when given)."""
    where = f"{path}: " if path is not None else ""
    if ckpt.get("data_fingerprint") != data_fingerprint:
        raise CheckpointMismatch(
            f"{where}checkpoint was trained on data {ckpt.get('data_fingerprint')!r}, "
            f"this run uses {data_fingerprint!r}: refusing to resume/evaluate on other data")
    theirs = json.loads(ckpt.get("config_fingerprint", "{}"))
    diff = sorted(_diff_keys(theirs, config_fingerprint, _default_fingerprint()))
    if diff:
        raise CheckpointMismatch(f"{where}checkpoint config differs in: {', '.join(diff[:10])} "
                                 "(use another checkpoint_dir, or the same config)")


def _default_fingerprint() -> dict[str, Any]:
    from marl_two_tower.config import Config, fingerprint_config

    return fingerprint_config(Config())


_ABSENT = object()


def _diff_keys(a: Any, b: Any, default: Any = _ABSENT, prefix: str = "") -> list[str]:
    """Dotted keys where fingerprints ``a`` (the checkpoint's) and ``b`` differ. A key
    the checkpoint lacks is no difference when ``b`` holds its default: a key added
    by a later version, at the value that reproduces the old behaviour; a key this
    version's fingerprint leaves out (e.g. ``data.synthetic`` of a run on real data) is
    not compared."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        d = default if isinstance(default, dict) else {}
        for k in set(a) | set(b):
            if k not in a and k in d and b.get(k) == d[k]:
                continue
            if k not in b:
                continue
            out += _diff_keys(a.get(k), b.get(k), d.get(k, _ABSENT), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]

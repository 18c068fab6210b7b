"""Seeds, devices and resumable random streams.

Determinism: every random stream of a run is derived from ``cfg.seed`` (and the
epoch number), so one seed controls every number and a resumed run replays exactly
the batches an uninterrupted run sees.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed python, numpy's legacy global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    """'auto' -> CUDA when available else CPU; a CUDA request without CUDA warns and
    falls back to CPU (so ``--gpus 0`` works on laptops)."""
    if spec in ("auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"device {spec!r} requested but CUDA is not available; using CPU",
                      stacklevel=2)
        return torch.device("cpu")
    return torch.device(spec)


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """Independent generator for (seed, epoch, stream): resumable randomness."""
    return np.random.default_rng([seed, epoch, stream])

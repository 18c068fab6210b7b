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


def interactive_output() -> bool:
    """Whether progress bars should be drawn: stderr is a terminal, or the code runs in
    a Jupyter kernel. Elsewhere (CI, ``> log``) a bar would write a carriage-return
    line per update into the log, so callers show none there."""
    import sys

    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, which
    a container or ``taskset`` may narrow below ``os.cpu_count()``)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def apply_threads(n: int) -> int:
    """Set the intra-op thread count of torch (and of FAISS, when it is loaded) to
    ``n``; ``n = 0`` leaves torch's default (one thread per core). Returns the count
    in effect.

    Every entry point calls it with ``train.num_threads`` (default 1): training,
    ``evaluate``, the demo; ``serve`` has ``--threads`` (default 1). One thread is the
    default because the intra-op pool spins on every core it has: on a CPU shared
    with other processes a pool wider than the free cores made every op 10-44x
    slower (docs/speed.md), while one thread loses at most the parallel speed-up.
    On a dedicated machine, raise it (``--set train.num_threads=0`` for all cores).
    """
    if n < 0:
        raise ValueError(f"train.num_threads must be >= 0, got {n}")
    if n > 0:
        torch.set_num_threads(n)
        import sys

        if "faiss" in sys.modules:  # serving's index; never imported just for this
            sys.modules["faiss"].omp_set_num_threads(n)
    return torch.get_num_threads()

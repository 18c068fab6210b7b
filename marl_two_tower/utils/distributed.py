"""Multi-process data-parallel training and sharded evaluation (DESIGN §9).

Launch: ``marl-two-tower train --nproc N`` spawns N local processes (rendezvous
``env://`` on 127.0.0.1 with a free port), or any ``torchrun`` launch of
``python -m marl_two_tower.cli train`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT`` in the environment; several nodes work the same
way). Backend: gloo on CPU, nccl on CUDA (device ``cuda:LOCAL_RANK``). Every rank
loads the same data and builds the same model from the same seed; rank 0's
parameters are broadcast once so all ranks start identical.

**Data parallelism.** ``train.batch_size`` is the *global* batch B. Every rank
iterates the same sampler (same seed, so the same global order and batches as a
single process) and keeps the contiguous shard ``np.array_split(batch, N)[rank]``
(:meth:`DistContext.shard`). The sampled negatives come from the same seeded
stream on every rank, so they are shared, as in a single process.

**Gradients.** Each rank builds a *local objective* whose gradients, **summed**
over ranks, are the gradient of the global-batch objective
(:meth:`DistContext.local_objective`): a term that is a (weighted) mean over the
rank's rows (L_rec, L_Tail) is multiplied by w_r / sum_r' w_r' (w = rows, or the
tail weight for L_Tail; the totals come from one all-reduce), and a term already
computed on the global batch (L_GINI, below) is kept as is. After backward the
gradients are all-reduced (sum) parameter by parameter; a parameter gets a gradient
iff some rank produced one (so Adam skips exactly the parameters a single process
would skip). Clipping, the optimiser and the GradScaler then act on identical
gradients, so the ranks stay identical. Non-finite losses: the skip decision is
all-reduced, every rank skips the same step.

**What differs from one process with batch B** (``docs/distributed.md``): each
row's *in-batch negatives* are the B/N positives of its own rank instead of all B
(fewer negatives per row, and the logQ correction uses the rank's batch size);
with ``train.in_batch_negatives=false`` the candidates are the row's positive and
the shared sampled negatives only, and a DDP step equals a single-process step up
to float summation order. Per-rank random streams of the components that draw
from torch's RNG (BUHS history samples, ContextGNN salts, dropout) differ from a
single process's draws (same distribution, other numbers).

**GINI agent.** The soft exposure x = sum_u softmax(s(u, .) / tau) of the global
batch is the all-reduced sum of the ranks' partial exposures, taken
straight-through (:meth:`DistContext.sum_exposure`: value = global sum, gradient
to the local part only), so G(x) and its gradient (after the gradient sum) are
those of the global batch; its candidate set is broadcast from rank 0, and the
dual-ascent update sees the same G_batch on every rank.

**RL steps** (genre agents) are *replicated*: every rank draws the same RL users
from the same seeded stream, scores them with identical weights and applies the
same update, so Coverage(B) and Gini(B) are over the whole RL batch exactly as in
a single process, with no communication (the RL step is not sped up by N).

**Evaluation** (:func:`rank_full`, :func:`evaluate`): users are split into
contiguous shards aligned to the evaluation batches, each rank ranks its shard,
the results are all-gathered in rank order; every batch is the same batch a single
process scores, so the metrics are identical. Only rank 0 writes checkpoints,
results and logs; checkpoints are read back by every rank (a shared
``checkpoint_dir`` across nodes).
"""

from __future__ import annotations

import datetime
import math
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from marl_two_tower.utils import runtime

# Loss terms already computed on the global batch (not per-rank means): the default of
# ``global_terms`` below; the trainer passes its components' declared global terms.
GLOBAL_TERMS = frozenset({"gini"})

_CURRENT: DistContext | None = None


@dataclass
class DistContext:
    """This process's place in the process group, and the collectives training needs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- data ---------------------------------------------------------------
    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of a global batch (sizes differ by at most 1)."""
        return np.array_split(batch, self.world_size)[self.rank]

    # --- losses and gradients -----------------------------------------------
    def local_objective(self, terms: dict[str, torch.Tensor], weights: dict[str, float],
                        global_terms: frozenset[str] = GLOBAL_TERMS) -> dict[str, torch.Tensor]:
        """Per-rank terms whose gradients sum over ranks to the global batch's.

        ``weights[k]`` is the total row weight of this rank's mean term k (default
        ``weights['rows']``); terms in ``global_terms`` are left unchanged.
        """
        local = [k for k in terms if k not in global_terms]
        if not local:
            return terms
        w = torch.tensor([float(weights.get(k, weights["rows"])) for k in local],
                         dtype=torch.float64, device=self.device)
        total = w.clone()
        dist.all_reduce(total)
        scale = (w / total.clamp(min=1e-12)).tolist()
        out = dict(terms)
        for k, s in zip(local, scale, strict=True):
            out[k] = terms[k] * s
        return out

    def reduce_terms(self, terms: dict[str, torch.Tensor],
                     global_terms: frozenset[str] = GLOBAL_TERMS) -> tuple[bool, dict[str, float]]:
        """(all ranks finite, global values of the terms and their total) in one all-reduce.

        Local-objective terms sum to the global batch's value; global terms are the
        same on every rank (averaged).
        """
        keys = list(terms)
        vals = torch.stack([terms[k].detach().float().reshape(()) for k in keys]) if keys else \
            torch.zeros(0, device=self.device)
        bad = (~torch.isfinite(vals)).any().float().reshape(1)
        buf = torch.cat([torch.nan_to_num(vals.double(), nan=0.0, posinf=0.0, neginf=0.0),
                         bad.double()])
        dist.all_reduce(buf)
        out = {k: float(buf[j]) / (self.world_size if k in global_terms else 1)
               for j, k in enumerate(keys)}
        out["total"] = sum(out.values())
        return bool(buf[-1] == 0), out

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum gradients over ranks; a parameter without a gradient on every rank keeps none."""
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        works = []
        for p, h in zip(params, has.tolist(), strict=True):
            if not h:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            works.append(dist.all_reduce(p.grad, async_op=True))
        for w in works:
            w.wait()

    def sum_exposure(self, x: torch.Tensor) -> torch.Tensor:
        """Straight-through all-reduce: the value is sum_r x_r, the gradient reaches only
        this rank's x (the gradient sum over ranks then covers every part exactly once)."""
        total = x.detach().clone()
        dist.all_reduce(total)
        return x + (total - x.detach())

    # --- tensors and objects --------------------------------------------------
    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        dist.broadcast(tensor, src)
        return tensor

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters everywhere (buffers are derived from the data, identical)."""
        with torch.no_grad():
            for p in module.parameters():
                dist.broadcast(p.data, 0)

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()


def current() -> DistContext | None:
    """The active context (None in a single process or a group of one)."""
    return _CURRENT


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistContext | None:
    """Join the process group described by the torchrun environment variables.

    Returns None when ``WORLD_SIZE`` is absent or 1 (single process). ``device``
    'cpu' -> gloo; 'cuda'/'cuda:N'/'auto' with CUDA -> nccl on ``cuda:LOCAL_RANK``.
    On CPU the intra-op threads are split between the local processes (unless
    ``OMP_NUM_THREADS`` says otherwise).
    """
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if _CURRENT is not None:
        return _CURRENT
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device.startswith("cuda") or device in ("auto", ""))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            # the cores this process may run on (affinity mask), shared among the local ranks
            torch.set_num_threads(max(1, runtime.available_cores() // local))
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    _CURRENT = DistContext(rank, world, local_rank, dev)
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (no-op in a single process)."""
    global _CURRENT
    if _CURRENT is not None and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    fn(*args)


def launch(fn: Callable[..., Any], nproc: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` spawned processes with the torchrun environment
    set (rendezvous on 127.0.0.1, a free port); ``fn`` calls :func:`init_from_env`.
    Raises if any process fails (the others are terminated)."""
    mp.start_processes(_entry, args=(fn, nproc, free_port(), args), nprocs=nproc, join=True,
                       start_method="spawn")


# ---------------------------------------------------------------------------
# Sharded evaluation
# ---------------------------------------------------------------------------


def batch_shards(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) user ranges per rank, cut at evaluation-batch boundaries."""
    n_batches = math.ceil(n / batch_size) if n else 0
    cuts = [min(n, (n_batches * r // world) * batch_size) for r in range(world + 1)]
    return [(cuts[r], cuts[r + 1]) for r in range(world)]











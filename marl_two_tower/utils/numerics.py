"""Softmax arguments kept out of the subnormal slow path of ``exp`` on CPUs.

On x86 CPUs torch's vectorised ``exp`` runs ~100x slower on arguments in about
[-104, -87.3], whose results are fp32 subnormals (measured here: 28 ms vs 0.25-0.65 ms
for 256 x 3,416 values; ``torch.set_flush_denormal`` does not help). A softmax over a
catalogue with a spread of logits puts many entries there: ``torch.softmax`` over
1,024 x 1,682 logits took 18.8 ms at a logit standard deviation of 30 against 1.6 ms
at 1, and ``F.cross_entropy`` forward + backward 42.8 vs 6.0 ms. Raising every logit
more than :data:`LOGIT_MARGIN` below its row's maximum to that floor changes each
probability by less than exp(-70) = 4e-31 (and the gradient of the raised entries,
which is of the same size, to zero), below the fp32 resolution of any loss, exposure
or gradient built from it; ``-inf`` entries (masked candidates) stay ``-inf``.
"""

from __future__ import annotations

import torch

# a softmax argument is then >= -70 - log(N) > -87 for catalogues up to e^17 items, and
# log_softmax's backward (exp of its output) stays in the normal range too
LOGIT_MARGIN = 70.0
# the floor of exp arguments already shifted by the row max (chunked_ce.py): exp(-80)
# = 1.8e-35 is a normal fp32 number
EXP_FLOOR = -80.0


def floor_logits(z: torch.Tensor, dim: int = -1, margin: float = LOGIT_MARGIN,
                 keep: torch.Tensor | None = None, raw: torch.Tensor | None = None) -> torch.Tensor:
    """``z`` with every finite entry below ``max_dim(z) - margin`` raised to it.

    ``z' = where(z = -inf, -inf, max(z, m - margin))`` with ``m`` the (detached) row
    maximum along ``dim``; gradients flow to the entries that were not raised. Feed the
    result to ``softmax`` / ``cross_entropy`` in place of ``z`` (module docstring).
    ``keep [R]`` (2-D ``z``, ``dim=1``): one column per row that is never raised, the
    CE target, whose logit is the loss (``lse - z_target``) and whose gradient
    (p - 1, about -1 when it sits far below the maximum) must not be cut.
    ``raw``: ``z`` before its masked entries were set to ``-inf`` (same shape), if any.

    Fast path: when every row's spread ``max - min`` (of ``raw`` when given, else of
    ``z``) is at most ``margin``, no finite entry can sit more than ``margin`` below its
    row's maximum (masking only lowers the maximum and removes entries), so ``z`` is
    returned after two reductions instead of a compare and a select over every entry
    (benchmarks/exp_slow_path.py: at a narrow spread the full pass cost 5x the
    softmax it protects). A row with ``-inf`` in the tensor checked takes the full pass.
    Off the CPU (no such slow path, and ``any`` would cost a device sync) ``z`` is
    returned as is.
    """
    if z.device.type != "cpu":
        return z
    ref = (z if raw is None else raw).detach()
    if bool((ref.amax(dim=dim) - ref.amin(dim=dim) <= margin).all()):
        return z
    floor = z.detach().amax(dim=dim, keepdim=True) - margin
    low = z < floor  # False for NaN; -inf < floor unless the whole row is -inf
    if keep is not None:
        low[torch.arange(len(keep), device=z.device), keep] = False
    if not bool(low.any()):
        return z
    return torch.where(low & (z != float("-inf")), floor, z)

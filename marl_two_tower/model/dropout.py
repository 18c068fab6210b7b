"""Inverted dropout whose mask is cut from raw random bits (fast on CPU).

    y = x * m / (1 - p),   m_i ~ Bernoulli(1 - p) independent   (Srivastava et al. 2014)

Same distribution as :class:`torch.nn.Dropout`, another way of drawing it. On CPU
``torch.nn.functional.dropout`` draws its mask with ``bernoulli_``, one generator call
per element, the costliest element-wise op of a sequence-tower training step on ML-1M.
This module instead fills ``ceil(n / 3)`` int64 words with ``random_()`` (uniform on
[0, 2^63): 63 uniform bits each), reads the low 48 bits of each word as three
independent uniform 16-bit integers u, and keeps an element iff u >= round(p * 2^16):
a keep probability of 1 - p to within 2^-17, drawn several times faster
(``benchmarks/cpu_kernels.py``, docs/speed.md "The full-softmax CE and the dropout
masks"). The draws come from torch's default generator, so one seed still
fixes every mask. On other devices (CUDA's dropout kernel is fast) it calls
``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean mask of ``shape``, each entry True with probability 1 - p (to within
    2^-17), independently: three 16-bit uniforms per 63-bit ``random_()`` word."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 2) // 3, dtype=torch.int64, device=device).random_()
    # little-endian int16 view: entries 0..2 of each word are its bits 0-47 (uniform), entry
    # 3 holds bits 48-62 and a zero sign bit (not uniform: skipped); signed, so u - 2^15
    u = words.view(torch.int16).view(-1, 4)[:, :3]
    threshold = round(p * _LEVELS) - _LEVELS // 2
    return (u >= threshold).reshape(-1)[:n].view(shape)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout of ``x`` with rate ``p`` (identity when not training or p = 0)."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    scale = torch.tensor(1.0 / (1.0 - p), dtype=x.dtype)
    return x * keep_mask(x.shape, p, x.device).to(x.dtype).mul_(scale)


class Dropout(nn.Module):
    """Drop-in for :class:`torch.nn.Dropout` (no parameters, same state dict) drawing
    its mask with :func:`keep_mask` on CPU."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"

"""Full-softmax cross-entropy over the catalogue without materialising the logits.

For query vectors h ``[P, d]``, item vectors E ``[N, d]`` and targets y ``[P]``:

    loss = (1/P) sum_p [ logsumexp_j (h_p . E_j + b_j) - (h_p . E_{y_p} + b_{y_p}) ]

(b: optional per-item logit offset, e.g. a -log q correction; None = 0).
Gradients: with softmax rows p_p = softmax(h_p E^T + b) and G = (p - onehot(y)) / P,
dL/dh = G E and dL/dE = G^T h. Rows are processed in chunks: the forward pass keeps
only the per-row log-sum-exp, the backward pass recomputes each chunk's logits
(one extra matmul) instead of storing a ``[P, N]`` tensor and running
``log_softmax``'s backward over it, which dominated a SASRec step on CPU (memory
bound). ``bf16=True`` runs the matmuls in bfloat16 (AMX / tensor cores) with fp32
accumulation of the softmax statistics and of the gradients.
"""

from __future__ import annotations

import torch


def _logits(h: torch.Tensor, e: torch.Tensor, bias: torch.Tensor | None, bf16: bool) -> torch.Tensor:
    if bf16:
        out = (h.to(torch.bfloat16) @ e.to(torch.bfloat16).T).float()
    else:
        out = h.float() @ e.float().T
    return out if bias is None else out + bias


class _ChunkedCE(torch.autograd.Function):
    """Per-row losses ``[P]``; the backward takes a per-row upstream gradient g and
    returns dL/dh = (g * G) E, dL/dE = (g * G)^T h with G = softmax - onehot."""

    @staticmethod
    def forward(ctx, h, e, target, bias, chunk: int, bf16: bool):  # type: ignore[override]
        lse = torch.empty(len(h), dtype=torch.float32, device=h.device)
        picked = torch.empty(len(h), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):  # precision is `bf16`'s call
            for s in range(0, len(h), chunk):
                z = _logits(h[s : s + chunk], e, bias, bf16)
                lse[s : s + chunk] = torch.logsumexp(z, dim=1)
                picked[s : s + chunk] = z.gather(1, target[s : s + chunk, None]).squeeze(1)
        ctx.save_for_backward(h, e, target, lse, bias if bias is not None else torch.empty(0))
        ctx.chunk, ctx.bf16, ctx.has_bias = chunk, bf16, bias is not None
        return lse - picked

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, e, target, lse, bias = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        gh = torch.empty_like(h, dtype=torch.float32)
        ge = torch.zeros_like(e, dtype=torch.float32)
        mm = torch.bfloat16 if ctx.bf16 else torch.float32
        with torch.autocast(h.device.type, enabled=False):
            e_mm = e.to(mm)
            for s in range(0, len(h), ctx.chunk):
                hc = h[s : s + ctx.chunk]
                p = torch.exp(_logits(hc, e, bias, ctx.bf16) - lse[s : s + ctx.chunk, None])
                p[torch.arange(len(hc), device=h.device), target[s : s + ctx.chunk]] -= 1.0
                p = (p * grad[s : s + ctx.chunk, None].float()).to(mm)
                gh[s : s + ctx.chunk] = (p @ e_mm).float()
                ge += (p.T @ hc.to(mm)).float()
        return gh.to(h.dtype), ge.to(e.dtype), None, None, None, None


def chunked_softmax_ce_rows(h: torch.Tensor, e: torch.Tensor, target: torch.Tensor,
                            bias: torch.Tensor | None = None, chunk: int = 256,
                            bf16: bool = False) -> torch.Tensor:
    """Per-row softmax cross-entropy ``[P]``:
    ``logsumexp_j (h_p . E_j + b_j) - (h_p . E_{y_p} + b_{y_p})`` against all rows of
    ``e [N, d]`` (targets ``[P]`` index ``e``), chunked over P; see the module docstring."""
    if len(h) == 0:
        return h.sum(1) * 0.0 + e.sum() * 0.0
    return _ChunkedCE.apply(h, e, target, bias, int(chunk), bool(bf16))


def chunked_softmax_ce(h: torch.Tensor, e: torch.Tensor, target: torch.Tensor,
                       bias: torch.Tensor | None = None, chunk: int = 256,
                       bf16: bool = False) -> torch.Tensor:
    """Mean softmax cross-entropy of ``h [P, d]`` against all rows of ``e [N, d]``
    (targets ``[P]`` index ``e``), chunked over P; see the module docstring."""
    if len(h) == 0:
        return (h.sum() + e.sum()) * 0.0
    return chunked_softmax_ce_rows(h, e, target, bias, chunk, bf16).mean()

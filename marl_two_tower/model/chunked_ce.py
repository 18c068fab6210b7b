"""Full-softmax cross-entropy over the catalogue without materialising the logits.

For query vectors h ``[P, d]``, item vectors E ``[N, d]`` and targets y ``[P]``:

    loss = (1/P) sum_p [ logsumexp_j (h_p . E_j + b_j) - (h_p . E_{y_p} + b_{y_p}) ]

(b: optional per-item logit offset, e.g. a -log q correction; None = 0).
Gradients: with softmax rows p_p = softmax(h_p E^T + b) and G = (p - onehot(y)) / P,
dL/dh = G E and dL/dE = G^T h. Rows are processed in chunks and the ``[P, N]`` logits
never go through autograd (``log_softmax``'s backward over them dominated a SASRec
step on CPU, memory bound): the forward keeps the per-row log-sum-exp and, when the
product is small enough (:data:`STORE_ELEMENTS`), the softmax's numerators
exp(z - max) with the rows' 1 / sum, which the backward turns into G in place; above
that the backward recomputes each chunk's logits (one extra matmul) instead.
``bf16=True`` runs the matmuls in bfloat16 (AMX / tensor cores) with fp32 accumulation
of the softmax statistics and of the gradients.

Every ``exp`` here reads its argument (already shifted by the row maximum) clamped at
:data:`~marl_two_tower.utils.numerics.EXP_FLOOR`, which keeps it out of the ~100x
slower subnormal path of ``exp`` on CPUs (utils/numerics.py); each probability changes
by less than exp(-80) = 1.8e-35.
"""

from __future__ import annotations

import torch

from marl_two_tower.utils.numerics import EXP_FLOOR  # exp(-80) is a normal fp32 number

# the largest P x N softmax the forward keeps for the backward (fp32: 128 MB)
STORE_ELEMENTS = 1 << 25

def _logits(h: torch.Tensor, e: torch.Tensor, bias: torch.Tensor | None, bf16: bool,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """``h E^T + b`` in fp32 ``[len(h), len(e)]``, written into ``out`` when given."""
    if bf16:
        z = h.to(torch.bfloat16) @ e.to(torch.bfloat16).T
        z = z.float() if out is None else out.copy_(z)
    else:
        z = torch.matmul(h.float(), e.float().T, out=out)
    return z if bias is None else z.add_(bias)


class _ChunkedCE(torch.autograd.Function):
    """Per-row losses ``[P]``; the backward takes a per-row upstream gradient g and
    returns dL/dh = (g * G) E, dL/dE = (g * G)^T h with G = softmax - onehot.

    When ``P * N <= STORE_ELEMENTS`` the forward keeps the softmax unnormalised (one
    ``[P, N]`` fp32 buffer, 14 MB for ML-1M's 1,024 x 3,416, and the rows' 1 / sum) and
    the backward turns it into G in place, normalising in the same pass, instead of
    recomputing each chunk's logits (a matmul and an exp
    pass); larger products take the recomputing path. A second backward through the
    same graph (``retain_graph=True``) recomputes, since the first consumed the buffer."""

    @staticmethod
    def forward(ctx, h, e, target, bias, chunk: int, bf16: bool, keep: bool):  # type: ignore[override]
        lse = torch.empty(len(h), dtype=torch.float32, device=h.device)
        picked = torch.empty(len(h), dtype=torch.float32, device=h.device)
        # `keep`: a backward is to come (grad mode is off inside forward: the caller asks)
        store = keep and len(h) * len(e) <= STORE_ELEMENTS
        probs = torch.empty(len(h), len(e), dtype=torch.float32, device=h.device) if store else None
        inv_total = torch.empty(len(h), dtype=torch.float32, device=h.device) if store else None
        with torch.autocast(h.device.type, enabled=False):  # precision is `bf16`'s call
            e_mm = e.to(torch.bfloat16) if bf16 else e  # cast once, not per chunk
            for s in range(0, len(h), chunk):
                # the chunk's logits go straight into the kept buffer, which keeps them
                # exponentiated but unnormalised: the backward scales each row by g / total
                # in the pass it makes anyway (a division pass over [P, N] saved)
                out = probs[s : s + chunk] if probs is not None else None
                z = _logits(h[s : s + chunk], e_mm, bias, bf16, out=out)
                picked[s : s + chunk] = z.gather(1, target[s : s + chunk, None]).squeeze(1)
                m = z.amax(dim=1, keepdim=True)
                z = torch.exp(z.sub_(m).clamp_min_(EXP_FLOOR), out=z)  # in place: no new [c, N]
                total = z.sum(dim=1, keepdim=True)
                lse[s : s + chunk] = (m + total.log()).squeeze(1)
                if inv_total is not None:
                    inv_total[s : s + chunk] = total.squeeze(1).reciprocal()
        ctx.save_for_backward(h, e, target, lse, bias if bias is not None else torch.empty(0))
        ctx.chunk, ctx.bf16, ctx.has_bias = chunk, bf16, bias is not None
        ctx.probs, ctx.inv_total = probs, inv_total
        return lse - picked

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, e, target, lse, bias = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        probs, ctx.probs = ctx.probs, None  # consumed: G is built in its memory
        mm = torch.bfloat16 if ctx.bf16 else torch.float32
        with torch.autocast(h.device.type, enabled=False):
            e_mm = e.to(mm)
            if probs is not None:  # exp(z - m) per row: G = (that - total onehot) * g / total
                rows = torch.arange(len(h), device=h.device)
                probs[rows, target] -= ctx.inv_total.reciprocal()
                scale = (grad.float() * ctx.inv_total)[:, None]
                g = probs.mul_(scale)
                if mm != torch.float32:  # fp32 mul_ then a cast: faster than one mixed-dtype
                    # mul with out= (benchmarks/cpu_kernels.py)
                    g = probs.to(mm)
                    del probs
                return ((g @ e_mm).float().to(h.dtype), (g.T @ h.to(mm)).float().to(e.dtype),
                        None, None, None, None, None)
            gh = torch.empty_like(h, dtype=torch.float32)
            ge = torch.zeros_like(e, dtype=torch.float32)
            for s in range(0, len(h), ctx.chunk):
                hc = h[s : s + ctx.chunk]
                p = _logits(hc, e, bias, ctx.bf16).sub_(lse[s : s + ctx.chunk, None])
                p = torch.exp(p.clamp_min_(EXP_FLOOR), out=p)
                p[torch.arange(len(hc), device=h.device), target[s : s + ctx.chunk]] -= 1.0
                p = p.mul_(grad[s : s + ctx.chunk, None].float()).to(mm)
                gh[s : s + ctx.chunk] = (p @ e_mm).float()
                ge += (p.T @ hc.to(mm)).float()
        return gh.to(h.dtype), ge.to(e.dtype), None, None, None, None, None


def chunked_softmax_ce_rows(h: torch.Tensor, e: torch.Tensor, target: torch.Tensor,
                            bias: torch.Tensor | None = None, chunk: int = 256,
                            bf16: bool = False) -> torch.Tensor:
    """Per-row softmax cross-entropy ``[P]``:
    ``logsumexp_j (h_p . E_j + b_j) - (h_p . E_{y_p} + b_{y_p})`` against all rows of
    ``e [N, d]`` (targets ``[P]`` index ``e``), chunked over P; see the module docstring."""
    if len(h) == 0:
        return h.sum(1) * 0.0 + e.sum() * 0.0
    pad = 0
    if bf16 and len(h) % chunk:
        # oneDNN builds a bf16 matmul kernel per new shape, dearer than the matmul: zero
        # rows pad P to whole chunks, so the shapes repeat from step to step; a padded row
        # gets upstream gradient 0, hence a zero row of G, and its loss is cut off
        pad = chunk - len(h) % chunk
        h = torch.cat([h, h.new_zeros(pad, h.shape[1])])
        target = torch.cat([target, target.new_zeros(pad)])
    keep = torch.is_grad_enabled() and (h.requires_grad or e.requires_grad)
    return _ChunkedCE.apply(h, e, target, bias, int(chunk), bool(bf16), keep)[: len(target) - pad]


def chunked_softmax_ce(h: torch.Tensor, e: torch.Tensor, target: torch.Tensor,
                       bias: torch.Tensor | None = None, chunk: int = 256,
                       bf16: bool = False) -> torch.Tensor:
    """Mean softmax cross-entropy of ``h [P, d]`` against all rows of ``e [N, d]``
    (targets ``[P]`` index ``e``), chunked over P; see the module docstring."""
    if len(h) == 0:
        return (h.sum() + e.sum()) * 0.0
    return chunked_softmax_ce_rows(h, e, target, bias, chunk, bf16).mean()

"""Weight quantization per output channel: round-to-nearest, or GPTQ.

GPTQ (Frantar et al., 2023) quantizes the input columns one at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse of the layer's input
Hessian ``H = X^T X``, which minimises ``||X W^T - X Q^T||`` far better than rounding alone at low
bit widths. Scales are the round-to-nearest ones (row absmax), so both methods give integer levels
in the same range.
"""

from __future__ import annotations

from typing import Optional

import torch

from spikemllm_sj.neurons import IntLevels, absmax_scale, quantize

__all__ = ["quantize_weight", "gptq"]


def quantize_weight(
    weight: torch.Tensor, levels: IntLevels, hessian: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer levels ``[out, in]`` and per-row scales ``[out, 1]`` of ``weight`` ``[out, in]``
    (float32 levels); GPTQ when the input ``hessian`` ``[in, in]`` is given, else round-to-nearest."""
    # The scale is computed in the weight's own dtype, the one it is stored in for rescaling.
    scale = absmax_scale(weight.detach(), levels, "token").float()
    w = weight.detach().float()
    if hessian is None:
        return quantize(w, scale, levels), scale
    return gptq(w, scale, levels, hessian), scale


def gptq(weight: torch.Tensor, scale: torch.Tensor, levels: IntLevels, hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """GPTQ levels of ``weight`` ``[out, in]`` with fixed row ``scale`` ``[out, 1]``.

    :param hessian: ``X^T X`` of the layer's inputs, ``[in, in]``.
    :param damp: added to the Hessian's diagonal, as a fraction of its mean, for a stable inverse.
    """
    n = weight.shape[1]
    if hessian.shape != (n, n):
        raise ValueError(f"hessian must be [{n}, {n}] for a weight with {n} inputs, got {tuple(hessian.shape)}")
    h = hessian.double().clone()
    w = weight.double().clone()
    dead = torch.diagonal(h) == 0  # inputs never active: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(n, dtype=h.dtype)
    # Upper Cholesky factor of H^-1: row i holds the error-propagation weights of column i.
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scale.double()
    q = torch.empty_like(w)
    for i in range(n):
        q[:, i : i + 1] = quantize(w[:, i : i + 1], s, levels)
        err = (w[:, i] - q[:, i] * s[:, 0]) / h_inv[i, i]
        w[:, i + 1 :] -= err[:, None] * h_inv[i, i + 1 :][None, :]
    return q.float()

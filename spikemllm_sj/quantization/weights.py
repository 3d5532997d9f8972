"""Weight quantization per output channel: round-to-nearest, or GPTQ.

GPTQ (Frantar et al., 2023) quantizes the input columns one at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse of the layer's input
Hessian ``H = X^T X``, which minimises ``||X W^T - X Q^T||`` far better than rounding alone at low
bit widths. Both methods take the same per-row scales: the row's absmax over ``qmax``, or with
MSE clipping (as GPTQ's and QuaRot's implementations search it) the clip ratio of the row whose
rounded levels are closest to the row in squared error.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from spikemllm_sj.neurons import IntLevels, absmax_scale, quantize, scale_from_absmax

__all__ = ["quantize_weight", "mse_scale", "gptq"]


def mse_scale(weight: torch.Tensor, levels: IntLevels, ratios: Sequence[float]) -> torch.Tensor:
    """Per-row scales ``[out, 1]`` of ``weight`` ``[out, in]`` (float32): for each row, the clip
    ratio of ``ratios`` whose round-to-nearest levels give the least squared error (ties: the
    larger ratio, i.e. the first in ``ratios`` when they decrease)."""
    w = weight.detach().float()
    amax = w.abs().amax(-1, keepdim=True)
    best, best_error = None, None
    for ratio in ratios:
        scale = scale_from_absmax(amax * ratio, levels)
        error = (quantize(w, scale, levels) * scale - w).pow(2).sum(-1, keepdim=True)
        if best is None:
            best, best_error = scale, error
        else:
            better = error < best_error
            best, best_error = torch.where(better, scale, best), torch.where(better, error, best_error)
    return best


def quantize_weight(
    weight: torch.Tensor, levels: IntLevels, hessian: Optional[torch.Tensor] = None, clip_ratios: Sequence[float] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer levels ``[out, in]`` and per-row scales ``[out, 1]`` of ``weight`` ``[out, in]``
    (float32 levels); GPTQ when the input ``hessian`` ``[in, in]`` is given, else round-to-nearest.

    :param clip_ratios: search the rows' scales over these clip ratios (:func:`mse_scale`);
        empty: each row's absmax.
    """
    # The scale is computed in the weight's own dtype, the one it is stored in for rescaling.
    if clip_ratios:
        scale = mse_scale(weight, levels, clip_ratios)
    else:
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

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


def gptq(
    weight: torch.Tensor, scale: torch.Tensor, levels: IntLevels, hessian: torch.Tensor, damp: float = 0.01, block: int = 128
) -> torch.Tensor:
    """GPTQ levels of ``weight`` ``[out, in]`` with fixed row ``scale`` ``[out, 1]``.

    :param hessian: ``X^T X`` of the layer's inputs, ``[in, in]``.
    :param damp: added to the Hessian's diagonal, as a fraction of its mean, for a stable inverse.
    :param block: columns per lazy batch: inside a block each column's error updates only the
        block's later columns; the block's errors reach the columns after it in one matmul (the
        paper's lazy batch updates: the same result, without rewriting the whole weight per column).
    """
    n = weight.shape[1]
    if hessian.shape != (n, n):
        raise ValueError(f"hessian must be [{n}, {n}] for a weight with {n} inputs, got {tuple(hessian.shape)}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
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
    for start in range(0, n, block):
        end = min(start + block, n)
        wb = w[:, start:end].clone()  # contiguous; the block's columns are not read after it
        errors = torch.empty_like(wb)
        for j in range(end - start):
            i = start + j
            q[:, i : i + 1] = quantize(wb[:, j : j + 1], s, levels)
            errors[:, j] = (wb[:, j] - q[:, i] * s[:, 0]) / h_inv[i, i]
            wb[:, j + 1 :] -= errors[:, j : j + 1] * h_inv[i, i + 1 : end][None, :]
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return q.float()

"""Spike-driven matrix products: integer operands selected by spikes, integrated over time steps.

A spike-driven product adds the rows of an integer matrix that each step's spikes select (a
ternary spike adds or subtracts) and integrates the steps with the code's weights by Horner's
rule. The result is the integer product of the encoded levels with that matrix, computed
exactly: the accumulation dtype is chosen so that no partial sum exceeds the range where
floating point holds every integer.
"""

from __future__ import annotations

import torch

__all__ = ["exact_dtype", "spike_matmul"]

_EXACT_INT = {torch.float32: 1 << 24, torch.float64: 1 << 53}


def exact_dtype(max_abs_result: float, dtype: torch.dtype = torch.float32) -> torch.dtype:
    """``dtype`` if it represents every integer up to ``max_abs_result``, else float64."""
    if dtype in _EXACT_INT and max_abs_result < _EXACT_INT[dtype]:
        return dtype
    if max_abs_result >= _EXACT_INT[torch.float64]:
        raise ValueError(f"an integer accumulation of up to {max_abs_result:.3g} is not exact even in float64")
    return torch.float64


def spike_matmul(spikes: torch.Tensor, other: torch.Tensor, leak: int) -> torch.Tensor:
    """``sum_t leak**(T-1-t) * (spikes[t] @ other)``: ``[T, ..., M, K] x [..., K, N] -> [..., M, N]``.

    ``spikes`` hold -1/0/+1 (or 0/1), ``other`` integer values; both in the accumulation dtype.
    """
    if spikes.dim() < 3:
        raise ValueError(f"spikes must be [T, ..., M, K], got shape {tuple(spikes.shape)}")
    acc = torch.matmul(spikes[0], other)
    for s in spikes[1:]:
        acc.mul_(leak).add_(torch.matmul(s, other))
    return acc

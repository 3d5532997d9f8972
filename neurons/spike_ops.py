"""Spike-driven matrix products: integer operands selected by spikes, integrated over time steps.

A spike-driven product adds the rows of an integer matrix that each step's spikes select (a
ternary spike adds or subtracts) and integrates the steps with the code's weights by Horner's
rule. The result is the integer product of the encoded levels with that matrix, computed
exactly: the accumulation dtype is chosen so that no partial sum exceeds the range where
floating point holds every integer.

Counting: SpikingJelly's op counters (``op_counter.SynOpCounter``, ``ACCounter`` and the energy
models built on them) run as a ``TorchDispatchMode`` and take an operand of ``mm`` / ``bmm`` as
spikes only when it is binary. While such a mode is active, each step's product is computed as
``pos @ other - neg @ other`` on the two binary planes of the spikes
(:func:`~spikemllm_sj.neurons.binary_planes`): the same exact integers, and each counter sees one
accumulation per spike (+1 or -1) and fan-out. Otherwise it is one ``spikes[t] @ other``.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .stats import binary_planes

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
    Under a (non-infrastructure) ``TorchDispatchMode``, each step runs on the binary planes (see
    the module docstring).
    """
    if spikes.dim() < 3:
        raise ValueError(f"spikes must be [T, ..., M, K], got shape {tuple(spikes.shape)}")
    product = _planes_matmul if is_in_torch_dispatch_mode(include_infra_modes=False) else torch.matmul
    acc = product(spikes[0], other)
    for s in spikes[1:]:
        acc.mul_(leak).add_(product(s, other))
    return acc


def _planes_matmul(spikes: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``spikes @ other`` as ``pos @ other - neg @ other``: both exact integers, so the same result."""
    pos, neg = binary_planes(spikes)
    return torch.matmul(pos, other).sub_(torch.matmul(neg, other))

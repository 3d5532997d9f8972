"""Orthonormal Hadamard matrices, the rotations of :class:`~spikemllm_sj.quantization.methods.Hadamard`
and QuaRot."""

from __future__ import annotations

import torch

__all__ = ["hadamard_matrix"]


def hadamard_matrix(n: int) -> torch.Tensor:
    """Orthonormal ``[n, n]`` float64: Sylvester's Hadamard matrix for the largest power-of-two block
    ``2**k`` dividing ``n``, repeated on the diagonal (``I_{n / 2^k} (x) H_{2^k}``), divided by
    ``sqrt(2**k)``. Symmetric, so it is its own inverse."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    block = n & -n  # largest power of two dividing n
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return torch.kron(torch.eye(n // block, dtype=torch.float64), h / block**0.5)

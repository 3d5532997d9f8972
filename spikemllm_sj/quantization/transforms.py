"""Input transforms of a linear layer: exactly invertible, non-spiking maps ``x -> x'`` whose
inverse a quantization method folds into the weight, so that ``x' W'^T = x W^T``.

A transform runs on decoded values (it is part of the layer's non-spiking work) before the input
is quantized and encoded as spikes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["InputTransform", "ChannelDivide", "Rotation"]


class InputTransform(nn.Module):
    """Base of the input transforms: ``forward`` maps ``[..., in] -> [..., in]``."""

    def input_absmax(self, channel_absmax: torch.Tensor) -> float:
        """The largest magnitude of the transformed input, given the largest magnitude of each
        input channel ``[in]`` (what static activation scales are calibrated from).

        :raises ValueError: the transform mixes channels, so per-channel ranges do not bound it.
        """
        raise ValueError(
            f"static activation scales are not supported with {type(self).__name__}: it mixes channels, so "
            "its range does not follow from per-channel ranges; use act_scales='dynamic'"
        )

    def matrix(self, size: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """The transform as a matrix ``A`` ``[in, in]`` (``x' = x A``), e.g. to map a Hessian."""
        return self(torch.eye(size, dtype=dtype, device=device))


class ChannelDivide(InputTransform):
    """``x / s`` per input channel (a fixed per-channel gain, foldable into the preceding norm)."""

    def __init__(self, s: torch.Tensor):
        super().__init__()
        self.register_buffer("s", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.s.to(x.dtype)

    def input_absmax(self, channel_absmax: torch.Tensor) -> float:
        return float((channel_absmax / self.s).max())


class Rotation(InputTransform):
    """``x @ R`` with an orthonormal ``R`` ``[in, in]``."""

    def __init__(self, r: torch.Tensor):
        super().__init__()
        self.register_buffer("r", r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.r.to(x.dtype)

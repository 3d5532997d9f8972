"""Integer activation levels: the quantizer that every spike code must reproduce exactly.

A quantized activation is ``q * scale`` with integer ``q`` in ``[qmin, qmax]``:

* signed (symmetric) with ``L`` levels: ``q`` in ``-(L/2 - 1) .. L/2 - 1`` (the code ``-L/2`` of the
  two's-complement range is left unused, so the range is symmetric);
* unsigned with ``L`` levels: ``q`` in ``0 .. L - 1``.

Rounding is *round half up*, ``floor(x / scale + 1/2)``, the rule a fixed-point neuron with a
half-step bias implements. It differs from ``torch.round`` (half to even) only on exact ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "IntLevels",
    "Granularity",
    "round_half_up",
    "check_finite",
    "check_scale",
    "quantize",
    "fake_quantize",
    "absmax_scale",
    "scale_from_absmax",
]

Granularity = Literal["tensor", "channel", "token"]
_GRANULARITIES = ("tensor", "channel", "token")

# 2**16 levels keep every integer level and every partial sum of spikes exact in float32.
MAX_LEVELS = 1 << 16


@dataclass(frozen=True)
class IntLevels:
    """``levels`` integer levels, signed (symmetric) or unsigned.

    :param levels: number of levels ``L``, a power of two; at least 4 when signed, 2 when unsigned,
        at most 65536.
    :param signed: symmetric signed levels ``-(L/2-1)..L/2-1`` or unsigned ``0..L-1``.
    """

    levels: int
    signed: bool = True

    def __post_init__(self):
        if isinstance(self.levels, bool) or not isinstance(self.levels, int):
            raise TypeError(f"levels must be an int, got {type(self.levels).__name__}")
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool, got {type(self.signed).__name__}")
        low = 4 if self.signed else 2
        if not (low <= self.levels <= MAX_LEVELS) or self.levels & (self.levels - 1):
            kind = "signed" if self.signed else "unsigned"
            raise ValueError(
                f"levels must be a power of two in [{low}, {MAX_LEVELS}] for {kind} levels, "
                f"got {self.levels}"
            )

    @classmethod
    def from_bits(cls, bits: int, signed: bool = True) -> "IntLevels":
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
            raise ValueError(f"bits must be a positive int, got {bits!r}")
        return cls(1 << bits, signed)

    @property
    def bits(self) -> int:
        return int(math.log2(self.levels))

    @property
    def qmax(self) -> int:
        return self.levels // 2 - 1 if self.signed else self.levels - 1

    @property
    def qmin(self) -> int:
        return -self.qmax if self.signed else 0


def round_half_up(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``floor(x + 1/2)``, elementwise, in ``x``'s dtype (``inplace``: overwrite ``x``)."""
    return x.add_(0.5).floor_() if inplace else torch.floor(x + 0.5)


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor")
    # min and max propagate NaN and show infinities: one reading pass, no mask tensor.
    if x.numel() and not torch.isfinite(torch.stack(torch.aminmax(x.detach()))).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_scale(scale: torch.Tensor | float, x: torch.Tensor, name: str = "scale") -> torch.Tensor:
    """``scale`` as a tensor of ``x``'s dtype and device; it must be finite, positive and broadcast to ``x``."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    if not torch.isfinite(scale).all() or not (scale > 0).all():
        raise ValueError(f"{name} must be finite and > 0 everywhere")
    try:
        torch.broadcast_shapes(scale.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(scale.shape)} does not broadcast to the input shape {tuple(x.shape)}"
        ) from None
    return scale


def quantize(x: torch.Tensor, scale: torch.Tensor | float, levels: IntLevels) -> torch.Tensor:
    """Integer levels ``clamp(floor(x / scale + 1/2), qmin, qmax)`` (integer-valued, ``x``'s dtype)."""
    check_finite(x)
    scale = check_scale(scale, x)
    return round_half_up(x / scale, inplace=True).clamp_(levels.qmin, levels.qmax)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, levels: IntLevels) -> torch.Tensor:
    """``quantize(x, scale, levels) * scale``: the value a spike train of these levels decodes to."""
    return quantize(x, scale, levels) * check_scale(scale, x)


def absmax_scale(x: torch.Tensor, levels: IntLevels, granularity: Granularity = "tensor") -> torch.Tensor:
    """Scale that maps the largest magnitude onto ``qmax``.

    ``granularity`` picks what shares a scale: ``"tensor"`` (shape ``[]``), ``"channel"`` (the last
    dimension, shape ``[D]``) or ``"token"`` (everything but the last dimension, shape ``[..., 1]``).
    Where the absmax is zero (an all-zero slice), the scale is 1: every scale encodes zeros exactly.
    """
    check_finite(x)
    if granularity not in _GRANULARITIES:
        raise ValueError(f"granularity must be one of {_GRANULARITIES}, got {granularity!r}")
    a = x.detach().abs()
    if granularity == "tensor":
        amax = a.amax()
    elif granularity == "channel":
        amax = a.reshape(-1, a.shape[-1]).amax(0)
    else:
        amax = a.amax(-1, keepdim=True)
    return scale_from_absmax(amax, levels)


def scale_from_absmax(amax: torch.Tensor, levels: IntLevels) -> torch.Tensor:
    """``amax / qmax``, and 1 where ``amax`` is zero (an all-zero slice: any scale encodes it exactly)."""
    return torch.where(amax > 0, amax / levels.qmax, torch.ones_like(amax))

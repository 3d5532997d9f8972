"""Integer activation levels: the quantizer that every spike code must reproduce exactly.

A quantized activation is ``q * scale`` with integer ``q`` in ``[qmin, qmax]``:

* signed (symmetric) with ``L`` levels: ``q`` in ``-(L/2 - 1) .. L/2 - 1`` (the code ``-L/2`` of the
  two's-complement range is left unused, so the range is symmetric);
* unsigned with ``L`` levels: ``q`` in ``0 .. L - 1``.

Rounding is *round half up*, ``floor(x / scale + 1/2)``, the rule a fixed-point neuron with a
half-step bias implements. It differs from ``torch.round`` (half to even) only on exact ties.

Precision: levels, scales and membranes are held in :func:`level_dtype` (float32 at least: fp16
holds integers only up to 2048, bf16 up to 256, and a small fp16 absmax divided by ``qmax``
underflows to 0). The quotient ``x / scale`` is the exact rational one for fp16 and bf16 inputs
(it is taken in float64, see :func:`divide_by_scale`) and the quotient rounded to ``x``'s dtype
for float32 and float64 inputs; its rounding (:func:`round_half_up`) is exact in every dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch

__all__ = [
    "IntLevels",
    "Granularity",
    "level_dtype",
    "round_half_up",
    "divide_by_scale",
    "check_finite",
    "check_scale",
    "quantize",
    "fake_quantize",
    "absmax_scale",
    "scale_from_absmax",
    "mean_threshold_scale",
]

Granularity = Literal["tensor", "channel", "token"]
_GRANULARITIES = ("tensor", "channel", "token")

# 2**24 levels keep every integer level (|q| < 2**23) and every partial sum of spikes exact in
# float32. Codes with that many steps are not useful; the bound serves the mean-threshold code,
# whose counts reach 3 x the fan-in (18 bits for a 29568-wide layer).
MAX_LEVELS = 1 << 24


@dataclass(frozen=True)
class IntLevels:
    """``levels`` integer levels, signed (symmetric) or unsigned.

    :param levels: number of levels ``L``, a power of two; at least 4 when signed, 2 when unsigned,
        at most ``2**24``.
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


def level_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype that holds the levels, scales and membranes of inputs of ``dtype``: float32 for
    fp16, bf16 and float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def round_half_up(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``floor(x + 1/2)``, elementwise and exact, in ``x``'s dtype (``inplace``: ``x`` is overwritten).

    Not ``floor(x + 0.5)``: the sum rounds ``0.5 - ulp`` up to 1 in every floating-point dtype.
    ``torch.round`` (half to even) is exact, and ``x - round(x)`` is exact too (the two are within a
    factor of two, or ``round(x)`` is 0); a tie that ``round`` broke downwards (``x - round(x)``
    is exactly 1/2) goes up by one.
    """
    rounded = torch.round(x)
    tie_broken_down = torch.sub(x, rounded, out=x if inplace else None).eq_(0.5)
    return rounded.add_(tie_broken_down)


def divide_by_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` (``scale`` from :func:`check_scale`), in the precision whose rounding to
    levels is the definition's: float64 for fp16 and bf16 ``x``, ``level_dtype(x.dtype)`` otherwise.

    Why float64 suffices for half precision: ``x`` has at most 11 significant bits and the float32
    ``scale`` 24, so a quotient that is not a tie lies more than ``2**-25`` from every
    half-integer, while float64 moves a quotient below ``2**28`` (beyond, every level clamps) by
    less than ``2**28 * 2**-53 = 2**-25``. Float32 is not enough: ``3 / float32(1.2)``
    (2.4999999...) rounds to the tie 2.5.
    """
    wide = torch.float64 if x.dtype in (torch.float16, torch.bfloat16) else level_dtype(x.dtype)
    return x.to(wide) / scale.to(wide)


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor")
    # min and max propagate NaN and show infinities: one reading pass, no mask tensor.
    if x.numel() and not torch.isfinite(torch.stack(torch.aminmax(x.detach()))).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _require_positive(scale: torch.Tensor, name: str, where: str = "") -> None:
    bad = ~(torch.isfinite(scale) & (scale > 0))
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} must be finite and > 0 everywhere{where}, got {scale[index].item()!r}"
            + (f" at index {index}" if index else "")
        )


def check_scale(
    scale: torch.Tensor | float, x: Optional[torch.Tensor] = None, name: str = "scale"
) -> torch.Tensor:
    """``scale`` as a tensor, checked: not empty, finite and positive everywhere and, given the
    input ``x``, broadcasting to it and held in ``level_dtype(x.dtype)`` on ``x``'s device (and
    still positive there: a float64 scale can underflow in float32)."""
    given = torch.as_tensor(scale)
    if given.dtype == torch.bool or given.is_complex():
        raise TypeError(f"{name} must be a real number or a real tensor, got {given.dtype}")
    if not given.is_floating_point():
        given = given.to(torch.get_default_dtype())
    if given.numel() == 0:
        raise ValueError(f"{name} must have at least one element, got shape {tuple(given.shape)}")
    _require_positive(given, name)
    if x is None:
        return given
    # The common shapes (per tensor, per token [..., 1] of x) need no general broadcast check.
    per_token = given.dim() == x.dim() and given.shape[:-1] == x.shape[:-1] and given.shape[-1] == 1
    try:
        if not (given.dim() == 0 or per_token):
            torch.broadcast_shapes(given.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(given.shape)} does not broadcast to the input shape {tuple(x.shape)}"
        ) from None
    held = given.to(dtype=level_dtype(x.dtype), device=x.device)
    if held.dtype != given.dtype:
        _require_positive(held, name, f" in {held.dtype}")
    return held


def quantize(x: torch.Tensor, scale: torch.Tensor | float, levels: IntLevels) -> torch.Tensor:
    """Integer levels ``clamp(floor(x / scale + 1/2), qmin, qmax)``, in ``level_dtype(x.dtype)``
    (see the module docstring for the quotient's precision)."""
    check_finite(x)
    u = divide_by_scale(x, check_scale(scale, x))
    return round_half_up(u, inplace=True).clamp_(levels.qmin, levels.qmax).to(level_dtype(x.dtype))


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, levels: IntLevels) -> torch.Tensor:
    """``quantize(x, scale, levels) * scale`` (``level_dtype(x.dtype)``): the value a spike train
    of these levels decodes to."""
    return quantize(x, scale, levels) * check_scale(scale, x)


def absmax_scale(x: torch.Tensor, levels: IntLevels, granularity: Granularity = "tensor") -> torch.Tensor:
    """Scale that maps the largest magnitude onto ``qmax`` (:func:`scale_from_absmax`).

    ``granularity`` picks what shares a scale: ``"tensor"`` (shape ``[]``), ``"channel"`` (the last
    dimension, shape ``[D]``) or ``"token"`` (everything but the last dimension, shape ``[..., 1]``).
    """
    check_finite(x)
    if granularity not in _GRANULARITIES:
        raise ValueError(f"granularity must be one of {_GRANULARITIES}, got {granularity!r}")
    reduced = {"tensor": x.shape, "channel": x.shape[:-1], "token": x.shape[-1:]}[granularity]
    if x.dim() == 0 and granularity != "tensor" or 0 in reduced:
        raise ValueError(
            f"a {granularity} absmax needs x with elements to reduce over, got shape {tuple(x.shape)}"
        )
    a = x.detach().abs()
    if granularity == "tensor":
        amax = a.amax()
    elif granularity == "channel":
        amax = a.reshape(-1, a.shape[-1]).amax(0)
    else:
        amax = a.amax(-1, keepdim=True)
    return scale_from_absmax(amax, levels)


def scale_from_absmax(amax: torch.Tensor, levels: IntLevels | int | torch.Tensor) -> torch.Tensor:
    """``amax / qmax`` in ``level_dtype(amax.dtype)``, and 1 where ``amax`` is zero (an all-zero
    slice: any scale encodes it exactly). ``levels`` gives ``qmax``, is the level ``amax`` maps
    onto (an int), or is a tensor of such levels broadcasting to ``amax`` (one per token, when
    tokens have their own levels).

    A positive ``amax`` so small that ``amax / qmax`` would fall below the smallest normal number
    of that dtype gets that number as its scale instead (not 0, which no code can use): its levels
    then stay below ``qmax``, and it is still encoded exactly with the scale returned.
    """
    dtype = level_dtype(amax.dtype)
    amax = amax.to(dtype)
    if isinstance(levels, IntLevels):
        qmax = levels.qmax
    elif isinstance(levels, int) and not isinstance(levels, bool):
        if levels < 1:
            raise ValueError(f"the level amax maps onto must be a positive int, got {levels}")
        qmax = levels
    else:
        qmax = levels.to(dtype)
    scale = (amax / qmax).clamp_min_(torch.finfo(dtype).tiny)
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def mean_threshold_scale(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """Per-token threshold ``vth = mean(|x|) / divisor`` ``[..., 1]`` of ``x`` ``[..., D]``, in
    ``level_dtype(x.dtype)`` (SpikingBrain's ``dynamic_spikes`` with ``k = divisor``); 1 for an
    all-zero token, and the smallest normal number of that dtype for a positive one so small that
    the quotient would underflow (as :func:`scale_from_absmax`).

    The counts ``round(x / vth)`` it gives are at most ``divisor * D`` in magnitude, since
    ``max |x| <= D mean |x|``.
    """
    check_finite(x)
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"a per-token mean threshold needs x of shape [..., D] with D >= 1, got {tuple(x.shape)}")
    if isinstance(divisor, bool) or not isinstance(divisor, (int, float)) or not divisor > 0:
        raise ValueError(f"divisor must be a positive number, got {divisor!r}")
    dtype = level_dtype(x.dtype)
    mean = x.detach().to(dtype).abs().mean(-1, keepdim=True)
    vth = (mean / divisor).clamp_min_(torch.finfo(dtype).tiny)
    return torch.where(mean > 0, vth, torch.ones_like(vth))

"""Independent references for the exactness tests: written from the definitions, not from the code
under test. Rounding is done in exact rational arithmetic (``fractions.Fraction``), so no
floating-point ``floor(u + 0.5)`` (which rounds ``0.5 - ulp`` up) stands in for the definition.

The quantizer's definition (``spikemllm_sj.neurons.levels``): ``clamp(floor(x / scale + 1/2))``,
where ``x / scale`` is the exact rational quotient for half-precision ``x`` (fp16, bf16) and the
quotient rounded to ``x``'s dtype for float32 and float64; levels and scales are held in float32
at least.
"""

import math
from fractions import Fraction

import torch

LEVELS = (4, 8, 16, 32, 64, 128, 256)
HALF = (torch.float16, torch.bfloat16)


def qrange(levels: int, signed: bool) -> tuple[int, int]:
    return (-(levels // 2 - 1), levels // 2 - 1) if signed else (0, levels - 1)


def held_in(dtype: torch.dtype) -> torch.dtype:
    """The dtype that levels and scales of ``dtype`` inputs are held in: float32 at least."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_levels(x: torch.Tensor, scale, levels: int, signed: bool) -> torch.Tensor:
    """``clamp(floor(x / scale + 1/2))`` elementwise, rounded in rational arithmetic."""
    lo, hi = qrange(levels, signed)
    scale = torch.as_tensor(scale, dtype=held_in(x.dtype))
    if x.dtype in HALF:  # the exact quotient of the two values
        xs, ss = torch.broadcast_tensors(x.double(), scale.double())
        quotients = [Fraction(a) / Fraction(b) for a, b in zip(xs.flatten().tolist(), ss.flatten().tolist())]
    else:  # the quotient in x's dtype
        quotients = [Fraction(u) for u in (x / scale.to(x.dtype)).flatten().tolist()]
    q = [min(max(math.floor(u + Fraction(1, 2)), lo), hi) for u in quotients]
    shape = torch.broadcast_shapes(x.shape, scale.shape)
    return torch.tensor(q, dtype=held_in(x.dtype)).reshape(shape)


def reference_fake_quant(x: torch.Tensor, scale, levels: int, signed: bool) -> torch.Tensor:
    return reference_levels(x, scale, levels, signed) * torch.as_tensor(scale, dtype=held_in(x.dtype))


def boundary_values(levels: int, dtype=torch.float32) -> torch.Tensor:
    """Every half-integer and integer around the range, each with its float neighbours, plus zeros,
    extremes and values far out of range (in units of the scale)."""
    q = levels // 2 + 2
    grid = torch.arange(-2 * q, 2 * q + 1, dtype=dtype) / 2
    info = torch.finfo(dtype)
    up = torch.nextafter(grid, torch.full_like(grid, float("inf")))
    down = torch.nextafter(grid, torch.full_like(grid, float("-inf")))
    special = torch.tensor(
        [0.0, -0.0, info.tiny, -info.tiny, info.max, -info.max, 1e30, -1e30, levels * 1e3, -levels * 1e3],
        dtype=dtype,
    )
    return torch.cat([grid, up, down, special])

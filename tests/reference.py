"""Independent references for the exactness tests: written from the definitions, not from the code
under test (round half up, clamp to the symmetric or unsigned range)."""

import torch

LEVELS = (4, 8, 16, 32, 64, 128, 256)


def qrange(levels: int, signed: bool) -> tuple[int, int]:
    return (-(levels // 2 - 1), levels // 2 - 1) if signed else (0, levels - 1)


def reference_levels(x: torch.Tensor, scale, levels: int, signed: bool) -> torch.Tensor:
    lo, hi = qrange(levels, signed)
    scale = torch.as_tensor(scale, dtype=x.dtype)
    return torch.clamp(torch.floor(x / scale + 0.5), lo, hi)


def reference_fake_quant(x: torch.Tensor, scale, levels: int, signed: bool) -> torch.Tensor:
    return reference_levels(x, scale, levels, signed) * torch.as_tensor(scale, dtype=x.dtype)


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

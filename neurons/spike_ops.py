"""Spike-driven matrix products: integer operands selected by spikes, integrated over time steps.

A spike-driven product adds the rows of an integer matrix that each step's spikes select (a
ternary spike adds or subtracts) and integrates the steps with the code's weights by Horner's
rule. The result is the integer product of the encoded levels with that matrix, computed exactly
in integer arithmetic (:func:`integer_matmul`):

* the ``T`` steps of a train are one GEMM over the stacked steps ``[T * M, K] x [K, N]``, in int8
  operands with int32 accumulators (``torch._int_mm``) where both operands fit int8; otherwise in
  float32, split into limbs so that no partial sum leaves the range where float32 holds every
  integer;
* the Horner combination ``acc = leak * acc + P_t`` runs in int32, or int64 where the bound of the
  result says int32 could overflow: chosen before computing, never wrapping.

Counting: SpikingJelly's op counters (``op_counter.SynOpCounter``, ``ACCounter`` and the energy
models built on them) run as a ``TorchDispatchMode`` and take an operand of ``mm`` / ``bmm`` as
spikes only when it is binary. While such a mode is active, each step's product is computed as
``pos @ other - neg @ other`` on the two binary planes of the spikes
(:func:`~spikemllm_sj.neurons.binary_planes`), in float32: the same exact integers, and each
counter sees one accumulation per spike (+1 or -1) and fan-out.
"""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .stats import binary_planes

__all__ = ["exact_dtype", "int_mm_is_exact", "integer_dtype", "integer_matmul", "spike_matmul"]

_EXACT_INT = {torch.float32: 1 << 24, torch.float64: 1 << 53}
_INT32_MAX = (1 << 31) - 1
_INT8_MAX = 127


def exact_dtype(max_abs_result: float, dtype: torch.dtype = torch.float32) -> torch.dtype:
    """``dtype`` if it represents every integer up to ``max_abs_result``, else float64."""
    if dtype in _EXACT_INT and max_abs_result < _EXACT_INT[dtype]:
        return dtype
    if max_abs_result >= _EXACT_INT[torch.float64]:
        raise ValueError(f"an integer accumulation of up to {max_abs_result:.3g} is not exact even in float64")
    return torch.float64


def integer_dtype(max_abs_result: float) -> torch.dtype:
    """int32 if it holds every integer up to ``max_abs_result``, else int64."""
    if max_abs_result >= 1 << 63:
        raise ValueError(f"an integer accumulation of up to {max_abs_result:.3g} overflows int64")
    return torch.int32 if max_abs_result <= _INT32_MAX else torch.int64


def integer_matmul(a: torch.Tensor, b: torch.Tensor, a_max: int, b_max: int) -> torch.Tensor:
    """The exact product ``a @ b`` of integer-valued ``a`` ``[..., M, K]`` and ``b`` ``[K, N]`` or
    ``[..., K, N]`` (any dtypes; ``|a| <= a_max``, ``|b| <= b_max``).

    Int8 GEMMs with int32 accumulation (``torch._int_mm``) when both operands fit int8 and the
    bound ``a_max * b_max * K`` fits int32, on a device where a one-time check found it exact
    (:func:`int_mm_is_exact`; on CUDA also its shape rules: more than 16 rows per matrix, ``K`` and
    ``N`` multiples of 8): one GEMM for a 2-d ``b``, one per matrix for a batched
    ``b`` whose matrices are large enough (:data:`_BATCHED_INT_MM_WORK`). Otherwise float32 GEMMs
    (float64 where float32 products may be rounded, see :func:`_float32_exact`): in one piece
    when the bound is below ``2**24``, else with ``a`` split into limbs
    ``a = sum_j a_j * 2**(s*j)``, ``|a_j| <= 2**s`` and ``2**s * b_max * K < 2**24``, the limbs'
    products summed in int64; in float64 when not even one-bit limbs fit.

    :return: exact integers: int32 (``_int_mm``), float32 (one float32 GEMM), or
        :func:`integer_dtype` of the bound (limbs, float64).
    """
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"a and b must be matrices or batches of them, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    K = a.shape[-1]
    if b.shape[-2] != K:
        raise ValueError(f"a [..., M, K] and b [..., K, N] must share K, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    bound = float(a_max) * b_max * K
    out_dtype = integer_dtype(bound)
    int8 = a_max <= _INT8_MAX and b_max <= _INT8_MAX and out_dtype == torch.int32
    if int8 and b.dim() == 2 and _int_mm_shape_ok(a, b, a.numel() // K):
        a2 = a.reshape(-1, K).to(torch.int8)
        return torch._int_mm(a2, b.to(torch.int8)).reshape(*a.shape[:-1], b.shape[-1])
    if int8 and b.dim() > 2 and a.shape[-2] * K * b.shape[-1] >= _BATCHED_INT_MM_WORK and _int_mm_shape_ok(a, b, a.shape[-2]):
        return _batched_int_mm(a, b)
    per_unit = float(b_max) * K  # the bound of a product whose left operand is at most 1 in magnitude
    limb_bits = int(math.floor(math.log2((_EXACT_INT[torch.float32] - 1) / per_unit))) if per_unit >= 1 else 24
    if not _float32_exact(a.device) or limb_bits < 1:
        wide = exact_dtype(bound, torch.float64)
        return torch.matmul(a.to(wide), b.to(wide)).to(out_dtype)
    if bound < _EXACT_INT[torch.float32]:
        return torch.matmul(a.to(torch.float32), b.to(torch.float32))
    # With base**limbs > a_max, every limb (the last one signed: floor division) is at most base.
    base, limbs = 1 << limb_bits, 1
    while base**limbs <= a_max:
        limbs += 1
    bf, rest, acc = b.to(torch.float32), a.to(torch.int64), None
    for j in range(limbs):
        limb = rest if j == limbs - 1 else torch.remainder(rest, base)
        part = torch.matmul(limb.to(torch.float32), bf).to(torch.int64).mul_(1 << (limb_bits * j))
        acc = part if acc is None else acc.add_(part)
        rest = torch.div(rest - limb, base, rounding_mode="floor")
    return acc.to(out_dtype)


def _float32_exact(device: torch.device) -> bool:
    """Whether float32 GEMMs on ``device`` are exact on integers below ``2**24``: not when TF32
    (CUDA) or a lower ``torch.get_float32_matmul_precision()`` may round the operands."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    return not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)


# A batched product (attention: one matrix per head) runs as one int8 GEMM per matrix when each
# is at least this many multiply-adds; below, one float32 batched GEMM costs less than the loop.
_BATCHED_INT_MM_WORK = 1 << 20


def _batched_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``a`` ``[..., M, K]`` and ``b`` ``[..., K, N]`` (batch shapes broadcast), one
    ``torch._int_mm`` per matrix, into one int32 result."""
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.to(torch.int8).expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.to(torch.int8).expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    out = torch.empty(a3.shape[0], a3.shape[1], b3.shape[2], dtype=torch.int32, device=a.device)
    for i in range(a3.shape[0]):
        torch._int_mm(a3[i], b3[i], out=out[i])
    return out.reshape(*batch, a3.shape[1], b3.shape[2])


def _int_mm_shape_ok(a: torch.Tensor, b: torch.Tensor, rows: int) -> bool:
    """Whether ``torch._int_mm`` takes ``rows`` rows of ``a`` times ``b`` on their device, and is
    exact there (:func:`int_mm_is_exact`)."""
    if a.device.type == "cpu":
        return int_mm_is_exact(a.device)
    if a.device.type == "cuda":
        return rows > 16 and a.shape[-1] % 8 == 0 and b.shape[-1] % 8 == 0 and int_mm_is_exact(a.device)
    return False


_INT_MM_EXACT: dict[torch.device, bool] = {}


def int_mm_is_exact(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` gives exact int32 products on ``device``, checked once per device
    on the worst operands (every product ``+-127 * +-127``, their sums near the int16 limit a CPU
    without VNNI instructions may saturate at). Where not, :func:`integer_matmul` uses float32
    GEMMs instead."""
    device = torch.device(device)
    if device not in _INT_MM_EXACT:
        g = torch.Generator().manual_seed(0)
        a = torch.full((32, 64), 127, dtype=torch.int8)
        a[16:] = torch.randint(-127, 128, (16, 64), generator=g, dtype=torch.int8)
        b = torch.cat([torch.full((64, 8), 127, dtype=torch.int8), -torch.full((64, 8), 127, dtype=torch.int8),
                       torch.randint(-127, 128, (64, 16), generator=g, dtype=torch.int8)], dim=1)
        try:
            got = torch._int_mm(a.to(device), b.to(device)).cpu().long()
        except RuntimeError:
            _INT_MM_EXACT[device] = False
        else:
            _INT_MM_EXACT[device] = bool(torch.equal(got, a.long() @ b.long()))
    return _INT_MM_EXACT[device]


# Steps are stacked into one GEMM while their products [T, ..., M, N] hold at most this many
# elements (decode steps and short prompts, where one step's GEMM is too small to be efficient);
# beyond, each step's product is added into the running Horner sum as it is computed, so memory
# stays at two products (long prompts, attention scores).
STACKED_ELEMENTS = 1 << 22


def spike_matmul(spikes: torch.Tensor, other: torch.Tensor, leak: int, other_max: int) -> torch.Tensor:
    """``sum_t leak**(T-1-t) * (spikes[t] @ other)``: ``[T, ..., M, K] x [K, N] or [..., K, N] -> [..., M, N]``.

    ``spikes`` hold -1/0/+1 (or 0/1; ``torch.int8`` is what the integer GEMM reads), ``other``
    integer values of magnitude at most ``other_max`` (any dtype). Exact: the steps' products
    come from :func:`integer_matmul` (one GEMM over the stacked steps when they are small, see
    :data:`STACKED_ELEMENTS`), combined by Horner's rule in int32, int64 where the bound
    ``sum_t leak**t * other_max * K`` says int32 could overflow, or float32 where the products
    are float32 and the bound is below ``2**24``.

    Spikes that require gradients (a network being trained) take the float path in
    ``spikes.dtype``, differentiable. Under a (non-infrastructure) ``TorchDispatchMode``, each step
    runs on the binary planes (see the module docstring).
    """
    if spikes.dim() < 3:
        raise ValueError(f"spikes must be [T, ..., M, K], got shape {tuple(spikes.shape)}")
    T, K = spikes.shape[0], spikes.shape[-1]
    if spikes.requires_grad:
        acc = torch.matmul(spikes[0], other.to(spikes.dtype))
        for s in spikes[1:]:
            acc = acc * leak + torch.matmul(s, other.to(spikes.dtype))
        return acc
    bound = float(sum(leak**t for t in range(T))) * other_max * K  # |sum_t leak**(T-1-t) * s_t| <= sum_t leak**t
    if is_in_torch_dispatch_mode(include_infra_modes=False):
        steps = (_planes_matmul(s, other, other_max) for s in spikes)
    else:
        rows = spikes[0].numel() // K
        same_batch = other.dim() == 2 or tuple(spikes.shape[1:-2]) == tuple(other.shape[:-2])
        if same_batch and T * rows * other.shape[-1] <= STACKED_ELEMENTS:
            steps = _stacked_steps(spikes, other, other_max).unbind(0)
        else:
            steps = (integer_matmul(s, other, 1, other_max) for s in spikes)
    acc = None
    for product in steps:
        if acc is None:
            float_ok = product.dtype == torch.float32 and bound < _EXACT_INT[torch.float32]
            acc = product.clone() if float_ok else product.to(integer_dtype(bound), copy=True)
        else:
            acc.mul_(leak).add_(product if product.dtype == acc.dtype else product.to(acc.dtype))
    return acc


def _stacked_steps(spikes: torch.Tensor, other: torch.Tensor, other_max: int) -> torch.Tensor:
    """The products of every step ``[T, ..., M, N]``, as one GEMM over the stacked steps."""
    T = spikes.shape[0]
    if other.dim() == 2:  # [T * ... * M, K] x [K, N]
        return integer_matmul(spikes, other, 1, other_max)
    # Batched: the steps next to the rows, [..., T * M, K] x [..., K, N].
    stacked = spikes.movedim(0, -3)
    rows = stacked.reshape(*stacked.shape[:-3], T * stacked.shape[-2], stacked.shape[-1])
    out = integer_matmul(rows, other, 1, other_max)
    return out.reshape(*stacked.shape[:-1], out.shape[-1]).movedim(-3, 0)


def _planes_matmul(spikes: torch.Tensor, other: torch.Tensor, other_max: int) -> torch.Tensor:
    """``spikes @ other`` as ``pos @ other - neg @ other``, in float32 where each plane's product
    (at most ``other_max * K``) is exact in it."""
    dtype = exact_dtype(float(other_max) * spikes.shape[-1], torch.float32 if _float32_exact(spikes.device) else torch.float64)
    pos, neg = binary_planes(spikes.to(dtype))
    other = other.to(dtype)
    return torch.matmul(pos, other).sub_(torch.matmul(neg, other))

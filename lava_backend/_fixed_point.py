"""Fixed-point helpers shared by the Lava processes, their models and the network checks."""

from __future__ import annotations

import numpy as np
import torch

from spikemllm_sj.neurons import FIXED_STEP_SCHEMES, SpikeCode

__all__ = ["INT32_MAX", "power_of_two_exponent", "check_fixed_steps", "check_weights", "float_words", "words_float"]

INT32_MAX = int(np.iinfo(np.int32).max)


def power_of_two_exponent(value: int, name: str) -> int:
    """``log2(value)`` for a positive power of two (fixed-point models shift by it)."""
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a positive power of two, got {value}")
    return value.bit_length() - 1


def check_fixed_steps(code: SpikeCode, name: str) -> None:
    """Refuse a code whose steps depend on the values: the processes' time line is planned with
    each code's own steps (``ValueError`` naming ``name``)."""
    if code.data_dependent:
        raise ValueError(
            f"{name}: the Lava backend maps codes with fixed steps; {code.scheme!r} takes as many steps as each "
            f"call's largest count needs (use one of {', '.join(FIXED_STEP_SCHEMES)})"
        )


def check_weights(weights: np.ndarray, code: SpikeCode, weight_bits: int, name: str = "weights") -> np.ndarray:
    """``weights`` ``[out, in]`` as int32, after checking that they fit the synapse.

    The weights must be integers in ``[-2**(weight_bits-1), 2**(weight_bits-1) - 1]``, and every
    partial sum of the window, at most ``max_row sum|W| * sum(code.weights)`` in magnitude (spikes are
    -1/0/+1), must fit the int32 accumulator of the fixed-point model. Both models accept the same
    layers. Nothing is clipped or wrapped: a violation raises ``ValueError``, as does a code with
    data-dependent steps (:func:`check_fixed_steps`).
    """
    check_fixed_steps(code, name)
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) or not 2 <= weight_bits <= 16:
        raise ValueError(f"weight_bits must be an int in [2, 16], got {weight_bits!r}")
    weights = np.asarray(weights)
    if weights.ndim != 2 or 0 in weights.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array [out, in], got shape {weights.shape}")
    if weights.dtype.kind not in "iuf":
        raise ValueError(f"{name} must have an integer or floating-point dtype, got {weights.dtype}")
    if weights.dtype.kind == "f" and not np.array_equal(weights, np.rint(weights)):
        raise ValueError(f"{name} must hold integer values (floats are accepted if integer-valued)")
    low, high = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
    w_min, w_max = weights.min(), weights.max()
    if w_min < low or w_max > high:
        raise ValueError(
            f"{name} must lie in [{low}, {high}] (signed {weight_bits}-bit fixed point), got values in "
            f"[{w_min:g}, {w_max:g}]"
        )
    weights = weights.astype(np.int64)
    bound = int(np.abs(weights).sum(axis=1).max()) * sum(code.weights)
    if bound > INT32_MAX:
        raise ValueError(
            f"{name} [{weights.shape[0]}, {weights.shape[1]}] with {code.scheme} spikes of {code.steps} "
            f"steps can accumulate |W @ q| up to {bound}, beyond the int32 accumulator ({INT32_MAX}): "
            f"use fewer levels, fewer inputs or smaller weights"
        )
    return weights.astype(np.int32)


def float_words(values: torch.Tensor) -> np.ndarray:
    """Values as the int32 words of their float32 bits, flattened (int64): side values and logits
    travel between processes as 32-bit words (Lava's fixed-point ports carry int32), losslessly
    for float32, bf16 and fp16 tensors.

    :raises TypeError: for float64 values, which 32 bits cannot carry.
    """
    if values.dtype == torch.float64:
        raise TypeError("values travel between Lava processes as float32 words: float64 tensors are not supported")
    return values.detach().cpu().to(torch.float32).contiguous().numpy().view(np.int32).astype(np.int64).reshape(-1)


def words_float(words: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`float_words` (the words arrive as int32 or, from float ports, float64)."""
    return torch.from_numpy(np.asarray(words).astype(np.int64).astype(np.int32).view(np.float32).copy())

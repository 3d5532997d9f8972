"""Token tensors to Lava's per-step streams and back, with the checks of ``run_lava``'s ``inputs``."""

from __future__ import annotations

import numpy as np
import torch

from spikemllm_sj.lava_backend.network import LavaNetwork
from spikemllm_sj.neurons import check_finite, quantize

__all__ = ["source_data", "window_outputs"]


def source_data(network: LavaNetwork, inputs: torch.Tensor) -> tuple[np.ndarray, int]:
    """What the source process sends, ``[size, n_tokens * T]`` (Lava's time axis last), and ``n_tokens``.

    A network that encodes gets each token's value at the first step of its window and zeros
    after; one fed spikes gets the trains as they are.
    """
    if not torch.is_tensor(inputs):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dtype == torch.bool or inputs.is_complex():
        raise TypeError(f"inputs must hold real numbers, got dtype {inputs.dtype}")
    inputs = inputs.detach().cpu()
    steps, size = network.steps, network.size
    if network.encode:
        if inputs.dim() != 2 or inputs.shape[0] < 1 or inputs.shape[1] != size:
            raise ValueError(
                f"inputs must have shape [n_tokens, {size}] (one row per token, n_tokens >= 1), got "
                f"{tuple(inputs.shape)}"
            )
        values = _token_values(network, inputs)
        data = np.zeros((size, inputs.shape[0], steps), dtype=values.dtype)
        data[:, :, 0] = values.T
    else:
        if inputs.dim() != 3 or inputs.shape[0] != steps or inputs.shape[1] < 1 or inputs.shape[2] != size:
            raise ValueError(
                f"inputs (spike trains) must have shape [T={steps}, n_tokens, {size}] with n_tokens >= 1, "
                f"got {tuple(inputs.shape)}"
            )
        allowed = (-1, 0, 1) if network.code.ternary else (0, 1)
        if not torch.isin(inputs, torch.tensor(allowed, dtype=inputs.dtype)).all():
            raise ValueError(f"inputs (spike trains of {network.code.scheme}) must hold only {allowed}")
        dtype = np.float64 if network.precision == "floating_pt" else np.int32
        data = inputs.permute(2, 1, 0).numpy().astype(dtype)
    return data.reshape(size, -1), data.shape[1]


def _token_values(network: LavaNetwork, inputs: torch.Tensor) -> np.ndarray:
    """Per-token inputs ``[n_tokens, size]`` in the models' units: activations (float64) or levels (int32)."""
    if inputs.is_floating_point():
        check_finite(inputs, "inputs")
        if network.precision == "floating_pt":
            return inputs.double().numpy()
        # Rounded in the input's own dtype, as SpikeCodingNode does; clamping to the code's levels
        # leaves the spikes of a value presented once unchanged and keeps the membrane in int32.
        return quantize(inputs, network.scale, network.code.levels).numpy().astype(np.int32)
    if network.precision == "floating_pt":
        raise TypeError(
            f"inputs: a floating_pt network takes activations (a floating-point tensor), got dtype "
            f"{inputs.dtype}; integer levels need a fixed_pt network"
        )
    low, high = int(inputs.min()), int(inputs.max())
    int32 = np.iinfo(np.int32)
    if low < int32.min or high > int32.max:
        raise ValueError(f"inputs (integer levels) must lie in the int32 range, got values in [{low}, {high}]")
    return inputs.numpy().astype(np.int32)


def window_outputs(network: LavaNetwork, messages: np.ndarray, n_tokens: int) -> torch.Tensor:
    """The result of ``run_lava`` from the messages the sink received.

    Neurons alone: ``messages`` ``[n_tokens * T, size]`` become spikes ``[T, n_tokens, size]``
    (int8), the layout of ``SpikeCodingNode.encode``. With a layer: ``messages`` holds the
    window ends only, ``[n_tokens, out]``, returned as int64 (they are exact integers).
    """
    if network.layer is None:
        spikes = messages.reshape(n_tokens, network.steps, network.size).transpose(1, 0, 2)
        return torch.from_numpy(spikes.astype(np.int8))
    return torch.from_numpy(messages.astype(np.int64))

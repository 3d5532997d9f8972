"""What a converter hands to the Lava backend for one spike-driven linear layer (needs no Lava)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spikemllm_sj.lava_backend._fixed_point import check_weights
from spikemllm_sj.neurons import SpikeCode

__all__ = ["SpikeLinearSpec"]


@dataclass(frozen=True, eq=False)
class SpikeLinearSpec:
    """A spike-driven linear layer ``y = (W @ q) * scale`` (times the weights' own scale).

    Its input activation ``x`` ``[n_tokens, in]`` is quantized to the levels
    ``q = quantize(x, scale, code.levels)`` and carried by spikes of ``code``; the layer
    accumulates the integer current ``W @ q`` ``[n_tokens, out]`` from them.

    :param weight: integer weights ``[out, in]`` (an integer tensor, or integer-valued floats as
        :func:`spikemllm_sj.neurons.quantize` returns); stored as a CPU ``int32`` copy.
    :param code: spike code of the input activation.
    :param scale: per-tensor quantization scale of the input activation (> 0).
    :param weight_bits: width of the signed weights: they must lie in
        ``[-2**(weight_bits-1), 2**(weight_bits-1) - 1]``.
    """

    weight: torch.Tensor
    code: SpikeCode
    scale: float
    weight_bits: int = 8

    def __post_init__(self):
        if not torch.is_tensor(self.weight):
            raise TypeError(f"weight must be a torch.Tensor, got {type(self.weight).__name__}")
        if not isinstance(self.code, SpikeCode):
            raise TypeError(f"code must be a SpikeCode, got {type(self.code).__name__}")
        scale = self.scale.item() if torch.is_tensor(self.scale) and self.scale.numel() == 1 else self.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be one finite number > 0 (a per-tensor scale), got {self.scale!r}")
        weight = self.weight.detach().cpu()
        # numpy has no bfloat16; float64 holds every integer weight exactly.
        weight = weight.double() if weight.is_floating_point() else weight
        weight = check_weights(weight.numpy(), self.code, self.weight_bits, name="weight")
        # Frozen: normalize the fields once, here.
        object.__setattr__(self, "weight", torch.from_numpy(weight))
        object.__setattr__(self, "scale", float(scale))

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

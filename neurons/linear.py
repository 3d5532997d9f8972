"""``SpikeDrivenLinear``: the linear layer of a deep TC-LIF network built by hand with SpikingJelly.

TC-LIF spikes are the signed binary digits of an integer level, most significant first: the spike
of step ``t`` of a ``T``-step train weighs ``2**(T-1-t)`` (:attr:`SpikeCode.weights`). The usual
SpikingJelly patterns weigh every step alike, and so give wrong values on them:

* a mean over ``T`` of the spikes, or of a layer's per-step outputs, as the readout;
* a ``layer.Linear`` with a bias in step mode ``'m'``: the bias is added at every step, and the
  steps are then integrated with their weights, ``2**T - 1`` biases in all;
* ``TCLIFNode -> layer.Linear -> TCLIFNode`` without decoding: the second node rounds each step's
  partial current on its own and fires its most significant digit before the less significant
  input digits have arrived.

:class:`SpikeDrivenLinear` reads its input spikes as they were written: each step adds the integer
weights its spikes select, the steps are integrated by Horner's rule (the weighted readout,
:func:`~spikemllm_sj.neurons.spike_matmul`), which gives the integer product of the input levels
with the weights exactly; the input and weight scales and the bias are applied once, after. Its
output is the input current of the next coder (:func:`~spikemllm_sj.neurons.input_current`): the
decoded value at the first step and zeros after, so that ``nn.Sequential(TCLIFNode(...,
step_mode="m"), SpikeDrivenLinear(...), TCLIFNode(...), ...)`` computes its quantized ANN exactly.
Elementwise functions with ``f(0) = 0`` (ReLU, GELU, SiLU) may sit between a layer and the next
node: applied to the current, they act on the value alone.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base

from .levels import IntLevels, absmax_scale, level_dtype, quantize
from .nodes import SpikeCodingNode, input_current
from .spike_ops import exact_dtype, spike_matmul

__all__ = ["SpikeDrivenLinear"]


class SpikeDrivenLinear(nn.Module, base.MultiStepModule):
    """``nn.Linear`` on the spikes of a spike-coding node: ``[T, N, *, in] -> [T_out, N, *, out]``.

    ``y = acc * s_in * s_w + bias``, ``acc`` the exact integer product of the input levels with the
    integer weights (accumulated from the spikes), ``s_in`` the input node's scale, ``s_w`` the
    weights' per-output-channel scale; ``y`` is in ``level_dtype`` of the spikes' dtype (float32 at
    least), at the first of ``T_out`` steps, zeros after.

    :param linear: the float layer; its weight is quantized per output channel to
        ``weight_levels`` (round half up, scale ``absmax / qmax`` of each row), its bias kept in float.
    :param input_node: the node whose spikes the layer reads: its code and its scale (one per
        tensor, in the input's units; a copy is kept, so later changes to the node do not reach it).
    :param weight_levels: signed integer weight levels (default 8 bits).
    :param out_steps: steps of the output current, the ``T`` of the next node (default: the input's ``T``).
    """

    def __init__(
        self,
        linear: nn.Linear,
        input_node: SpikeCodingNode,
        weight_levels: IntLevels = IntLevels(256),
        out_steps: Optional[int] = None,
    ):
        super().__init__()
        self.step_mode = "m"
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if not isinstance(input_node, SpikeCodingNode):
            raise TypeError(f"input_node must be a SpikeCodingNode (e.g. TCLIFNode), got {type(input_node).__name__}")
        if not isinstance(weight_levels, IntLevels) or not weight_levels.signed:
            raise ValueError(f"weight_levels must be signed IntLevels, got {weight_levels!r}")
        if input_node.code.scale_rule == "mean":
            raise ValueError(
                f"input_node codes {input_node.code.scheme!r}, whose scale is each token's mean threshold: it does "
                "not factor out of the integer accumulation as one per-tensor scale"
            )
        if input_node.scale.numel() != 1:
            raise ValueError(
                f"input_node.scale must be one scale per tensor (shape []), got shape {tuple(input_node.scale.shape)}: "
                "a per-channel or per-token scale does not factor out of the integer accumulation"
            )
        out_steps = input_node.steps if out_steps is None else out_steps
        if isinstance(out_steps, bool) or not isinstance(out_steps, int) or out_steps < 1:
            raise ValueError(f"out_steps must be a positive int, got {out_steps!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.input_code = input_node.code
        self.weight_levels = weight_levels
        self.out_steps = out_steps
        weight = linear.weight.detach().to(level_dtype(linear.weight.dtype))
        weight_scale = absmax_scale(weight, weight_levels, "token")  # [out, 1]
        self.register_buffer("qweight", quantize(weight, weight_scale, weight_levels))  # [out, in], integers
        self.register_buffer("weight_scale", weight_scale.reshape(-1))  # [out]
        self.register_buffer("input_scale", input_node.scale.detach().clone().reshape(()))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        """:param spikes: ``[T, N, *, in]`` from the input node (values in {-1, 0, 1}, or {0, 1})."""
        code = self.input_code
        if spikes.dim() < 3 or spikes.shape[0] != code.steps or spikes.shape[-1] != self.in_features:
            raise ValueError(
                f"spikes must be [T, N, *, in] with T = {code.steps} (the input node's steps) and "
                f"in = {self.in_features}, got shape {tuple(spikes.shape)}"
            )
        bound = float(code.levels.qmax + code.offset) * self.weight_levels.qmax * self.in_features
        out_dtype = level_dtype(spikes.dtype)
        dtype = exact_dtype(bound, out_dtype)
        # Integer GEMMs on int8 spikes; a train that carries gradients stays in floating point.
        spikes = spikes.to(dtype) if spikes.requires_grad else spikes.to(torch.int8)
        acc = spike_matmul(spikes, self.qweight.T, code.leak, self.weight_levels.qmax).to(dtype)  # [N, *, out]
        if code.offset:
            acc = acc - code.offset * self.qweight.sum(1, dtype=dtype)
        y = (acc * self.input_scale.to(dtype) * self.weight_scale.to(dtype)).to(out_dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return input_current(y, self.out_steps)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, input={self.input_code.scheme} "
            f"T={self.input_code.steps}, weight_bits={self.weight_levels.bits}, out_steps={self.out_steps}, "
            f"bias={self.bias is not None}"
        )

"""Exact spike-coding neurons (SpikingJelly ``BaseNode`` subclasses) and their decoder.

One dynamics serves every code of :mod:`spikemllm_sj.neurons.coding`. The membrane ``V`` is kept
in units of the quantization scale and is integer-valued, as in a fixed-point neuromorphic core;
``lam`` is the code's leak factor and ``theta`` its threshold. At step ``t``, with input ``x_t``,
scale ``s`` and ``V_{-1} = offset``::

    H_t = lam * V_{t-1} + floor(x_t / s + 1/2)        charge (the half-step bias rounds to nearest)
    S_t = [H_t >= theta] - [H_t <= -theta]            fire (ternary codes; binary ones drop the -1)
    V_t = H_t - theta * S_t                           soft reset

(``rate_bidirectional_clipped`` clips the charge, ``H_t`` to ``+-membrane_clip``.)

An activation is encoded by presenting it at the first step and nothing afterwards
(:meth:`SpikeCodingNode.encode`). For TC-LIF, ``lam = 2`` and ``theta = 2**(T-1)``: doubling the
membrane against a fixed threshold is the same as halving the threshold each step, so the spikes
are the signed binary digits of the level, most significant first, and a level beyond the range
fires at every step, which is the quantizer's clamp. A current that arrives at a later step ``t``
enters at ``2**-t`` of the weight of the first step's.

The mean-threshold code (:class:`MeanThresholdBitwiseNode`) has TC-LIF's dynamics with a
data-dependent ``T``: a call's train has as many steps as the bit length of its largest level, and
the threshold of a ``T``-step train, ``2**(T-1)``; its scale is each token's ``mean(|x|) / 3``.

Gradients: the charge's rounding passes gradients straight through; firing uses the node's
surrogate function, so the neurons can be fine-tuned like any SpikingJelly neuron.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.modules.module as nn_module
from spikingjelly.activation_based import base, surrogate
from spikingjelly.activation_based.neuron import BaseNode

from .coding import Scheme, SpikeCode, bitwise_steps
from .levels import (
    IntLevels,
    check_finite,
    check_scale,
    divide_by_scale,
    level_dtype,
    round_half_up,
)
from .stats import SpikeStats, spike_statistics

__all__ = [
    "SpikeCodingNode",
    "TCLIFNode",
    "BinaryRateNode",
    "BidirectionalRateNode",
    "ClippedBidirectionalRateNode",
    "MeanThresholdBitwiseNode",
    "SpikeDecoder",
    "decode",
    "input_current",
    "integrate",
]


def _inference(h: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and h.requires_grad)


class SpikeCodingNode(BaseNode):
    """Base of the exact spike coders; subclasses only choose the :class:`SpikeCode`.

    :param code: the spike code (levels, steps, leak, threshold).
    :param scale: quantization scale, a positive float or a tensor that broadcasts to the input
        (``[]`` per tensor, ``[D]`` per channel, ``[N, ..., 1]`` per token). A ``scale=`` keyword
        given at call time replaces it for that call (dynamic per-token scales). A code whose
        :attr:`~SpikeCode.scale_rule` is ``"mean"`` ignores it: without ``scale=``, each token's
        threshold ``mean(|x|) / 3`` is its scale.
    :param surrogate_function: surrogate gradient of the firing step.
    :param detach_reset: detach the soft reset from the graph.
    :param step_mode: ``'s'`` (input ``[N, *]``) or ``'m'`` (input ``[T, N, *]``).
    :param store_v_seq: keep the membrane of every step in ``v_seq``.
    """

    def __init__(
        self,
        code: SpikeCode,
        scale: float | torch.Tensor = 1.0,
        surrogate_function: surrogate.SurrogateFunctionBase = surrogate.Sigmoid(),
        detach_reset: bool = False,
        step_mode: str = "s",
        store_v_seq: bool = False,
    ):
        if not isinstance(code, SpikeCode):
            raise TypeError(f"code must be a SpikeCode, got {type(code).__name__}")
        super().__init__(
            v_threshold=float(code.threshold),
            v_reset=None,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
            step_mode=step_mode,
            store_v_seq=store_v_seq,
        )
        self.code = code
        self.set_reset_value("v", float(code.offset))
        self.v = float(code.offset)
        self.register_buffer("scale", check_scale(torch.as_tensor(scale, dtype=torch.get_default_dtype())))

    @property
    def steps(self) -> int:
        return self.code.steps

    def extra_repr(self) -> str:
        lv = self.code.levels
        if self.code.data_dependent:  # no fixed steps, threshold or scale: each call's own
            return f"scheme={self.code.scheme}, levels={lv.levels}, steps<={self.steps}, step_mode={self.step_mode}"
        return (
            f"scheme={self.code.scheme}, levels={lv.levels}, signed={lv.signed}, steps={self.steps}, "
            f"scale_shape={tuple(self.scale.shape)}, " + super().extra_repr()
        )

    def materialize_states(self, inputs, states, step_mode):
        if step_mode == "m" and (inputs[0].dim() < 1 or inputs[0].shape[0] < 1):
            raise ValueError(
                f"a multi-step input x_seq must be [T, N, *] with T >= 1 steps, got shape {tuple(inputs[0].shape)}"
            )
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        # The membrane holds integer levels: level_dtype, float32 at least (fp16 and bf16 lose
        # integers above 2048 and 256).
        dtype = level_dtype(x.dtype)
        v = states[0]
        if not torch.is_tensor(v) or v.shape != x.shape:
            # A new input shape starts from the resting membrane, which holds the code's offset.
            v = torch.full_like(x, float(self.code.offset), dtype=dtype)
        elif v.dtype != dtype or v.device != x.device:
            v = v.to(dtype=dtype, device=x.device)
        return (v, *states[1:])

    def _levels_of(self, x: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
        """Input current in membrane units, ``floor(x / scale + 1/2)`` in ``level_dtype(x.dtype)``,
        with a straight-through gradient."""
        u = divide_by_scale(x, self._scale_for(x, scale))
        if not u.requires_grad:
            return round_half_up(u, inplace=True).to(level_dtype(x.dtype))
        return (round_half_up(u.detach()) + (u - u.detach())).to(level_dtype(x.dtype))

    def _scale_for(self, x: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
        """The scale of input ``x``: ``scale`` if given, else the node's (or, for a code scaled by
        the mean magnitude, each token's mean threshold)."""
        if scale is None and self.code.scale_rule == "mean":
            return self.code.token_scale(x)  # checks x
        check_finite(x)
        return check_scale(self.scale if scale is None else scale, x)

    def train_steps(self, levels: torch.Tensor) -> int:
        """Steps of the train that encodes integer ``levels``: the code's :attr:`steps`, or, for a
        data-dependent code, the bit length of the largest magnitude (at least 1).

        :raises ValueError: a level of a data-dependent code beyond its range (its counts are
            never clipped).
        """
        if not self.code.data_dependent:
            return self.steps
        steps = int(bitwise_steps(levels, dim=None)) if levels.numel() else 1
        if steps > self.steps:
            top = int(levels.detach().abs().amax())
            raise ValueError(
                f"a spike count of {top} needs {steps} steps, beyond the {self.steps} of the {self.code.scheme} code's "
                f"{self.code.levels.bits}-bit range (its counts are never clipped): give the code more levels"
            )
        return steps

    def _threshold(self, steps: int) -> float:
        # A data-dependent code's train of `steps` steps fires against 2**(steps - 1), TC-LIF's
        # threshold for that length; the other codes have one threshold.
        return float(1 << (steps - 1)) if self.code.data_dependent else self.v_threshold

    def _charge(self, level: torch.Tensor, v) -> torch.Tensor:
        """``H = leak * V + level``, clipped to ``+-membrane_clip`` for a code that clips (a new
        tensor: :meth:`_fire_and_reset` may reuse it)."""
        h = torch.add(level, v, alpha=self.code.leak)
        return self._clip(h)

    def _clip(self, h: torch.Tensor) -> torch.Tensor:
        bound = self.code.membrane_clip
        if bound is None:
            return h
        return h.clamp_(-bound, bound) if _inference(h) else h.clamp(-bound, bound)

    def _fire_and_reset(
        self, h: torch.Tensor, out: Optional[torch.Tensor] = None, theta: Optional[float] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fire on the charged membrane ``h`` against ``theta`` (default: the node's threshold) and
        soft-reset it: ``(spike, membrane)``.

        Without autograd, the spike is written to ``out`` (if given) and ``h``'s storage is reused
        for the membrane: ``h`` must be a temporary of the caller.
        """
        theta = self.v_threshold if theta is None else theta
        if _inference(h):
            # heaviside(h - theta) - heaviside(-h - theta) is trunc(h / theta) limited to [-1, 1]
            # ([0, 1] for binary spikes); theta is a power of two, so the division is exact.
            # (Not floor: floor division turns a saturated, infinite membrane into NaN.)
            spike = torch.div(h, theta, rounding_mode="trunc", out=out)
            spike.clamp_(-1 if self.code.ternary else 0, 1)
            return spike, h.sub_(spike, alpha=theta)
        spike = self.surrogate_function(h - theta)
        if self.code.ternary:
            spike = spike - self.surrogate_function(-h - theta)
        spike_d = spike.detach() if self.detach_reset else spike
        return spike, h - theta * spike_d

    def single_step_functional_forward(self, inputs, states, scale: Optional[torch.Tensor] = None):
        spike, v = self._fire_and_reset(self._charge(self._levels_of(inputs[0], scale), states[0]))
        return (spike,), (v, *states[1:])

    def multi_step_functional_forward(self, inputs, states, scale: Optional[torch.Tensor] = None):
        # The single-step equations at every step, with the charge of all steps in one pass; a
        # data-dependent code's threshold is that of the input's T.
        steps = inputs[0].shape[0]
        if self.code.data_dependent and steps > self.steps:
            raise ValueError(f"x_seq has {steps} steps, beyond the {self.steps} of the {self.code.scheme} code's range")
        theta = self._threshold(steps)
        v, spikes = states[0], []
        for level in self._levels_of(inputs[0], scale):
            spike, v = self._fire_and_reset(self._charge(level, v), theta=theta)
            spikes.append(spike)
        # A current that T bits cannot carry leaves charge behind (one they can leaves none): for
        # a code whose counts are never clipped that is an error, not TC-LIF's saturation.
        if self.code.data_dependent and bool(v.detach().ne(0).any()):
            raise ValueError(
                f"x_seq of {steps} steps carries counts its {steps} bits cannot hold (charge left: up to "
                f"{float(v.detach().abs().max()):g}); the {self.code.scheme} code never clips: give more steps"
            )
        return (torch.stack(spikes),), (v, *states[1:])

    def encode(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Spike train ``[T, *x.shape]`` of ``x`` (in ``level_dtype(x.dtype)``): the activation
        presented at the first step; ``T`` is :meth:`train_steps` of its levels.

        Pure: the module's membrane is neither read nor written.
        """
        leak = self.code.leak
        h = self._levels_of(x, scale)
        steps = self.train_steps(h)
        theta = self._threshold(steps)
        inference = _inference(h)
        if self.code.offset:
            h = h.add_(leak * self.code.offset) if inference else h + leak * self.code.offset
        h = self._clip(h)
        spikes = h.new_empty((steps, *h.shape)) if inference else [None] * steps
        for t in range(steps):
            if t:
                h = v if leak == 1 else v.mul_(leak) if inference else leak * v
            spike, v = self._fire_and_reset(h, out=spikes[t] if inference else None, theta=theta)
            if not inference:
                spikes[t] = spike
        return spikes if inference else torch.stack(spikes)

    def present(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The spike train of :meth:`encode` (the same tensor, bit for bit), emitted by driving this
        node as a SpikingJelly neuron: ``self(current, scale=scale)`` in step mode ``'m'`` with the
        input current ``[T, *x.shape]`` holding ``x`` at the first step and zeros after, from the
        resting membrane and back to it.

        Going through ``__call__`` is the point: forward hooks, and so SpikingJelly's monitors
        (``OutputMonitor``: the spikes ``[T, *x.shape]``; ``InputMonitor``: the current;
        ``AttributeMonitor``: ``v`` after the last step, ``v_seq`` ``[T, *x.shape]`` with
        ``store_v_seq``), see every train a converted model emits. The node is reset before (a
        membrane left by other use cannot leak in) and after (no state is held between calls).
        When nothing observes the call (no forward hook on the node or on every module, no
        ``store_v_seq``), the train comes from :meth:`encode` directly: the same dynamics and the
        same tensor, without the ``T``-step input current.

        :raises ValueError: the node is not in step mode ``'m'``.
        """
        if self.step_mode != "m":
            raise ValueError(
                f"present() drives the node over its {self.steps} steps in one call and needs step_mode 'm', "
                f"got step_mode {self.step_mode!r}"
            )
        if not self._observed():
            # Nothing would see the call (no hook, no stored membranes): the same train from the
            # activation itself, without the T-step input current and its T-fold charge.
            return self.encode(x, scale)
        if self.code.data_dependent:
            scale = self._scale_for(x, scale)  # once: the steps and the train come from the same thresholds
            steps = self.train_steps(self._levels_of(x, scale))
        else:
            steps = self.steps
        current = input_current(x, steps)
        self.reset()
        try:
            return self(current, scale=scale)
        finally:
            self.reset()

    def _observed(self) -> bool:
        """Whether a call through ``__call__`` is observable: forward or backward hooks on this node
        or on every module (``torch.nn.modules.module.register_module_forward_hook`` and the
        like; SpikingJelly's monitors, gradient monitors included, are such hooks), or
        ``store_v_seq``."""
        own = self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks
        every = (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                 or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks)
        return bool(own or every or self.store_v_seq)

    def decode(self, spikes: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The value that ``spikes`` ``[T, N, *]`` carry, ``[N, *]`` (see :func:`decode`).

        :raises ValueError: no ``scale`` for a code scaled per token by the mean magnitude (the
            thresholds are not in the spikes)."""
        if scale is None and self.code.scale_rule == "mean":
            raise ValueError(f"decoding {self.code.scheme} spikes needs scale= (each token's threshold, from the encoded input)")
        return decode(spikes, self.code, self.scale if scale is None else scale)

    def statistics(self, spikes: torch.Tensor) -> SpikeStats:
        """Spike counts per step and firing rate of a train ``[T, N, *]`` of this node."""
        return spike_statistics(spikes)


class TCLIFNode(SpikeCodingNode):
    """Temporally Compressed LIF: ``L`` signed levels in ``log2(L) - 1`` steps of ternary spikes
    weighted ``2**(T-1), ..., 2, 1`` (unsigned: ``log2(L)`` steps of binary spikes).

    The membrane doubles each step against the fixed threshold ``2**(T-1)`` (leak factor 2); see
    the module docstring for the equations.

    :param levels: number of quantization levels ``L`` (a power of two).
    :param signed: symmetric signed levels (ternary spikes) or unsigned levels (binary spikes).
    """

    def __init__(self, levels: int = 16, signed: bool = True, scale: float | torch.Tensor = 1.0, **kwargs):
        super().__init__(SpikeCode("tc_lif", IntLevels(levels, signed)), scale, **kwargs)


class BinaryRateNode(SpikeCodingNode):
    """Rate-coding baseline: one spike of weight 1 per step, ``L - 1`` steps (signed: ``L - 2``
    steps of the offset code ``q + L/2 - 1``). An integrate-and-fire neuron with soft reset."""

    def __init__(self, levels: int = 16, signed: bool = True, scale: float | torch.Tensor = 1.0, **kwargs):
        super().__init__(SpikeCode("rate_binary", IntLevels(levels, signed)), scale, **kwargs)


class BidirectionalRateNode(SpikeCodingNode):
    """Bidirectional rate-coding baseline (ST-BIF, SDLLM): signed spikes of weight 1 over
    ``L/2 - 1`` steps. An integrate-and-fire neuron with two thresholds and soft reset."""

    def __init__(self, levels: int = 16, scale: float | torch.Tensor = 1.0, **kwargs):
        super().__init__(SpikeCode("rate_bidirectional", IntLevels(levels, True)), scale, **kwargs)


class ClippedBidirectionalRateNode(SpikeCodingNode):
    """Bidirectional rate coding with membrane clipping, our reading of SDLLM's (INFERENCE, see
    :mod:`~spikemllm_sj.neurons.coding`): signed spikes of weight 1 over ``T = L/2 - 1`` steps,
    the charged membrane clipped to ``+-T`` thresholds, levels on the symmetric grid of ``2 L``
    levels (the scale a caller gives maps a token's absmax onto ``L - 1``:
    :attr:`~SpikeCode.absmax_level`).

    :param levels: the levels its spikes carry, ``L`` (a power of two, at least 4).
    """

    def __init__(self, levels: int = 16, scale: float | torch.Tensor = 1.0, **kwargs):
        super().__init__(SpikeCode("rate_bidirectional_clipped", IntLevels(levels, True)), scale, **kwargs)


class MeanThresholdBitwiseNode(SpikeCodingNode):
    """Mean-threshold bitwise coding after SpikingBrain's W8ASpike (see
    :mod:`~spikemllm_sj.neurons.coding` for where ours differs): each token's threshold
    ``vth = mean(|x|) / 3`` is its scale, the count ``round(x / vth)`` is not clipped, and it is
    sent as signed bits, most significant first, over the bit length of the call's largest count
    (at most ``log2(L) - 1`` steps; a count beyond raises). Multi-step only: a train's length,
    and so its threshold, is known only once the call's counts are.

    :param levels: the range ``L`` of the counts (default ``2**18``: counts up to 131071, enough
        for ``3 D`` with ``D <= 43690`` channels).
    """

    def __init__(self, levels: int = 1 << 18, **kwargs):
        if "scale" in kwargs:
            raise TypeError("MeanThresholdBitwiseNode takes no scale: each token's threshold mean(|x|) / 3 is its "
                            "scale (pass scale= at call time to give the thresholds)")
        kwargs.setdefault("step_mode", "m")
        super().__init__(SpikeCode("mean_threshold_bitwise", IntLevels(levels, True)), **kwargs)

    def supported_step_mode(self):
        return ("m",)


NODE_CLASSES: dict[Scheme, type[SpikeCodingNode]] = {
    "tc_lif": TCLIFNode,
    "rate_binary": BinaryRateNode,
    "rate_bidirectional": BidirectionalRateNode,
    "rate_bidirectional_clipped": ClippedBidirectionalRateNode,
    "mean_threshold_bitwise": MeanThresholdBitwiseNode,
}


def input_current(x: torch.Tensor, steps: int) -> torch.Tensor:
    """The input current ``[steps, *x.shape]`` (``x``'s dtype) that presents ``x`` at the first step
    and nothing after: what a spike-coding node in step mode ``'m'`` encodes ``x`` from."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    current = x.new_zeros((steps, *x.shape))
    current[0] = x
    return current


def integrate(spikes: torch.Tensor, leak: int) -> torch.Tensor:
    """Weighted temporal integration of ``[T, N, *]`` spikes: ``sum_t leak**(T-1-t) * spikes[t]``.

    Horner's rule (``acc = leak * acc + spikes[t]``) is what a downstream layer does: one shift
    and one addition per step. The result is an exact integer in floating point.
    """
    if spikes.dim() < 1 or spikes.shape[0] < 1:
        raise ValueError(f"spikes must have a leading time dimension of length >= 1, got shape {tuple(spikes.shape)}")
    if leak == 1 or spikes.shape[0] == 1:
        return spikes.sum(0)
    acc = torch.add(spikes[1], spikes[0], alpha=leak)
    for s in spikes[2:]:
        acc.mul_(leak).add_(s)
    return acc


def decode(
    spikes: torch.Tensor,
    code: SpikeCode,
    scale: float | torch.Tensor = 1.0,
    offset: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decode a spike train ``[T, N, *]`` of ``code`` into values ``[N, *]``: ``(integrate - offset) * scale``,
    in ``level_dtype(spikes.dtype)`` (float32 at least: the levels of fp16 or bf16 spikes may not fit).

    :param offset: per-element offset replacing ``code.offset`` (the MSTS encoder passes one per token).
    """
    check_finite(spikes, "spikes")
    steps = spikes.shape[0] if spikes.dim() else 0
    if not (1 <= steps <= code.steps if code.data_dependent else steps == code.steps):
        uses = f"1 to {code.steps}" if code.data_dependent else f"{code.steps}"
        raise ValueError(
            f"spikes of shape {tuple(spikes.shape)} has {steps} time steps but "
            f"the code ({code.scheme}, L={code.levels.levels}) uses {uses}"
        )
    acc = integrate(spikes.to(level_dtype(spikes.dtype)), code.leak)
    offset = code.offset if offset is None else offset
    if torch.is_tensor(offset) or offset:
        acc = acc - offset
    return acc * check_scale(scale, acc)


class SpikeDecoder(torch.nn.Module, base.MultiStepModule):
    """Multi-step module ``[T, N, *] -> [N, *]``: the decoding a downstream layer performs.

    :param code: the spike code of the incoming train.
    :param scale: quantization scale (replaced per call by ``scale=``).
    """

    def __init__(self, code: SpikeCode, scale: float | torch.Tensor = 1.0):
        super().__init__()
        if not isinstance(code, SpikeCode):
            raise TypeError(f"code must be a SpikeCode, got {type(code).__name__}")
        self.code = code
        self.register_buffer("scale", check_scale(torch.as_tensor(scale, dtype=torch.get_default_dtype())))

    def forward(self, spikes: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        return decode(spikes, self.code, self.scale if scale is None else scale)

    def extra_repr(self) -> str:
        return f"scheme={self.code.scheme}, levels={self.code.levels.levels}, steps={self.code.steps}"

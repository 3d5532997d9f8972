"""Mapping spike-coding layers to Lava networks: :func:`to_lava` and :class:`LavaNetwork`."""

from __future__ import annotations

import functools
import math
import typing as ty
from dataclasses import dataclass

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import LogConfig

from spikemllm_sj.lava_backend.spec import SpikeLinearSpec
from spikemllm_sj.lava_backend.spike_dense.process import SpikeDense
from spikemllm_sj.lava_backend.tclif.process import TCLIF
from spikemllm_sj.neurons import SpikeCode, SpikeCodingNode

__all__ = ["Precision", "PRECISIONS", "LavaNetwork", "to_lava"]

Precision = ty.Literal["floating_pt", "fixed_pt"]
PRECISIONS: tuple[str, ...] = ty.get_args(Precision)


@dataclass(frozen=True, eq=False)
class LavaNetwork:
    """A Lava network for :func:`~spikemllm_sj.lava_backend.run_lava`: ``TCLIF -> [SpikeDense]``.

    Lava Processes cannot run again once their runtime has stopped, so this holds what to build;
    :meth:`build` makes fresh Processes for every run. Inputs stream one token per window of
    ``T = code.steps`` steps.

    :param precision: ``"fixed_pt"`` (int32 models, fed integer levels) or ``"floating_pt"``
        (float64 models, fed activations).
    :param code: spike code of the neurons, or of the layer's input spikes.
    :param scale: per-tensor quantization scale of the input activations (> 0).
    :param size: number of neurons (the layer's input features).
    :param layer: the spike-driven linear layer behind the neurons; ``None`` for neurons alone.
    :param encode: start with ``TCLIF`` neurons (inputs are activations or levels) or feed the
        layer spike trains directly (needs a ``layer``).
    """

    precision: Precision
    code: SpikeCode
    scale: float
    size: int
    layer: ty.Optional[SpikeLinearSpec] = None
    encode: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.code, SpikeCode):
            raise TypeError(f"code must be a SpikeCode, got {type(self.code).__name__}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not (
            math.isfinite(self.scale) and self.scale > 0
        ):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.layer is None and not self.encode:
            raise ValueError("a network without a layer must encode (encode=True): it would be empty")
        if self.layer is not None:
            if not isinstance(self.layer, SpikeLinearSpec):
                raise TypeError(f"layer must be a SpikeLinearSpec, got {type(self.layer).__name__}")
            mismatch = [
                f"{name}: network {mine!r} vs layer {theirs!r}"
                for name, mine, theirs in (
                    ("code", self.code, self.layer.code),
                    ("scale", self.scale, self.layer.scale),
                    ("size", self.size, self.layer.in_features),
                )
                if mine != theirs
            ]
            if mismatch:
                raise ValueError("the network does not match its layer: " + "; ".join(mismatch))

    @property
    def steps(self) -> int:
        """``T``, the time steps per token."""
        return self.code.steps

    @property
    def out_size(self) -> int:
        """Width of the network's output: neurons, or the layer's output features."""
        return self.size if self.layer is None else self.layer.out_features

    def build(self, log_config: ty.Optional[LogConfig] = None) -> tuple[InPort, OutPort]:
        """Fresh, connected Processes; returns the network's input port and output port."""
        ports_in, ports_out = [], []
        if self.encode:
            # Fixed-point inputs are levels, already in units of the scale.
            scale = self.scale if self.precision == "floating_pt" else 1.0
            neurons = TCLIF(shape=(self.size,), code=self.code, scale=scale, log_config=log_config)
            ports_in.append(neurons.a_in)
            ports_out.append(neurons.s_out)
        if self.layer is not None:
            dense = SpikeDense(
                weights=self.layer.weight.numpy(),
                code=self.code,
                weight_bits=self.layer.weight_bits,
                log_config=log_config,
            )
            ports_in.append(dense.s_in)
            ports_out.append(dense.a_out)
        for upstream, downstream in zip(ports_out, ports_in[1:]):
            upstream.connect(downstream)
        return ports_in[0], ports_out[-1]


@functools.singledispatch
def to_lava(layer, **options) -> LavaNetwork:
    """Map ``layer`` to a :class:`LavaNetwork`; converters register more layer types with
    ``@to_lava.register``.

    * ``to_lava(node: SpikeCodingNode, *, size, precision="fixed_pt")``: the node's neurons alone
      (a per-tensor scale only).
    * ``to_lava(spec: SpikeLinearSpec, *, precision="fixed_pt", encode=True)``: ``TCLIF -> SpikeDense``,
      or the ``SpikeDense`` fed spike trains when ``encode=False``.
    """
    raise TypeError(
        f"to_lava cannot map a {type(layer).__name__}: it maps SpikeCodingNode (e.g. TCLIFNode) and "
        f"SpikeLinearSpec; register other types with @to_lava.register"
    )


@to_lava.register
def _node_to_lava(node: SpikeCodingNode, *, size: int, precision: Precision = "fixed_pt") -> LavaNetwork:
    if node.scale.numel() != 1:
        raise ValueError(
            f"to_lava maps a per-tensor scale only, but the node's scale has shape {tuple(node.scale.shape)}"
        )
    return LavaNetwork(precision=precision, code=node.code, scale=float(node.scale), size=size)


@to_lava.register
def _linear_to_lava(spec: SpikeLinearSpec, *, precision: Precision = "fixed_pt", encode: bool = True) -> LavaNetwork:
    return LavaNetwork(
        precision=precision, code=spec.code, scale=spec.scale, size=spec.in_features, layer=spec, encode=encode
    )

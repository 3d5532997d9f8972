"""TC-LIF spike coder as a Lava Process: the Lava twin of :class:`spikemllm_sj.neurons.TCLIFNode`."""

from __future__ import annotations

import math
import typing as ty

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from spikemllm_sj.lava_backend._fixed_point import power_of_two_exponent
from spikemllm_sj.neurons import SpikeCode

__all__ = ["TCLIF"]


class TCLIF(AbstractProcess):
    """Spike coder of a :class:`SpikeCode` (TC-LIF, or a rate code), one value per window of T steps.

    At the first step of every window of ``T = code.steps`` steps the membrane returns to rest
    (``v = offset``), so values streamed back to back, one per window, are encoded independently.
    Then at every step, with the input current ``a_in``::

        h = 2**leak_exp * v + charge(a_in)          floating_pt: floor(a_in / scale + 1/2)
                                                    fixed_pt:    a_in (integer levels, int32)
        s = [h >= theta] - [h <= -theta]            theta = 2**threshold_exp (binary codes drop -1)
        v = h - theta * s                           soft reset

    Presenting a value at the first step of a window and zeros afterwards gives the spikes of
    ``SpikeCodingNode.encode``.

    :param shape: shape of the neuron population.
    :param code: the spike code (its leak factor and threshold must be powers of two).
    :param scale: quantization scale of the input, in input units per level; used by the
        floating-point model only (fixed-point inputs are levels already).
    :param name: Lava name of the process.
    :param log_config: Lava logging configuration.

    Ports: ``a_in`` (input current, ``shape``), ``s_out`` (graded spikes -1/0/+1, ``shape``).
    Vars: ``v`` (membrane, in levels), ``leak_exp``, ``threshold_exp``, ``offset``, ``window``
    (``T``), ``ternary`` (1 for signed spikes), ``scale``.
    """

    def __init__(
        self,
        *,
        shape: tuple[int, ...],
        code: SpikeCode,
        scale: float = 1.0,
        name: ty.Optional[str] = None,
        log_config: ty.Optional[LogConfig] = None,
    ) -> None:
        # Checks after AbstractProcess.__init__, which its __del__ relies on.
        super().__init__(shape=shape, name=name, log_config=log_config)
        if not isinstance(code, SpikeCode):
            raise TypeError(f"code must be a SpikeCode, got {type(code).__name__}")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite float > 0, got {scale!r}")
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=code.offset)
        self.leak_exp = Var(shape=(1,), init=power_of_two_exponent(code.leak, "code.leak"))
        self.threshold_exp = Var(shape=(1,), init=power_of_two_exponent(code.threshold, "code.threshold"))
        self.offset = Var(shape=(1,), init=code.offset)
        self.window = Var(shape=(1,), init=code.steps)
        self.ternary = Var(shape=(1,), init=int(code.ternary))
        self.scale = Var(shape=(1,), init=float(scale))

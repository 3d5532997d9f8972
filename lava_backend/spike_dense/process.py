"""Spike-driven dense synapse as a Lava Process: ``W @ s_t`` integrated over a window by Horner's rule.

Why not ``lava.proc.dense.Dense`` (lava-nc 0.10.0, measured): its fixed-point model drops the lowest
bit of mixed-sign weights at the default ``num_weight_bits=8`` (int8 weights gave errors up to 12
on ``W @ s``). ``num_weight_bits=9`` is exact for int8, but it lies outside Loihi's weight format,
weights beyond ``[-256, 255]`` are clipped silently, and Horner's integration would need a second
process behind Dense's one-step delay. ``SpikeDense`` does both in one process, in int32, and
checks its range at construction instead of rounding or clipping.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from spikemllm_sj.lava_backend._fixed_point import check_weights, power_of_two_exponent
from spikemllm_sj.neurons import SpikeCode

__all__ = ["SpikeDense"]


class SpikeDense(AbstractProcess):
    """Dense synapse driven by graded spikes, integrating each window of ``T = code.steps`` steps.

    With integer weights ``W`` ``[out, in]`` and spikes ``s_t`` ``[in]`` (-1/0/+1), every step::

        acc = W @ s_t                          first step of a window
        acc = 2**leak_exp * acc + W @ s_t      later steps: Horner's rule (leak 2 for TC-LIF, 1 for rate codes)

    and at the last step of the window ``a_out`` carries ``acc + bias``: exactly ``W @ q`` for the
    integer levels ``q`` that the window's spikes encode (``bias = -offset * W.sum(1)`` undoes the
    offset of offset codes; 0 otherwise). At every other step ``a_out`` carries zeros.

    :param weights: integer weights ``[out, in]``.
    :param code: the spike code of the incoming spikes.
    :param weight_bits: width of the signed weights. Weights outside that range, or a window sum
        that could leave the int32 accumulator, raise ``ValueError``: nothing is clipped or wrapped.
    :param name: Lava name of the process.
    :param log_config: Lava logging configuration.

    Ports: ``s_in`` (``[in]``), ``a_out`` (``[out]``). Vars: ``weights``, ``acc`` (the running
    accumulator, ``[out]``), ``bias`` (``[out]``), ``leak_exp``, ``window``.
    """

    def __init__(
        self,
        *,
        weights: np.ndarray,
        code: SpikeCode,
        weight_bits: int = 8,
        name: ty.Optional[str] = None,
        log_config: ty.Optional[LogConfig] = None,
    ) -> None:
        # Checks after AbstractProcess.__init__, which its __del__ relies on.
        super().__init__(name=name, log_config=log_config)
        if not isinstance(code, SpikeCode):
            raise TypeError(f"code must be a SpikeCode, got {type(code).__name__}")
        weights = check_weights(weights, code, weight_bits)
        n_out, n_in = weights.shape
        self.s_in = InPort(shape=(n_in,))
        self.a_out = OutPort(shape=(n_out,))
        self.weights = Var(shape=weights.shape, init=weights)
        self.acc = Var(shape=(n_out,), init=0)
        self.bias = Var(shape=(n_out,), init=-code.offset * weights.sum(axis=1, dtype=np.int64))
        self.leak_exp = Var(shape=(1,), init=power_of_two_exponent(code.leak, "code.leak"))
        self.window = Var(shape=(1,), init=code.steps)

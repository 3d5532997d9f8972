"""A non-spiking stage between spike-driven layers as a Lava Process: norms, activations, rescaling."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

__all__ = ["DecodedOp", "DecodedFn"]

# fn(a, aux) -> (out, aux_out): one token's accumulator [in_size] and side values [aux_in_size]
# to its output [out_size] and side values [aux_out_size].
DecodedFn = ty.Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DecodedOp(AbstractProcess):
    """Runs ``fn`` once per token, on decoded values, between two spike-driven layers.

    Spike-driven layers (``SpikeDense``) deliver a token's integer accumulator at the last step of
    its window of ``T`` steps; what comes between two of them (dequantization, an activation
    function, the next layer's per-token scale and levels) is ordinary arithmetic, which this
    process does in one place so that the accelerator's non-spiking work is a process of its own.
    Time line, for the token of window ``k``::

        last step of window k:       receive a_in (the accumulator) and aux_in (e.g. its scales);
                                     (out, aux) = fn(a_in, aux_in)
        first step of window k + 1:  a_out carries out   (levels for the next TCLIF: they enter
                                                          at the first step of a window)
        last step of window k + 1:   aux_out carries aux (aligned with the next layer's accumulator)

    so each ``DecodedOp`` delays the stream by one window; at every other step both outputs carry
    zeros. Both ports are read every step (an unread InPort stalls the run).

    :param fn: ``fn(a, aux) -> (out, aux_out)`` on numpy arrays of the sizes below. It runs in
        Lava's process for this model (forked), so it may close over torch modules.
    :param in_size: width of ``a_in``; ``aux_in_size``: of ``aux_in`` (>= 1).
    :param out_size: width of ``a_out``; ``aux_out_size``: of ``aux_out`` (>= 1).
    :param window: ``T``, the steps per token of the layers around it.

    Ports: ``a_in``, ``aux_in``, ``a_out``, ``aux_out``. Vars: ``window``, ``held_out``, ``held_aux``
    (the outputs of the last token, waiting for their step).
    """

    def __init__(
        self,
        *,
        fn: DecodedFn,
        in_size: int,
        out_size: int,
        aux_in_size: int,
        aux_out_size: int,
        window: int,
        name: ty.Optional[str] = None,
        log_config: ty.Optional[LogConfig] = None,
    ) -> None:
        # Checks after AbstractProcess.__init__, which its __del__ relies on; keyword arguments
        # (fn included) reach the ProcessModel as proc_params.
        super().__init__(
            fn=fn, in_size=in_size, out_size=out_size, aux_in_size=aux_in_size, aux_out_size=aux_out_size,
            window=window, name=name, log_config=log_config,
        )
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        sizes = {"in_size": in_size, "out_size": out_size, "aux_in_size": aux_in_size,
                 "aux_out_size": aux_out_size, "window": window}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        self.a_in = InPort(shape=(in_size,))
        self.aux_in = InPort(shape=(aux_in_size,))
        self.a_out = OutPort(shape=(out_size,))
        self.aux_out = OutPort(shape=(aux_out_size,))
        self.window = Var(shape=(1,), init=window)
        self.held_out = Var(shape=(out_size,), init=0)
        self.held_aux = Var(shape=(aux_out_size,), init=0)

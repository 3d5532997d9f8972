"""ProcessModels of :class:`SpikeDense` for ``Loihi2SimCfg``: floating point and int32 fixed point."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

# Absolute import: Lava's compiler also executes this file as a bare module named "models".
from spikemllm_sj.lava_backend._step import relay_step
from spikemllm_sj.lava_backend.spike_dense.process import SpikeDense


class AbstractPySpikeDenseModel(PyLoihiProcessModel):
    """Window bookkeeping shared by both precisions; subclasses apply the leak."""

    leak_exp: int = LavaPyType(int, np.int8, precision=2)
    window: int = LavaPyType(int, np.int32, precision=17)

    def leak(self, acc: np.ndarray) -> np.ndarray:
        """``2**leak_exp * acc``."""
        raise NotImplementedError

    def run_spk(self) -> None:
        relay_step((self.s_in,), self.a_out, self.integrate, np.zeros_like(self.acc))

    def integrate(self, s_in: np.ndarray) -> np.ndarray:
        """One step of Horner's rule; returns ``acc + bias`` at a window's last step, else zeros."""
        current = self.weights @ s_in
        phase = (self.time_step - 1) % self.window  # time_step counts from 1
        self.acc[:] = current if phase == 0 else self.leak(self.acc) + current
        return self.acc + self.bias if phase == self.window - 1 else np.zeros_like(self.acc)


@implements(proc=SpikeDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeDenseModelFloat(AbstractPySpikeDenseModel):
    """Float64 weights and accumulator: exact, as every value stays an integer below 2**31."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    weights: np.ndarray = LavaPyType(np.ndarray, float)
    acc: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)

    def leak(self, acc: np.ndarray) -> np.ndarray:
        return acc * float(1 << self.leak_exp)


@implements(proc=SpikeDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeDenseModelFixed(AbstractPySpikeDenseModel):
    """Int32 weights and accumulator; the leak is a left shift. ``SpikeDense`` checked at
    construction that no partial sum leaves the int32 range."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=2)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)
    weights: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    acc: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)

    def leak(self, acc: np.ndarray) -> np.ndarray:
        return np.left_shift(acc, self.leak_exp)

"""ProcessModels of :class:`TCLIF` for ``Loihi2SimCfg``: floating point and int32 fixed point."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

# Absolute import: Lava's compiler also executes this file as a bare module named "models".
from spikemllm_sj.lava_backend._fixed_point import INT32_MAX
from spikemllm_sj.lava_backend._step import relay_step
from spikemllm_sj.lava_backend.tclif.process import TCLIF


class AbstractPyTCLIFModel(PyLoihiProcessModel):
    """Window reset, firing and soft reset, shared by both precisions; subclasses charge."""

    leak_exp: int = LavaPyType(int, np.int8, precision=2)
    threshold_exp: int = LavaPyType(int, np.int8, precision=5)
    offset: int = LavaPyType(int, np.int32, precision=17)
    window: int = LavaPyType(int, np.int32, precision=17)
    ternary: int = LavaPyType(int, np.int8, precision=1)
    scale: float = LavaPyType(float, float)

    def charge(self, a_in: np.ndarray) -> np.ndarray:
        """The charged membrane ``h = 2**leak_exp * v + charge(a_in)``."""
        raise NotImplementedError

    def run_spk(self) -> None:
        relay_step((self.a_in,), self.s_out, self.fire, np.zeros_like(self.v))

    def fire(self, a_in: np.ndarray) -> np.ndarray:
        """One step of the neurons: charge, fire and soft reset; returns the spikes."""
        if (self.time_step - 1) % self.window == 0:  # time_step counts from 1
            self.v[:] = self.offset
        h = self.charge(a_in)
        theta = 1 << self.threshold_exp
        spikes = (h >= theta).astype(self.v.dtype)
        if self.ternary:
            spikes -= h <= -theta
        self.v[:] = h - theta * spikes
        return spikes


@implements(proc=TCLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTCLIFModelFloat(AbstractPyTCLIFModel):
    """Float64 membrane; the charge rounds half up like ``TCLIFNode`` (bit-exact with it on float64 inputs)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)

    def charge(self, a_in: np.ndarray) -> np.ndarray:
        return self.v * float(1 << self.leak_exp) + np.floor(a_in / self.scale + 0.5)


@implements(proc=TCLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTCLIFModelFixed(AbstractPyTCLIFModel):
    """Int32 membrane fed integer levels; the leak is a left shift. Raises ``OverflowError``
    rather than wrapping around when a membrane leaves the int32 range."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=2)
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)

    def charge(self, a_in: np.ndarray) -> np.ndarray:
        # In int64, to see an overflow of the int32 membrane instead of wrapping around.
        h = np.left_shift(self.v.astype(np.int64), self.leak_exp) + a_in
        peak = int(np.abs(h).max())
        if peak > INT32_MAX:
            raise OverflowError(
                f"TCLIF membrane |h| = {peak} exceeds the int32 range at time step {self.time_step}: "
                f"the input levels are too large for a {self.window}-step window (clamp them to the "
                f"code's levels, which does not change the spikes of a value presented once)"
            )
        return h.astype(np.int32)

"""ProcessModels of :class:`DecodedOp` for ``Loihi2SimCfg``: float ports, or int32 ports for fixed point."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

# Absolute import: Lava's compiler also executes this file as a bare module named "models".
from spikemllm_sj.lava_backend.decoded_op.process import DecodedOp


class AbstractPyDecodedOpModel(PyLoihiProcessModel):
    """The window time line of :class:`DecodedOp`; subclasses give the port types."""

    window: int = LavaPyType(int, np.int32, precision=17)

    def run_spk(self) -> None:
        a, aux = self.a_in.recv(), self.aux_in.recv()
        phase = (self.time_step - 1) % self.window  # time_step counts from 1
        last = phase == self.window - 1
        # The last token's results go out before this step's token is computed (T = 1 included),
        # so an error in fn below leaves no port of this step without its message.
        self.a_out.send(self.held_out if phase == 0 else np.zeros_like(self.held_out))
        self.aux_out.send(self.held_aux if last else np.zeros_like(self.held_aux))
        if last:
            out, aux_out = self.proc_params["fn"](a, aux)
            self.held_out[:] = out
            self.held_aux[:] = aux_out


@implements(proc=DecodedOp, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyDecodedOpModelFloat(AbstractPyDecodedOpModel):
    """Float64 ports and values."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    held_out: np.ndarray = LavaPyType(np.ndarray, float)
    aux_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    aux_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    held_aux: np.ndarray = LavaPyType(np.ndarray, float)


@implements(proc=DecodedOp, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDecodedOpModelFixed(AbstractPyDecodedOpModel):
    """Int32 throughout: accumulator in (from a fixed-point ``SpikeDense``), levels out (to a
    fixed-point ``TCLIF``), side values as 32-bit words (``fn`` says what they hold)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)
    held_out: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)
    aux_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    aux_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)
    held_aux: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)

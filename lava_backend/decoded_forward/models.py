"""ProcessModels of :class:`DecodedForward` for ``Loihi2SimCfg``: float ports, or int32 ports for fixed point."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

# Absolute imports: Lava's compiler also executes this file as a bare module named "models".
from spikemllm_sj.lava_backend._forward_worker import ForwardWorker
from spikemllm_sj.lava_backend.decoded_forward.process import DecodedForward


class AbstractPyDecodedForwardModel(PyLoihiProcessModel):
    """The time line of :class:`DecodedForward`; the model's code runs in a :class:`ForwardWorker`."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        plan = proc_params["plan"]
        self._plan = plan
        self._starts = {call.start: call for call in plan.calls}
        self._ends = {call.end: call for call in plan.calls}
        self._readouts = {step: forward for forward, step in enumerate(plan.readouts)}
        self._worker = None
        self._traces: dict[int, np.ndarray] = {}  # call index -> the accounting it brought back

    def run_spk(self) -> None:
        if self._worker is None:
            self._worker = ForwardWorker(self.proc_params["session"], self._plan)
        t = self.time_step
        payload = np.zeros(self.payload_out.shape, dtype=np.int64)
        result = np.zeros(self.result_out.shape, dtype=np.int64)
        try:
            call = self._starts.get(t)
            if call is not None:
                data = self._worker.payload(call)
                payload[: data.size] = data
            forward = self._readouts.get(t)
            if forward is not None:
                data = self._worker.readout(forward, self._traces)
                result[: data.size] = data
            if t == self._plan.final_step:
                data = self._worker.generated()
                result[: data.size] = data
        finally:
            # Sent before an error propagates: the site processes and the sink wait for this step.
            self.payload_out.send(payload)
            self.result_out.send(result)
        message = self.acc_in.recv()
        ended = self._ends.get(t)
        if ended is not None:
            self._traces[ended.index] = message[self._plan.acc_width :].astype(np.int64)
            self._worker.reply(message[: ended.out_size])


@implements(proc=DecodedForward, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyDecodedForwardModelFloat(AbstractPyDecodedForwardModel):
    """Float64 ports (integers and float32 bit patterns, exact)."""

    payload_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    acc_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    result_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=DecodedForward, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDecodedForwardModelFixed(AbstractPyDecodedForwardModel):
    """Int32 ports: levels and integer products; logits travel as the int32 words of their float32 bits."""

    payload_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)
    acc_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    result_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)

"""ProcessModels of :class:`SpikeSynapse` for ``Loihi2SimCfg``: floating point and int32 fixed point."""

from __future__ import annotations

import functools
import math

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

# Absolute imports: Lava's compiler also executes this file as a bare module named "models".
from spikemllm_sj.lava_backend._fixed_point import INT32_MAX
from spikemllm_sj.lava_backend._site_calls import CodeTable, call_phases, check_range, count_words
from spikemllm_sj.lava_backend._step import relay_step
from spikemllm_sj.lava_backend.model_plan import NEURON_FIELDS, SYNAPSE_FIELDS
from spikemllm_sj.lava_backend.spike_synapse.process import SpikeSynapse
from spikemllm_sj.neurons import Modality


class AbstractPySpikeSynapseModel(PyLoihiProcessModel):
    """Horner's integration and the accelerator's accounting, shared by both precisions."""

    acc_bound: int = INT32_MAX

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._phases = call_phases(proc_params["calls"])
        self._codes = {site: CodeTable.of(codes) for site, codes in proc_params["codes"].items()}

    @functools.cached_property
    def _silence(self) -> np.ndarray:
        """The message of a step without a product (never written to)."""
        return np.zeros(self.a_out.shape, dtype=np.int64)

    def run_spk(self) -> None:
        relay_step((self.s_in, self.payload_in), self.a_out, self._integrate, self._silence)

    def _integrate(self, spikes: np.ndarray, payload: np.ndarray) -> np.ndarray:
        """This step's output: a call's product and accounting at its last step, else silence."""
        active = self._phases.get(self.time_step)
        if active is None:
            return self._silence
        out = np.zeros(self.a_out.shape, dtype=np.int64)
        self._step(spikes, payload, *active, out)
        return out

    def _region(self, site: str) -> np.ndarray:
        """The site's operand: a view of its region of the Var (writes go to the state)."""
        offset, shape = self.proc_params["layout"][site]
        return self.operand[offset : offset + int(np.prod(shape))].reshape(shape)

    def _start(self, call, payload: np.ndarray) -> None:
        n_levels, n_ids, n_rows = call.payload_sizes
        what = f"{call.site} (call {call.index})"
        self._code = self._codes[call.site]
        self._ids = self._code.token_codes(payload[n_levels : n_levels + n_ids], what)
        bits = self.proc_params["bits"][call.site]
        byte_bits = call.fan_in * call.fan_out * bits  # the weights, read once per call
        if call.kind == "linear":
            operand = self._region(call.site).T[None]  # the weights [out, in] as [1, K=in, N=out]
        else:
            rows = payload[n_levels + n_ids : n_levels + n_ids + n_rows].astype(np.int64)
            check_range(rows, (1 << (bits - 1)) - 1, f"{what}: new cache rows")  # symmetric levels
            d, held = call.cache_dim, call.keep + call.new
            cache = self._region(call.site)
            cache[: call.groups, call.keep : held] = rows.reshape(call.groups, call.new, d)
            cache = cache[: call.groups, :held]  # the KV cache [G, S, d]
            operand = cache.transpose(0, 2, 1) if call.kind == "attention.qk" else cache
            byte_bits = call.groups * (held + call.new) * d * bits  # positions read, new ones written
        self._operand = operand.astype(np.float64)  # products of -1/0/+1 spikes: exact in float64 BLAS
        self._bits = bits
        self._hbm = math.ceil(byte_bits / 8)
        self._counts = np.zeros(len(Modality), dtype=np.int64)
        self._cycles = 0

    def _step(self, message: np.ndarray, payload: np.ndarray, call, phase: int, out: np.ndarray) -> None:
        if phase == 0:
            self._start(call, payload)
        G, M, K, N = call.groups, call.rows, call.fan_in, call.fan_out
        spikes = message[: G * M * K].reshape(G, M, K)
        current = np.rint(np.matmul(spikes.astype(np.float64), self._operand)).astype(np.int64)
        self._acc = current if phase == 0 else self._code.leak * self._acc + current
        check_range(self._acc, self.acc_bound, f"{call.site}: accumulator at step {self.time_step}")
        synops = np.count_nonzero(spikes, axis=-1).reshape(-1) * N  # per token: spikes x fan-out
        step = np.bincount(self._ids, weights=synops, minlength=len(Modality)).astype(np.int64)
        self._counts += step
        self._cycles += -(-int(step.sum()) // self.proc_params["pe_count"])
        if phase < call.steps - 1:
            return
        offset = self._code.offset[self._ids].reshape(G, M, 1)
        result = self._acc - offset * self._operand.sum(axis=1, keepdims=True).astype(np.int64)
        check_range(result, self.acc_bound, f"{call.site}: result")
        width = self.proc_params["acc_width"]
        out[: result.size] = result.reshape(-1)
        synops_total = int(self._counts.sum())
        sram = self._hbm + math.ceil(synops_total * self._bits / 8)
        fields = [synops_total, *self._counts.tolist(), self._cycles, self._hbm, sram]
        out[width : width + 2 * len(SYNAPSE_FIELDS)] = count_words(fields)
        out[width + 2 * len(SYNAPSE_FIELDS) :] = message[-2 * len(NEURON_FIELDS) :]  # the neurons' accounting


@implements(proc=SpikeSynapse, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeSynapseModelFloat(AbstractPySpikeSynapseModel):
    """Float64 ports and operands (integers, exact below 2**53)."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    payload_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    operand: np.ndarray = LavaPyType(np.ndarray, float)
    acc_bound = (1 << 53) - 1


@implements(proc=SpikeSynapse, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSynapseModelFixed(AbstractPySpikeSynapseModel):
    """Int32 ports, operand and accumulator; leaving int32 raises ``OverflowError``."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    payload_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)
    operand: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)

"""ProcessModels of :class:`SiteNeurons` for ``Loihi2SimCfg``: floating point and int32 fixed point."""

from __future__ import annotations

import functools

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
from spikemllm_sj.lava_backend.model_plan import NEURON_FIELDS
from spikemllm_sj.lava_backend.site_neurons.process import SiteNeurons


class AbstractPySiteNeuronsModel(PyLoihiProcessModel):
    """The neurons' dynamics, shared by both precisions (they hold integers in either)."""

    membrane_bound: int = INT32_MAX

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._phases = call_phases(proc_params["calls"])
        self._codes = {site: CodeTable.of(codes) for site, codes in proc_params["codes"].items()}
        self._membrane_bytes = proc_params["membrane_bytes"]

    @functools.cached_property
    def _silence(self) -> np.ndarray:
        """The message of a step without spikes (never written to)."""
        return np.zeros(self.s_out.shape, dtype=np.int64)

    def run_spk(self) -> None:
        relay_step((self.payload_in,), self.s_out, self._fire, self._silence)

    def _fire(self, payload: np.ndarray) -> np.ndarray:
        """This step's spikes (and at a call's end the accounting); silence while no call runs."""
        active = self._phases.get(self.time_step)
        if active is None:
            return self._silence
        out = np.zeros(self.s_out.shape, dtype=np.int64)
        self._step(payload, *active, out)
        return out

    def _start(self, call, payload: np.ndarray) -> None:
        n_levels, n_ids, _ = call.payload_sizes
        what = f"{call.site} (call {call.index})"
        c = self._code = self._codes[call.site]
        ids = c.token_codes(payload[n_levels : n_levels + n_ids], what)
        levels = payload[:n_levels].astype(np.int64).reshape(n_ids, call.fan_in)
        low, high = c.qmin[ids][:, None], c.qmax[ids][:, None]
        outside = (levels < low) | (levels > high)
        if outside.any():
            token = int(np.argwhere(outside)[0][0])
            raise ValueError(
                f"{what}: levels outside their code's range: token {token} (modality id {ids[token]}) holds levels in "
                f"[{levels[token].min()}, {levels[token].max()}], its code allows [{low[token, 0]}, {high[token, 0]}] "
                f"(the decoded stages must quantize them)"
            )
        if (c.steps[ids] > call.steps).any():
            raise ValueError(f"{what}: a token's code needs {int(c.steps[ids].max())} steps, the call has {call.steps}")
        self._levels, self._ids = levels, ids
        self._first = call.steps - c.steps[ids]  # the phase at which each token's train starts
        self._v = np.zeros_like(levels)
        self._spikes, self._updates = 0, int(c.steps[ids].sum()) * call.fan_in

    def _step(self, payload: np.ndarray, call, phase: int, out: np.ndarray) -> None:
        if phase == 0:
            self._start(call, payload)
        c, ids = self._code, self._ids
        first = (self._first == phase)[:, None]
        running = (self._first <= phase)[:, None]
        v = np.where(first, c.offset[ids][:, None], self._v)
        h = c.leak * v + np.where(first, self._levels, 0)
        check_range(h, self.membrane_bound, f"{call.site}: membrane at step {self.time_step}")
        theta = c.threshold[ids][:, None]
        spikes = (h >= theta).astype(np.int64)
        if c.ternary:
            spikes -= h <= -theta
        spikes = np.where(running, spikes, 0)
        self._v = np.where(running, h - theta * spikes, self._v)
        n = spikes.size
        self.v[:n] = self._v.reshape(-1)
        out[:n] = spikes.reshape(-1)
        self._spikes += int(np.count_nonzero(spikes))
        if phase == call.steps - 1:
            sram = 2 * self._updates * self._membrane_bytes
            out[-2 * len(NEURON_FIELDS):] = count_words([self._spikes, self._updates, sram])


@implements(proc=SiteNeurons, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySiteNeuronsModelFloat(AbstractPySiteNeuronsModel):
    """Float64 ports and membrane (integers, exact below 2**53)."""

    payload_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    membrane_bound = (1 << 53) - 1


@implements(proc=SiteNeurons, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySiteNeuronsModelFixed(AbstractPySiteNeuronsModel):
    """Int32 ports and membrane; a membrane leaving int32 raises ``OverflowError``."""

    payload_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)

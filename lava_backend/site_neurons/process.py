"""The spike coders of spike-driven sites of a whole converted model, as a Lava Process."""

from __future__ import annotations

import typing as ty

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from spikemllm_sj.lava_backend.model_plan import NEURON_FIELDS, SiteCall, SiteSpec

__all__ = ["SiteNeurons"]


class SiteNeurons(AbstractProcess):
    """MSTS spike coders of one or more sites (a site, or the sites of one decoder layer): a
    neuron per level of each call, each token with its modality's code (the TC-LIF or rate code of
    :class:`~spikemllm_sj.neurons.MSTSEncoder`, or the probabilities' binary TC-LIF code).

    At a call's first step the decoded stages send the integer levels ``[G*M, K]`` of its tokens
    and their modality ids ``[G*M]`` (``payload_in``, see :class:`~spikemllm_sj.lava_backend.model_plan.SiteCall`).
    A token whose code has fewer steps than the call's window ``T`` starts later (MSTS pads at the
    start of the train), from the rest potential ``offset``; from then on, every step::

        h = leak * v + (level at the token's first step, else 0)
        s = [h >= theta] - [h <= -theta]        theta: the code's threshold (binary codes drop -1)
        v = h - theta * s                       soft reset

    the spikes of :meth:`SpikeCodingNode.encode <spikemllm_sj.neurons.SpikeCodingNode.encode>`. The spikes
    ``[G*M*K]`` go to the synapse process of the same sites (``s_out``), followed at the call's
    last step by this process's accounting of the call
    (:data:`~spikemllm_sj.lava_backend.model_plan.NEURON_FIELDS`: spikes fired, membrane updates
    (neurons times the steps each used) and their SRAM bytes, one read and one write of
    ``membrane_bytes`` each).

    Levels outside their code's range, or a membrane beyond int32 (fixed point), raise: nothing
    is clamped or wrapped.

    :param calls: the calls of its sites (the neurons are idle at other steps).
    :param sites: the sites it codes for (their codes).
    :param payload_width: width of the decoded stages' message.
    :param membrane_bytes: bytes of one membrane potential on the accelerator.

    Vars: ``v``, the membranes of the call in progress.
    """

    def __init__(
        self,
        *,
        calls: ty.Sequence[SiteCall],
        sites: ty.Sequence[SiteSpec],
        payload_width: int,
        membrane_bytes: int,
        name: ty.Optional[str] = None,
        log_config: ty.Optional[LogConfig] = None,
    ) -> None:
        super().__init__(calls=tuple(calls), codes={s.name: dict(s.codes) for s in sites}, membrane_bytes=membrane_bytes,
                         name=name, log_config=log_config)
        capacity = max(c.groups * c.rows * c.fan_in for c in calls)
        self.payload_in = InPort(shape=(payload_width,))
        self.s_out = OutPort(shape=(capacity + 2 * len(NEURON_FIELDS),))
        self.v = Var(shape=(capacity,), init=0)

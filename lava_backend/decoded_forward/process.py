"""The non-spiking work of a whole converted model as a Lava Process: the model's own torch code
between its spike-driven sites, for a prefill and greedy decode steps."""

from __future__ import annotations

import typing as ty

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig

from spikemllm_sj.lava_backend.model_plan import ModelPlan

__all__ = ["DecodedForward"]


class DecodedForward(AbstractProcess):
    """Runs a converted model's generation (``model.generate``: a prefill and greedy decode steps)
    with every spike-driven product done by the site processes of the network.

    The model's code (embeddings, norms, rotary embeddings, softmax, residual additions,
    activations, the layers kept in float such as the output head, and each site's non-spiking
    part: input transforms, per-token scales, quantization of the levels, of the keys and of the
    values, and the rescaling of the integer products) runs in this process, in a thread that
    pauses at each site call. On the :class:`~spikemllm_sj.lava_backend.model_plan.ModelPlan`'s
    time line, per call::

        first step:  payload_out carries the call's levels, token modality ids and new cache rows
                     (to the site's SiteNeurons and SpikeSynapse)
        last step:   acc_in brings the exact integer product and the call's accounting back;
                     the model's code goes on with it to the next call

    and at each forward's readout step ``result_out`` carries the forward's logits (the last
    position's, the only ones ``generate`` computes; float32 bits) and its non-spiking work
    (counted by SpikingJelly's ``FlopCounter`` per module scope and per call, outside the sites as
    :func:`~spikemllm_sj.analysis.op_report.op_report` counts it); at the final step, the tokens
    ``generate`` produced. Every other step sends zeros.

    :param session: what the thread runs, a :class:`~spikemllm_sj.lava_backend.whole_model.ForwardSession`
        (it reaches the forked process as is, so it may hold the model).
    :param plan: the time line.
    """

    def __init__(
        self,
        *,
        session: ty.Any,
        plan: ModelPlan,
        name: ty.Optional[str] = None,
        log_config: ty.Optional[LogConfig] = None,
    ) -> None:
        super().__init__(session=session, plan=plan, name=name, log_config=log_config)
        self.payload_out = OutPort(shape=(plan.payload_width,))
        self.acc_in = InPort(shape=(plan.acc_width + plan.trace_width,))
        self.result_out = OutPort(shape=(plan.result_width,))

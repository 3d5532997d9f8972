"""Running a :class:`LavaNetwork` on Lava's CPU simulator (``Loihi2SimCfg``): :func:`run_lava`."""

from __future__ import annotations

import numpy as np
import torch
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.runtime.runtime import Runtime
from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
from lava.proc.io.source import RingBuffer

from spikemllm_sj.lava_backend._streams import source_data, window_outputs
from spikemllm_sj.lava_backend.network import LavaNetwork

__all__ = ["LavaRunError", "run_lava"]

# Bytes of sink messages buffered between two reads (float64 per output and step).
DEFAULT_BUFFER_BYTES = 64 << 20


class LavaRunError(RuntimeError):
    """A Lava ProcessModel raised during the run; the message carries its traceback."""


def run_lava(network: LavaNetwork, inputs: torch.Tensor, *, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> torch.Tensor:
    """Run ``network`` on ``inputs``, one token per window of ``T`` steps, and return its outputs.

    :param network: from :func:`~spikemllm_sj.lava_backend.to_lava`.
    :param inputs: a network that encodes takes ``[n_tokens, size]``: activations (a float
        tensor; ``fixed_pt`` quantizes them on the host, in their own dtype) or, for ``fixed_pt``
        only, integer levels (an integer tensor, fed unclamped). A network built with
        ``encode=False`` takes spike trains ``[T, n_tokens, size]`` (-1/0/+1, or 0/1 for binary codes).
    :param buffer_bytes: memory for the sink's messages between reads; longer inputs run in
        several ``RunSteps`` of whole windows.
    :returns: neurons alone: spikes ``[T, n_tokens, size]`` (int8), as ``SpikeCodingNode.encode``;
        with a layer: the integer currents ``W @ q`` ``[n_tokens, out]`` (int64).
    :raises LavaRunError: if a ProcessModel raised (e.g. a fixed-point membrane overflow).

    Outputs are read from a Lava ``Extractor`` sink, one whole array per step, instead of
    ``Var.get`` (one message per element). The runtime is always stopped, also on errors and
    ``KeyboardInterrupt``.
    """
    data, n_tokens = source_data(network, inputs)
    steps = network.steps
    tokens_per_run = max(1, min(n_tokens, buffer_bytes // (8 * steps * network.out_size)))
    source = RingBuffer(data=data)
    first_port, last_port = network.build()
    sink = Extractor(shape=(network.out_size,), buffer_size=tokens_per_run * steps)
    source.s_out.connect(first_port)
    last_port.connect(sink.in_port)
    # The Extractor's model carries no precision tag, so Loihi2SimCfg must be told to use it.
    run_cfg = Loihi2SimCfg(
        select_tag=network.precision, exception_proc_model_map={Extractor: PyLoihiExtractorModel}
    )
    every_step = network.layer is None  # a layer's output matters at the window ends only
    outputs, finished = [], False
    try:
        for first in range(0, n_tokens, tokens_per_run):
            run_steps = (min(n_tokens, first + tokens_per_run) - first) * steps
            sink.run(condition=RunSteps(num_steps=run_steps), run_cfg=run_cfg)
            for step in range(run_steps):
                message = sink.receive()  # every step's message, or the sink's buffer fills up
                if every_step or step % steps == steps - 1:
                    outputs.append(message)
        finished = True
    except RuntimeError as error:
        failures = _model_failures(sink.runtime)
        if failures:
            raise LavaRunError("a Lava ProcessModel raised during the run:\n" + "\n".join(failures)) from error
        raise
    finally:
        _release(sink.runtime, finished)
    return window_outputs(network, np.stack(outputs), n_tokens)


def _model_failures(runtime: Runtime | None) -> list[str]:
    """Tracebacks of the Lava actors (one OS process per ProcessModel) that raised."""
    if runtime is None:
        return []
    return [actor.exception[1] for actor in runtime._messaging_infrastructure.actors if actor.exception]


def _release(runtime: Runtime | None, clean: bool) -> None:
    """Stop ``runtime``; after an error or an interrupt, without waiting on its processes.

    ``Runtime.stop`` waits for every process to acknowledge; after a failure some never will
    (lava-nc 0.10.0 hangs), so the processes it started are terminated first and the runtime is
    marked stopped, after which ``stop`` only releases the shared memory.
    """
    if runtime is None:
        return
    if not clean:
        for actor in runtime._messaging_infrastructure.actors:
            if not actor._is_done and actor.is_alive():
                actor.terminate()
        runtime._is_running = runtime._is_started = False
    runtime.stop()

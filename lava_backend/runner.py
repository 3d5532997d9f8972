"""Running a :class:`LavaNetwork` on Lava's CPU simulator (``Loihi2SimCfg``): :func:`run_lava`."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.runtime.runtime import Runtime
from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
from lava.proc.io.source import RingBuffer

from spikemllm_sj.lava_backend._lifecycle import lava_runtime
from spikemllm_sj.lava_backend._streams import source_data, window_outputs
from spikemllm_sj.lava_backend.network import LavaNetwork, Precision

__all__ = ["LavaRunError", "run_lava", "simulate"]

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
    ``Var.get`` (one message per element). Lava's processes and shared memory are gone when it
    returns or raises, also after a ``KeyboardInterrupt`` at any point (see :func:`simulate`).
    """
    data, n_tokens = source_data(network, inputs)
    steps = network.steps
    tokens_per_run = max(1, min(n_tokens, buffer_bytes // (8 * steps * network.out_size)))
    source = RingBuffer(data=data)
    first_port, last_port = network.build()
    sink = Extractor(shape=(network.out_size,), buffer_size=tokens_per_run * steps)
    source.s_out.connect(first_port)
    last_port.connect(sink.in_port)
    every_step = network.layer is None  # a layer's output matters at the window ends only
    (outputs,) = simulate(
        [sink],
        precision=network.precision,
        num_steps=n_tokens * steps,
        steps_per_run=tokens_per_run * steps,
        keep=lambda step: every_step or step % steps == steps - 1,
    )
    return window_outputs(network, outputs, n_tokens)


def simulate(
    sinks: list[Extractor],
    *,
    precision: Precision,
    num_steps: int,
    steps_per_run: int,
    keep: Callable[[int], bool],
    timings: Optional[dict[str, float]] = None,
    compile_config: Optional[dict] = None,
) -> list[np.ndarray]:
    """Run the Lava graph that ``sinks`` belong to for ``num_steps`` and collect their messages.

    :param sinks: ``Extractor`` processes of one connected graph, each with a buffer of at least
        ``steps_per_run`` messages (every step's message is received, or a full buffer stalls).
    :param keep: which steps' messages (counting from 0) to return.
    :returns: per sink, the kept messages stacked ``[kept steps, *shape]``.
    :param timings: if given, filled with the wall seconds of ``compile_and_start`` (compiling the
        graph, starting its processes), ``run`` (Lava's steps), ``read_back`` (receiving the sinks'
        messages) and ``stop``.
    :param compile_config: Lava's compile configuration (e.g. ``{"pypy_channel_size": 2}``: the
        messages each channel buffers, 64 by default; every process moves one step at a time, so a
        wide network needs far fewer).
    :raises LavaRunError: if a ProcessModel raised.

    Runs in several ``RunSteps`` of ``steps_per_run``. Lava's processes and shared memory are
    gone when it returns or raises: SIGINT is held back while they start and stop, and after an
    error or an interrupt they are terminated (:func:`~spikemllm_sj.lava_backend._lifecycle.lava_runtime`).
    """
    # The Extractor's model carries no precision tag, so Loihi2SimCfg must be told to use it.
    run_cfg = Loihi2SimCfg(select_tag=precision, exception_proc_model_map={Extractor: PyLoihiExtractorModel})
    outputs: list[list[np.ndarray]] = [[] for _ in sinks]
    timings = {} if timings is None else timings
    timings.update(compile_and_start=0.0, run=0.0, read_back=0.0, stop=0.0)
    clock = time.perf_counter()
    with lava_runtime(sinks[0], run_cfg, compile_config) as runtime:
        timings["compile_and_start"] = time.perf_counter() - clock
        try:
            for first in range(0, num_steps, steps_per_run):
                run_steps = min(steps_per_run, num_steps - first)
                clock = time.perf_counter()
                sinks[0].run(condition=RunSteps(num_steps=run_steps))
                timings["run"] += time.perf_counter() - clock
                clock = time.perf_counter()
                for step in range(first, first + run_steps):
                    for sink, kept in zip(sinks, outputs):
                        message = sink.receive()
                        if keep(step):
                            kept.append(message)
                timings["read_back"] += time.perf_counter() - clock
        except RuntimeError as error:
            failures = _model_failures(runtime)
            if failures:
                raise LavaRunError("a Lava ProcessModel raised during the run:\n" + "\n".join(failures)) from error
            raise
        clock = time.perf_counter()
    timings["stop"] = time.perf_counter() - clock
    return [np.stack(kept) for kept in outputs]


def _model_failures(runtime: Runtime) -> list[str]:
    """Tracebacks of the Lava actors (one OS process per ProcessModel) that raised."""
    return [actor.exception[1] for actor in runtime._messaging_infrastructure.actors if actor.exception]

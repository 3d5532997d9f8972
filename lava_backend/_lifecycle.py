"""A Lava runtime's life: started whole, always stopped, safe against Ctrl-C at any point.

lava-nc 0.10.0 starts one OS process per ProcessModel and per runtime service, plus a server of
shared memory. A ``KeyboardInterrupt`` in the middle of that lands between a fork and its
bookkeeping, in an at-fork hook (where Python prints and drops it), or half-way through the
server's start; processes are then lost track of, the interpreter's exit waits for them forever
and their segments stay in ``/dev/shm``. Ctrl-C in a terminal also signals every one of those
processes, which die with a traceback while their peers wait for them.

So :func:`lava_runtime` holds SIGINT back while a runtime starts and while it stops (well under a
second each; :func:`~spikemllm_sj.interrupts.sigint_held`), and delivers it right after, once
every process is accounted for. The processes forked meanwhile keep the holding handler, which
ignores SIGINT in them: Ctrl-C stops them through their parent only. While the network runs,
SIGINT acts at once, and the runtime is then stopped without waiting for its processes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from typing import Iterator, Sequence

from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.run_configs import RunConfig
from lava.magma.runtime.runtime import Runtime

from spikemllm_sj.interrupts import sigint_held

__all__ = ["lava_runtime"]

# Seconds a terminated Lava process gets to exit before it is killed (an idle one takes
# milliseconds; one stuck in a blocking system call may need the kill).
TERMINATE_GRACE_S = 1.0


@contextmanager
def lava_runtime(process: AbstractProcess, run_cfg: RunConfig) -> Iterator[Runtime]:
    """Compile the network of ``process``, start its runtime, and stop it when the block ends.

    The runtime starts and stops with SIGINT held back (:func:`~spikemllm_sj.interrupts.sigint_held`).
    After an error or an interrupt in the block its processes are terminated instead of asked to
    stop, as lava-nc 0.10.0 waits forever for an answer from a process that failed. Either way,
    when the block is left every process of the runtime has exited and its shared memory is
    released. Run the network with ``process.run(condition)``: the runtime exists already.
    """
    executable = process.compile(run_cfg)  # starts no process, so SIGINT may act here at once
    stopped = False
    try:
        with sigint_held():
            process.create_runtime(executable=executable)
        yield process.runtime
        with sigint_held():
            process.runtime.stop()
        stopped = True
    finally:
        if not stopped and process.runtime is not None:
            with sigint_held():
                _stop_unfinished(process.runtime)


def _stop_unfinished(runtime: Runtime) -> None:
    """Stop ``runtime`` after an error or an interrupt, without waiting for answers.

    Its processes are ended (:func:`_end`) and the runtime marked stopped, after which
    ``Runtime.stop`` only joins them and shuts the shared memory and its server down.
    """
    infrastructure = runtime._messaging_infrastructure
    smm = None if infrastructure is None else infrastructure.smm
    # Lava starts the server of the shared memory first, then builds the channels and processes;
    # if that start failed (e.g. its socket path under TMPDIR is too long) there is nothing to
    # stop, and Runtime.stop would raise an AttributeError over the start-up's own error.
    # (BaseManager.start sets ``shutdown`` once the server runs.)
    if smm is None or not hasattr(smm._manager, "shutdown"):
        return
    _end(infrastructure.actors)
    runtime._is_running = runtime._is_started = False
    runtime.stop()


def _end(processes: Sequence[BaseProcess]) -> None:
    """Terminate the processes still running, and kill those that do not exit in time.

    ``SystemProcess.join`` (Lava's) takes no timeout, so the base class's join waits here.
    """
    running = [p for p in processes if not p._is_done and p.is_alive()]  # Lava closes a joined one
    for p in running:
        p.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for p in running:
        BaseProcess.join(p, max(0.0, deadline - time.monotonic()))
    for p in running:
        if p.is_alive():
            p.kill()
            BaseProcess.join(p)

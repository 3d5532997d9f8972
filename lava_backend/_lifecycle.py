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

import ctypes
import gc
import os
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from typing import Iterator, Optional, Sequence

from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.run_configs import RunConfig
from lava.magma.runtime.runtime import Runtime

from spikemllm_sj.interrupts import sigint_held

__all__ = ["lava_runtime"]

# Seconds a terminated Lava process gets to exit before it is killed (an idle one takes
# milliseconds; one stuck in a blocking system call may need the kill).
TERMINATE_GRACE_S = 1.0


@contextmanager
def lava_runtime(process: AbstractProcess, run_cfg: RunConfig, compile_config: Optional[dict] = None) -> Iterator[Runtime]:
    """Compile the network of ``process`` (with Lava's ``compile_config``, if given), start its
    runtime, and stop it when the block ends.

    The runtime starts and stops with SIGINT held back (:func:`~spikemllm_sj.interrupts.sigint_held`).
    After an error or an interrupt in the block its processes are terminated instead of asked to
    stop, as lava-nc 0.10.0 waits forever for an answer from a process that failed. Either way,
    when the block is left every process of the runtime has exited and its shared memory is
    released. Run the network with ``process.run(condition)``: the runtime exists already.
    """
    executable = process.compile(run_cfg, compile_config)  # starts no process, so SIGINT may act here at once
    stopped = False
    try:
        with sigint_held(), _gc_frozen(), _children_die_with_parent():
            process.create_runtime(executable=executable)
        yield process.runtime
        with sigint_held():
            process.runtime.stop()
        stopped = True
    finally:
        if not stopped and process.runtime is not None:
            with sigint_held():
                _stop_unfinished(process.runtime)


@contextmanager
def _gc_frozen() -> Iterator[None]:
    """Keep the garbage collector of the forked processes off the parent's objects.

    Each Lava process is a fork of this one and shares its memory until it writes to it; a
    collection in the child writes to every object it visits, copying the page (measured: about
    60 MB per process with a 135M-parameter model loaded, 24 GB at 370 processes).
    ``gc.freeze`` moves the parent's objects out of the collector's reach while the processes
    are forked (Python's documented remedy); they return to it afterwards in this process.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def _children_die_with_parent() -> Iterator[None]:
    """Have the processes Lava forks meanwhile killed when this process dies (Linux).

    A parent killed outright (SIGKILL, the kernel's out-of-memory killer) runs no clean-up, and
    its Lava processes, waiting for commands that never come, stayed alive (seen: 370 of them
    holding 24 GB after an out-of-memory kill). ``PR_SET_PDEATHSIG`` has the kernel send them
    SIGKILL when the thread that forked them (this one) exits. Only the forks made inside this
    block are marked; other forks of the program are left alone.
    """
    _forks["lava"] = _prctl is not None
    try:
        yield
    finally:
        _forks["lava"] = False


def _linux_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PR_SET_PDEATHSIG = 1
_prctl = _linux_prctl()
_forks = {"lava": False, "parent": 0}


def _before_fork() -> None:
    _forks["parent"] = os.getpid()


def _after_fork_in_child() -> None:
    if _forks["lava"]:
        if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            warnings.warn(f"prctl(PR_SET_PDEATHSIG) failed (errno {ctypes.get_errno()}): this Lava process will outlive "
                          "a parent that is killed outright", RuntimeWarning, stacklevel=1)
        if os.getppid() != _forks["parent"]:  # the parent died before the mark was set
            os._exit(1)


if _prctl is not None:
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


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

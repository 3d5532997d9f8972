"""Ctrl-C that takes effect where it is safe, and is never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives:

* half-way through work that must not be split, such as starting Lava's processes (a fork and
  its bookkeeping). :func:`sigint_held` holds SIGINT back until such a block is done, then
  delivers it.
* in a finalizer (``__del__``, a weakref callback) or an at-fork hook, where Python prints it
  ("Exception ignored in ...") and drops it: the program runs on as if Ctrl-C had never been
  pressed. :func:`interrupts_kept` sends such an interrupt again instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["interrupts_kept", "sigint_held"]

# Seconds before a dropped interrupt is sent again: enough for the finalizer that dropped it to
# return, so that it does not land there again.
RESEND_DELAY_S = 0.01


@contextmanager
def sigint_held() -> Iterator[None]:
    """Hold SIGINT back until the block ends, then deliver it as if it arrived then.

    A second SIGINT inside the block is delivered at once, so that a block that hangs can still
    be interrupted. A process forked inside the block keeps the handler, which ignores SIGINT
    there (a child is stopped by its parent, not by Ctrl-C). Outside the main thread (where
    Python runs no signal handler), or under a SIGINT handler not installed from Python, the
    block runs without holding anything back.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    owner = os.getpid()
    held = False

    def hold(signum, frame):
        nonlocal held
        if os.getpid() != owner:
            return
        if held:  # pressed again: deliver now
            signal.signal(signal.SIGINT, previous)
            signal.raise_signal(signal.SIGINT)
        held = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is hold:  # not delivered by a second SIGINT already
            signal.signal(signal.SIGINT, previous)
            if held:
                signal.raise_signal(signal.SIGINT)


@contextmanager
def interrupts_kept() -> Iterator[None]:
    """Within the block, a ``KeyboardInterrupt`` that Python drops is not lost: SIGINT is sent to
    the main thread again, ``RESEND_DELAY_S`` later, and nothing is printed.

    Other exceptions that Python drops go to the ``sys.unraisablehook`` in place before the block.
    """
    previous = sys.unraisablehook
    resends: list[threading.Timer] = []

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
            return
        # From another thread: sent from here, it would be raised in this hook and dropped again.
        resend = threading.Timer(RESEND_DELAY_S, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
        resend.daemon = True
        resends.append(resend)
        resend.start()

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        for resend in resends:
            resend.cancel()

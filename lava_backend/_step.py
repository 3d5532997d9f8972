"""One simulation step of a Lava ProcessModel that cannot leave its neighbours waiting."""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["relay_step"]


def relay_step(in_port, out_port, compute: Callable[[np.ndarray], np.ndarray], zeros: np.ndarray) -> None:
    """Receive this step's message, ``compute`` the output and send it.

    The input is received every step (an unread InPort stalls the run). If ``compute`` raises,
    ``zeros`` are sent before re-raising: the downstream models wait for this step's message, and
    without one lava-nc 0.10.0 hangs instead of reporting the error.
    """
    message = in_port.recv()
    try:
        out = compute(message)
    except Exception:
        out_port.send(zeros)
        raise
    out_port.send(out)

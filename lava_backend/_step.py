"""One simulation step of a Lava ProcessModel that cannot leave its neighbours waiting."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["relay_step"]


def relay_step(
    in_ports: Sequence, out_port, compute: Callable[..., np.ndarray], zeros: np.ndarray
) -> None:
    """Receive this step's message on each of ``in_ports``, ``compute(*messages)`` the output and
    send it.

    Every input is received every step (an unread InPort stalls the run). If ``compute`` raises,
    ``zeros`` are sent before re-raising: the downstream models wait for this step's message, and
    without one lava-nc 0.10.0 hangs instead of reporting the error.
    """
    messages = [port.recv() for port in in_ports]
    try:
        out = compute(*messages)
    except Exception:
        out_port.send(zeros)
        raise
    out_port.send(out)

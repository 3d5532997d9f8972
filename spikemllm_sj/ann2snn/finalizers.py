"""What ``convert`` does last to every model it converts, registered by the integrations that
need it (the transformers quantizer attaches itself, so that ``save_pretrained`` writes a folder
that reloads), so that the converter imports none of them."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

__all__ = ["Finalizer", "register_finalizer", "finalizers"]

Finalizer = Callable[[nn.Module, object, object], None]
"""``finalizer(model, spike_config, journal)``: every change through the conversion's journal."""

_FINALIZERS: list[Finalizer] = []


def register_finalizer(finalizer: Finalizer) -> Finalizer:
    """Run ``finalizer`` at the end of every conversion, inside its rollback (a decorator)."""
    if finalizer in _FINALIZERS:
        raise ValueError(f"finalizer {finalizer.__qualname__} is already registered")
    _FINALIZERS.append(finalizer)
    return finalizer


def finalizers() -> tuple[Finalizer, ...]:
    """The registered finalizers, in registration order."""
    return tuple(_FINALIZERS)

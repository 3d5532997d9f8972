"""What a model must be before it is calibrated, converted or analysed: one check each."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["require_eval_mode"]


def require_eval_mode(model: nn.Module, action: str) -> None:
    """Raise unless every module of ``model`` is in eval mode (dropout off, running statistics
    frozen): spike-driven layers are built from, and calibrated on, the inference-time model.

    :param action: what is about to happen, for the message (e.g. ``"converting"``).
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"the model is in training mode ({len(training)} modules, e.g. {training[0]}): call model.eval() before {action}"
        )

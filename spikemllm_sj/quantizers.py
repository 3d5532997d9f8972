"""ANN quantization methods, unified in the spiking representation.

Every method prepares a linear layer the same way: it may transform the layer's input with an
exactly invertible, non-spiking map ``x -> x'`` and fold the inverse into the weight (``W'``), so
that ``x' W'^T = x W^T`` in exact arithmetic. The converter then quantizes ``W'`` per output
channel and ``x'`` per token (or per calibrated tensor) and encodes ``x'``'s integer levels as
spikes. A method is a frozen config class with a handler registered for it (torchao's pattern):
adding one never touches the converter.

* :class:`RTN`: round-to-nearest, no transform.
* :class:`SmoothQuant`: per-input-channel scales ``s_j = max|X_j|**alpha / max|W_j|**(1-alpha)``
  from the calibration move outliers from activations to weights (``x' = x / s``, ``W' = W s``).
* :class:`Hadamard`: an orthonormal Hadamard rotation of the input (``x' = x H``, ``W' = W H``)
  spreads outlier channels over all channels (online, at every linear input).
* :class:`QuaRot`: the language model's residual stream rotated once, folded into the weights
  (:mod:`spikemllm_sj.rotation`), plus the online rotation of the MLP down-projection input; other
  layers round to nearest. A model-level method: its handler rewrites the model before conversion
  and says which layers get which per-layer method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

__all__ = [
    "RTN",
    "SmoothQuant",
    "Hadamard",
    "QuaRot",
    "QuantMethod",
    "METHODS",
    "register_method",
    "prepare_linear",
    "transformed_absmax",
    "hadamard_matrix",
]


@dataclass(frozen=True)
class RTN:
    """Round-to-nearest, with the activation scales of ``SpikeConfig.act_scales``."""


@dataclass(frozen=True)
class SmoothQuant:
    """SmoothQuant scale migration (needs a calibration); ``alpha`` in [0, 1] is the share of
    the activation range moved into the weights."""

    alpha: float = 0.5

    def __post_init__(self):
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")


@dataclass(frozen=True)
class Hadamard:
    """Online Hadamard rotation of every spike-coded linear input."""


@dataclass(frozen=True)
class QuaRot:
    """Residual-stream rotation folded into the weights plus online down-projection rotation."""


QuantMethod = Union[RTN, SmoothQuant, Hadamard, QuaRot]
METHODS: tuple[type, ...] = (RTN, SmoothQuant, Hadamard, QuaRot)
Handler = Callable[[QuantMethod, torch.Tensor, Optional[torch.Tensor]], tuple[torch.Tensor, Optional[nn.Module]]]
_HANDLERS: dict[type, Handler] = {}


def register_method(method_type: type):
    def decorator(handler: Handler) -> Handler:
        _HANDLERS[method_type] = handler
        return handler

    return decorator


def prepare_linear(
    method: QuantMethod, weight: torch.Tensor, channel_absmax: Optional[torch.Tensor]
) -> tuple[torch.Tensor, Optional[nn.Module]]:
    """``(W', transform)`` for a linear layer of weight ``[out, in]``; ``transform`` maps the input
    ``[..., in]`` (None: identity). ``channel_absmax`` ``[in]``: calibrated input range per channel."""
    handler = _HANDLERS.get(type(method))
    if handler is None:
        raise ValueError(f"unknown quantization method {method!r}; registered: {[t.__name__ for t in _HANDLERS]}")
    return handler(method, weight, channel_absmax)


class ChannelDivide(nn.Module):
    """``x / s`` per input channel (a fixed per-channel gain, foldable into the preceding norm)."""

    def __init__(self, s: torch.Tensor):
        super().__init__()
        self.register_buffer("s", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.s.to(x.dtype)


class Rotation(nn.Module):
    """``x @ R`` with an orthonormal ``R`` ``[in, in]``."""

    def __init__(self, r: torch.Tensor):
        super().__init__()
        self.register_buffer("r", r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.r.to(x.dtype)


def transformed_absmax(transform: Optional[nn.Module], channel_absmax: torch.Tensor) -> float:
    """Largest magnitude of the transformed input, from the calibrated range of each channel."""
    if transform is None:
        return float(channel_absmax.max())
    if isinstance(transform, ChannelDivide):
        return float((channel_absmax / transform.s).max())
    raise ValueError(
        f"static activation scales are not supported with {type(transform).__name__}: a rotation mixes "
        "channels, so its range does not follow from per-channel ranges; use act_scales='dynamic'"
    )


@register_method(RTN)
def _rtn(method: RTN, weight: torch.Tensor, channel_absmax):
    return weight, None


@register_method(SmoothQuant)
def _smoothquant(method: SmoothQuant, weight: torch.Tensor, channel_absmax):
    if channel_absmax is None:
        raise ValueError("SmoothQuant needs calibrated per-channel activation ranges: pass calibration=calibrate(...)")
    w_absmax = weight.detach().abs().amax(0).float()
    a, w = channel_absmax.float().clamp_min(1e-5), w_absmax.clamp_min(1e-5)
    s = (a.pow(method.alpha) / w.pow(1.0 - method.alpha)).clamp_min(1e-5)
    return weight * s.to(weight.dtype), ChannelDivide(s)


def hadamard_matrix(n: int) -> torch.Tensor:
    """Orthonormal ``[n, n]``: Sylvester's Hadamard matrix for the largest power-of-two block
    ``2**k`` dividing ``n``, repeated on the diagonal (``H_{2^k} (x) I_{n / 2^k}``), divided by
    ``sqrt(2**k)``. Symmetric, so it is its own inverse."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    block = n & -n  # largest power of two dividing n
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return torch.kron(torch.eye(n // block, dtype=torch.float64), h / block**0.5)


@register_method(Hadamard)
def _hadamard(method: Hadamard, weight: torch.Tensor, channel_absmax):
    r = hadamard_matrix(weight.shape[1]).to(weight.device)
    return (weight.double() @ r).to(weight.dtype), Rotation(r.to(weight.dtype))

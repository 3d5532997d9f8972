"""ANN quantization methods, unified in the spiking representation.

Every method prepares a linear layer the same way: it may transform the layer's input with an
exactly invertible, non-spiking map ``x -> x'`` (:mod:`~spikemllm_sj.quantization.transforms`)
and fold the inverse into the weight (``W'``), so that ``x' W'^T = x W^T`` in exact arithmetic.
The converter then quantizes ``W'`` per output channel and ``x'`` per token (or per calibrated
tensor) and encodes ``x'``'s integer levels as spikes.

A method is a frozen config class deriving from :class:`QuantMethod` (torchao's config ->
handler pattern, with the handler as the class's methods). Subclassing registers it under its
class name, so adding a method is one class in one file, and the converter never grows an
if-chain; registering a name twice is an error.

* :class:`RTN`: round-to-nearest, no transform.
* :class:`SmoothQuant`: per-input-channel scales ``s_j = max|X_j|**alpha / max|W_j|**(1-alpha)``
  from the calibration move outliers from activations to weights (``x' = x / s``, ``W' = W s``).
* :class:`Hadamard`: a randomised orthonormal Hadamard rotation of the input (``x' = x Q``,
  ``W' = W Q``) spreads outlier channels over all channels (online, at every linear input, by a
  fast Walsh-Hadamard transform).
* :class:`QuaRot`: the language model's residual stream and its values rotated, folded into the
  weights (:mod:`spikemllm_sj.quantization.rotation`), queries and keys rotated online after
  RoPE, and the MLP down-projection input rotated online; other layers round to nearest. A
  model-level method: it rewrites the model before conversion, says which per-layer method each
  layer gets, and which attention modules rotate their queries and keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional

import torch
import torch.nn as nn

from spikemllm_sj.ann2snn.adapters import ModelAdapter
from spikemllm_sj.ann2snn.journal import Journal
from spikemllm_sj.quantization.hadamard import NoHadamardOrder, hadamard_order
from spikemllm_sj.quantization.rotation import InputMap, check_residual_stream, head_dim, rotate
from spikemllm_sj.quantization.transforms import ChannelDivide, InputTransform, Rotation, check_rotation_options, rotation

if TYPE_CHECKING:  # the config imports this module
    from spikemllm_sj.config import SpikeConfig

__all__ = ["QuantMethod", "RTN", "SmoothQuant", "Hadamard", "QuaRot", "METHODS", "method_from_dict"]

METHODS: dict[str, type["QuantMethod"]] = {}
"""Registered methods by name (the class name)."""


@dataclass(frozen=True)
class QuantMethod:
    """Base of the quantization methods: what the converter asks a method.

    Class attributes a method sets:

    :cvar needs_calibration: ``convert`` needs a calibration (e.g. SmoothQuant's channel ranges).
    :cvar supports_static_scales: its inputs can take calibrated static scales (a rotation
        mixes channels, so per-channel ranges do not bound the rotated input).
    """

    needs_calibration: ClassVar[bool] = False
    supports_static_scales: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__name__ in METHODS:
            raise ValueError(f"a quantization method named {cls.__name__!r} is already registered")
        METHODS[cls.__name__] = cls

    @property
    def name(self) -> str:
        return type(self).__name__

    def validate(self, config: "SpikeConfig") -> None:
        """Raise ``ValueError`` when this method cannot run with the rest of ``config``."""
        if config.act_scales == "static" and not self.supports_static_scales:
            raise ValueError(
                f"act_scales='static' is not supported with {self.name}(): a rotation mixes channels, so the "
                "calibrated per-channel ranges do not bound the rotated input; use act_scales='dynamic'"
            )

    def check_model(self, model: nn.Module, adapter: ModelAdapter) -> None:
        """Raise ``ValueError`` when :meth:`rewrite_model` could not rewrite ``model`` (called
        before the conversion changes anything; default: nothing to check)."""

    def rewrite_model(self, model: nn.Module, adapter: ModelAdapter, journal: Journal) -> dict[str, InputMap]:
        """Rewrite ``model`` in place before its layers are converted, every change through
        ``journal`` (so that a failed conversion undoes it); default: nothing.

        :return: for each linear layer whose input the rewrite changes, by path, the map
            ``x -> x'`` of its input (GPTQ's Hessians follow it: ``A^T H A``).
        """
        return {}

    def query_key_rotation(self, path: str, attention: nn.Module, adapter: ModelAdapter) -> Optional[Rotation]:
        """An online rotation of the queries and keys of the attention module at ``path`` (after
        its rotary embedding), or None (default)."""
        return None

    def layer_method(self, path: str, adapter: ModelAdapter) -> "QuantMethod":
        """The per-layer method of the linear layer at ``path`` (default: this method)."""
        return self

    def prepare_linear(
        self, weight: torch.Tensor, channel_absmax: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, Optional[InputTransform]]:
        """``(W', transform)`` for a linear layer of weight ``[out, in]``; ``transform`` maps the
        input ``[..., in]`` (None: identity). ``channel_absmax`` ``[in]``: the calibrated input
        range per channel, when a calibration was given."""
        raise NotImplementedError(f"{self.name} is a model-level method: ask layer_method() for each layer's method")

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


def method_from_dict(data: dict) -> QuantMethod:
    """The method of :meth:`QuantMethod.to_dict`'s output."""
    if not isinstance(data, dict) or "name" not in data:
        raise ValueError(f"a method must be a dict with a 'name', got {data!r}")
    fields = dict(data)
    name = fields.pop("name")
    if name not in METHODS:
        raise ValueError(f"unknown quantization method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name](**fields)


@dataclass(frozen=True)
class RTN(QuantMethod):
    """Round-to-nearest, with the activation scales of ``SpikeConfig.act_scales``."""

    def prepare_linear(self, weight, channel_absmax):
        return weight, None


@dataclass(frozen=True)
class SmoothQuant(QuantMethod):
    """SmoothQuant scale migration (needs a calibration); ``alpha`` in [0, 1] is the share of
    the activation range moved into the weights."""

    alpha: float = 0.5
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (a number), got {self.alpha!r}")

    def prepare_linear(self, weight, channel_absmax):
        if channel_absmax is None:
            raise ValueError("SmoothQuant needs calibrated per-channel activation ranges: pass calibration=calibrate(...)")
        w_absmax = weight.detach().abs().amax(0).float()
        a, w = channel_absmax.float().clamp_min(1e-5), w_absmax.clamp_min(1e-5)
        s = (a.pow(self.alpha) / w.pow(1.0 - self.alpha)).clamp_min(1e-5)
        return weight * s.to(weight.dtype), ChannelDivide(s)


@dataclass(frozen=True)
class Hadamard(QuantMethod):
    """Online randomised Hadamard rotation of every spike-coded linear input
    (:func:`~spikemllm_sj.quantization.transforms.rotation`): ``x' = x Q`` by the fast transform,
    ``W' = W Q`` folded by the same transform.

    :param seed: seed of the rotations' random signs (the same for every layer of one size).
    :param fallback: rotate layers whose input size has no Hadamard construction by a seeded random
        orthogonal matrix (dense) instead of refusing the model.
    """

    seed: int = 0
    fallback: bool = False
    supports_static_scales: ClassVar[bool] = False

    def __post_init__(self):
        check_rotation_options(self.seed, self.fallback)

    def check_model(self, model, adapter):
        if self.fallback:
            return
        for path, linear, _ in adapter.converted_linears(model, lm_head=True):
            try:
                hadamard_order(linear.in_features)
            except NoHadamardOrder as error:
                raise ValueError(
                    f"Hadamard(): {path} has in_features={linear.in_features}: {error}; use "
                    "Hadamard(fallback=True) for a seeded random orthogonal rotation of such layers"
                ) from None

    def prepare_linear(self, weight, channel_absmax):
        transform = rotation(weight.shape[1], self.seed, self.fallback).to(weight.device)
        return transform.fold(weight), transform


@dataclass(frozen=True)
class QuaRot(QuantMethod):
    """QuaRot (Ashkboos et al. 2024) in the spiking representation: R1 on the residual stream and R2
    head-wise on the values, folded into the weights, with an online rotation of the attention
    output across all heads at the ``o_proj`` input (QuaRot's ``H_heads (x) I`` after the folded
    head-wise part; here the randomised Hadamard of the whole attention width, so that every
    channel mixes with every other); R3 online on queries and keys after RoPE; R4 online on the
    down-projection input (:mod:`spikemllm_sj.quantization.rotation`). Every rotation is a
    randomised Hadamard drawn from ``seed``. With ``weight_method="gptq"`` the weights are
    quantized by GPTQ with the Hessians of the rotated inputs.

    :param seed: seed of the rotations' random signs.
    :param fallback: rotate sizes without a Hadamard construction by a seeded random orthogonal
        matrix instead of refusing the model.
    :param rotate_values: apply R2.
    :param rotate_attention_output: rotate the ``o_proj`` input online.
    :param rotate_queries_keys: apply R3.
    """

    seed: int = 0
    fallback: bool = False
    rotate_values: bool = True
    rotate_attention_output: bool = True
    rotate_queries_keys: bool = True
    supports_static_scales: ClassVar[bool] = False

    def __post_init__(self):
        check_rotation_options(self.seed, self.fallback)
        for name in ("rotate_values", "rotate_attention_output", "rotate_queries_keys"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def check_model(self, model, adapter):
        check_residual_stream(model, adapter)
        lm = model.get_submodule(adapter.language_model)
        sizes = {"hidden": lm.get_input_embeddings().weight.shape[1], "head": head_dim(lm.layers[0].self_attn),
                 "intermediate": lm.layers[0].mlp.down_proj.in_features, "attention output": lm.layers[0].self_attn.o_proj.in_features}
        for name, size in sizes.items():
            try:
                rotation(size, self.seed, self.fallback)
            except ValueError as error:
                raise ValueError(f"QuaRot(): the {name} size of {adapter.language_model}: {error}") from None

    def rewrite_model(self, model, adapter, journal):
        lm = model.get_submodule(adapter.language_model)
        residual = rotation(lm.get_input_embeddings().weight.shape[1], self.seed, self.fallback)
        values = rotation(head_dim(lm.layers[0].self_attn), self.seed, self.fallback) if self.rotate_values else None
        return rotate(model, adapter, residual, values, journal)

    def query_key_rotation(self, path, attention, adapter):
        if not self.rotate_queries_keys or not path.startswith(f"{adapter.language_model}."):
            return None
        return rotation(head_dim(attention), self.seed, self.fallback)

    def layer_method(self, path, adapter):
        # The residual stream is rotated already; the down-projection input (R4) and the attention
        # output rotate online.
        in_lm = path.startswith(f"{adapter.language_model}.")
        online = path.endswith(".mlp.down_proj") or (self.rotate_attention_output and path.endswith(".self_attn.o_proj"))
        return Hadamard(self.seed, self.fallback) if in_lm and online else RTN()

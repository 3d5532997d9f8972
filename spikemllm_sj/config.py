"""``SpikeConfig``: what ``convert`` does to a model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from spikemllm_sj.neurons import MSTSConfig, SpikeCode
from spikemllm_sj.quant import IntLevels
from spikemllm_sj.quantizers import METHODS, RTN, Hadamard, QuantMethod, QuaRot, SmoothQuant

__all__ = ["SpikeConfig"]


def _check_bits(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class SpikeConfig:
    """Spike-driven conversion settings.

    Activations: every ``nn.Linear`` input and the attention query are spike trains whose levels
    and steps come from ``msts``: language-model tokens by modality (image tokens Tv, text tokens
    Tt), the vision tower and the projector with the image modality's code (Tv).

    :param msts: time steps (or bits) per modality and the spike code.
    :param weight_bits: symmetric per-output-channel round-to-nearest weight quantization.
    :param kv_bits: keys (per token and head) and values (per channel and head), signed levels,
        the integer operands of the spike-driven attention matmuls.
    :param prob_bits: attention probabilities, unsigned levels with the fixed scale
        ``1 / (2**prob_bits - 1)``, encoded as binary TC-LIF spikes (``prob_bits`` steps).
    :param convert_lm_head: also make the output head spike-driven (default: it stays in the
        model's precision, as do the embeddings).
    :param method: the ANN quantization method applied at every linear layer
        (:mod:`spikemllm_sj.quantizers`: ``RTN()``, ``SmoothQuant(alpha)``, ``Hadamard()``).
    :param weight_method: ``"rtn"`` (round-to-nearest) or ``"gptq"`` (GPTQ error feedback with
        the input Hessians of :func:`~spikemllm_sj.calibration.calibrate`); per output channel.
    :param act_scales: linear-layer input scales: ``"dynamic"`` (per token, absmax) or
        ``"static"`` (per tensor and modality, from :func:`~spikemllm_sj.calibration.calibrate`).
        Attention operands always use dynamic scales.
    """

    msts: MSTSConfig = field(default_factory=MSTSConfig)
    weight_bits: int = 8
    kv_bits: int = 8
    prob_bits: int = 8
    convert_lm_head: bool = False
    act_scales: Literal["dynamic", "static"] = "dynamic"
    method: QuantMethod = field(default_factory=RTN)
    weight_method: Literal["rtn", "gptq"] = "rtn"

    def __post_init__(self):
        if not isinstance(self.msts, MSTSConfig):
            raise TypeError(f"msts must be an MSTSConfig, got {type(self.msts).__name__}")
        _check_bits("weight_bits", self.weight_bits, 2, 16)
        _check_bits("kv_bits", self.kv_bits, 2, 16)
        _check_bits("prob_bits", self.prob_bits, 1, 16)
        if not isinstance(self.convert_lm_head, bool):
            raise TypeError("convert_lm_head must be a bool")
        if not isinstance(self.method, METHODS):
            raise TypeError(f"method must be RTN(), SmoothQuant(alpha), Hadamard() or QuaRot(), got {self.method!r}")
        if self.act_scales not in ("dynamic", "static"):
            raise ValueError(f"act_scales must be 'dynamic' or 'static', got {self.act_scales!r}")
        if self.weight_method not in ("rtn", "gptq"):
            raise ValueError(f"weight_method must be 'rtn' or 'gptq', got {self.weight_method!r}")
        if self.act_scales == "static" and isinstance(self.method, (Hadamard, QuaRot)):
            raise ValueError(
                f"act_scales='static' is not supported with {type(self.method).__name__}(): a rotation mixes "
                "channels, so the calibrated per-channel ranges do not bound the rotated input; use act_scales='dynamic'"
            )
        if self.weight_method == "gptq" and isinstance(self.method, QuaRot):
            raise ValueError(
                "weight_method='gptq' is not supported with QuaRot(): the calibration's Hessians are those "
                "of the unrotated model"
            )

    def to_dict(self) -> dict:
        """JSON-ready form; :meth:`from_dict` inverts it."""
        return {
            "msts": {
                "bits": {m.name.lower(): code.levels.bits for m, code in self.msts.codes.items()},
                "scheme": self.msts.scheme,
                "signed": self.msts.signed,
            },
            "weight_bits": self.weight_bits,
            "kv_bits": self.kv_bits,
            "prob_bits": self.prob_bits,
            "convert_lm_head": self.convert_lm_head,
            "act_scales": self.act_scales,
            "weight_method": self.weight_method,
            "method": {"name": type(self.method).__name__, **dataclasses.asdict(self.method)},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SpikeConfig":
        data = dict(data)
        try:
            msts = MSTSConfig(**data.pop("msts"))
        except KeyError:
            raise ValueError("a SpikeConfig dict needs an 'msts' entry") from None
        method = dict(data.pop("method", {"name": "RTN"}))
        methods = {m.__name__: m for m in METHODS}
        name = method.pop("name")
        if name not in methods:
            raise ValueError(f"unknown method {name!r}; known: {sorted(methods)}")
        return cls(msts=msts, method=methods[name](**method), **data)

    @property
    def needs_calibration(self) -> bool:
        """Whether ``convert`` needs a :class:`~spikemllm_sj.calibration.Calibration` for this
        configuration: static scales, SmoothQuant's migration scales and GPTQ's Hessians."""
        return self.act_scales == "static" or isinstance(self.method, SmoothQuant) or self.weight_method == "gptq"

    @property
    def weight_levels(self) -> IntLevels:
        return IntLevels.from_bits(self.weight_bits)

    @property
    def kv_levels(self) -> IntLevels:
        return IntLevels.from_bits(self.kv_bits)

    @property
    def prob_code(self) -> SpikeCode:
        return SpikeCode("tc_lif", IntLevels.from_bits(self.prob_bits, signed=False))

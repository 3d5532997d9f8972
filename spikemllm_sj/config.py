"""``SpikeConfig``: what ``convert`` does to a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from spikemllm_sj.ann2snn.plan import MSTSPlan
from spikemllm_sj.neurons import IntLevels, MSTSConfig, SpikeCode
from spikemllm_sj.quantization.methods import METHODS, RTN, Hadamard, QuantMethod, method_from_dict

__all__ = ["SpikeConfig", "RECOMMENDED"]


CLIP_RATIOS: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
"""The clip ratios a search tries: 1.0, 0.95, ..., 0.5."""


def _check_ratio(name: str, value, other: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a ratio in (0, 1]{' ' + other if other else ''}, got {value!r}")


def _check_bits(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class SpikeConfig:
    """Spike-driven conversion settings.

    Activations: every ``nn.Linear`` input and the attention query are spike trains whose levels
    and steps come from ``msts``: language-model tokens by modality (image tokens Tv, text tokens
    Tt), the vision tower and the projector with the image modality's code (Tv). Any scheme of
    :data:`~spikemllm_sj.neurons.coding.SCHEMES` serves; the data-dependent ``mean_threshold_bitwise``
    takes dynamic scales only and no activation clip.

    :param msts: time steps (or bits) per modality and the spike code.
    :param plan: per-site overrides of ``msts`` (:class:`~spikemllm_sj.ann2snn.plan.MSTSPlan`:
        steps by layer range, layer type, vision tower, ...); empty: every site uses ``msts``.
    :param weight_bits: symmetric per-output-channel round-to-nearest weight quantization.
    :param kv_bits: keys and values (per token and head), signed levels, the integer operands of
        the spike-driven attention matmuls.
    :param prob_bits: attention probabilities (each token's value scale folded in, per-row
        scales: :class:`~spikemllm_sj.ann2snn.attention.SpikeContext`), unsigned levels encoded as
        binary TC-LIF spikes (``prob_bits`` steps).
    :param convert_lm_head: also make the output head spike-driven (default: it stays in the
        model's precision, as do the embeddings).
    :param method: the ANN quantization method (:mod:`spikemllm_sj.quantization.methods`:
        ``RTN()``, ``SmoothQuant(alpha)``, ``Hadamard()``, ``QuaRot()``, or any registered
        :class:`~spikemllm_sj.quantization.methods.QuantMethod`).
    :param weight_method: ``"rtn"`` (round-to-nearest) or ``"gptq"`` (GPTQ error feedback with
        the input Hessians of :func:`~spikemllm_sj.ann2snn.calibration.calibrate`); per output channel.
    :param act_scales: linear-layer input scales: ``"dynamic"`` (per token, absmax) or
        ``"static"`` (per tensor and modality, from :func:`~spikemllm_sj.ann2snn.calibration.calibrate`).
        Attention operands always use dynamic scales.
    :param act_clip: clip ratio of the linear-layer input scales, in (0, 1] (the scale maps
        ``act_clip * absmax`` onto the code's absmax level, ``qmax`` for most codes; larger values clamp), or ``"search"``: per layer and
        modality, the ratio of :data:`CLIP_RATIOS` with the least output error on the
        calibration's sampled inputs (needs a calibration).
    :param kv_clip: clip ratio of the key and value scales, in (0, 1].
    :param weight_clip: ``"none"`` (scale at each output channel's absmax) or ``"mse"`` (per
        output channel, the ratio of :data:`CLIP_RATIOS` with the least squared weight error).
    """

    msts: MSTSConfig = field(default_factory=MSTSConfig)
    plan: MSTSPlan = field(default_factory=MSTSPlan)
    weight_bits: int = 8
    kv_bits: int = 8
    prob_bits: int = 8
    convert_lm_head: bool = False
    act_scales: Literal["dynamic", "static"] = "dynamic"
    method: QuantMethod = field(default_factory=RTN)
    weight_method: Literal["rtn", "gptq"] = "rtn"
    act_clip: Union[float, Literal["search"]] = 1.0
    kv_clip: float = 1.0
    weight_clip: Literal["none", "mse"] = "none"

    def __post_init__(self):
        if not isinstance(self.msts, MSTSConfig):
            raise TypeError(f"msts must be an MSTSConfig, got {type(self.msts).__name__}")
        if not isinstance(self.plan, MSTSPlan):
            raise TypeError(f"plan must be an MSTSPlan, got {type(self.plan).__name__}")
        _check_bits("weight_bits", self.weight_bits, 2, 16)
        _check_bits("kv_bits", self.kv_bits, 2, 16)
        _check_bits("prob_bits", self.prob_bits, 1, 16)
        if not isinstance(self.convert_lm_head, bool):
            raise TypeError("convert_lm_head must be a bool")
        if not isinstance(self.method, QuantMethod):
            raise TypeError(
                f"method must be an instance of a registered QuantMethod ({', '.join(f'{n}()' for n in METHODS)}), "
                f"got {self.method!r}"
            )
        if self.act_scales not in ("dynamic", "static"):
            raise ValueError(f"act_scales must be 'dynamic' or 'static', got {self.act_scales!r}")
        if self.weight_method not in ("rtn", "gptq"):
            raise ValueError(f"weight_method must be 'rtn' or 'gptq', got {self.weight_method!r}")
        if self.act_clip != "search":
            _check_ratio("act_clip", self.act_clip, "or 'search'")
        _check_ratio("kv_clip", self.kv_clip)
        if self.weight_clip not in ("none", "mse"):
            raise ValueError(f"weight_clip must be 'none' or 'mse', got {self.weight_clip!r}")
        if self.msts.data_dependent and (self.act_scales != "dynamic" or self.act_clip != 1.0):
            raise ValueError(
                f"scheme {self.msts.scheme!r} sets each token's threshold from its own mean magnitude and never clips "
                f"its counts: it needs act_scales='dynamic' and act_clip=1.0, got act_scales={self.act_scales!r}, "
                f"act_clip={self.act_clip!r}"
            )
        self.method.validate(self)

    def to_dict(self) -> dict:
        """JSON-ready form; :meth:`from_dict` inverts it."""
        return {
            "msts": {
                "bits": {m.name.lower(): code.levels.bits for m, code in self.msts.codes.items()},
                "scheme": self.msts.scheme,
                "signed": self.msts.signed,
            },
            "plan": self.plan.to_list(),
            "weight_bits": self.weight_bits,
            "kv_bits": self.kv_bits,
            "prob_bits": self.prob_bits,
            "convert_lm_head": self.convert_lm_head,
            "act_scales": self.act_scales,
            "weight_method": self.weight_method,
            "method": self.method.to_dict(),
            "act_clip": self.act_clip,
            "kv_clip": self.kv_clip,
            "weight_clip": self.weight_clip,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SpikeConfig":
        data = dict(data)
        try:
            msts = MSTSConfig(**data.pop("msts"))
        except KeyError:
            raise ValueError("a SpikeConfig dict needs an 'msts' entry") from None
        method = method_from_dict(data.pop("method", RTN().to_dict()))
        plan = MSTSPlan.from_list(data.pop("plan", []))
        return cls(msts=msts, plan=plan, method=method, **data)

    @property
    def needs_calibration(self) -> bool:
        """Whether ``convert`` needs a :class:`~spikemllm_sj.ann2snn.calibration.Calibration` for this
        configuration: static scales, GPTQ's Hessians, the clip search's sampled inputs, and methods
        that need one (SmoothQuant's migration scales)."""
        return (self.act_scales == "static" or self.weight_method == "gptq" or self.act_clip == "search"
                or self.method.needs_calibration)

    @property
    def weight_levels(self) -> IntLevels:
        return IntLevels.from_bits(self.weight_bits)

    @property
    def kv_levels(self) -> IntLevels:
        return IntLevels.from_bits(self.kv_bits)

    @property
    def prob_code(self) -> SpikeCode:
        return SpikeCode("tc_lif", IntLevels.from_bits(self.prob_bits, signed=False))


RECOMMENDED = SpikeConfig(method=Hadamard(fallback=True), act_clip="search", weight_clip="mse")
"""The best configuration measured on real weights, the default of every command, example and the
lmms-eval adapter: Tv/Tt = 3/4 steps, W8 with MSE-searched per-channel weight scales, a randomised
Hadamard rotation of every spike-coded linear input, per-token activation scales with clip ratios
searched per layer and modality on the calibration (so it needs calibration records).

On the trained easy-VQA LLaVA (real SmolLM2-135M, 500 test questions; ``docs/fidelity.md``) it
answers 82.8% against 85.2% in FP32, spiking equal to its fake-quant twin, where plain RTN
(``SpikeConfig()``'s fields) gives 1.6%; QuaRot with GPTQ and the same clipping reached 82.4% at a
conversion several times slower. ``fallback=True``: a layer whose input size has no Hadamard
construction (SigLIP's 4304, in LLaVA-OneVision) gets a seeded random orthogonal rotation (the
converted layer's module repr says which) instead of a refusal."""

"""Spike-driven replacements for a model's linear layers and attention matmuls.

Each module runs in one of two modes that compute the same numbers:

* ``"spike"``: activations become MSTS spike trains, and the layer accumulates integer weights
  selected by the spikes (:func:`~spikemllm_sj.spike_ops.spike_matmul`);
* ``"fake_quant"``: the quantized ANN twin, the same integer levels multiplied directly.

Integer accumulations are exact in both (see :func:`~spikemllm_sj.spike_ops.exact_dtype`), and the
rescaling that follows is the same code, so the two modes agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
import torch.nn as nn

from spikemllm_sj.neurons import Modality, MSTSConfig, MSTSEncoder, SpikeStats, TCLIFNode
from spikemllm_sj.quant import IntLevels, absmax_scale, quantize, scale_from_absmax
from spikemllm_sj.quantizers import RTN, QuantMethod, prepare_linear
from spikemllm_sj.spike_ops import exact_dtype, spike_matmul
from spikemllm_sj.weights import quantize_weight

__all__ = [
    "Mode",
    "MODES",
    "TokenModalities",
    "FixedModality",
    "SiteActivity",
    "SpikeLinear",
    "SpikeScores",
    "SpikeContext",
    "SpikeAttention",
]

Mode = Literal["spike", "fake_quant"]
MODES = ("spike", "fake_quant")


class TokenModalities:
    """Modality of each token of the language model's current input, ``[B, L]``.

    Set before every forward of the converted model (from ``input_ids`` or ``mm_token_type_ids``)
    and read by the spike-driven sites of the language model.
    """

    def __init__(self):
        self.ids: Optional[torch.Tensor] = None

    def __call__(self, batch: int, length: int) -> torch.Tensor:
        if self.ids is None:
            raise RuntimeError("token modalities are unknown: call the converted model itself, not its submodules")
        if tuple(self.ids.shape) != (batch, length):
            raise RuntimeError(
                f"token modalities have shape {tuple(self.ids.shape)} but the language model sees "
                f"[{batch}, {length}] tokens"
            )
        return self.ids


class FixedModality:
    """Every token has the same modality (the vision tower and the projector: image)."""

    def __init__(self, modality: Modality):
        self.modality = Modality(modality)

    def __call__(self, batch: int, length: int) -> torch.Tensor:
        return torch.full((batch, length), int(self.modality), dtype=torch.long)


ModalitySource = Callable[[int, int], torch.Tensor]


@dataclass
class SiteActivity:
    """Spikes a site emitted since the last :meth:`reset` (summed over forward calls).

    :param tokens: tokens encoded, per modality name.
    :param token_steps: time steps those tokens used, per modality name (MSTS padding excluded).
    """

    spikes: int = 0
    neuron_steps: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    token_steps: dict[str, int] = field(default_factory=dict)

    def add(self, stats: SpikeStats, tokens: dict[str, tuple[int, int]]) -> None:
        self.spikes += stats.spikes
        self.neuron_steps += stats.neuron_steps
        for name, (count, steps) in tokens.items():
            self.tokens[name] = self.tokens.get(name, 0) + count
            self.token_steps[name] = self.token_steps.get(name, 0) + steps

    def reset(self) -> None:
        self.spikes = self.neuron_steps = 0
        self.tokens.clear()
        self.token_steps.clear()


class _SpikeSite(nn.Module):
    """A spike-driven site: its mode and the activity it records in spike mode."""

    def __init__(self):
        super().__init__()
        self.mode: Mode = "spike"
        self.activity = SiteActivity()

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode


class _MSTSSite(_SpikeSite):
    """A site whose input tokens are MSTS spike trains: the encoder and the token modalities."""

    def __init__(self, msts: MSTSConfig, modality: ModalitySource):
        super().__init__()
        self.encoder = MSTSEncoder(msts)
        self.modality = modality
        # Static (calibrated) input absmax per modality, indexed by Modality value; NaN where the
        # calibration saw no token of that modality. All NaN: dynamic per-token scales.
        self.register_buffer("static_absmax", torch.full((len(Modality),), float("nan")))

    def set_static_absmax(self, absmax: dict[Modality, float]) -> None:
        values = torch.full_like(self.static_absmax, float("nan"))
        for modality, value in absmax.items():
            if not value > 0:
                raise ValueError(f"calibrated absmax must be > 0, got {value} for {Modality(modality).name.lower()}")
            values[int(modality)] = float(value)
        self.static_absmax = values

    @property
    def static(self) -> bool:
        return not bool(torch.isnan(self.static_absmax).all())

    def _token_scale(self, ids: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Per-token scales ``[B, L, 1]`` from the calibration, or None for dynamic scales."""
        if not self.static:
            return None
        codes = self.encoder.config.codes
        qmax = torch.ones(len(Modality))
        for modality, code in codes.items():
            qmax[int(modality)] = code.levels.qmax
        absmax = self.static_absmax.to(ids.device)[ids]
        if torch.isnan(absmax).any():
            missing = sorted({Modality(int(m)).name.lower() for m in ids[torch.isnan(absmax)].unique()})
            raise ValueError(f"this site was calibrated without {', '.join(missing)} tokens")
        return (absmax / qmax.to(ids.device)[ids]).unsqueeze(-1).to(dtype)

    def _levels_dot(
        self, x3: torch.Tensor, ids: torch.Tensor, other: torch.Tensor, other_qmax: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer product of ``x3``'s levels ``[B, L, K]`` (token modalities ``ids`` ``[B, L]``)
        with integer ``other`` ``[..., K, N]``.

        :return: the exact integer accumulation ``[B, L, N]`` and the per-token scale ``[B, L, 1]``.
        """
        K = x3.shape[-1]
        ids = ids.to(x3.device)
        # Horner's partial sums never exceed the largest level (plus offset) times |other| times K.
        qmax = max(code.levels.qmax + code.offset for code in self.encoder.config.codes.values())
        dtype = exact_dtype(float(qmax) * other_qmax * K, x3.dtype)
        other = other.to(dtype)
        scale = self._token_scale(ids, x3.dtype)
        if self.mode == "fake_quant":
            levels, scale = self.encoder.quantize(x3, ids, scale)
            return torch.matmul(levels.to(dtype), other), scale
        out = self.encoder(x3, ids, scale)
        self.activity.add(
            out.statistics(),
            {
                Modality(int(m)).name.lower(): (int((ids == m).sum()), int(out.steps[ids == m].sum()))
                for m in torch.unique(ids).tolist()
            },
        )
        acc = spike_matmul(out.spikes.to(dtype), other, out.leak)
        if out.offset.any():
            acc = acc - out.offset.to(dtype) * other.sum(-2, keepdim=True)
        return acc, out.scale


class SpikeLinear(_MSTSSite):
    """``nn.Linear`` with spike-coded input and integer weights: ``[..., in] -> [..., out]``.

    Weights are quantized per output channel (round-to-nearest, or GPTQ given the input
    ``hessian``), after the quantization ``method``'s transform; the input per token, with its
    modality's levels (MSTS).
    """

    def __init__(
        self,
        linear: nn.Linear,
        msts: MSTSConfig,
        weight_levels: IntLevels,
        modality: ModalitySource,
        method: QuantMethod = RTN(),
        channel_absmax: Optional[torch.Tensor] = None,
        hessian: Optional[torch.Tensor] = None,
    ):
        super().__init__(msts, modality)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, self.transform = prepare_linear(method, linear.weight.detach(), channel_absmax)
        if hessian is not None and self.transform is not None:
            # The quantized weight sees the transformed input x' = x A: its Hessian is A^T H A.
            a = self.transform(torch.eye(self.in_features, dtype=torch.float64, device=weight.device))
            hessian = a.T @ hessian.double() @ a
        qweight, scale = quantize_weight(weight, weight_levels, hessian)
        storage = torch.int8 if weight_levels.bits <= 8 else torch.int16  # IntLevels has at most 16 bits
        self.register_buffer("qweight", qweight.to(storage))
        self.register_buffer("weight_scale", scale.reshape(1, -1).to(weight.dtype))
        self.weight_levels = weight_levels
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        if self.transform is not None:
            x = self.transform(x)
        x3 = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x.reshape(1, -1, x.shape[-1])
        ids = self.modality(*x3.shape[:2]).to(x3.device)
        acc, scale = self._levels_dot(x3, ids, self.qweight.T, self.weight_levels.qmax)
        return self.dequantize(acc, scale, x.dtype).reshape(*x.shape[:-1], self.out_features)

    def dequantize(self, acc: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The layer's output from its exact integer accumulation ``acc`` ``[..., out]`` (held in
        the accumulation dtype) and the input's per-token ``scale`` ``[..., 1]``, in ``dtype``."""
        y = (acc * scale.to(acc.dtype) * self.weight_scale.to(acc.dtype)).to(dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weight_bits={self.weight_levels.bits}, mode={self.mode}"
        )


class SpikeScores(_MSTSSite):
    """Attention scores ``query @ key^T`` with the query as MSTS spikes (per token and head) and
    the keys as integer levels (per token and head): ``[B, H, L, d] x [B, H, S, d] -> [B, H, L, S]``
    (unscaled)."""

    def __init__(self, msts: MSTSConfig, kv_levels: IntLevels, modality: ModalitySource):
        super().__init__(msts, modality)
        self.kv_levels = kv_levels

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        B, H, L, d = query.shape
        k_scale = absmax_scale(key, self.kv_levels, "token")  # [B, H, S, 1]
        k_levels = quantize(key, k_scale, self.kv_levels)
        ids = self.modality(B, L).to(query.device).repeat_interleave(H, dim=0)  # every head of a token has its modality
        k_t = k_levels.reshape(B * H, -1, d).transpose(1, 2)
        acc, q_scale = self._levels_dot(query.reshape(B * H, L, d), ids, k_t, self.kv_levels.qmax)
        scores = acc * q_scale.to(acc.dtype) * k_scale.reshape(B * H, 1, -1).to(acc.dtype)
        return scores.reshape(B, H, L, -1).to(query.dtype)

    def extra_repr(self) -> str:
        return f"kv_bits={self.kv_levels.bits}, mode={self.mode}"


class SpikeContext(_SpikeSite):
    """Attention context ``probs @ value`` with the probabilities as binary TC-LIF spikes
    (unsigned levels, fixed scale ``1 / qmax``) and the values as integer levels (per channel and
    head): ``[B, H, L, S] x [B, H, S, d] -> [B, H, L, d]``."""

    def __init__(self, kv_levels: IntLevels, prob_levels: IntLevels):
        super().__init__()
        if prob_levels.signed:
            raise ValueError("prob_levels must be unsigned (probabilities are non-negative)")
        self.kv_levels = kv_levels
        self.prob = TCLIFNode(prob_levels.levels, signed=False, scale=1.0 / prob_levels.qmax)

    def forward(self, probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        v_scale = scale_from_absmax(value.detach().abs().amax(-2, keepdim=True), self.kv_levels)  # [B, H, 1, d]
        v_levels = quantize(value, v_scale, self.kv_levels)
        code = self.prob.code
        dtype = exact_dtype(float(code.levels.qmax) * self.kv_levels.qmax * probs.shape[-1], value.dtype)
        if self.mode == "fake_quant":
            acc = torch.matmul(quantize(probs, self.prob.scale, code.levels).to(dtype), v_levels.to(dtype))
        else:
            spikes = self.prob.encode(probs)
            rows = probs[..., 0].numel()
            self.activity.add(self.prob.statistics(spikes), {"probabilities": (rows, rows * code.steps)})
            acc = spike_matmul(spikes.to(dtype), v_levels.to(dtype), code.leak)
        return (acc * self.prob.scale.to(dtype) * v_scale.to(dtype)).to(value.dtype)

    def extra_repr(self) -> str:
        return f"kv_bits={self.kv_levels.bits}, prob_bits={self.prob.code.levels.bits}, mode={self.mode}"


class SpikeAttention(nn.Module):
    """The two spike-driven matmuls of one attention module (see ``spikemllm_sj.attention``)."""

    def __init__(self, msts: MSTSConfig, kv_levels: IntLevels, prob_levels: IntLevels, modality: ModalitySource):
        super().__init__()
        self.qk = SpikeScores(msts, kv_levels, modality)
        self.pv = SpikeContext(kv_levels, prob_levels)

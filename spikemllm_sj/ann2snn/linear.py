"""``SpikeLinear``: an ``nn.Linear`` with spike-coded input and integer weights."""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn

from spikemllm_sj.ann2snn.modalities import ModalitySource
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.neurons import IntLevels, Modality, MSTSConfig, quantize
from spikemllm_sj.quantization.methods import RTN, QuantMethod
from spikemllm_sj.quantization.weights import quantize_weight

__all__ = ["LinearInput", "SpikeLinear"]


class LinearInput(NamedTuple):
    """A :class:`SpikeLinear`'s input as the layer encodes it.

    :param x: the input after the method's transform, ``[..., in]``.
    :param tokens: the same as ``[B, L, in]`` (a 2-d input is one row of tokens).
    :param ids: modality of each token ``[B, L]``.
    :param levels: integer levels ``[B, L, in]``, what the spikes carry.
    :param scale: per-token scale ``[B, L, 1]``.
    :param acc_dtype: the dtype in which the integer accumulation with the weights is exact.
    """

    x: torch.Tensor
    tokens: torch.Tensor
    ids: torch.Tensor
    levels: torch.Tensor
    scale: torch.Tensor
    acc_dtype: torch.dtype


class SpikeLinear(MSTSSite):
    """``nn.Linear`` with spike-coded input and integer weights: ``[..., in] -> [..., out]``.

    Weights are quantized per output channel (round-to-nearest, or GPTQ given the input
    ``hessian``; scales at each row's absmax, or searched over ``weight_clip_ratios``), after the
    quantization ``method``'s transform; the input per token, with its modality's levels (MSTS).
    """

    kind = "linear"

    def __init__(
        self,
        linear: nn.Linear,
        msts: MSTSConfig,
        weight_levels: IntLevels,
        modality: ModalitySource,
        method: QuantMethod = RTN(),
        channel_absmax: Optional[torch.Tensor] = None,
        hessian: Optional[torch.Tensor] = None,
        weight_clip_ratios: Sequence[float] = (),
    ):
        super().__init__(msts, modality)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, self.transform = method.prepare_linear(linear.weight.detach(), channel_absmax)
        if hessian is not None and self.transform is not None:
            # The quantized weight sees the transformed input x' = x A: its Hessian is A^T H A, i.e.
            # the transform applied to the rows of H, then to the rows of (H A)^T = A^T H (H symmetric).
            hessian = self.transform(self.transform(hessian.double()).T).T
        qweight, scale = quantize_weight(weight, weight_levels, hessian, weight_clip_ratios)
        if weight_levels.bits > 16:
            raise ValueError(f"weight_levels must have at most 16 bits (int16 storage), got {weight_levels.bits}")
        storage = torch.int8 if weight_levels.bits <= 8 else torch.int16
        self.register_buffer("qweight", qweight.to(storage))
        self.register_buffer("weight_scale", scale.reshape(1, -1).to(weight.dtype))
        self.weight_levels = weight_levels
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def set_static_ranges(self, channel_absmax: dict[Modality, torch.Tensor]) -> None:
        """Static input scales from the calibrated range of each input channel ``[in]`` per
        modality: the largest magnitude of the transformed input (see
        :meth:`~spikemllm_sj.quantization.transforms.InputTransform.input_absmax`)."""
        bound = self.transform.input_absmax if self.transform is not None else lambda r: float(r.max())
        self.set_static_absmax({m: bound(r) for m, r in channel_absmax.items()})

    def search_clip(self, inputs: Mapping[Modality, torch.Tensor], ratios: Sequence[float]) -> dict[Modality, float]:
        """Set, per modality, the input clip ratio of ``ratios`` with the least squared output
        error ``||(q(x') - x') W_q^T||^2`` over sampled inputs ``x`` ``[N, in]`` of that modality
        (``x'`` the transformed input, ``W_q`` the quantized weights), at this layer's levels and
        scales (per token, or static); return the ratios chosen.

        The errors of all ratios come from one float32 product (or the model's precision if wider;
        the sums in float64): ``E W_q^T`` for the stacked input errors ``E`` ``[R * N, in]``, or, when it is
        cheaper (``in < out``), ``sum((E G) * E)`` with the Gram matrix ``G = W_q^T W_q``
        ``[in, in]``: the same sums. (Ratios whose errors differ by less than the product's
        rounding are ties in all but name; the search is a heuristic, not part of the exactness.)
        """
        wide = torch.promote_types(self.weight_scale.dtype, torch.float32)  # no bf16/fp16 products
        weight = self.qweight.to(wide) * self.weight_scale.to(wide).reshape(-1, 1)  # [out, in]
        gram = None
        chosen = {}
        for modality, x in inputs.items():
            x = self.transform(x) if self.transform is not None else x
            x = x.to(self.weight_scale.dtype)
            levels = self.encoder.config.code_of(modality).levels
            ids = torch.full((1, x.shape[0]), int(modality), dtype=torch.long, device=x.device)
            rows = []
            for ratio in ratios:
                self.set_clip({modality: ratio})
                scale = self.token_scale(x[None], ids)[0]
                rows.append((quantize(x, scale, levels) * scale).to(wide) - x.to(wide))
            errors = torch.stack(rows)  # [R, N, in]
            samples = errors.shape[0] * errors.shape[1]
            if self.in_features * (self.out_features + samples) < samples * self.out_features:
                gram = weight.T @ weight if gram is None else gram
                totals = ((errors @ gram) * errors).double().sum(dim=(1, 2))
            else:
                totals = (errors @ weight.T).double().pow(2).sum(dim=(1, 2))
            chosen[modality] = ratios[int(torch.argmin(totals))]  # ties: the first
        self.set_clip(chosen)
        return chosen

    def input_tokens(self, x: torch.Tensor, ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x after the transform, the same as tokens [B, L, in], their modality ids [B, L])``.

        :param ids: the tokens' modalities; default: the layer's modality source.
        """
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        if self.transform is not None:
            x = self.transform(x)
        x3 = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x.reshape(1, -1, x.shape[-1])
        ids = self.modality(*x3.shape[:2]) if ids is None else ids
        return x, x3, ids.to(x3.device)

    def input_levels(self, x: torch.Tensor, ids: Optional[torch.Tensor] = None) -> LinearInput:
        """The input ``x`` ``[..., in]`` as this layer encodes it (see :class:`LinearInput`): what a
        backend that runs the spike-driven product elsewhere (Lava) starts from."""
        x, x3, ids = self.input_tokens(x, ids)
        levels, scale = self.quantize_tokens(x3, ids)
        dtype = self.accumulation_dtype(x3.shape[-1], self.weight_levels.qmax, x3.dtype)
        return LinearInput(x, x3, ids, levels, scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, x3, ids = self.input_tokens(x)
        acc, scale = self.accumulate(x3, ids, self.qweight.T, self.weight_levels.qmax)
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

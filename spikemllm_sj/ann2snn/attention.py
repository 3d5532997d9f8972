"""The two spike-driven matmuls of attention: ``Q K^T`` from query spikes and ``P V`` from
probability spikes (the attention implementation that calls them:
:mod:`~spikemllm_sj.ann2snn.attention_interface`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from spikemllm_sj.ann2snn.modalities import ModalitySource
from spikemllm_sj.ann2snn.sites import MSTSSite, SpikeSite
from spikemllm_sj.neurons import (
    IntLevels,
    MSTSConfig,
    TCLIFNode,
    absmax_scale,
    exact_dtype,
    level_dtype,
    quantize,
    scale_from_absmax,
    spike_matmul,
)
from spikemllm_sj.quantization.transforms import Rotation

__all__ = ["QUERY_SITE", "clipped_scale", "SpikeScores", "SpikeContext", "SpikeAttention"]

QUERY_SITE = "spike_attention.qk"
"""Path of an attention module's query site below the module (``<attention>.spike_attention.qk``)."""


def clipped_scale(x: torch.Tensor, levels: IntLevels, clip: float) -> torch.Tensor:
    """Per-token scales ``[..., 1]`` of keys or values ``x`` ``[..., d]``: ``clip * absmax / qmax``
    (``clip`` 1: the token's absmax)."""
    return scale_from_absmax(x.detach().abs().amax(-1, keepdim=True).to(level_dtype(x.dtype)) * clip, levels)


class SpikeScores(MSTSSite):
    """Attention scores ``query @ key^T`` with the query as MSTS spikes (per token and head) and
    the keys as integer levels (per token and head): ``[B, H, L, d] x [B, H, S, d] -> [B, H, L, S]``
    (unscaled)."""

    kind = "attention.qk"

    def __init__(self, msts: MSTSConfig, kv_levels: IntLevels, modality: ModalitySource, kv_clip: float = 1.0):
        super().__init__(msts, modality)
        self.kv_levels = kv_levels
        self.kv_clip = kv_clip

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        B, H, L, d = query.shape
        k_scale = clipped_scale(key, self.kv_levels, self.kv_clip)  # [B, H, S, 1]
        k_levels = quantize(key, k_scale, self.kv_levels)
        ids = self.modality(B, L).to(query.device).repeat_interleave(H, dim=0)  # every head of a token has its modality
        k_t = k_levels.reshape(B * H, -1, d).transpose(1, 2)
        acc, q_scale = self.accumulate(query.reshape(B * H, L, d), ids, k_t, self.kv_levels.qmax)
        scores = acc * q_scale.to(acc.dtype) * k_scale.reshape(B * H, 1, -1).to(acc.dtype)
        return scores.reshape(B, H, L, -1).to(query.dtype)

    def extra_repr(self) -> str:
        return f"kv_bits={self.kv_levels.bits}, mode={self.mode}"


class SpikeContext(SpikeSite):
    """Attention context ``probs @ value`` with the probabilities as binary TC-LIF spikes and the
    values as integer levels: ``[B, H, L, S] x [B, H, S, d] -> [B, H, L, d]``.

    Scales, all causal (a query row's output depends only on the positions it attends to, so a
    row is the same alone, left-padded in a batch, as the prefix of a longer input, and with a KV
    cache): values per token and head (their outliers are per token, KIVI), and each token's value
    scale ``v_s`` folded into its probability, ``p'_ls = p_ls * v_s``, so that ``P V`` stays one
    integer accumulation ``sum_s q(p'_ls) * q(v_sd)``; the folded probabilities are unsigned
    levels with a per-row scale ``max_s p'_ls / qmax`` (masked positions have ``p = 0`` and take
    no part). A per-channel value scale over all positions, as before, was acausal: it saw padding
    and later tokens.
    """

    kind = "attention.pv"

    def __init__(self, kv_levels: IntLevels, prob_levels: IntLevels, kv_clip: float = 1.0):
        super().__init__()
        if prob_levels.signed:
            raise ValueError("prob_levels must be unsigned (probabilities are non-negative)")
        self.kv_levels = kv_levels
        self.kv_clip = kv_clip
        self.prob = TCLIFNode(prob_levels.levels, signed=False, step_mode="m")

    def forward(self, probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        v_scale = clipped_scale(value, self.kv_levels, self.kv_clip)  # [B, H, S, 1]
        v_levels = quantize(value, v_scale, self.kv_levels)
        folded = probs * v_scale.transpose(-1, -2).to(probs.dtype)  # [B, H, L, S]
        code = self.prob.code
        p_scale = absmax_scale(folded, code.levels, "token")  # [B, H, L, 1]
        dtype = exact_dtype(float(code.levels.qmax) * self.kv_levels.qmax * probs.shape[-1], value.dtype)
        if self.mode == "fake_quant":
            acc = torch.matmul(quantize(folded, p_scale, code.levels).to(dtype), v_levels.to(dtype))
        else:
            spikes = self.prob.present(folded, scale=p_scale)
            rows = probs[..., 0].numel()
            self.activity.add(self.prob.statistics(spikes), {"probabilities": (rows, rows * code.steps)})
            acc = spike_matmul(spikes.to(dtype), v_levels.to(dtype), code.leak)
        return (acc * p_scale.to(dtype)).to(value.dtype)

    def extra_repr(self) -> str:
        return f"kv_bits={self.kv_levels.bits}, prob_bits={self.prob.code.levels.bits}, mode={self.mode}"


class SpikeAttention(nn.Module):
    """The two spike-driven matmuls of one attention module, and the online rotation of its
    queries and keys (after the rotary embedding) when the quantization method asks for one
    (QuaRot's R3: ``(q H)(k H)^T = q k^T``, the query spikes and integer keys are the rotated ones).

    :param query_key_rotation: a rotation over the head size, or None.
    :param kv_clip: clip ratio of the key and value scales, in (0, 1].
    """

    def __init__(
        self,
        msts: MSTSConfig,
        kv_levels: IntLevels,
        prob_levels: IntLevels,
        modality: ModalitySource,
        query_key_rotation: Optional[Rotation] = None,
        kv_clip: float = 1.0,
    ):
        super().__init__()
        self.qk = SpikeScores(msts, kv_levels, modality, kv_clip)
        self.pv = SpikeContext(kv_levels, prob_levels, kv_clip)
        self.query_key_rotation = query_key_rotation

    def scores(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Unscaled ``query @ key^T`` ``[B, H, L, S]`` from ``[B, H, L, d]`` and ``[B, H, S, d]``."""
        if self.query_key_rotation is not None:
            query, key = self.query_key_rotation(query), self.query_key_rotation(key)
        return self.qk(query, key)

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
    integer_matmul,
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
        scores, q_scale = self.accumulate(query.reshape(B * H, L, d), ids, k_t, self.kv_levels.qmax)
        # In place: the scores are the largest tensor of attention ([B, H, L, S]), held once.
        scores.mul_(q_scale.to(scores.dtype)).mul_(k_scale.reshape(B * H, 1, -1).to(scores.dtype))
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

    Memory: the query rows are encoded and multiplied in chunks (each row's scale and product are
    its own, so the result is the same), so the folded probabilities and the spike train
    ``[T, B, H, rows, S]`` of one chunk stay within a quarter of the probabilities' elements (or
    ``2**22``); a monitor on :attr:`prob` records one train per chunk.
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
        v_fold = v_scale.transpose(-1, -2).to(probs.dtype)  # [B, H, 1, S]
        code = self.prob.code
        dtype = exact_dtype(float(code.levels.qmax) * self.kv_levels.qmax * probs.shape[-1], value.dtype)
        # Query rows in chunks (see the class docstring): memory near the probabilities', not T
        # times; a product_backend takes all rows at once (it holds no spike trains here).
        B, H, L, S = probs.shape
        budget = max(probs.numel() // 4, 1 << 22)
        rows = max(1, L if self.product_backend is not None else min(L, budget // (code.steps * B * H * S)))
        out = []
        for start in range(0, L, rows):
            folded = probs[..., start : start + rows, :] * v_fold  # [B, H, rows, S]
            p_scale = absmax_scale(folded, code.levels, "token")  # [B, H, rows, 1]
            if self.mode == "fake_quant" or self.product_backend is not None:
                levels = quantize(folded, p_scale, code.levels)
                if self.mode == "fake_quant":
                    acc = integer_matmul(levels, v_levels, code.levels.qmax, self.kv_levels.qmax)
                else:
                    acc = self.product_backend(self, levels, None, v_levels, self.kv_levels.qmax)
            else:
                chunk_rows = folded[..., 0].numel()
                spikes = self.prob.present(folded, scale=p_scale).to(torch.int8)  # [T, B, H, rows, S]
                self.activity.add(spikes, spikes.numel(), named={"probabilities": (chunk_rows, chunk_rows * code.steps)})
                acc = spike_matmul(spikes, v_levels, code.leak, self.kv_levels.qmax)
            out.append((acc.to(dtype) * p_scale.to(dtype)).to(value.dtype))
        if not out:  # no query rows
            return value.new_zeros(B, H, 0, value.shape[-1])
        return out[0] if len(out) == 1 else torch.cat(out, dim=-2)

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

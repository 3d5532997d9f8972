"""Spike-driven attention as a ``transformers`` attention implementation.

Registered under :data:`ATTN_IMPLEMENTATION` in ``AttentionInterface`` (with the eager additive
mask in ``AttentionMaskInterface``), so converted models keep their own attention modules, rotary
embeddings and KV cache; only the two matmuls change (:class:`~spikemllm_sj.ann2snn.attention.SpikeAttention`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_utils import AttentionInterface
from transformers.models.llama.modeling_llama import repeat_kv

__all__ = ["ATTN_IMPLEMENTATION", "spike_attention_forward", "register_attention"]

ATTN_IMPLEMENTATION = "spikemllm"


def spike_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with spike-driven matmuls: query/key/value ``[B, H(kv), L|S, d]`` ->
    output ``[B, L, H, d]`` and probabilities ``[B, H, L, S]``."""
    ops = getattr(module, "spike_attention", None)
    if ops is None:
        raise RuntimeError(
            f"{type(module).__name__} has no spike_attention: attn_implementation={ATTN_IMPLEMENTATION!r} "
            "is for models converted by spikemllm_sj.convert"
        )
    if dropout:
        raise ValueError("spike-driven attention runs in eval mode only (dropout must be 0)")
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = ops.scores(query, key).mul_(scaling)  # in place: a new tensor, the largest of attention
    if attention_mask is not None:
        scores = scores.add_(attention_mask) if attention_mask.dtype == scores.dtype else scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return ops.pv(probs, value).transpose(1, 2).contiguous(), probs


def register_attention() -> None:
    """Make :data:`ATTN_IMPLEMENTATION` known to ``transformers`` (idempotent)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, spike_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)

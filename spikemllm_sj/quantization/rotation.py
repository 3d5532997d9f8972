"""QuaRot's rotation of the language model's residual stream, folded into the weights.

With RMSNorm's gains folded into the layers that read the norm's output, RMSNorm commutes with an
orthogonal ``Q`` (``rmsnorm(h Q) = rmsnorm(h) Q``), so the whole residual stream can carry ``h Q``
instead of ``h``: every layer that writes into it (embeddings, attention output, MLP down
projection, the projector that brings image features in) multiplies its output by ``Q``, and every
layer that reads from it (query/key/value, gate/up, the output head) multiplies its input by
``Q^T``. The model computes the same function; its activations lose their outlier channels, which
is what makes 4-bit activations usable. ``Q`` is an orthonormal Hadamard matrix.

Supported language models: pre-norm decoders with RMSNorm gains multiplying the normalized input
(Llama, Qwen2 and the Qwen2-VL text models: every family of :mod:`spikemllm_sj.ann2snn.adapters`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from spikemllm_sj.ann2snn.adapters import ModelAdapter
from spikemllm_sj.ann2snn.journal import Journal
from spikemllm_sj.quantization.hadamard import hadamard_matrix

__all__ = ["check_residual_stream", "rotate_residual_stream"]

_READERS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")
_POST_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
_LAYER_MODULES = (*(norm for norm, _ in _READERS), *(r for _, readers in _READERS for r in readers), *_WRITERS)
_ROWS = 4096  # rows multiplied at a time: float64 temporaries stay small for large embeddings


def _times(weight: torch.Tensor, q: torch.Tensor, gain: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(weight * gain) @ q`` for ``weight`` ``[rows, n]`` in float64, row block by row block, as
    ``weight``'s dtype."""
    out = torch.empty_like(weight)
    for start in range(0, weight.shape[0], _ROWS):
        block = weight[start : start + _ROWS].double()
        if gain is not None:
            block = block * gain
        out[start : start + _ROWS] = (block @ q).to(weight.dtype)
    return out


def _read(journal: Journal, linear: nn.Linear, q: torch.Tensor, gain: torch.Tensor) -> None:
    # input (x / g) Q: W' = (W diag(g)) Q, so that (x / g) Q Q^T diag(g) W^T = x W^T.
    journal.assign(linear.weight, _times(linear.weight.detach(), q, gain))


def _write(journal: Journal, linear: nn.Linear, q: torch.Tensor) -> None:
    # output y Q: W' = Q^T W, computed as (W^T Q)^T.
    journal.assign(linear.weight, _times(linear.weight.detach().T, q).T.contiguous())
    if linear.bias is not None:
        journal.assign(linear.bias, _times(linear.bias.detach()[None], q)[0])


def check_residual_stream(model: nn.Module, adapter: ModelAdapter) -> None:
    """Raise unless ``model``'s language model has the pre-norm decoder shape the rotation folds
    into: per layer the norms, q/k/v, o, gate/up/down; a final norm; every norm with a gain."""
    if adapter.projector_out is None and adapter.vision is not None:
        raise ValueError(f"{adapter.model_class}: the adapter does not name the projector's output layer")
    lm = model.get_submodule(adapter.language_model)
    for i, layer in enumerate(lm.layers):
        post = [n for n in _POST_NORMS if hasattr(layer, n)]
        if post:
            # A post-norm scales the o_proj / down_proj output by its gain before the residual add:
            # a non-uniform gain does not commute with the rotation, so it cannot be folded.
            raise ValueError(
                f"QuaRot: decoder layer {i} of {adapter.language_model} has post-norms ({', '.join(post)}, Gemma-style "
                "sandwich norms) whose gains cannot be folded into a rotated residual stream; use Hadamard() instead"
            )
        for name in _LAYER_MODULES:
            try:
                module = layer.get_submodule(name)
            except AttributeError:
                raise ValueError(f"QuaRot: decoder layer {i} of {adapter.language_model} has no {name}") from None
            if name.endswith("layernorm") and not isinstance(getattr(module, "weight", None), torch.Tensor):
                raise ValueError(f"QuaRot: {adapter.language_model}.layers.{i}.{name} has no gain to fold")
    if not isinstance(getattr(getattr(lm, "norm", None), "weight", None), torch.Tensor):
        raise ValueError(f"QuaRot: {adapter.language_model} has no final norm with a gain")


def rotate_residual_stream(model: nn.Module, adapter: ModelAdapter, journal: Journal) -> None:
    """Rotate ``model``'s language-model residual stream in place (see the module docstring), every
    change through ``journal``."""
    lm = model.get_submodule(adapter.language_model)
    embed = lm.get_input_embeddings()
    head = model.get_submodule(adapter.lm_head)
    q = hadamard_matrix(embed.weight.shape[1]).to(embed.weight.device)
    with torch.no_grad():
        for layer in lm.layers:
            for norm_name, reader_names in _READERS:
                norm = layer.get_submodule(norm_name)
                gain = norm.weight.detach().double()
                for name in reader_names:
                    _read(journal, layer.get_submodule(name), q, gain)
                journal.assign(norm.weight, torch.ones_like(norm.weight))
            for name in _WRITERS:
                _write(journal, layer.get_submodule(name), q)
        # The head first: while tied, its weight is still the unrotated embedding.
        head_weight = _times(head.weight.detach(), q, lm.norm.weight.detach().double())
        if head.weight is embed.weight:
            # Folding the final norm's gain into the head unties it from the embeddings.
            journal.setattr(head, "weight", nn.Parameter(head_weight, requires_grad=False))
        else:
            journal.assign(head.weight, head_weight)
        journal.assign(lm.norm.weight, torch.ones_like(lm.norm.weight))
        journal.assign(embed.weight, _times(embed.weight.detach(), q))
        if adapter.projector_out is not None:
            _write(journal, model.get_submodule(adapter.projector_out), q)
        for path in adapter.residual_vectors:
            vector = model.get_parameter(path)
            journal.assign(vector, _times(vector.detach().reshape(1, -1), q).reshape(vector.shape))

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

import torch
import torch.nn as nn

from spikemllm_sj.ann2snn.adapters import ModelAdapter
from spikemllm_sj.quantization.hadamard import hadamard_matrix

__all__ = ["rotate_residual_stream"]

_READERS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")


def _set(param: nn.Parameter, value: torch.Tensor) -> None:
    param.data = value.to(dtype=param.dtype, device=param.device)


def _fold_norm(norm: nn.Module, readers: list[nn.Linear]) -> None:
    gain = norm.weight.detach().double()
    for linear in readers:
        _set(linear.weight, linear.weight.double() * gain)
    _set(norm.weight, torch.ones_like(gain))


def _read(linear: nn.Linear, q: torch.Tensor) -> None:
    _set(linear.weight, linear.weight.double() @ q)  # input x Q: W' = W Q (x Q Q^T W^T = x W^T)


def _write(linear: nn.Linear, q: torch.Tensor) -> None:
    _set(linear.weight, q.T @ linear.weight.double())  # output y Q: W' = Q^T W
    if linear.bias is not None:
        _set(linear.bias, linear.bias.double() @ q)


def rotate_residual_stream(model: nn.Module, adapter: ModelAdapter) -> None:
    """Rotate ``model``'s language-model residual stream in place (see the module docstring)."""
    if adapter.projector_out is None and adapter.vision is not None:
        raise ValueError(f"{adapter.model_class}: the adapter does not name the projector's output layer")
    lm = model.get_submodule(adapter.language_model)
    embed = lm.get_input_embeddings()
    head = model.get_submodule(adapter.lm_head)
    q = hadamard_matrix(embed.weight.shape[1]).to(embed.weight.device)
    with torch.no_grad():
        if head.weight is embed.weight:
            # Folding the final norm's gain into the head unties it from the embeddings.
            head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        for layer in lm.layers:
            for norm_name, reader_names in _READERS:
                readers = [layer.get_submodule(name) for name in reader_names]
                _fold_norm(layer.get_submodule(norm_name), readers)
                for linear in readers:
                    _read(linear, q)
            for name in _WRITERS:
                _write(layer.get_submodule(name), q)
        _fold_norm(lm.norm, [head])
        _read(head, q)
        _set(embed.weight, embed.weight.double() @ q)
        if adapter.projector_out is not None:
            _write(model.get_submodule(adapter.projector_out), q)
        for path in adapter.residual_vectors:
            vector = model.get_parameter(path)
            _set(vector, vector.double() @ q)

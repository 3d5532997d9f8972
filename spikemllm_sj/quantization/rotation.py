"""QuaRot's rotations of a language model (Ashkboos et al. 2024), folded into the weights.

* **R1, the residual stream.** With RMSNorm's gains folded into the layers that read the norm's
  output, RMSNorm commutes with an orthogonal ``Q`` (``rmsnorm(h Q) = rmsnorm(h) Q``), so the whole
  residual stream can carry ``h Q`` instead of ``h``: every layer that writes into it (embeddings,
  attention output, MLP down projection, the projector that brings image features in) multiplies
  its output by ``Q``, and every layer that reads from it (query/key/value, gate/up, the output
  head) its input by ``Q^T``.
* **R2, head-wise on the values.** Each head's values are rotated by ``H`` (``[head_dim,
  head_dim]``: folded into ``v_proj``'s output rows) and the attention output's head blocks back
  (folded into ``o_proj``'s input columns): the values, hence the value levels the probability
  spikes select, lose their outlier channels.
* **R3, online on queries and keys after RoPE** (``(q H)(k H)^T = q k^T``): the query spikes and
  the integer keys are the rotated ones. Not a weight change: the attention sites apply it
  (:meth:`QuaRot.query_key_rotation`).
* **R4, online on the down-projection input**: a per-layer :class:`~spikemllm_sj.quantization.methods.Hadamard`.

The model computes the same function; its activations lose their outlier channels, which is what
makes 4-bit activations usable. Every rotation is QuaRot's randomised Hadamard ``diag(s) H / sqrt(n)``
(:func:`~spikemllm_sj.quantization.transforms.rotation`), applied by the fast transform.

GPTQ on the rotated model: a layer whose input the rewrite changes (R1's readers, R2's ``o_proj``)
sees ``x' = x A``; :func:`rotate` returns each such ``A`` as a map, and the converter gives GPTQ the
Hessian ``A^T H A`` of the rotated input, derived exactly from the float model's calibration.

Supported language models: pre-norm decoders with RMSNorm gains multiplying the normalized input
(Llama, Qwen2 and the Qwen2-VL text models: every family of :mod:`spikemllm_sj.ann2snn.adapters`);
Gemma-style post-norms are refused.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from spikemllm_sj.ann2snn.adapters import ModelAdapter
from spikemllm_sj.ann2snn.journal import Journal
from spikemllm_sj.quantization.transforms import Rotation

__all__ = ["InputMap", "check_residual_stream", "head_dim", "rotate"]

_READERS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")
_POST_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
_LAYER_MODULES = (*(norm for norm, _ in _READERS), *(r for _, readers in _READERS for r in readers), *_WRITERS)

InputMap = Callable[[torch.Tensor], torch.Tensor]
"""``x [..., in] -> x' [..., in]``: what a rewrite does to a linear layer's input."""


def head_dim(attention: nn.Module) -> int:
    """The per-head width of a transformers attention module."""
    size = getattr(attention, "head_dim", None)
    if not isinstance(size, int):
        raise ValueError(f"{type(attention).__name__} has no integer head_dim: cannot rotate its heads")
    return size


def _heads(rotation: Rotation, x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., heads * d]`` with each head's block rotated: ``[..., heads, d] @ H``."""
    return rotation(x.reshape(*x.shape[:-1], -1, rotation.size)).reshape(x.shape)


def _fold_heads(rotation: Rotation, weight: torch.Tensor) -> torch.Tensor:
    """:func:`_heads` on the rows of a weight ``[rows, heads * d]``, folded as :meth:`Rotation.fold` folds."""
    return rotation.fold(weight.reshape(-1, rotation.size)).reshape(weight.shape)


def _read(journal: Journal, linear: nn.Linear, q: Rotation, gain: torch.Tensor) -> None:
    # input (x / g) Q: W' = (W diag(g)) Q, so that (x / g) Q Q^T diag(g) W^T = x W^T.
    journal.assign(linear.weight, q.fold(linear.weight.detach() * gain.to(linear.weight.dtype)))


def _write(journal: Journal, linear: nn.Linear, q: Rotation) -> None:
    # output y Q: W' = Q^T W, computed as (W^T Q)^T; b' = b Q.
    journal.assign(linear.weight, q.fold(linear.weight.detach().T).T.contiguous())
    if linear.bias is not None:
        journal.assign(linear.bias, q.fold(linear.bias.detach()[None])[0])


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
        head_dim(layer.self_attn)
    if not isinstance(getattr(getattr(lm, "norm", None), "weight", None), torch.Tensor):
        raise ValueError(f"QuaRot: {adapter.language_model} has no final norm with a gain")


def rotate(
    model: nn.Module, adapter: ModelAdapter, residual: Rotation, values: Rotation | None, journal: Journal
) -> dict[str, InputMap]:
    """Apply R1 (``residual``, over the hidden size) and, when given, R2 (``values``, over the head
    size) to ``model`` in place, every change through ``journal`` (see the module docstring).

    :return: for every linear layer whose input the rotations change, the map of its input, by path.
    """
    lm_path = adapter.language_model
    lm = model.get_submodule(lm_path)
    embed = lm.get_input_embeddings()
    head = model.get_submodule(adapter.lm_head)
    maps: dict[str, InputMap] = {}
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            for norm_name, reader_names in _READERS:
                norm = layer.get_submodule(norm_name)
                gain = norm.weight.detach().clone()
                for name in reader_names:
                    _read(journal, layer.get_submodule(name), residual, gain)
                    maps[f"{lm_path}.layers.{i}.{name}"] = lambda x, g=gain: residual(x / g.to(x.dtype))
                journal.assign(norm.weight, torch.ones_like(norm.weight))
            for name in _WRITERS:
                _write(journal, layer.get_submodule(name), residual)
            if values is not None:
                _rotate_values(journal, layer.self_attn, values)
                maps[f"{lm_path}.layers.{i}.self_attn.o_proj"] = lambda x: _heads(values, x)
        # The head first: while tied, its weight is still the unrotated embedding.
        gain = lm.norm.weight.detach().clone()
        head_weight = residual.fold(head.weight.detach() * gain.to(head.weight.dtype))
        if head.weight is embed.weight:
            # Folding the final norm's gain into the head unties it from the embeddings.
            journal.setattr(head, "weight", nn.Parameter(head_weight, requires_grad=False))
        else:
            journal.assign(head.weight, head_weight)
        maps[adapter.lm_head] = lambda x: residual(x / gain.to(x.dtype))
        journal.assign(lm.norm.weight, torch.ones_like(lm.norm.weight))
        journal.assign(embed.weight, residual.fold(embed.weight.detach()))
        if adapter.projector_out is not None:
            _write(journal, model.get_submodule(adapter.projector_out), residual)
        for path in adapter.residual_vectors:
            vector = model.get_parameter(path)
            journal.assign(vector, residual.fold(vector.detach().reshape(1, -1)).reshape(vector.shape))
    return maps


def _rotate_values(journal: Journal, attention: nn.Module, values: Rotation) -> None:
    """R2: each head's value rows of ``v_proj`` (``V_h H``: ``W_h' = H^T W_h``, ``b_h' = b_h H``)
    and each head's input columns of ``o_proj`` (``W_o,h' = W_o,h H``)."""
    v, o = attention.v_proj, attention.o_proj
    w = v.weight.detach()
    heads, d = w.shape[0] // values.size, values.size
    per_head = w.reshape(heads, d, -1).transpose(1, 2)  # [kv heads, in, d]: each W_h^T
    rotated = values.fold(per_head.reshape(-1, d)).reshape(heads, -1, d)  # W_h^T H
    journal.assign(v.weight, rotated.transpose(1, 2).reshape(w.shape))
    if v.bias is not None:
        journal.assign(v.bias, _fold_heads(values, v.bias.detach()[None])[0])
    journal.assign(o.weight, _fold_heads(values, o.weight.detach()))

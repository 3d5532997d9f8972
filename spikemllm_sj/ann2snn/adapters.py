"""Where each supported MLLM keeps its vision tower, projector, language model and image tokens.

Adding a model family is adding one :class:`ModelAdapter` with :func:`register_adapter`; the
converter itself does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from spikemllm_sj.neurons import Modality

__all__ = ["ModelAdapter", "register_adapter", "adapter_for", "supported_models"]


@dataclass(frozen=True)
class ModelAdapter:
    """Module paths (as for ``model.get_submodule``) of one ``*ForConditionalGeneration`` class.

    :param model_class: the ``transformers`` class name.
    :param vision: the vision tower, or None for a text-only model.
    :param projector: the vision-to-language projector, or None where it sits inside the vision
        tower (Qwen2-VL's patch merger).
    :param language_model: the decoder stack (embeddings excluded from conversion).
    :param lm_head: the output head.
    :param token_id_attrs: config attribute holding the placeholder token id of each visual modality.
    :param projector_out: the linear layer whose output enters the language model's residual stream
        (rotated with it by QuaRot).
    :param residual_vectors: parameters added to the residual stream as they are (rotated too).
    """

    model_class: str
    vision: Optional[str]
    projector: Optional[str]
    language_model: str
    lm_head: str = "lm_head"
    token_id_attrs: tuple[tuple[Modality, str], ...] = ((Modality.IMAGE, "image_token_id"),)
    projector_out: Optional[str] = None
    residual_vectors: tuple[str, ...] = ()

    def converted_sections(self, lm_head: bool) -> list[tuple[str, Optional[Modality]]]:
        """The sections whose linear layers ``convert`` makes spike-driven, in model order:
        ``(module path, modality)`` where the modality is fixed (the vision tower and the
        projector: image) or None (the language model and the output head: each token's own).

        :param lm_head: include the output head (``SpikeConfig.convert_lm_head``).
        """
        sections = [(self.vision, Modality.IMAGE), (self.projector, Modality.IMAGE), (self.language_model, None)]
        if lm_head:
            sections.append((self.lm_head, None))
        return [(path, modality) for path, modality in sections if path is not None]

    def converted_linears(self, model: nn.Module, lm_head: bool) -> list[tuple[str, nn.Linear, Optional[Modality]]]:
        """``(path, layer, modality)`` of every ``nn.Linear`` of :meth:`converted_sections`."""
        return [
            (f"{path}.{name}" if name else path, module, modality)
            for path, modality in self.converted_sections(lm_head)
            for name, module in model.get_submodule(path).named_modules()
            if isinstance(module, nn.Linear)
        ]

    def visual_token_ids(self, model: nn.Module) -> dict[Modality, int]:
        ids = {}
        for modality, attr in self.token_id_attrs:
            value = getattr(model.config, attr, None)
            if value is None:
                raise ValueError(f"{self.model_class} config has no {attr}: cannot tell {modality.name.lower()} tokens apart")
            ids[modality] = int(value)
        return ids


_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    if adapter.model_class in _ADAPTERS:
        raise ValueError(f"an adapter for {adapter.model_class} is already registered")
    _ADAPTERS[adapter.model_class] = adapter
    return adapter


def supported_models() -> tuple[str, ...]:
    return tuple(sorted(_ADAPTERS))


def adapter_for(model: nn.Module) -> ModelAdapter:
    for cls in type(model).__mro__:
        if cls.__name__ in _ADAPTERS:
            return _ADAPTERS[cls.__name__]
    raise ValueError(
        f"{type(model).__name__} is not a supported model; supported: {', '.join(supported_models())}"
    )


_IMAGE_AND_VIDEO = ((Modality.IMAGE, "image_token_id"), (Modality.VIDEO, "video_token_id"))

_QWEN_MERGER = "model.visual.merger.mlp.2"
_PROJECTOR_OUT = "model.multi_modal_projector.linear_2"

register_adapter(ModelAdapter("Qwen2VLForConditionalGeneration", "model.visual", None, "model.language_model", token_id_attrs=_IMAGE_AND_VIDEO, projector_out=_QWEN_MERGER))
register_adapter(ModelAdapter("Qwen2_5_VLForConditionalGeneration", "model.visual", None, "model.language_model", token_id_attrs=_IMAGE_AND_VIDEO, projector_out=_QWEN_MERGER))
register_adapter(ModelAdapter("LlavaForConditionalGeneration", "model.vision_tower", "model.multi_modal_projector", "model.language_model", projector_out=_PROJECTOR_OUT))
register_adapter(ModelAdapter("LlavaOnevisionForConditionalGeneration", "model.vision_tower", "model.multi_modal_projector", "model.language_model", token_id_attrs=_IMAGE_AND_VIDEO, projector_out=_PROJECTOR_OUT, residual_vectors=("model.image_newline",)))
register_adapter(ModelAdapter("InternVLForConditionalGeneration", "model.vision_tower", "model.multi_modal_projector", "model.language_model", projector_out=_PROJECTOR_OUT))
# Text-only language models: every token is text. Qwen2 for comparison with SpikingJelly's own
# Qwen2 recipe; Llama (SmolLM2) and Gemma 3 for perplexity on real weights
# (spikemllm_sj.models.real_weights). Gemma 3's differences all sit outside the linear layers and
# the two attention matmuls, so they run as the model defines them, on decoded values: RMSNorms
# with a (1 + w) gain, before and after attention and the MLP (sandwich norms) and on the query
# and key heads; sliding-window layers (their window is in the attention mask the model builds);
# embeddings scaled by sqrt(hidden) inside the embedding module; the head tied to the embeddings.
register_adapter(ModelAdapter("Qwen2ForCausalLM", None, None, "model", token_id_attrs=()))
register_adapter(ModelAdapter("LlamaForCausalLM", None, None, "model", token_id_attrs=()))
register_adapter(ModelAdapter("Gemma3ForCausalLM", None, None, "model", token_id_attrs=()))

"""Which modality each token is: from the inputs, and as the spike-driven sites ask for it.

Modality ids follow ``transformers``' ``mm_token_type_ids`` (0 text, 1 image, 2 video), as
:class:`~spikemllm_sj.neurons.Modality` numbers them. A site asks its *modality source* for the
ids of the ``[B, L]`` tokens it encodes: the language model's sites ask :class:`TokenModalities`
(set from the inputs before every forward of the converted model), the vision tower and the
projector :class:`FixedModality` (every token is visual), a spike-driven output head
:class:`LastTokens` (it may see only the last tokens).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

from spikemllm_sj.neurons import Modality

__all__ = ["ModalitySource", "TokenModalities", "FixedModality", "LastTokens", "modality_ids", "require_visual_inputs"]

ModalitySource = Callable[[int, int], torch.Tensor]
"""``source(batch, length)`` -> modality ids ``[batch, length]`` (int64)."""


def modality_ids(
    visual_ids: Mapping[Modality, int],
    input_ids: Optional[torch.Tensor] = None,
    mm_token_type_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Modality of each token ``[B, L]`` (int64): from ``input_ids`` (a token is visual when it is
    the placeholder id of its modality in ``visual_ids``), else from ``mm_token_type_ids``.

    :raises ValueError: neither is given.
    """
    if input_ids is not None:
        ids = torch.zeros_like(input_ids, dtype=torch.long)
        for modality, token_id in visual_ids.items():
            ids[input_ids == token_id] = int(modality)
        return ids
    if mm_token_type_ids is not None:
        return mm_token_type_ids.long()
    raise ValueError("a spike-driven model needs input_ids or mm_token_type_ids to know each token's modality")


# The forward argument that carries each visual modality's pixels.
PIXELS = {Modality.IMAGE: "pixel_values", Modality.VIDEO: "pixel_values_videos"}


def require_visual_inputs(ids: torch.Tensor, inputs: Mapping[str, object]) -> None:
    """Refuse forward ``inputs`` whose tokens (modality ``ids`` ``[B, L]``) include image or video
    placeholders but which carry none of that modality's pixels: the model would embed the
    placeholders as plain text tokens (and answer blind, or be calibrated on them as if they were
    image features). ``generate()`` may pass the vision encoder's outputs or ``inputs_embeds``
    instead of the pixels; those count as given.

    :raises ValueError: naming the modality and the missing argument.
    """
    for modality, pixels in PIXELS.items():
        given = (pixels, "mm_encoder_outputs", "inputs_embeds")
        if (ids == modality).any() and all(inputs.get(key) is None for key in given):
            raise ValueError(f"input_ids hold {modality.name.lower()} tokens but no {pixels} were given")


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


class LastTokens:
    """The modalities of the last ``length`` tokens of ``source``: the output head may see only those."""

    def __init__(self, source: TokenModalities):
        self.source = source

    def __call__(self, batch: int, length: int) -> torch.Tensor:
        ids = self.source.ids
        if ids is None or ids.shape[0] != batch or ids.shape[1] < length:
            return self.source(batch, length)  # raises with the shapes
        return ids[:, ids.shape[1] - length :]

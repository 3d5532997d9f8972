"""The same batches through one model as its three variants (:data:`VARIANTS`): the float model
(before conversion), the spike-driven model, and its fake-quant twin (the quantized ANN, same
integer levels, no spikes).

``convert`` works in place, so the float outputs are taken first; :func:`convert_and_compare`
converts the model between the two and leaves it converted, in spike mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spikemllm_sj.ann2snn.calibration import Calibration
from spikemllm_sj.ann2snn.recipe import convert, set_mode
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.models.inputs import generate_tokens
from spikemllm_sj.neurons import token_mask

__all__ = ["VARIANTS", "VariantOutputs", "ThreeWay", "convert_and_compare", "compare_converted"]

VARIANTS: tuple[str, ...] = ("float", "fake_quant", "spike")
"""The three models compared: float (as loaded), the fake-quant twin, the spiking model."""


@dataclass(frozen=True)
class VariantOutputs:
    """One batch through one variant: prompt ``logits`` ``[B, L, V]`` (None when not asked for)
    and the greedy new ``tokens`` ``[B, N]``."""

    logits: Optional[torch.Tensor]
    tokens: torch.Tensor


@dataclass(frozen=True)
class ThreeWay:
    """One batch through the three variants; ``attention_mask`` ``[B, L]`` marks its real tokens."""

    float: VariantOutputs  # the model before conversion
    fake_quant: VariantOutputs
    spike: VariantOutputs
    attention_mask: torch.Tensor

    def of(self, variant: str) -> VariantOutputs:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        return getattr(self, variant)

    def spike_equals_twin(self) -> bool:
        """Spiking and fake-quant outputs equal bit for bit (logits, when taken, and new tokens)."""
        same_logits = self.spike.logits is None or torch.equal(self.spike.logits, self.fake_quant.logits)
        return same_logits and torch.equal(self.spike.tokens, self.fake_quant.tokens)

    def real_tokens(self) -> torch.Tensor:
        """The real prompt tokens ``[B, L]`` (bool): where ``attention_mask`` is 1."""
        return token_mask(self.attention_mask, tuple(self.attention_mask.shape))

    def logit_cosine(self) -> float:
        """Mean cosine similarity of spiking and float logits over the real prompt tokens."""
        real = self.real_tokens()
        return float(F.cosine_similarity(self.spike.logits[real], self.float.logits[real], dim=-1).mean())

    def top1_agreement(self) -> float:
        """Share of real prompt tokens whose spiking and float next-token argmax agree."""
        real = self.real_tokens()
        agree = self.spike.logits[real].argmax(-1) == self.float.logits[real].argmax(-1)
        return float(agree.float().mean())


def _outputs(model, batch: dict, new_tokens: int, logits: bool) -> VariantOutputs:
    with torch.no_grad():
        out = model(**batch).logits if logits else None
    return VariantOutputs(out, generate_tokens(model, batch, new_tokens))


def _flags(batches: list, logits) -> list[bool]:
    flags = [logits] * len(batches) if isinstance(logits, bool) else list(logits)
    if len(flags) != len(batches) or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"logits must be a bool or one bool per batch ({len(batches)}), got {logits!r}")
    for batch in batches:  # before any forward: a mask of -1 or 2 is not read as "keep"
        token_mask(batch["attention_mask"], tuple(batch["input_ids"].shape))
    return flags


def _float_outputs(model, batches: list, new_tokens: int, flags: list[bool], progress: bool) -> list[VariantOutputs]:
    return [_outputs(model, b, new_tokens, flag)
            for b, flag in zip(tqdm(batches, desc="float model", unit="batch", disable=not progress), flags)]


def _converted_outputs(snn, batches: list, floats: list[VariantOutputs], new_tokens: int, flags: list[bool],
                       progress: bool) -> list[ThreeWay]:
    runs = []
    try:
        for batch, ref, flag in zip(tqdm(batches, desc="spiking + fake-quant", unit="batch", disable=not progress), floats, flags):
            set_mode(snn, "spike")
            spike = _outputs(snn, batch, new_tokens, flag)
            set_mode(snn, "fake_quant")
            twin = _outputs(snn, batch, new_tokens, flag)
            runs.append(ThreeWay(ref, twin, spike, batch["attention_mask"]))
    finally:
        set_mode(snn, "spike")
    return runs


def convert_and_compare(
    model,
    batches: Iterable[dict],
    new_tokens: int,
    config: Optional[SpikeConfig] = None,
    calibration: Optional[Calibration] = None,
    logits: Union[bool, Sequence[bool]] = True,
    progress: bool = True,
) -> list[ThreeWay]:
    """Run ``batches`` (forward kwargs) through the float ``model``, convert it in place with
    ``config`` (and ``calibration``), and run them again spike-driven and as the fake-quant twin.

    :param logits: also take the prompt logits (one more forward per batch and variant); one
        flag for all batches or one per batch.
    :return: one :class:`ThreeWay` per batch; the model is left converted, in spike mode.
    """
    batches = list(batches)
    flags = _flags(batches, logits)
    floats = _float_outputs(model, batches, new_tokens, flags, progress)
    with torch.no_grad():
        convert(model, config, calibration, progress=progress)
    return _converted_outputs(model, batches, floats, new_tokens, flags, progress)


def compare_converted(
    model, snn, batches: Iterable[dict], new_tokens: int, logits: Union[bool, Sequence[bool]] = True, progress: bool = True,
) -> list[ThreeWay]:
    """:func:`convert_and_compare` for a model converted already: ``batches`` through the float
    ``model`` and through ``snn`` (converted from it), spike-driven and as the fake-quant twin;
    ``snn`` is left in spike mode."""
    batches = list(batches)
    flags = _flags(batches, logits)
    floats = _float_outputs(model, batches, new_tokens, flags, progress)
    return _converted_outputs(snn, batches, floats, new_tokens, flags, progress)

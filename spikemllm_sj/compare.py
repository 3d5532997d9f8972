"""The same batches through one model three ways: float (before conversion), spike-driven, and
the spike-driven model's fake-quant twin (the quantized ANN, same integer levels, no spikes).

``convert`` works in place, so the float outputs are taken first; :func:`run_modes` converts the
model between the two and leaves it converted, in spike mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spikemllm_sj.calibration import Calibration
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.converter import convert, set_mode
from spikemllm_sj.models import generate_tokens

__all__ = ["ModeOutputs", "ThreeWay", "run_modes"]


@dataclass(frozen=True)
class ModeOutputs:
    """One batch in one mode: prompt ``logits`` ``[B, L, V]`` (None when not asked for) and the
    greedy new ``tokens`` ``[B, N]``."""

    logits: Optional[torch.Tensor]
    tokens: torch.Tensor


@dataclass(frozen=True)
class ThreeWay:
    """One batch in the three modes; ``attention_mask`` ``[B, L]`` marks its real tokens."""

    ann: ModeOutputs  # the float model, before conversion
    spike: ModeOutputs
    fake_quant: ModeOutputs
    attention_mask: torch.Tensor

    def spike_equals_twin(self) -> bool:
        """Spiking and fake-quant outputs equal bit for bit (logits, when taken, and new tokens)."""
        same_logits = self.spike.logits is None or torch.equal(self.spike.logits, self.fake_quant.logits)
        return same_logits and torch.equal(self.spike.tokens, self.fake_quant.tokens)

    def logit_cosine(self) -> float:
        """Mean cosine similarity of spiking and float logits over the real prompt tokens."""
        real = self.attention_mask.bool()
        return float(F.cosine_similarity(self.spike.logits[real], self.ann.logits[real], dim=-1).mean())

    def top1_agreement(self) -> float:
        """Share of real prompt tokens whose spiking and float next-token argmax agree."""
        real = self.attention_mask.bool()
        return float((self.spike.logits[real].argmax(-1) == self.ann.logits[real].argmax(-1)).float().mean())


def _outputs(model, batch: dict, new_tokens: int, logits: bool) -> ModeOutputs:
    with torch.no_grad():
        out = model(**batch).logits if logits else None
    return ModeOutputs(out, generate_tokens(model, batch, new_tokens))


def run_modes(
    model,
    batches: Iterable[dict],
    new_tokens: int,
    config: Optional[SpikeConfig] = None,
    calibration: Optional[Calibration] = None,
    logits: bool = True,
    progress: bool = True,
) -> list[ThreeWay]:
    """Run ``batches`` (forward kwargs) through the float ``model``, convert it in place with
    ``config`` (and ``calibration``), and run them again spike-driven and as the fake-quant twin.

    :param logits: also take the prompt logits (one more forward per batch and mode).
    :return: one :class:`ThreeWay` per batch; the model is left converted, in spike mode.
    """
    batches = list(batches)
    anns = [_outputs(model, b, new_tokens, logits) for b in tqdm(batches, desc="float model", unit="batch", disable=not progress)]
    with torch.no_grad():
        convert(model, config, calibration, progress=progress)
    runs = []
    try:
        for batch, ann in zip(tqdm(batches, desc="spiking + fake-quant", unit="batch", disable=not progress), anns):
            set_mode(model, "spike")
            spike = _outputs(model, batch, new_tokens, logits)
            set_mode(model, "fake_quant")
            twin = _outputs(model, batch, new_tokens, logits)
            runs.append(ThreeWay(ann, spike, twin, batch["attention_mask"]))
    finally:
        set_mode(model, "spike")
    return runs

"""What MED measures on a model: layer-to-layer evolution by modality, fidelity to FP32, firing rates.

Tokens are the real (``attention_mask`` 1) tokens of the language model; a token's modality comes
from the family's image/video placeholder ids, as in the converter. Hidden states are the inputs
and outputs of the decoder layers ``[B, L, D]``; only real tokens are kept (``[N, D]``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from spikemllm_sj.analysis.activity import spike_counts
from spikemllm_sj.ann2snn.modalities import modality_ids
from spikemllm_sj.ann2snn.recipe import recording_activity, set_mode, spike_state
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.neurons import Modality, MSTSSpikes, token_mask

__all__ = [
    "LayerEvolution",
    "Measurement",
    "Reference",
    "firing_rates",
    "measure",
    "record_reference",
]

Batch = Mapping[str, torch.Tensor]


def _real(batch: Batch) -> torch.Tensor:
    mask = batch.get("attention_mask")
    ids = batch["input_ids"]
    return torch.ones_like(ids, dtype=torch.bool) if mask is None else token_mask(mask, tuple(ids.shape))


@contextlib.contextmanager
def _layer_io(layers: nn.ModuleList) -> Iterator[list]:
    """Inside the block, ``io[i]`` is ``(input, output)`` ``[B, L, D]`` of decoder layer ``i``'s last call."""
    io: list = [None] * len(layers)

    def hook(i):
        def record(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            io[i] = (x.detach(), (output[0] if isinstance(output, tuple) else output).detach())

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield io
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class LayerEvolution:
    """How one decoder layer changes the hidden states of each modality's tokens.

    :param tokens: real tokens per modality name.
    :param cosine_change: mean over the modality's tokens of ``1 - cos(h_in, h_out)`` (unitless).
    :param relative_update: mean of ``||h_out - h_in|| / ||h_in||`` (unitless).
    """

    layer: int
    tokens: Mapping[str, int]
    cosine_change: Mapping[str, float]
    relative_update: Mapping[str, float]

    def med(self) -> dict[str, float]:
        """Modality Evolution Discrepancy of this layer, per visual modality ``v``:
        ``cosine_change[text] - cosine_change[v]`` (positive: text tokens evolve more)."""
        text = self.cosine_change["text"]
        return {m: text - value for m, value in self.cosine_change.items() if m != "text"}

    def as_dict(self) -> dict:
        return {
            "layer": self.layer,
            "tokens": dict(self.tokens),
            "cosine_change": dict(self.cosine_change),
            "relative_update": dict(self.relative_update),
            "med": self.med(),
        }


@dataclass
class Reference:
    """FP32 outputs on a list of batches, kept for comparison after conversion.

    Per batch: ``real`` ``[B, L]`` bool, ``ids`` ``[N]`` modality of each real token, ``logits``
    ``[N, V]`` and ``hidden`` (per decoder layer, its output ``[N, D]``), float32: about
    ``4 * N * (V + layers * D)`` bytes a batch.
    """

    batches: Sequence[Batch]
    real: list[torch.Tensor]
    ids: list[torch.Tensor]
    logits: list[torch.Tensor]
    hidden: list[list[torch.Tensor]]

    def tokens(self) -> dict[str, int]:
        """Real language-model tokens per modality name, over all batches."""
        ids = torch.cat(self.ids)
        return {Modality(int(m)).name.lower(): int((ids == m).sum()) for m in ids.unique().tolist()}


def record_reference(
    model: nn.Module,
    batches: Sequence[Batch],
    layers: nn.ModuleList,
    visual_ids: Mapping[Modality, int],
    progress: bool = False,
) -> tuple[Reference, list[LayerEvolution]]:
    """Run the float ``model`` on ``batches``: its outputs (the reference) and each layer's evolution."""
    ref = Reference(batches, [], [], [], [])
    n = len(layers)
    sums = torch.zeros(n, len(Modality), 2, dtype=torch.float64)  # (1 - cos, relative update)
    counts = torch.zeros(len(Modality), dtype=torch.long)
    with torch.no_grad(), _layer_io(layers) as io:
        for batch in tqdm(batches, desc="med: FP32 reference", unit="batch", disable=not progress):
            real = _real(batch)
            logits = model(**batch).logits
            # Statistics accumulate on the CPU; outputs stay on the model's device.
            ids = modality_ids(visual_ids, batch["input_ids"])[real].cpu()
            ref.real.append(real)
            ref.ids.append(ids)
            ref.logits.append(logits[real].float())
            ref.hidden.append([out[real].float() for _, out in io])
            counts += torch.bincount(ids, minlength=len(Modality))
            for i, (x, y) in enumerate(io):
                x, y = x[real].double(), y[real].double()
                change = (1 - F.cosine_similarity(x, y, dim=-1)).cpu()
                update = ((y - x).norm(dim=-1) / x.norm(dim=-1)).cpu()
                for m in ids.unique().tolist():
                    sums[i, m, 0] += change[ids == m].sum()
                    sums[i, m, 1] += update[ids == m].sum()
    present = [m for m in Modality if counts[m] > 0]
    evolution = [
        LayerEvolution(
            layer=i,
            tokens={m.name.lower(): int(counts[m]) for m in present},
            cosine_change={m.name.lower(): float(sums[i, m, 0] / counts[m]) for m in present},
            relative_update={m.name.lower(): float(sums[i, m, 1] / counts[m]) for m in present},
        )
        for i in range(n)
    ]
    return ref, evolution


@dataclass(frozen=True)
class Measurement:
    """A converted model's outputs against the FP32 reference over all real tokens.

    :param cosine: mean cosine similarity of the logits (over the vocabulary) per token.
    :param top1: fraction of tokens whose argmax equals FP32's.
    :param layer_error: per decoder layer, per modality name, mean ``1 - cos`` of the layer's
        output hidden states against FP32's (errors accumulated up to that layer).
    """

    cosine: float
    top1: float
    layer_error: tuple[Mapping[str, float], ...]
    tokens: int

    def as_dict(self) -> dict:
        return {"cosine": self.cosine, "top1": self.top1, "layer_error": [dict(e) for e in self.layer_error], "tokens": self.tokens}


def measure(model: nn.Module, reference: Reference, layers: nn.ModuleList) -> Measurement:
    """Fidelity of converted ``model`` to ``reference``, run as its fake-quant twin (which computes
    the same numbers as spike mode, bit for bit, and faster)."""
    set_mode(model, "fake_quant")
    cos_sum, top1_sum, total = 0.0, 0, 0
    err = torch.zeros(len(layers), len(Modality), dtype=torch.float64)
    counts = torch.zeros(len(Modality), dtype=torch.long)
    try:
        with torch.no_grad(), _layer_io(layers) as io:
            for b, batch in enumerate(reference.batches):
                real, ids = reference.real[b], reference.ids[b]
                logits = model(**batch).logits[real].float()
                want = reference.logits[b]
                cos_sum += float(F.cosine_similarity(logits, want, dim=-1).double().sum())
                top1_sum += int((logits.argmax(-1) == want.argmax(-1)).sum())
                total += len(ids)
                counts += torch.bincount(ids, minlength=len(Modality))
                for i, (_, out) in enumerate(io):
                    change = 1 - F.cosine_similarity(out[real].double(), reference.hidden[b][i].double(), dim=-1)
                    err[i].index_add_(0, ids, change.cpu())
    finally:
        set_mode(model, "spike")
    present = [m for m in Modality if counts[m] > 0]
    layer_error = tuple({m.name.lower(): float(err[i, m] / counts[m]) for m in present} for i in range(len(layers)))
    return Measurement(cos_sum / total, top1_sum / total, layer_error, total)


def _layer_label(path: str, lists: Mapping[str, str]) -> str:
    """``"<list label> <index>"`` for a site under a layer list, else its parent module's name."""
    for prefix, label in lists.items():
        if path.startswith(prefix):
            return f"{label} {path[len(prefix):].split('.', 1)[0]}"
    return path.rsplit(".", 2)[0] if path.count(".") >= 2 else path


def firing_rates(
    model: nn.Module, batches: Sequence[Batch], progress: bool = False
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Spikes per neuron and time step, per layer and token modality, in one spike-mode pass.

    Counts the MSTS sites (linear inputs and attention queries); a token's padded MSTS steps and
    the language model's padding tokens are not counted. Layers are labelled ``"vision <i>"`` for
    the vision tower's blocks, ``"layer <i>"`` for the decoder layers, and by module path otherwise.

    :return: ``{layer label: {modality name: rate}}`` in model order, and the tokens each MSTS site
        encoded per modality (``{site path: {modality: tokens}}``, padding included, as
        :func:`~spikemllm_sj.analysis.op_report.op_report` counts them; they do not depend on the steps).
    """
    state = spike_state(model)
    adapter = state.adapter
    lists = {}
    if adapter.vision is not None:
        for name, module in model.get_submodule(adapter.vision).named_modules():
            if isinstance(module, nn.ModuleList):
                lists[f"{adapter.vision}.{name}."] = "vision"
    lists[f"{adapter.language_model}.layers."] = "layer"
    lm_paths = (f"{adapter.language_model}.", adapter.lm_head)
    spikes: dict[str, dict[str, list[int]]] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(label: str, in_lm: bool):
        def count(module, args, out: MSTSSpikes):
            ids, keep = args[1], None
            if in_lm:
                # The last ids.shape[1] tokens of each row (the head may see only those); attention
                # queries repeat each row once per head.
                real = current["real"][:, -ids.shape[1] :]
                keep = real.repeat_interleave(ids.shape[0] // real.shape[0], dim=0)
            per_layer = spikes.setdefault(label, {})
            for m, counts in spike_counts(out, ids, keep).items():
                tally = per_layer.setdefault(Modality(int(m)).name.lower(), [0, 0])
                tally[0] += counts["spikes"]
                tally[1] += counts["neuron_steps"]

        return count

    sites = {name: module for name, module in model.named_modules() if isinstance(module, MSTSSite)}
    handles = [
        module.encoder.register_forward_hook(hook(_layer_label(name, lists), name.startswith(lm_paths)))
        for name, module in sites.items()
    ]
    for module in sites.values():
        module.activity.reset()
    set_mode(model, "spike")
    try:
        with torch.no_grad(), recording_activity(model):
            for batch in tqdm(batches, desc="med: firing rates", unit="batch", disable=not progress):
                current["real"] = _real(batch)
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    rates = {label: {m: s / n for m, (s, n) in per.items()} for label, per in spikes.items()}
    return rates, {name: dict(module.activity.tokens) for name, module in sites.items()}


def present_modalities(tokens: Mapping[str, int]) -> list[str]:
    """Modality names with tokens, text first."""
    return [m.name.lower() for m in Modality if tokens.get(m.name.lower(), 0) > 0]


def check_modalities(tokens: Mapping[str, int], where: str, visual: Optional[str] = None) -> None:
    """Raise unless ``tokens`` has text and visual tokens."""
    if not tokens.get("text"):
        raise ValueError(f"{where} have no text tokens: MED compares how text and visual tokens evolve")
    if not any(tokens.get(m) for m in ("image", "video")):
        raise ValueError(
            f"{where} have no image or video tokens{visual or ''}: MED compares how text and visual tokens evolve"
        )

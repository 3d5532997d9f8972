"""Spike activity of a converted model on one batch, per site and modality, plus a raster.

Forward hooks on the MSTS encoders of the spike-driven sites (linear-layer inputs and attention
queries) read the spike trains the sites really emit during one spike-mode forward; nothing is
recomputed. Attention-probability spikes (one code for every token) are not included; padding
tokens count as text tokens, as in :func:`~spikemllm_sj.analysis.op_report.op_report`.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.recipe import set_mode, spike_state
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.neurons import Modality

__all__ = ["layer_group", "record_activity", "spike_counts"]

_NUMBERED = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def layer_group(site: str) -> str:
    """The block a site belongs to: the path up to its first numbered part
    (``model.language_model.layers.3.mlp.up_proj`` -> ``language_model.layers.3``), else its parent."""
    match = _NUMBERED.match(site)
    group = match.group(1) if match else site.rpartition(".")[0]
    return group.removeprefix("model.")


def spike_counts(out, ids: torch.Tensor, keep: torch.Tensor | None = None) -> dict[int, dict[str, int]]:
    """Per modality value in ``ids`` (``[N, L]``, the tokens an MSTS encoder coded), restricted to
    ``keep`` (bool, same shape; default all): ``tokens``, ``steps`` (summed over tokens), ``spikes``
    (non-zero, +1 and -1) and ``neuron_steps`` (neurons x steps, the firing rate's denominator) of
    the encoder's output ``out`` (:class:`~spikemllm_sj.neurons.MSTSSpikes`)."""
    keep = torch.ones_like(ids, dtype=torch.bool) if keep is None else keep
    counts = {}
    for m in ids[keep].unique().tolist():
        mask = keep & (ids == m)
        steps = int(out.steps[mask].sum())
        counts[m] = {"tokens": int(mask.sum()), "steps": steps, "spikes": int(torch.count_nonzero(out.spikes[:, mask])),
                     "neuron_steps": steps * out.spikes.shape[-1]}
    return counts


def _window(modalities: list[int], width: int) -> tuple[int, int]:
    """``width`` tokens around the last change of modality (all tokens when fewer)."""
    if len(modalities) <= width:
        return 0, len(modalities)
    changes = [i for i in range(1, len(modalities)) if modalities[i] != modalities[i - 1]]
    centre = changes[-1] if changes else len(modalities) // 2
    start = min(max(0, centre - width // 2), len(modalities) - width)
    return start, start + width


def record_activity(model: nn.Module, batch: dict, raster_neurons: int = 12, raster_tokens: int = 64) -> dict:
    """One spike-mode forward of converted ``model`` on ``batch``; JSON-ready activity.

    Returns ``{"sites": [...], "raster": {...}}``:

    - each site: ``name``, ``kind`` (``linear`` / ``attention.qk``), ``group``
      (:func:`layer_group`), and per modality ``tokens``, ``steps`` (summed over tokens),
      ``spikes`` (non-zero spikes, +1 and -1) and ``neuron_steps`` (neurons x real steps; the
      firing rate is spikes / neuron_steps);
    - the raster of the first language-model linear site, batch row with the most real tokens:
      ``spikes[t][token][neuron]`` in {-1, 0, 1} for the first ``raster_neurons`` input channels
      over at most ``raster_tokens`` tokens (around the last change of modality), with each
      token's ``modality`` and ``steps``, and the ``row``'s modality and steps for every token.
    """
    state = spike_state(model)
    lm_prefix = f"{state.adapter.language_model}."
    sites = {n: m for n, m in model.named_modules() if isinstance(m, MSTSSite)}
    raster_site = next((n for n, m in sites.items() if n.startswith(lm_prefix) and isinstance(m, SpikeLinear)), None)
    if raster_site is None:
        raise ValueError("the model has no spike-driven language-model linear layer to draw a raster of")
    row = int(batch["attention_mask"].sum(-1).argmax())
    records, raster = {}, {}

    def hook(name, module):
        def on_output(encoder, args, out):
            ids = args[1]
            record = records.setdefault(name, {"name": name, "kind": module.kind, "group": layer_group(name), "modalities": {}})
            for m, counts in spike_counts(out, ids).items():
                totals = record["modalities"].setdefault(Modality(m).name.lower(), dict.fromkeys(counts, 0))
                for key, value in counts.items():
                    totals[key] += value  # a site called more than once in the forward adds up
            if name == raster_site:
                modalities, steps = ids[row].tolist(), out.steps[row].tolist()
                start, stop = _window(modalities, raster_tokens)
                spikes = out.spikes[:, row, start:stop, :raster_neurons]
                raster.update(
                    site=name, row=row, token_range=[start, stop], neurons=list(range(spikes.shape[-1])),
                    modality=[Modality(m).name.lower() for m in modalities[start:stop]], steps=steps[start:stop],
                    spikes=spikes.to(torch.int8).tolist(),
                    row_modality=[Modality(m).name.lower() for m in modalities], row_steps=steps,
                )

        return on_output

    handles = [m.encoder.register_forward_hook(hook(n, m)) for n, m in sites.items()]
    modes = {n: m.mode for n, m in sites.items()}
    try:
        set_mode(model, "spike")
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        for name, mode in modes.items():
            sites[name].set_mode(mode)
    return {"sites": list(records.values()), "raster": raster}

"""Spike statistics, and spikes in the form SpikingJelly's ``op_counter`` counts.

Synaptic operations are not counted here: ``spikingjelly.activation_based.op_counter.SynOpCounter``
counts them on the matmuls of the layer that receives the spikes, provided the spikes reach it as
binary ``{0, 1}`` tensors. Ternary spikes are split into their two binary planes by
:func:`binary_planes`; a spike-driven layer computes ``W @ pos - W @ neg`` (as
:func:`~spikemllm_sj.neurons.spike_matmul` does whenever a dispatch mode such as the counter's
observes it), and the counter then sees exactly one accumulation per spike and fan-out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["SpikeStats", "spike_statistics", "binary_planes"]


@dataclass(frozen=True)
class SpikeStats:
    """Activity of a spike train.

    :param spikes_per_step: number of non-zero spikes at each step, ``[T]``.
    :param neuron_steps: neuron-steps that were simulated: neurons times the steps each really used
        (MSTS padding excluded), the denominator of the firing rate.
    """

    spikes_per_step: tuple[int, ...]
    neuron_steps: int

    @property
    def spikes(self) -> int:
        return sum(self.spikes_per_step)

    @property
    def firing_rate(self) -> float:
        """Spikes per neuron and per real time step, in [0, 1]."""
        return self.spikes / self.neuron_steps if self.neuron_steps else 0.0

    def as_dict(self) -> dict:
        return {
            "spikes_per_step": list(self.spikes_per_step),
            "spikes": self.spikes,
            "neuron_steps": self.neuron_steps,
            "firing_rate": self.firing_rate,
        }


def spike_statistics(spikes: torch.Tensor, neuron_steps: Optional[int] = None) -> SpikeStats:
    """Statistics of a train ``[T, N, *]``.

    :param neuron_steps: defaults to ``T * N * prod(*)``, every step of every neuron; MSTS trains
        pass the count of real (unpadded) steps.
    """
    if spikes.dim() < 1:
        raise ValueError("spikes must have a leading time dimension")
    per_step = torch.count_nonzero(spikes.reshape(spikes.shape[0], -1), dim=1)
    total = spikes.numel() if neuron_steps is None else int(neuron_steps)
    return SpikeStats(tuple(int(c) for c in per_step.tolist()), total)


def binary_planes(spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos, neg)``: the ``+1`` and ``-1`` spikes of ``spikes`` (values in ``{-1, 0, 1}``, any shape)
    as two ``{0, 1}`` tensors of its shape and dtype, ``spikes = pos - neg``.

    Differentiable: ``pos @ W - neg @ W`` has the gradient of ``spikes @ W`` (surrogate gradients
    pass where no spike fired, too).
    """
    pos = spikes.clamp(min=0)
    return pos, pos - spikes

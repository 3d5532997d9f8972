"""The time line of a whole converted model on Lava: which spike-driven site runs at which steps.

A converted model's forward is the model's own code with spike-driven sites in it
(:class:`~spikemllm_sj.ann2snn.sites.SpikeSite`): linear layers and the two attention matmuls.
Each site call needs the decoded output of the calls before it, so on Lava the calls of a
generation (a prefill and greedy decode steps) run one after another, each in a window of its
own ``T`` steps; each forward ends with one readout step, and the generation with a final step
that carries the tokens it generated::

    step  1 ..                 call 0 (T_0 steps)  call 1 (T_1 steps)  ...  readout of forward 0
    ...                        call k ...                                  readout of forward 1 ...
    ...                                                                    the generated tokens

The plan is fixed before the network is built: :func:`record_generation` runs the generation once
in PyTorch spike mode (the reference the Lava run is checked against) and records every site call
with its shapes, its tokens' steps and, for attention, how much of the site's key or value cache
the call shares with the site's previous call (the rows a KV-cache process keeps).

Needs no Lava.
"""

from __future__ import annotations

import typing as ty
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from spikemllm_sj.analysis.op_report import OpReport, op_report_of
from spikemllm_sj.ann2snn.attention import SpikeContext, SpikeScores
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.sites import SpikeSite
from spikemllm_sj.lava_backend._fixed_point import check_fixed_steps
from spikemllm_sj.neurons import Modality, SpikeCode

__all__ = [
    "SiteSpec",
    "SYNAPSE_FIELDS",
    "NEURON_FIELDS",
    "SiteCall",
    "ModelPlan",
    "Generation",
    "greedy_generate",
    "prefill_op_report",
    "record_generation",
]

SYNAPSE_FIELDS = ("synops", *(f"synops_{m.name.lower()}" for m in Modality), "cycles", "hbm_bytes", "sram_bytes")
"""What a synapse process accounts for each call (see :mod:`~spikemllm_sj.lava_backend.spike_synapse`)."""
NEURON_FIELDS = ("spikes", "membrane_updates", "membrane_sram_bytes")
"""What a neuron process accounts for each call."""


@dataclass(frozen=True, eq=False)
class SiteSpec:
    """What the processes of a site need to know of it.

    :param name: module path; ``kind``: as :attr:`SiteCall.kind`.
    :param codes: spike code of its input per modality id (attention probabilities: one code, id 0).
    :param operand_bits: width of its signed integer operand (weights, keys or values).
    :param weights: the integer weights ``[out, in]`` of a linear site; ``None`` for attention,
        whose operand (the KV cache) the decoded stages write as tokens come.
    """

    name: str
    kind: str
    codes: ty.Mapping[int, SpikeCode]
    operand_bits: int
    weights: ty.Optional[np.ndarray] = None

    def __post_init__(self):
        for code in self.codes.values():
            check_fixed_steps(code, self.name)


@dataclass(frozen=True)
class SiteCall:
    """One call of a spike-driven site: the product ``[G, M, K] x [G, K, N] -> [G, M, N]`` of the
    spike trains of ``G * M`` tokens (rows) of ``K`` levels with the site's integer operand.

    :param index: position in the generation's calls.
    :param forward: the forward it belongs to (0: the prefill).
    :param site: module path of the site.
    :param kind: ``"linear"`` (operand: the weights ``[K=in, N=out]``, ``G = 1``),
        ``"attention.qk"`` (query spikes, operand: the keys ``[G=B*H, K=d, N=S]``) or
        ``"attention.pv"`` (probability spikes, operand: the values ``[G, K=S, N=d]``).
    :param start: Lava time step of the call's first step (Lava counts from 1).
    :param steps: ``T`` of the call's window: the most steps any of its tokens uses.
    :param keep: cached key (value) positions of the site's previous call that this call reuses;
        ``new`` positions follow them (0 and 0 for a linear site).
    """

    index: int
    forward: int
    site: str
    kind: str
    start: int
    steps: int
    groups: int
    rows: int
    fan_in: int
    fan_out: int
    keep: int = 0
    new: int = 0

    @property
    def end(self) -> int:
        """Lava time step of the call's last step, when its product is read out."""
        return self.start + self.steps - 1

    @property
    def cache_dim(self) -> int:
        """Width of one cached position: the head size (0 for a linear site)."""
        return {"linear": 0, "attention.qk": self.fan_in, "attention.pv": self.fan_out}[self.kind]

    @property
    def payload_sizes(self) -> tuple[int, int, int]:
        """Sizes of the call's input message: levels ``G*M*K``, token ids ``G*M``, new cache rows."""
        return self.groups * self.rows * self.fan_in, self.groups * self.rows, self.groups * self.new * self.cache_dim

    @property
    def out_size(self) -> int:
        return self.groups * self.rows * self.fan_out


@dataclass(frozen=True)
class ModelPlan:
    """The generation's calls and readouts on Lava's time line, and the widths of the messages.

    :param calls: every site call, in order.
    :param readouts: the readout step of each forward.
    :param scopes: module scopes whose non-spiking work is reported per forward.
    :param batch_rows: rows of the batch; ``vocab``: width of the logits.
    """

    calls: tuple[SiteCall, ...]
    readouts: tuple[int, ...]
    scopes: tuple[str, ...]
    batch_rows: int
    vocab: int
    calls_per_forward: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        counts = [0] * len(self.readouts)
        for call in self.calls:
            counts[call.forward] += 1
        object.__setattr__(self, "calls_per_forward", tuple(counts))

    @property
    def final_step(self) -> int:
        """The step after the last readout, which carries the generated tokens ``[B, forwards]``."""
        return self.readouts[-1] + 1

    @property
    def num_steps(self) -> int:
        return self.final_step

    @property
    def payload_width(self) -> int:
        return max(sum(c.payload_sizes) for c in self.calls)

    @property
    def acc_width(self) -> int:
        return max(c.out_size for c in self.calls)

    @property
    def trace_width(self) -> int:
        """Words of one call's accounting on the way back: two per field (``hi * 2**31 + lo``)."""
        return 2 * (len(SYNAPSE_FIELDS) + len(NEURON_FIELDS))

    @property
    def result_width(self) -> int:
        """Words of a forward's readout: last-position logits ``[B, V]`` (float32 bits: ``generate``
        computes no others), non-spiking work per scope, then per call its
        accounting and the non-spiking work before it (2 words each), and the work after the
        last call (2)."""
        per_call = self.trace_width + 2
        width = self.batch_rows * self.vocab + 2 * len(self.scopes) + per_call * max(self.calls_per_forward) + 2
        return max(width, self.batch_rows * len(self.readouts))  # the final step's tokens

    def site_calls(self, site: str) -> tuple[SiteCall, ...]:
        return tuple(c for c in self.calls if c.site == site)


@dataclass
class Generation:
    """What a greedy generation gave: each forward's logits (``[B, 1, V]``: ``generate`` computes
    the last position's only) and its input length (positions), and the generated sequences."""

    logits: list[torch.Tensor] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    sequences: ty.Optional[torch.Tensor] = None


def greedy_generate(model: nn.Module, batch: dict, decode_steps: int, generation: Generation) -> Generation:
    """``model.generate`` of a prefill and ``decode_steps`` greedy decode steps (exactly
    ``decode_steps + 1`` forwards: end-of-sequence tokens are held back), recording each forward's
    logits into ``generation``."""

    def record(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        generation.logits.append(output.logits.detach())
        generation.positions.append(ids.shape[1])

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            generation.sequences = model.generate(
                **batch, max_new_tokens=decode_steps + 1, min_new_tokens=decode_steps + 1, do_sample=False
            )
    finally:
        handle.remove()
    return generation


def prefill_op_report(model: nn.Module, batch: dict) -> OpReport:
    """The op report of the prefill of :func:`greedy_generate` (its first forward, as ``generate``
    runs it: the input a whole-model run's first forward sees)."""
    return op_report_of(model, lambda: greedy_generate(model, batch, 0, Generation()))


def _tokens_shape(x: torch.Tensor) -> tuple[int, int]:
    """``[B, L]`` of a linear site's input, as :meth:`SpikeLinear.input_tokens` reads it."""
    return (x.numel() // (x.shape[-2] * x.shape[-1]), x.shape[-2]) if x.dim() >= 3 else (1, x.numel() // x.shape[-1])


def _window(site, ids: torch.Tensor) -> int:
    """``T`` of a call of MSTS site ``site`` on tokens of modalities ``ids``: the most steps any
    of them uses (the others start later in the window)."""
    return max(site.encoder.config.steps_of(int(m)) for m in torch.unique(ids).tolist())


class _Recorder:
    """Forward pre-hooks on every site that record its calls (shapes, steps, cache reuse)."""

    def __init__(self, model: nn.Module):
        self.sites = {name: m for name, m in model.named_modules() if isinstance(m, SpikeSite)}
        self.calls: list[dict] = []
        self.forward = 0
        self._last: dict[str, tuple[int, torch.Tensor]] = {}  # site -> (forward, keys or values)
        self._handles = [m.register_forward_pre_hook(self._hook(n), with_kwargs=True) for n, m in self.sites.items()]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _keep(self, name: str, operand: torch.Tensor) -> int:
        """Positions of ``operand`` ``[B, H, S, d]`` that the site's cache holds already: those of
        its last call, if that was in an earlier forward and is this one's prefix (a KV cache)."""
        last = self._last.get(name)
        self._last[name] = (self.forward, operand.detach())
        if last is None or last[0] >= self.forward:
            return 0
        held = last[1].shape[-2]
        if operand.shape[-2] > held and operand.shape[:-2] == last[1].shape[:-2] and torch.equal(operand[..., :held, :], last[1]):
            return held
        return 0

    def _hook(self, name: str):
        def hook(site, args, kwargs):
            values = list(args) + list(kwargs.values())
            if isinstance(site, SpikeLinear):
                (x,) = values[:1]
                B, L = _tokens_shape(x)
                steps = _window(site, site.modality(B, L))
                shape = dict(groups=1, rows=B * L, fan_in=site.in_features, fan_out=site.out_features)
                keep = new = 0
            elif isinstance(site, SpikeScores):
                query, key = values[:2]
                B, H, L, d = query.shape
                steps = _window(site, site.modality(B, L))
                shape = dict(groups=B * H, rows=L, fan_in=d, fan_out=key.shape[-2])
                keep = self._keep(name, key)
                new = key.shape[-2] - keep
            elif isinstance(site, SpikeContext):
                probs, value = values[:2]
                B, H, L, S = probs.shape
                steps = site.prob.code.steps
                shape = dict(groups=B * H, rows=L, fan_in=S, fan_out=value.shape[-1])
                keep = self._keep(name, value)
                new = S - keep
            else:
                raise TypeError(f"{name} is a {type(site).__name__}, a spike-driven site the Lava backend cannot map")
            self.calls.append(dict(forward=self.forward, site=name, kind=site.kind, steps=steps, keep=keep, new=new, **shape))

        return hook


def record_generation(model: nn.Module, batch: dict, decode_steps: int, scopes: ty.Sequence[str]) -> tuple[Generation, ModelPlan]:
    """Run the greedy generation in PyTorch (the model's current modes) and plan its Lava time line.

    :returns: the reference generation and the :class:`ModelPlan` of its site calls.
    """
    recorder = _Recorder(model)
    generation = Generation()

    def next_forward(module, args, kwargs, output):
        recorder.forward += 1

    handle = model.register_forward_hook(next_forward, with_kwargs=True)
    try:
        greedy_generate(model, batch, decode_steps, generation)
    finally:
        handle.remove()
        recorder.remove()
    calls, readouts, step = [], [], 1
    for forward in range(len(generation.logits)):
        for record in (c for c in recorder.calls if c["forward"] == forward):
            calls.append(SiteCall(index=len(calls), start=step, **record))
            step += record["steps"]
        readouts.append(step)
        step += 1
    logits = generation.logits[0]
    plan = ModelPlan(calls=tuple(calls), readouts=tuple(readouts), scopes=tuple(scopes), batch_rows=logits.shape[0],
                     vocab=logits.shape[-1])
    return generation, plan

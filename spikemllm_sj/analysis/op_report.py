"""Op report of a converted model: spikes, synaptic operations and non-spiking work, per site.

Counting is SpikingJelly's ``op_counter``, run in one ``DispatchCounterMode`` over a forward pass:

* ``SynOpCounter``, as SpikingJelly ships it, counts synaptic operations (one accumulation per
  spike and fan-out) on the spike-driven matmuls. Its rules take binary spikes; under a dispatch
  mode the sites multiply the two binary planes of the ternary TC-LIF spikes
  (:func:`~spikemllm_sj.neurons.spike_ops.spike_matmul`), so a ``SynOpCounter()`` of one's own,
  around any forward of a converted model, counts what this report does.
* ``FlopCounter`` counts the non-spiking work outside the spike-driven sites: norms, softmax,
  activations, rotary embeddings, residual additions, and the layers that stay in the model's
  precision (output head, embeddings, patch embedding). It lacks rules for a few transformer ops;
  those added here use the usual per-element estimates, and anything still unknown is listed in
  the report rather than dropped silently.

Spike counts and steps per modality come from the sites themselves (:class:`SiteActivity`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
from spikingjelly.activation_based.op_counter import DispatchCounterMode, FlopCounter, SynOpCounter

from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.recipe import recording_activity, set_mode, spike_state
from spikemllm_sj.ann2snn.sites import SpikeSite

__all__ = ["SiteReport", "OpReport", "op_report", "op_report_of", "non_spiking_counter", "layer_scopes", "scope_aliases"]

aten = torch.ops.aten


def _per_element(flops: int):
    return lambda args, kwargs, out: flops * out.numel()


def _no_flops(args, kwargs, out):
    return 0


# Data movement, tensor creation and table lookups: no arithmetic.
_MOVEMENT_OPS = (
    aten.transpose.int, aten.cat.default, aten.slice.Tensor, aten.alias.default, aten._unsafe_view.default,
    aten.arange.default, aten.arange.start, aten.zeros.default, aten.zeros_like.default, aten.new_ones.default,
    aten.new_zeros.default, aten.lift_fresh.default, aten.scalar_tensor.default, aten._local_scalar_dense.default,
    aten.index.Tensor, aten.index_put_.default, aten.embedding.default, aten.masked_scatter.default,
    aten.permute.default, aten.reshape.default, aten.split.Tensor, aten.split_with_sizes.default,
    aten.copy_.default, aten.repeat_interleave.self_int, aten.unfold.default, aten.fill_.Scalar,
)
# Per-element FLOP estimates for non-spiking ops that FlopCounter has no rule for.
_FLOP_RULES = {
    **{op: _no_flops for op in _MOVEMENT_OPS},
    aten._is_all_true.default: lambda args, kwargs, out: args[0].numel(),
    aten.where.self: _per_element(1),
    aten.bitwise_and.Tensor: _per_element(1),
    aten._softmax.default: lambda args, kwargs, out: 5 * out.numel(),  # max, sub, exp, sum, div
    aten.native_layer_norm.default: lambda args, kwargs, out: 8 * out[0].numel(),
    aten.rsqrt.default: _per_element(1),
    aten.pow.Tensor_Scalar: _per_element(1),
    aten.exp.default: _per_element(1),
    aten.cos.default: _per_element(1),
    aten.sin.default: _per_element(1),
    aten.silu.default: _per_element(4),
    aten.gelu.default: _per_element(8),
    aten.tanh.default: _per_element(1),
}


@dataclass(frozen=True)
class SiteReport:
    """One spike-driven site.

    :param kind: ``linear``, ``attention.qk`` (query spikes) or ``attention.pv`` (probability spikes).
    :param steps_per_token: effective time steps per token, per modality.
    :param synops: synaptic operations (additions of weights selected by spikes).
    """

    name: str
    kind: str
    tokens: dict[str, int]
    steps_per_token: dict[str, float]
    spikes: int
    firing_rate: float
    synops: int


@dataclass(frozen=True)
class OpReport:
    """Spike-driven and non-spiking work of one forward pass.

    :param data_dependent_steps: the activation code's steps follow the values
        (``mean_threshold_bitwise``): steps per token are averages of each token's own.
    """

    model: str
    sites: tuple[SiteReport, ...]
    non_spiking_flops: dict[str, int]
    non_spiking_by_op: dict[str, int]
    float_modules: tuple[str, ...]
    unsupported_ops: dict[str, int]
    data_dependent_steps: bool = False

    @property
    def synops(self) -> int:
        return sum(s.synops for s in self.sites)

    @property
    def spikes(self) -> int:
        return sum(s.spikes for s in self.sites)

    def steps_per_token(self) -> dict[str, float]:
        """Effective steps per token and modality over all activation sites (probabilities excluded)."""
        tokens: dict[str, float] = {}
        steps: dict[str, float] = {}
        for site in self.sites:
            for name, count in site.tokens.items():
                if name == "probabilities":
                    continue
                tokens[name] = tokens.get(name, 0) + count
                steps[name] = steps.get(name, 0) + count * site.steps_per_token[name]
        return {name: steps[name] / tokens[name] for name in tokens}

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "total": {
                "spikes": self.spikes,
                "synops": self.synops,
                "non_spiking_flops": sum(self.non_spiking_flops.values()),
                "steps_per_token": self.steps_per_token(),
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def format_table(self) -> str:
        head = f"{'site':<58} {'kind':<14}{'tokens':>14}{'steps/token':>16}{'spikes':>10}{'rate':>7}{'synops':>12}"
        lines = [f"Op report: {self.model}", head, "-" * len(head)]
        for s in self.sites:
            tokens = "/".join(str(v) for v in s.tokens.values())
            steps = "/".join(f"{v:g}" for v in s.steps_per_token.values())
            lines.append(
                f"{s.name[-58:]:<58} {s.kind:<14}{tokens:>14}{steps:>16}{s.spikes:>10}{s.firing_rate:>7.3f}{s.synops:>12}"
            )
        lines.append("-" * len(head))
        steps = ", ".join(f"{k} {v:.2f}" for k, v in self.steps_per_token().items())
        lines.append(f"total: {self.spikes} spikes, {self.synops} synaptic ops; steps per token: {steps}")
        if self.data_dependent_steps:
            lines.append("  (data-dependent steps: the mean of each token's own, the bit length of its largest spike count)")
        lines.append("non-spiking FLOPs (norms, softmax, activations, rotary, residuals, float layers):")
        for scope, flops in self.non_spiking_flops.items():
            lines.append(f"  {scope:<70}{flops:>14}")
        by_op = ", ".join(f"{op} {flops}" for op, flops in self.non_spiking_by_op.items() if flops)
        lines.append(f"  by op: {by_op}")
        lines.append(f"kept in the model's precision: {', '.join(self.float_modules)}")
        if self.unsupported_ops:
            lines.append(f"ops without a FLOP rule (not counted): {self.unsupported_ops}")
        return "\n".join(lines)


def non_spiking_counter() -> FlopCounter:
    """SpikingJelly's ``FlopCounter`` with this report's rules, blind to the spike-driven sites:
    run in a ``DispatchCounterMode``, it counts a forward's non-spiking work per module scope."""
    return FlopCounter(extra_rules=_FLOP_RULES, extra_ignore_modules=[SpikeSite])


def layer_scopes(model: nn.Module) -> list[str]:
    """Scope names of the repeated blocks (children of a ``ModuleList``) and of the top level."""
    root = type(model).__name__
    scopes = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            scopes += [f"{root}.{name}.{child}" for child, _ in module.named_children()]
    return scopes


def scope_aliases(model: nn.Module, scope: str) -> list[str]:
    """The names SpikingJelly's counters may give the module of ``scope``
    (``"<model class>.<path>"``): they root them at the outermost module running, and
    ``generate`` runs some sub-models on their own (a vision tower, before the first forward),
    which gives ``"<their class>.<rest of the path>"``."""
    parts = scope.split(".")[1:]
    aliases = [scope]
    for i in range(1, len(parts)):
        aliases.append(f"{type(model.get_submodule('.'.join(parts[:i]))).__name__}.{'.'.join(parts[i:])}")
    return aliases


def _scoped(records: dict, model: nn.Module, scope: str) -> int:
    return sum(sum(records.get(alias, {}).values()) for alias in scope_aliases(model, scope))


def op_report(model: nn.Module, **inputs) -> OpReport:
    """Run one spike-mode forward of converted ``model`` on ``inputs`` and count its work."""
    return op_report_of(model, lambda: model(**inputs))


def op_report_of(model: nn.Module, run: Callable[[], object]) -> OpReport:
    """Count the work of converted ``model`` (in spike mode) in whatever ``run()`` does with it:
    e.g. ``model.generate(**batch, max_new_tokens=1)``, whose prefill may differ from a plain
    forward of the batch (``generate`` derives position ids from the attention mask)."""
    state = spike_state(model)
    set_mode(model, "spike")
    sites = {name: m for name, m in model.named_modules() if isinstance(m, SpikeSite)}
    for site in sites.values():
        site.activity.reset()
    synops = SynOpCounter()
    flops = non_spiking_counter()
    with torch.no_grad(), recording_activity(model), DispatchCounterMode([synops, flops]) as mode:
        run()

    root = type(model).__name__
    synop_records = synops.get_counts()
    reports = []
    for name, site in sites.items():
        act = site.activity
        reports.append(
            SiteReport(
                name=name,
                kind=site.kind,
                tokens=dict(act.tokens),
                steps_per_token={k: act.token_steps[k] / act.tokens[k] for k in act.tokens},
                spikes=act.spikes,
                firing_rate=act.spikes / act.neuron_steps if act.neuron_steps else 0.0,
                synops=_scoped(synop_records, model, f"{root}.{name}"),
            )
        )
    flop_records = flops.get_counts()
    non_spiking = {"total": sum(flop_records.get("Global", {}).values())}
    for scope in layer_scopes(model):
        non_spiking[scope] = _scoped(flop_records, model, scope)
    float_modules = tuple(
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d, nn.Conv3d)) and not isinstance(m, SpikeLinear)
    )
    by_op = {str(op).removeprefix("aten."): n for op, n in flop_records.get("Global", {}).items()}
    return OpReport(
        model=f"{type(model).__name__} ({state.config.msts.scheme})",
        sites=tuple(reports),
        non_spiking_flops=non_spiking,
        non_spiking_by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        float_modules=float_modules,
        unsupported_ops=mode.get_unsupported(flops),
        data_dependent_steps=state.config.msts.data_dependent,
    )

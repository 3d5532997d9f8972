"""The accelerator as the Lava processes emulated it, next to the analytic model of the same input.

In a whole-model Lava run (:func:`~spikemllm_sj.lava_backend.run_model_on_lava`) every process
accounts, step by step, for what the accelerator would do with that step: the synapse of each
site its synaptic operations (per modality), processing-element cycles (``ceil(synops of the
step / pe_count)``: a step's accumulates finish before Horner's shift to the next), HBM bytes
(weights once per call, a KV cache's positions read and the new ones written) and SRAM bytes;
the neurons their spikes, membrane updates and membrane SRAM bytes; the decoded stages their
non-spiking operations (SpikingJelly's ``FlopCounter``) before each call. This module turns those
counts into time and energy with the parameters of :mod:`~spikemllm_sj.analysis.accelerator`:

* a call takes ``max(PE cycles / clock, HBM bytes / bandwidth)``; the non-spiking work before it
  ``ceil(ops / pe_count)`` cycles on the same processing elements;
* the schedule: within a forward, the stages (the calls and the decoded work between them) run
  one after another, each a window behind the one before it (each needs its predecessor's
  decoded output); the latency of a forward is the sum along that path, its throughput the
  tokens it yields over that latency;
* energy: accumulates, non-spiking ops and SRAM bytes at their energies, static power over the
  latency, HBM access energy kept apart (as :class:`~spikemllm_sj.analysis.accelerator.Comparison` does).

:func:`compare_with_analytic` sets the prefill against
:func:`~spikemllm_sj.analysis.accelerator.workload_from_report` of an op report of the same input
(its sites' synaptic operations come from SpikingJelly's ``SynOpCounter`` in PyTorch, the
emulation's from the Lava processes). They differ by design in two ways: the emulation rounds
each step up to whole cycles, and it processes the prefill's tokens in one window per call, so it
reads a layer's weights once per call, where the analytic model reads them once per token (batch
1, one token at a time) and is memory-bound where the emulation is compute-bound.
"""

from __future__ import annotations

import math
import typing as ty
from dataclasses import dataclass

from spikemllm_sj.analysis.accelerator import AcceleratorParams, Comparison, HardwareParams, Workload
from spikemllm_sj.neurons import Modality

__all__ = ["StageCost", "ForwardCost", "emulated_costs", "SiteComparison", "compare_with_analytic", "format_emulation"]

PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class StageCost:
    """One site call on the emulated accelerator (times in s, energies in J).

    :param synops_by_modality: synaptic operations per modality of the spiking tokens
        (``"probabilities"`` for the probability spikes of ``P V``).
    :param sram_bytes: the synapse's (staged weights or cache, selected operands);
        ``membrane_sram_bytes``: the neurons'.
    :param nonspiking_ops: the non-spiking work the model's code did before this call.
    :param synaptic_energy_j: the accumulates and the synapse's SRAM bytes; ``energy_j``: all the
        call's dynamic energy (with the membranes and the non-spiking work before it).
    """

    site: str
    kind: str
    forward: int
    synops: int
    synops_by_modality: dict[str, int]
    cycles: int
    hbm_bytes: int
    sram_bytes: int
    membrane_sram_bytes: int
    spikes: int
    membrane_updates: int
    nonspiking_ops: int
    compute_s: float
    memory_s: float
    nonspiking_s: float
    synaptic_energy_j: float
    energy_j: float
    energy_hbm_j: float

    @property
    def time_s(self) -> float:
        """The call's time on the critical path: its window, then nothing overlaps the next stage."""
        return max(self.compute_s, self.memory_s) + self.nonspiking_s

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


@dataclass(frozen=True)
class ForwardCost:
    """One forward on the emulated accelerator: its stages, the work after its last call, and the
    tokens it yields (``B * L`` for the prefill, ``B`` for a decode step)."""

    forward: int
    stages: tuple[StageCost, ...]
    tail_ops: int
    tail_s: float
    tail_energy_j: float
    tokens: int
    static_w: float

    @property
    def latency_s(self) -> float:
        return sum(s.time_s for s in self.stages) + self.tail_s

    @property
    def energy_j(self) -> float:
        dynamic = sum(s.energy_j for s in self.stages) + self.tail_energy_j
        return dynamic + self.static_w * self.latency_s

    @property
    def energy_hbm_j(self) -> float:
        return sum(s.energy_hbm_j for s in self.stages)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.latency_s

    def by_modality(self) -> dict[str, tuple[int, float]]:
        """Synaptic operations and their dynamic energy (accumulates and operand reads, J) per modality."""
        out: dict[str, list] = {}
        for stage in self.stages:
            per_op = stage.synaptic_energy_j / stage.synops if stage.synops else 0.0
            for modality, count in stage.synops_by_modality.items():
                entry = out.setdefault(modality, [0, 0.0])
                entry[0] += count
                entry[1] += count * per_op
        return {m: (n, e) for m, (n, e) in out.items()}


def _stage(trace, p: AcceleratorParams) -> StageCost:
    counts, call = trace.counts, trace.call
    if call.kind == "attention.pv":
        by_modality = {PROBABILITIES: counts["synops"]}
    else:
        by_modality = {m.name.lower(): counts[f"synops_{m.name.lower()}"] for m in Modality if counts[f"synops_{m.name.lower()}"]}
    nonspiking = trace.nonspiking_before
    synaptic_pj = counts["synops"] * p.accumulate_pj + counts["sram_bytes"] * p.sram_pj_per_byte
    dynamic_pj = synaptic_pj + counts["membrane_sram_bytes"] * p.sram_pj_per_byte + nonspiking * p.mac_pj
    return StageCost(
        site=call.site, kind=call.kind, forward=call.forward, synops=counts["synops"], synops_by_modality=by_modality,
        cycles=counts["cycles"], hbm_bytes=counts["hbm_bytes"], sram_bytes=counts["sram_bytes"],
        membrane_sram_bytes=counts["membrane_sram_bytes"], spikes=counts["spikes"],
        membrane_updates=counts["membrane_updates"], nonspiking_ops=nonspiking,
        compute_s=counts["cycles"] / p.clock_hz, memory_s=counts["hbm_bytes"] / p.hbm_bandwidth_bytes_per_s,
        nonspiking_s=math.ceil(nonspiking / p.pe_count) / p.clock_hz, synaptic_energy_j=synaptic_pj * 1e-12,
        energy_j=dynamic_pj * 1e-12, energy_hbm_j=counts["hbm_bytes"] * p.hbm_pj_per_byte * 1e-12,
    )


def emulated_costs(run, params: AcceleratorParams) -> list[ForwardCost]:
    """Per forward of a :class:`~spikemllm_sj.lava_backend.WholeModelRun`, its emulated cost."""
    forwards = []
    for forward in range(run.forwards):
        stages = tuple(_stage(t, params) for t in run.traces if t.call.forward == forward)
        tail = run.tail_ops[forward]
        positions = run.reference.positions[forward]
        forwards.append(ForwardCost(
            forward=forward, stages=stages, tail_ops=tail, tail_s=math.ceil(tail / params.pe_count) / params.clock_hz,
            tail_energy_j=tail * params.mac_pj * 1e-12, tokens=run.plan.batch_rows * positions, static_w=params.static_w,
        ))
    return forwards


@dataclass(frozen=True)
class SiteComparison:
    """One site of the prefill: emulated (Lava processes) against analytic (op report)."""

    site: str
    kind: str
    synops_emulated: int
    synops_analytic: float
    cycles_emulated: int
    cycles_analytic: float
    bound_emulated: str
    bound_analytic: str
    energy_emulated_j: float
    energy_analytic_j: float

    @property
    def cycles_difference(self) -> float:
        """Relative difference of the compute cycles, emulated over analytic minus 1."""
        return self.cycles_emulated / self.cycles_analytic - 1 if self.cycles_analytic else 0.0


def compare_with_analytic(prefill: ForwardCost, workload: Workload, analytic: Comparison,
                          params: HardwareParams) -> list[SiteComparison]:
    """The prefill's sites, emulated against ``analytic`` (``compare(workload, params)``, the
    workload from an op report of the same input): synaptic operations, compute cycles (analytic:
    ``synops / pe_count``), which bound holds, and the dynamic-plus-static energy of the site on
    each side."""
    p = params.accelerator
    analytic = {layer.name: (layer, cost) for layer, cost in zip(workload.layers, analytic.accelerator)}
    rows: dict[str, list[StageCost]] = {}
    for stage in prefill.stages:
        rows.setdefault(stage.site, []).append(stage)
    out = []
    for site, stages in rows.items():
        layer, cost = analytic[site]
        compute = sum(s.cycles for s in stages) / p.clock_hz
        memory = sum(s.hbm_bytes for s in stages) / p.hbm_bandwidth_bytes_per_s
        out.append(SiteComparison(
            site=site, kind=stages[0].kind, synops_emulated=sum(s.synops for s in stages), synops_analytic=layer.synops,
            cycles_emulated=sum(s.cycles for s in stages), cycles_analytic=layer.synops / p.pe_count,
            bound_emulated="compute" if compute >= memory else "memory", bound_analytic=cost.bound,
            energy_emulated_j=sum(s.energy_j - s.nonspiking_ops * p.mac_pj * 1e-12 + p.static_w * max(s.compute_s, s.memory_s)
                                  for s in stages),  # the site's own work, as the analytic row's
            energy_analytic_j=cost.energy_j,
        ))
    return out


def format_emulation(forwards: ty.Sequence[ForwardCost], comparison: ty.Sequence[SiteComparison], analytic: Comparison,
                     params: HardwareParams, not_mapped: dict[str, int], scope_ops: dict[str, tuple[int, int]]) -> str:
    """Markdown tables: the prefill's sites emulated vs ``analytic`` (the same prefill's workload
    costed by :func:`~spikemllm_sj.analysis.accelerator.compare`), its non-spiking work per block
    (``scope_ops``: block -> (ops counted in the Lava process, ops of the op report)), each
    forward's latency, throughput and energy, the prefill's work per modality, and what runs
    outside the spike-driven processes (``not_mapped``: float layer -> its ops)."""
    lines = ["Prefill, per site: emulated in the Lava processes vs the analytic model of an op report of the same input", "",
             "| site | kind | synops (Lava) | synops (analytic) | PE cycles (Lava) | PE cycles (analytic) | difference "
             "| bound (Lava / analytic) | energy (Lava, nJ) | energy (analytic, nJ) |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for row in comparison:
        lines.append(
            f"| {row.site} | {row.kind} | {row.synops_emulated:,} | {row.synops_analytic:,.0f} | {row.cycles_emulated:,} "
            f"| {row.cycles_analytic:,.1f} | {row.cycles_difference:+.1%} | {row.bound_emulated} / {row.bound_analytic} "
            f"| {row.energy_emulated_j * 1e9:.3f} | {row.energy_analytic_j * 1e9:.3f} |"
        )
    lines += ["", "Prefill, non-spiking work per block: counted in the DecodedForward process vs the op report", "",
              "| block | ops (Lava) | ops (op report) |", "|---|---:|---:|"]
    lines += [f"| {scope} | {mine:,} | {theirs:,} |" for scope, (mine, theirs) in scope_ops.items()]
    acc_s = sum(c.time_s for c in analytic.accelerator)
    gpu_s = sum(c.time_s for c in analytic.gpu)
    lines += ["", "Each forward on the emulated accelerator (stages one after another; static power over the latency)", "",
              "| forward | tokens | stages | latency (us) | tokens/s | energy (uJ, chip) | HBM energy (uJ) | energy per token (nJ) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for f in forwards:
        label = "prefill" if f.forward == 0 else f"decode {f.forward}"
        lines.append(f"| {label} | {f.tokens} | {len(f.stages)} | {f.latency_s * 1e6:.3f} | {f.tokens_per_s:,.0f} "
                     f"| {f.energy_j * 1e6:.4f} | {f.energy_hbm_j * 1e6:.4f} | {f.energy_j / f.tokens * 1e9:.2f} |")
    prefill = forwards[0]
    lines += ["", f"Prefill, whole model: emulated {prefill.latency_s * 1e6:.3f} us; analytic accelerator model {acc_s * 1e6:.3f} us "
              f"(tokens one at a time); GPU roofline ({params.gpu.name}) {gpu_s * 1e6:.3f} us.", "",
              "Prefill synaptic operations per modality (emulated)", "", "| modality | synops | dynamic energy (nJ) |", "|---|---:|---:|"]
    for modality, (count, energy) in prefill.by_modality().items():
        lines.append(f"| {modality} | {count:,} | {energy * 1e9:.3f} |")
    spiking = sum(s.synops for s in prefill.stages)
    nonspiking = sum(s.nonspiking_ops for s in prefill.stages) + prefill.tail_ops
    total = spiking + nonspiking
    lines += ["", "Not mapped to spike-driven processes (run in DecodedForward; share of the prefill's operations, "
              "synops + non-spiking ops)", "", "| what | ops | share |", "|---|---:|---:|",
              f"| all non-spiking work (norms, softmax, rotary, residuals, float layers; as in the op report, not the "
              f"sites' own scaling and rescaling) | {nonspiking:,} | {nonspiking / total:.1%} |"]
    for name, ops in not_mapped.items():
        lines.append(f"| {name} (float layer) | {ops:,} | {ops / total:.1%} |")
    return "\n".join(lines)

"""Accelerator figures from spiking activity, against an FP16 GPU roofline.

The paper (section 4.3) synthesised an RTL accelerator (SMIC 28 nm, SRAM + HBM, cycle-level
simulation) and reports, for Qwen2VL-7B decode at batch size 1, 393.7 tokens/s at 7.13 W against
43.5 tokens/s at 184 W for an A800 in FP16. Its clock, area and per-op energies are not
published, so this module is a parameterised model, not a reproduction:

* :class:`Workload`: what one pass costs, per layer: synaptic operations (accumulates selected
  by spikes), non-spiking operations, weights, KV cache, membrane updates. Built from an
  :class:`~spikemllm_sj.analysis.op_report.OpReport` (:func:`workload_from_report`) or from layer shapes,
  firing rates and steps (:func:`synthetic_workload`, presets such as :data:`QWEN2VL_7B`).
* Accelerator (:func:`accelerator_cost`): time = max(cycles / clock, HBM bytes / bandwidth) per
  layer; energy = ops x energy/op + bytes x energy/byte + static power x time.
* GPU (:func:`gpu_cost`): FP16 roofline, FLOPs = 2 x MACs, every weight read once per token at
  batch 1; time = max(FLOPs / peak, bytes / bandwidth) / achieved fraction; energy = power x time.
* :func:`compare` gives per-layer and total tokens/s, W and J/token for both, and the ratios.

Parameters live in ``accelerator_params.toml`` (sources and which values are fitted are in its
comments). Units: seconds, joules, watts, bytes; "ops" are per pass.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from spikemllm_sj.analysis.op_report import OpReport

__all__ = [
    "AcceleratorParams",
    "GPUParams",
    "HardwareParams",
    "load_params",
    "LayerWorkload",
    "Workload",
    "SpikeRates",
    "measured_rates",
    "workload_from_report",
    "DecoderShape",
    "QWEN2VL_7B",
    "synthetic_workload",
    "paper_preset",
    "LayerCost",
    "accelerator_cost",
    "gpu_cost",
    "Comparison",
    "compare",
    "fit_to_paper",
    "PAPER",
    "plot_ratios",
]

PARAMS_FILE = Path(__file__).with_name("accelerator_params.toml")

# Section 4.3 of the paper: Qwen2VL-7B decode, batch size 1.
PAPER = {"accelerator_tokens_per_s": 393.7, "accelerator_w": 7.13, "gpu_tokens_per_s": 43.5, "gpu_w": 184.0}


def _positive(obj, *names: str, integer: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
            what = "a positive int" if integer else "a positive finite number"
            raise ValueError(f"{type(obj).__name__}.{name} must be {what}, got {value!r}")


def _non_negative(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a non-negative finite number, got {value!r}")


# Parameters.


@dataclass(frozen=True)
class AcceleratorParams:
    """The spike-driven accelerator.

    :param clock_hz: clock (Hz).
    :param pe_count: accumulates (or non-spiking ops) per cycle.
    :param accumulate_pj: energy of one accumulate (integer add), pJ.
    :param mac_pj: energy of one non-spiking multiply-accumulate (FP16), pJ.
    :param sram_pj_per_byte: on-chip SRAM access energy, pJ/byte.
    :param hbm_pj_per_byte: HBM access energy, pJ/byte.
    :param hbm_bandwidth_bytes_per_s: HBM bandwidth, bytes/s.
    :param membrane_bytes: bytes of one membrane potential (read and written once per step).
    :param static_w: static (leakage, clock tree) power, W.
    """

    clock_hz: float
    pe_count: int
    accumulate_pj: float
    mac_pj: float
    sram_pj_per_byte: float
    hbm_pj_per_byte: float
    hbm_bandwidth_bytes_per_s: float
    membrane_bytes: int
    static_w: float

    def __post_init__(self):
        _positive(self, "clock_hz", "accumulate_pj", "mac_pj", "sram_pj_per_byte", "hbm_pj_per_byte",
                  "hbm_bandwidth_bytes_per_s")
        _positive(self, "pe_count", "membrane_bytes", integer=True)
        _non_negative(self, "static_w")


@dataclass(frozen=True)
class GPUParams:
    """The FP16 GPU baseline.

    :param peak_flops: dense FP16 tensor throughput, FLOP/s.
    :param hbm_bandwidth_bytes_per_s: memory bandwidth, bytes/s.
    :param power_w: board power while decoding, W.
    :param achieved_fraction: fraction of the roofline reached, in (0, 1].
    """

    name: str
    peak_flops: float
    hbm_bandwidth_bytes_per_s: float
    power_w: float
    achieved_fraction: float

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"GPUParams.name must be a non-empty string, got {self.name!r}")
        _positive(self, "peak_flops", "hbm_bandwidth_bytes_per_s", "power_w", "achieved_fraction")
        if self.achieved_fraction > 1:
            raise ValueError(f"GPUParams.achieved_fraction must be in (0, 1], got {self.achieved_fraction!r}")


@dataclass(frozen=True)
class HardwareParams:
    accelerator: AcceleratorParams
    gpu: GPUParams


def _build(cls, table: dict, section: str):
    if not isinstance(table, dict):
        raise ValueError(f"[{section}] must be a table")
    names = {f.name for f in fields(cls)}
    missing, unknown = names - table.keys(), table.keys() - names
    if missing or unknown:
        raise ValueError(f"[{section}]: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
    return cls(**table)


def load_params(path: str | Path = PARAMS_FILE) -> HardwareParams:
    """Read and validate the parameter file (``[accelerator]`` and ``[gpu]`` tables)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    if set(data) != {"accelerator", "gpu"}:
        raise ValueError(f"{path}: expected tables [accelerator] and [gpu], got {sorted(data)}")
    return HardwareParams(_build(AcceleratorParams, data["accelerator"], "accelerator"), _build(GPUParams, data["gpu"], "gpu"))


# Workloads.


@dataclass(frozen=True)
class LayerWorkload:
    """The work of one layer (or site) in one pass. Counts are totals over the pass.

    :param params: weights held by the layer (count).
    :param weight_reads: times the weights are read from HBM in the pass (batch 1: once per token).
    :param weight_bits: bits of one weight on the accelerator (the GPU holds FP16).
    :param dense_macs: multiply-accumulates of the dense (ANN) layer.
    :param synops: synaptic operations: accumulates of weights (or K/V) selected by spikes.
    :param nonspiking_ops: ops outside the spike-driven matmuls (norms, softmax, float layers...).
    :param neuron_steps: membrane updates (neurons x steps).
    :param kv_elements: KV-cache elements read.
    :param activation_elements: activations read and written by the GPU between kernels.
    :param tokens: tokens through the layer; ``steps``: mean time steps per token.
    """

    name: str
    params: float = 0
    weight_reads: float = 0
    weight_bits: int = 8
    dense_macs: float = 0
    synops: float = 0
    nonspiking_ops: float = 0
    neuron_steps: float = 0
    kv_elements: float = 0
    activation_elements: float = 0
    tokens: float = 0
    steps: float = 0

    def __post_init__(self):
        _non_negative(self, "params", "weight_reads", "dense_macs", "synops", "nonspiking_ops", "neuron_steps",
                      "kv_elements", "activation_elements", "tokens", "steps")
        _positive(self, "weight_bits", integer=True)


@dataclass(frozen=True)
class Workload:
    """One pass: its layers, the tokens it yields (the throughput's unit) and the KV precision."""

    name: str
    layers: tuple[LayerWorkload, ...]
    tokens: float
    kv_bits: int = 8

    def __post_init__(self):
        if not self.layers:
            raise ValueError("Workload.layers must not be empty")
        _positive(self, "tokens")
        _positive(self, "kv_bits", integer=True)


@dataclass(frozen=True)
class SpikeRates:
    """Firing rates (spikes per neuron and step) of the linear inputs, attention queries and
    attention probabilities."""

    linear: float
    qk: float
    pv: float

    def __post_init__(self):
        for name in ("linear", "qk", "pv"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"SpikeRates.{name} must be in [0, 1], got {value!r}")


def _site_kind(kind: str) -> str:
    return {"linear": "linear", "attention.qk": "qk", "attention.pv": "pv"}[kind]


def measured_rates(report: OpReport, scope: str = "language_model") -> SpikeRates:
    """Firing rates per site kind over the sites whose name contains ``scope``, weighted by
    neuron steps (total spikes over total membrane updates)."""
    spikes = {"linear": 0.0, "qk": 0.0, "pv": 0.0}
    steps = dict(spikes)
    for site in report.sites:
        if scope in site.name and site.firing_rate > 0:
            kind = _site_kind(site.kind)
            spikes[kind] += site.spikes
            steps[kind] += site.spikes / site.firing_rate
    missing = [k for k, v in steps.items() if not v]
    if missing:
        raise ValueError(f"no firing site of kind {missing} in scope {scope!r}")
    return SpikeRates(**{k: spikes[k] / steps[k] for k in spikes})


def workload_from_report(
    report: OpReport, weight_bits: int = 8, kv_bits: int = 8, tokens: float | None = None, scope: str | None = None
) -> Workload:
    """One row per spike-driven site of ``report`` plus one row of non-spiking work.

    The pass is costed as batch-1 processing, one token at a time: a linear site reads its weights
    once per token it sees. Shapes come back from the counts: fan-out = synops / spikes,
    membrane updates = spikes / rate, dense MACs = updates / steps x fan-out. Attention sites read
    one K (or V) element per MAC (no sharing between grouped heads: an upper bound). The weights
    of layers kept in float are not known to the report and are left out of the bytes.

    :param tokens: tokens the pass yields; default: the tokens of a language-model site.
    :param scope: keep the sites of this module path only (e.g. ``model.language_model.layers.0.mlp``).
        The report counts non-spiking ops per repeated block, so they are included for the whole
        model or for a scope that is one such block, and left out (the workload's name says so)
        for a scope below that level.
    """
    sites = [s for s in report.sites if scope is None or s.name == scope or s.name.startswith(scope + ".")]
    if not sites:
        raise ValueError(f"no spike-driven site under {scope!r} in the report")
    if scope is None:
        non_spiking = report.non_spiking_flops["total"]
    else:
        block = [k for k in report.non_spiking_flops if k.split(".", 1)[-1] == scope]
        non_spiking = report.non_spiking_flops[block[0]] if block else None
    layers = []
    for site in sites:
        if not site.spikes:
            raise ValueError(f"site {site.name} fired no spikes: its shape cannot be recovered from the report")
        site_tokens = sum(site.tokens.values())
        steps = sum(site.tokens[k] * site.steps_per_token[k] for k in site.tokens) / site_tokens
        neuron_steps = site.spikes / site.firing_rate
        fan_out = site.synops / site.spikes
        dense = neuron_steps / steps * fan_out
        linear = site.kind == "linear"
        layers.append(
            LayerWorkload(
                name=site.name, params=dense / site_tokens if linear else 0, weight_reads=site_tokens if linear else 0,
                weight_bits=weight_bits, dense_macs=dense, synops=site.synops, neuron_steps=neuron_steps,
                kv_elements=0 if linear else dense, activation_elements=dense / fan_out + site_tokens * fan_out,
                tokens=site_tokens, steps=steps,
            )
        )
    name = report.model if scope is None else f"{report.model}: {scope}"
    if non_spiking is not None:
        layers.append(LayerWorkload(name="non-spiking (norms, softmax, activations, float layers)",
                                    nonspiking_ops=non_spiking, weight_bits=weight_bits))
    else:
        name += " (spike-driven sites only: non-spiking ops are counted per decoder or vision block)"
    if tokens is None:
        lm = [s for s in sites if s.kind == "linear" and "language_model" in s.name] or [s for s in sites if s.kind == "linear"]
        if not lm:
            raise ValueError("no linear site in the report's scope to count tokens from: pass tokens=")
        tokens = sum(lm[0].tokens.values())
    return Workload(name=name, layers=tuple(layers), tokens=tokens, kv_bits=kv_bits)


@dataclass(frozen=True)
class DecoderShape:
    """Shapes of a decoder-only language model (grouped-query attention, gated MLP)."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    qkv_bias: bool = True

    def __post_init__(self):
        _positive(self, "layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", integer=True)
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"{self.name}: heads must divide hidden and kv_heads must divide heads")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# Qwen2-VL-7B-Instruct config.json (language model; the vision tower does not run at decode).
QWEN2VL_7B = DecoderShape("Qwen2VL-7B", layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064)


def synthetic_workload(
    shape: DecoderShape,
    rates: SpikeRates,
    steps: dict[str, float],
    image_share: float = 0.0,
    context: int = 512,
    weight_bits: int = 4,
    kv_bits: int = 8,
    prob_steps: int = 8,
    spiking_lm_head: bool = True,
) -> Workload:
    """One token through ``shape`` at batch 1 with a KV cache of ``context`` tokens.

    Per-token steps are ``image_share * steps["image"] + (1 - image_share) * steps["text"]``:
    decode is ``image_share = 0``; a larger share models tokens fed one at a time (a streaming
    prefill). Linear inputs and queries fire at ``rates.linear`` / ``rates.qk`` per neuron and
    step, probabilities at ``rates.pv`` over ``prob_steps`` binary steps. One encoder per distinct
    linear input (q, k, v share theirs, as do gate and up). Non-spiking ops use per-element
    estimates: two RMSNorms (4 each), residuals (1), SiLU gate (5), rotary (3), softmax (5).
    """
    if not 0 <= image_share <= 1:
        raise ValueError(f"image_share must be in [0, 1], got {image_share!r}")
    if set(steps) != {"text", "image"} or any(not v > 0 for v in steps.values()):
        raise ValueError(f"steps must give positive 'text' and 'image' steps, got {steps!r}")
    s = image_share * steps["image"] + (1 - image_share) * steps["text"]
    h, i, d, c = shape.hidden, shape.intermediate, shape.head_dim, context
    kv = shape.kv_heads * d
    linear_macs = 2 * h * h + 2 * h * kv + 3 * h * i
    attn_macs = 2 * shape.heads * d * c
    layer = LayerWorkload(
        name="decoder layer",
        params=linear_macs + (h + 2 * kv if shape.qkv_bias else 0),
        weight_reads=1,
        weight_bits=weight_bits,
        dense_macs=linear_macs + attn_macs,
        synops=linear_macs * rates.linear * s + shape.heads * d * c * (rates.qk * s + rates.pv * prob_steps),
        nonspiking_ops=8 * h + 2 * h + 5 * i + 3 * (h + kv) + 5 * shape.heads * c,
        neuron_steps=(3 * h + i + h) * s + shape.heads * c * prob_steps,
        kv_elements=2 * kv * c,
        activation_elements=2 * (4 * h + 2 * kv + 3 * i),
        tokens=1,
        steps=s,
    )
    head_macs = shape.vocab * h
    head = LayerWorkload(
        name="lm_head" + (" (spike-driven)" if spiking_lm_head else " (FP16)"),
        params=head_macs, weight_reads=1, weight_bits=weight_bits if spiking_lm_head else 16, dense_macs=head_macs,
        synops=head_macs * rates.linear * s if spiking_lm_head else 0,
        nonspiking_ops=0 if spiking_lm_head else head_macs, neuron_steps=h * s if spiking_lm_head else 0,
        activation_elements=h + shape.vocab, tokens=1, steps=s if spiking_lm_head else 0,
    )
    layers = tuple(replace(layer, name=f"layers.{n}") for n in range(shape.layers)) + (head,)
    return Workload(name=f"{shape.name} decode, batch 1, context {context}, image share {image_share:g}, "
                    f"Tv/Tt {steps['image']:g}/{steps['text']:g}, W{weight_bits}", layers=layers, tokens=1, kv_bits=kv_bits)


def paper_preset(rates: SpikeRates, image_share: float = 0.0, steps: dict[str, float] | None = None) -> Workload:
    """The paper's section 4.3 setting: Qwen2VL-7B decode at batch size 1 (text tokens; 512 tokens
    of context), W4 (ASSUMED: the paper's weight width at this point is not known), KV8, Tv/Tt 3/4,
    attention probabilities on 8 binary steps, the LM head spike-driven, at firing ``rates``."""
    return synthetic_workload(QWEN2VL_7B, rates, steps or {"image": 3, "text": 4}, image_share=image_share)


# Cost models.


@dataclass(frozen=True)
class LayerCost:
    """Time (s) and energy (J) of one layer on one device; ``energy_hbm_j`` is the HBM access
    energy, kept apart because the paper's chip power leaves it out (see :class:`Comparison`)."""

    name: str
    time_s: float
    energy_j: float
    energy_hbm_j: float
    bound: str  # "compute" or "memory"


def accelerator_cost(layer: LayerWorkload, workload: Workload, p: AcceleratorParams) -> LayerCost:
    """Cycles: one accumulate or non-spiking op per PE and cycle. HBM: weights once per read and
    the KV cache. SRAM: the weights staged from HBM, one selected operand per accumulate (at the
    weight width, K/V included: a small error at decode) and each membrane read and written."""
    compute_s = (layer.synops + layer.nonspiking_ops) / p.pe_count / p.clock_hz
    hbm_bytes = layer.params * layer.weight_reads * layer.weight_bits / 8 + layer.kv_elements * workload.kv_bits / 8
    memory_s = hbm_bytes / p.hbm_bandwidth_bytes_per_s
    time_s = max(compute_s, memory_s)
    sram_bytes = hbm_bytes + layer.synops * layer.weight_bits / 8 + 2 * layer.neuron_steps * p.membrane_bytes
    dynamic_pj = layer.synops * p.accumulate_pj + layer.nonspiking_ops * p.mac_pj + sram_bytes * p.sram_pj_per_byte
    return LayerCost(layer.name, time_s, dynamic_pj * 1e-12 + p.static_w * time_s, hbm_bytes * p.hbm_pj_per_byte * 1e-12,
                     "compute" if compute_s >= memory_s else "memory")


def gpu_cost(layer: LayerWorkload, p: GPUParams) -> LayerCost:
    """FP16 roofline: FLOPs = 2 x dense MACs + non-spiking ops; bytes = 2 x (weights per read +
    KV elements + activations); the board power covers HBM, so ``energy_hbm_j`` is 0."""
    flops = 2 * layer.dense_macs + layer.nonspiking_ops
    bytes_ = 2 * (layer.params * layer.weight_reads + layer.kv_elements + layer.activation_elements)
    compute_s, memory_s = flops / p.peak_flops, bytes_ / p.hbm_bandwidth_bytes_per_s
    time_s = max(compute_s, memory_s) / p.achieved_fraction
    return LayerCost(layer.name, time_s, p.power_w * time_s, 0.0, "compute" if compute_s >= memory_s else "memory")


@dataclass(frozen=True)
class Comparison:
    """Accelerator against GPU for one workload.

    ``*_chip`` figures leave out HBM access energy, as the paper's 7.13 W must (streaming 4-bit
    Qwen2VL-7B weights at 393.7 tokens/s costs about 43 W of HBM2 access alone); ``*_with_hbm``
    add it. Ratios are GPU over accelerator for power and energy, accelerator over GPU for
    throughput, so energy_per_token_ratio = power_ratio x throughput_ratio.
    """

    workload: str
    tokens: float
    accelerator: tuple[LayerCost, ...]
    gpu: tuple[LayerCost, ...]

    def _totals(self, costs, hbm: bool) -> dict:
        time_s = sum(c.time_s for c in costs)
        energy = sum(c.energy_j + (c.energy_hbm_j if hbm else 0) for c in costs)
        return {"tokens_per_s": self.tokens / time_s, "power_w": energy / time_s, "energy_per_token_j": energy / self.tokens}

    def totals(self) -> dict:
        acc, acc_hbm, gpu = self._totals(self.accelerator, False), self._totals(self.accelerator, True), self._totals(self.gpu, False)
        return {
            "accelerator_chip": acc,
            "accelerator_with_hbm": acc_hbm,
            "gpu": gpu,
            "ratios": {
                "throughput_ratio": acc["tokens_per_s"] / gpu["tokens_per_s"],
                "power_ratio_chip": gpu["power_w"] / acc["power_w"],
                "energy_per_token_ratio_chip": gpu["energy_per_token_j"] / acc["energy_per_token_j"],
                "power_ratio_with_hbm": gpu["power_w"] / acc_hbm["power_w"],
                "energy_per_token_ratio_with_hbm": gpu["energy_per_token_j"] / acc_hbm["energy_per_token_j"],
            },
        }

    def as_dict(self) -> dict:
        return {"workload": self.workload, "tokens": self.tokens, "accelerator": [asdict(c) for c in self.accelerator],
                "gpu": [asdict(c) for c in self.gpu], "total": self.totals()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def format_table(self) -> str:
        head = ("| layer | acc time (us) | acc bound | acc chip energy (mJ) | acc HBM energy (mJ) "
                "| GPU time (us) | GPU bound | GPU energy (mJ) |")
        lines = [f"Workload: {self.workload}", "", head, "|---|---:|---|---:|---:|---:|---|---:|"]
        for a, g in zip(self.accelerator, self.gpu):
            lines.append(f"| {a.name} | {a.time_s * 1e6:.2f} | {a.bound} | {a.energy_j * 1e3:.4f} | {a.energy_hbm_j * 1e3:.4f} "
                         f"| {g.time_s * 1e6:.2f} | {g.bound} | {g.energy_j * 1e3:.4f} |")
        t = self.totals()
        lines += ["", "| device | tokens/s | power (W) | energy per token (J) |", "|---|---:|---:|---:|"]
        for key, label in (("accelerator_chip", "accelerator, chip"), ("accelerator_with_hbm", "accelerator, chip + HBM"), ("gpu", "GPU")):
            v = t[key]
            lines.append(f"| {label} | {v['tokens_per_s']:.1f} | {v['power_w']:.3g} | {v['energy_per_token_j']:.4g} |")
        lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f}x |" for k, v in t["ratios"].items()]
        return "\n".join(lines)


def compare(workload: Workload, params: HardwareParams) -> Comparison:
    """Cost ``workload`` on both devices, layer by layer."""
    return Comparison(
        workload=workload.name,
        tokens=workload.tokens,
        accelerator=tuple(accelerator_cost(layer, workload, params.accelerator) for layer in workload.layers),
        gpu=tuple(gpu_cost(layer, params.gpu) for layer in workload.layers),
    )


def fit_to_paper(workload: Workload, params: HardwareParams, target: dict = PAPER) -> dict:
    """The fitted parameters that make ``workload`` hit ``target`` (section 4.3 by default):
    ``pe_count`` (unrounded) for the accelerator's tokens/s, assuming it is compute-bound;
    ``static_w`` for its chip power; the GPU's ``achieved_fraction`` for its tokens/s.

    :raises ValueError: the accelerator would be memory-bound at the target rate (no PE count fits).
    """
    acc = params.accelerator
    time_s = workload.tokens / target["accelerator_tokens_per_s"]
    ops = sum(layer.synops + layer.nonspiking_ops for layer in workload.layers)
    pe_count = ops / acc.clock_hz / time_s
    fitted = replace(acc, pe_count=max(1, math.ceil(pe_count)), static_w=0.0)
    costs = [accelerator_cost(layer, workload, fitted) for layer in workload.layers]
    if any(c.bound == "memory" for c in costs):
        raise ValueError("the accelerator is memory-bound at the target rate: raise hbm_bandwidth_bytes_per_s or lower weight_bits")
    dynamic_j = sum(c.energy_j for c in costs) * pe_count / fitted.pe_count  # undo the ceil's time change: dynamic energy is time-free
    roofline = compare(workload, replace(params, gpu=replace(params.gpu, achieved_fraction=1.0)))
    gpu_time = sum(c.time_s for c in roofline.gpu)
    return {
        "pe_count": pe_count,
        "static_w": target["accelerator_w"] - dynamic_j / time_s,
        "achieved_fraction": gpu_time / (workload.tokens / target["gpu_tokens_per_s"]),
    }


def plot_ratios(
    path: str | Path,
    params: HardwareParams,
    rates: SpikeRates,
    shape: DecoderShape = QWEN2VL_7B,
    steps: dict[str, float] | None = None,
    step_pairs: tuple[tuple[int, int], ...] = ((1, 2), (2, 3), (3, 4), (4, 4), (4, 5), (5, 6), (7, 7), (7, 8), (15, 15)),
    mixed_share: float = 0.5,
    **workload_kwargs,
) -> Path:
    """Save a PNG of the ratios against the image-token share (at ``steps``, default Tv/Tt 3/4)
    and against Tv/Tt (at image share ``mixed_share``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = steps or {"image": 3, "text": 4}
    keys = {"throughput_ratio": "throughput", "power_ratio_chip": "power (chip)",
            "energy_per_token_ratio_chip": "energy per token (chip)", "energy_per_token_ratio_with_hbm": "energy per token (chip + HBM)"}

    def ratios(share, st):
        return compare(synthetic_workload(shape, rates, st, image_share=share, **workload_kwargs), params).totals()["ratios"]

    shares = [n / 20 for n in range(21)]
    by_share = [ratios(f, steps) for f in shares]
    by_steps = [ratios(mixed_share, {"image": v, "text": t}) for v, t in step_pairs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in keys.items():
        left.plot(shares, [r[key] for r in by_share], marker=".", label=label)
        right.plot(range(len(step_pairs)), [r[key] for r in by_steps], marker="o", label=label)
    left.set(xlabel="share of image tokens", ylabel="accelerator vs GPU (x)", yscale="log",
             title=f"{shape.name}, Tv/Tt {steps['image']}/{steps['text']}")
    right.set(xlabel="Tv/Tt (steps per image / text token)", yscale="log", title=f"{shape.name}, image share {mixed_share:g}")
    right.set_xticks(range(len(step_pairs)), [f"{v}/{t}" for v, t in step_pairs])
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

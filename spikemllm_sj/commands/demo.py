"""``spikemllm demo``: the spike codes end to end, then one tiny model converted.

A seeded activation ``[1, L, D]`` with text, image and text spans is encoded with MSTS under
every spike code (TC-LIF, the two rate-coding baselines and the clipped bidirectional code at
the same levels, the mean-threshold bitwise code with its own thresholds), decoded, compared with
the quantizer, and driven through a spike-driven linear layer whose synaptic operations
SpikingJelly's ``SynOpCounter`` counts; then a tiny offline model is converted, compared with its
fake-quant twin and FP32, and counted (:func:`run_conversion`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

from spikemllm_sj.analysis.op_report import OpReport
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import convert_compare_report
from spikemllm_sj.commands.run_folder import run_folder
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch
from spikemllm_sj.neurons import (
    DATA_DEPENDENT_SCHEMES,
    SCHEMES,
    Modality,
    MSTSConfig,
    MSTSEncoder,
    binary_planes,
    integrate,
    quantize,
)

__all__ = ["DemoRow", "ConversionSummary", "run_demo", "run_conversion", "format_table", "add_parser", "run"]

MARKER = "neurons.json"  # what makes a folder a previous demo's
# Bits of the paper's Tv/Tt = 3/4 (TC-LIF steps): 4 for image tokens, 5 for text tokens; the
# mean-threshold code, whose counts are never clipped, takes its default range instead.
BITS = {"text": 5, "image": 4}


@dataclass(frozen=True)
class DemoRow:
    scheme: str
    steps_text: int
    steps_image: int
    steps_per_token: float
    exact: bool
    spikes: int
    firing_rate: float
    synops: int
    linear_exact: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _sequence(seed: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[0] * 6 + [1] * 16 + [0] * 10])
    # Image tokens: smaller, smoother activations than text tokens, as in an MLLM's hidden states.
    gain = torch.where(ids == 1, 0.5, 2.0)[..., None]
    return torch.randn(*ids.shape, dim, generator=g) * gain, ids


def run_demo(seed: int = 0, dim: int = 64, out_features: int = 48) -> tuple[list[DemoRow], dict]:
    x, ids = _sequence(seed, dim)
    g = torch.Generator().manual_seed(seed + 1)
    weight = torch.randint(-127, 128, (out_features, dim), generator=g).float()  # int8 weights
    rows = []
    for scheme in SCHEMES:
        config = MSTSConfig(scheme=scheme) if scheme in DATA_DEPENDENT_SCHEMES else MSTSConfig(bits=BITS, scheme=scheme)
        out = MSTSEncoder(config)(x, ids)
        want_q = torch.empty_like(x)
        for m in BITS:
            mask = ids == Modality.parse(m)
            want_q[mask] = quantize(x[mask], out.scale[mask], config.code_of(m).levels)
        exact = torch.equal(out.decode(), want_q * out.scale)

        # Spike-driven linear layer: per step, add the weight columns that +1 and -1 spikes select.
        counter = SynOpCounter()
        with DispatchCounterMode([counter]):
            currents = torch.stack(
                [F.linear(pos, weight) - F.linear(neg, weight) for pos, neg in map(binary_planes, out.spikes)]
            )
        acc = integrate(currents, out.leak) - F.linear(out.offset.expand_as(x), weight)
        linear_exact = torch.equal(acc, F.linear(want_q, weight))

        stats = out.statistics()
        rows.append(
            DemoRow(
                scheme=scheme,
                # The most steps a token of each modality used (a data-dependent code's follow the values).
                steps_text=int(out.steps[ids == Modality.TEXT].max()),
                steps_image=int(out.steps[ids == Modality.IMAGE].max()),
                steps_per_token=float(out.steps.float().mean()),
                exact=exact,
                spikes=stats.spikes,
                firing_rate=stats.firing_rate,
                synops=counter.get_total(),
                linear_exact=linear_exact,
            )
        )
    info = {
        "tokens": {"text": int((ids == 0).sum()), "image": int((ids == 1).sum())},
        "dim": dim,
        "out_features": out_features,
        "bits": BITS,
        "seed": seed,
    }
    return rows, info


def format_table(rows: list[DemoRow]) -> str:
    head = f"{'scheme':<27}{'Tt':>4}{'Tv':>4}{'steps/tok':>10}{'exact':>7}{'spikes':>9}{'rate':>7}{'synops':>10}{'W·s exact':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.scheme:<27}{r.steps_text:>4}{r.steps_image:>4}{r.steps_per_token:>10.2f}{str(r.exact):>7}"
            f"{r.spikes:>9}{r.firing_rate:>7.3f}{r.synops:>10}{str(r.linear_exact):>11}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class ConversionSummary:
    """The converted tiny model against its fake-quant twin and its FP32 self."""

    model: str
    spike_equals_twin: bool
    logit_cosine: float
    top1_agreement: float
    generated_spike: list[list[int]]
    generated_fp32: list[list[int]]
    steps_per_token: dict[str, float]
    spikes: int
    synops: int
    non_spiking_flops: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_conversion(model_name: str = "tiny-qwen2-vl", seed: int = 0, new_tokens: int = 6) -> tuple[ConversionSummary, OpReport]:
    """Convert a tiny offline model (default Tv/Tt = 3/4), compare, generate, and count its ops.

    :return: the summary and the op report.
    """
    model = build_tiny_model(model_name, seed=seed)
    batch = tiny_batch(model, batch_size=2, seed=seed)
    done = convert_compare_report(model, batch, None, None, new_tokens)
    run, report = done.run, done.report
    summary = ConversionSummary(
        model=model_name,
        spike_equals_twin=run.spike_equals_twin(),
        logit_cosine=run.logit_cosine(),
        top1_agreement=run.top1_agreement(),
        generated_spike=run.spike.tokens.tolist(),
        generated_fp32=run.float.tokens.tolist(),
        steps_per_token=report.steps_per_token(),
        spikes=report.spikes,
        synops=report.synops,
        non_spiking_flops=report.non_spiking_flops["total"],
    )
    return summary, report


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "demo", help="spike-code a mixed text/image sequence, then convert a tiny offline MLLM and report",
        epilog=options.epilog("a decoded spike train differs from the quantizer, or the spiking model from its "
                              "fake-quant twin"),
    )
    parser.add_argument(
        "--out", default="out/neurons", type=options.run_folder(MARKER),
        help="folder for the JSON results: a new folder, an empty one or a previous demo's, which the new one "
        "replaces once complete (default: out/neurons; `make demo` writes out/demo)",
    )
    options.add_seed(parser)
    options.add_model(parser, default="tiny-qwen2-vl", choices=TINY_MODELS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.set_defaults(func=run)
    return parser


def _print_neurons(rows: list[DemoRow], info: dict) -> None:
    tokens = info["tokens"]
    print(
        f"MSTS spike coding of a [1, {sum(tokens.values())}, {info['dim']}] activation "
        f"({tokens['text']} text, {tokens['image']} image tokens; {info['bits']['text']}-bit text, "
        f"{info['bits']['image']}-bit image), per-token absmax scales, seed {info['seed']}; mean_threshold_bitwise: "
        f"per-token thresholds mean|x|/3, unclipped counts, steps per token as its counts need.\n"
        f"Tt, Tv: the most steps a token used. exact: decoded spikes == quantizer output, bit for bit. W·s exact: spike-driven "
        f"int8 linear {info['dim']}->{info['out_features']} == integer matmul. synops: SpikingJelly SynOpCounter.\n"
    )
    print(format_table(rows))


def _print_conversion(summary: ConversionSummary, out: Path, written: Path) -> None:
    steps = ", ".join(f"{k} {v:.2f}" for k, v in summary.steps_per_token.items())
    print(
        f"\n{summary.model} converted (TC-LIF, Tv/Tt = 3/4, W8, dynamic per-token scales):\n"
        f"  spiking logits == fake-quant twin, bit for bit: {summary.spike_equals_twin}\n"
        f"  against FP32 (random weights; reported, not asserted): logit cosine {summary.logit_cosine:.4f}, "
        f"top-1 agreement {summary.top1_agreement:.3f}\n"
        f"  greedy tokens, spiking: {summary.generated_spike}\n"
        f"  greedy tokens, FP32:    {summary.generated_fp32}\n"
        f"  steps per token: {steps}; {summary.spikes} spikes, {summary.synops} synaptic ops, "
        f"{summary.non_spiking_flops} non-spiking FLOPs (op report: {out / 'op_report.txt'})"
    )
    print(f"\nwritten: {written}, {out / 'conversion.json'}, {out / 'op_report.json'}")


def run(args: argparse.Namespace) -> int:
    out = args.out
    rows, info = run_demo(seed=args.seed)
    neurons = {"info": info, "rows": [r.as_dict() for r in rows]}
    if not args.json:
        _print_neurons(rows, info)
    summary, report = run_conversion(args.model, seed=args.seed)
    with run_folder(out, MARKER, "--out") as partial:
        (partial / MARKER).write_text(json.dumps(neurons, indent=2))
        (partial / "op_report.json").write_text(report.to_json())
        (partial / "op_report.txt").write_text(report.format_table() + "\n")
        (partial / "conversion.json").write_text(json.dumps(summary.as_dict(), indent=2))
    if args.json:
        print(json.dumps({"neurons": neurons, "conversion": summary.as_dict()}, indent=2))
    else:
        _print_conversion(summary, out, out / MARKER)
    ok = all(r.exact and r.linear_exact for r in rows) and summary.spike_equals_twin
    return options.EXIT_OK if ok else options.EXIT_INEXACT

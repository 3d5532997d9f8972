"""``spikemllm`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spikemllm_sj.tiny import TINY_MODELS

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from spikemllm_sj.demo import format_table, run_conversion, run_demo, write_outputs

    rows, info = run_demo(seed=args.seed)
    path = write_outputs(rows, info, Path(args.out))
    if not args.json:
        tokens = info["tokens"]
        print(
            f"MSTS spike coding of a [1, {sum(tokens.values())}, {info['dim']}] activation "
            f"({tokens['text']} text, {tokens['image']} image tokens; {info['bits']['text']}-bit text, "
            f"{info['bits']['image']}-bit image), per-token absmax scales, seed {info['seed']}.\n"
            f"exact: decoded spikes == quantizer output, bit for bit. W·s exact: spike-driven "
            f"int8 linear {info['dim']}->{info['out_features']} == integer matmul. synops: SpikingJelly SynOpCounter.\n"
        )
        print(format_table(rows))
    summary, report = run_conversion(args.model, seed=args.seed)
    out = Path(args.out)
    (out / "op_report.json").write_text(report.to_json())
    (out / "op_report.txt").write_text(report.format_table() + "\n")
    (out / "conversion.json").write_text(json.dumps(summary.as_dict(), indent=2))
    if args.json:
        print(json.dumps({"neurons": {"info": info, "rows": [r.as_dict() for r in rows]}, "conversion": summary.as_dict()}, indent=2))
    else:
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
        print(f"\nwritten: {path}, {out / 'conversion.json'}, {out / 'op_report.json'}")
    ok = all(r.exact and r.linear_exact for r in rows) and summary.spike_equals_twin
    return 0 if ok else 1


def _lava(args: argparse.Namespace) -> int:
    import time

    import torch

    from spikemllm_sj import accelerator
    from spikemllm_sj.converter import convert
    from spikemllm_sj.lava_backend import check_layer
    from spikemllm_sj.report import op_report
    from spikemllm_sj.tiny import build_tiny_model, tiny_batch

    start = time.perf_counter()
    model = build_tiny_model(args.model, seed=args.seed)
    batch = tiny_batch(model, batch_size=2, seed=args.seed)
    with torch.no_grad():
        convert(model)
    build_seconds = time.perf_counter() - start
    try:
        check = check_layer(model, args.layer, batch, precision=args.precision)
    except (ValueError, TypeError) as error:
        print(f"spikemllm lava: error: {error}", file=sys.stderr)
        return 2
    # The accelerator's view of the same forward pass: the layer's activity, then the paper's
    # Qwen2VL-7B setting at the firing rates measured here.
    report = op_report(model, **batch)
    params_file = args.params or accelerator.PARAMS_FILE
    params = accelerator.load_params(params_file)
    layer_costs = accelerator.compare(accelerator.workload_from_report(report, scope=args.layer), params)
    preset = accelerator.compare(accelerator.paper_preset(accelerator.measured_rates(report)), params)
    if args.json:
        print(json.dumps({"model": args.model, "build_seconds": build_seconds, **check.as_dict(),
                          "accelerator": {"layer": layer_costs.as_dict(), "paper_preset": preset.as_dict()}}, indent=2))
    else:
        tokens = ", ".join(f"{n} {c} ({check.steps[n]} steps each)" for n, c in check.tokens.items())
        parts = {"linear": "one SpikeLinear",
                 "mlp": "TC-LIF -> gate|up -> act_fn(gate)*up -> TC-LIF -> down, one Lava network per modality",
                 "qkv": "q/k/v projections as one SpikeDense"}[check.kind]
        ratios = preset.totals()["ratios"]
        print(
            f"{args.model}, converted (TC-LIF, MSTS, W8, dynamic per-token scales); layer {check.layer} "
            f"[{check.kind}: {parts}] on Lava ({check.precision}) vs PyTorch spike mode\n"
            f"  tokens: {tokens}; {check.lava_steps} Lava steps in {check.lava_runs} runs\n"
            f"  max abs difference: {check.max_abs_diff:g}; exact (bit for bit): {'yes' if check.exact else 'no'}\n"
            f"  wall time: Lava {check.lava_seconds:.2f} s, PyTorch {check.torch_seconds * 1e3:.1f} ms, "
            f"build + convert {build_seconds:.2f} s\n"
        )
        print(f"Accelerator model ({params_file}), this layer on this batch (tokens processed one at a time):\n")
        print(layer_costs.format_table())
        print(
            f"\nPaper preset (Qwen2VL-7B decode, batch 1, A800 FP16) at the firing rates measured here: "
            f"throughput {ratios['throughput_ratio']:.2f}x (paper 9.06x), power {ratios['power_ratio_chip']:.2f}x "
            f"(paper 25.8x, chip only), energy per token {ratios['energy_per_token_ratio_chip']:.0f}x "
            f"({ratios['energy_per_token_ratio_with_hbm']:.1f}x with HBM access energy). Three parameters are fitted "
            f"to the paper (see the parameter file and bench/results/accelerator.md)."
        )
    return 0 if check.exact else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikemllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="spike-code a mixed text/image sequence, then convert a tiny offline MLLM and report"
    )
    demo.add_argument("--out", default="out/demo", help="folder for the JSON results (default: out/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--model", default="tiny-qwen2-vl", choices=TINY_MODELS, help="tiny offline model to convert")
    demo.add_argument("--json", action="store_true", help="print JSON instead of the table")
    demo.set_defaults(func=_demo)
    lava = sub.add_parser(
        "lava", help="run one converted layer of a tiny model on Lava and check it equals PyTorch bit for bit"
    )
    lava.add_argument("--model", default="tiny-qwen2-vl", choices=TINY_MODELS, help="tiny offline model to convert")
    lava.add_argument(
        "--layer",
        default="model.language_model.layers.0.mlp",
        help="module path: a converted linear layer, a gated MLP, or an attention module (its q/k/v projections)",
    )
    lava.add_argument("--precision", default="fixed_pt", choices=("fixed_pt", "floating_pt"))
    lava.add_argument("--seed", type=int, default=0)
    lava.add_argument("--params", type=Path, default=None, help="accelerator parameter file (TOML); default: the packaged one")
    lava.add_argument("--json", action="store_true", help="print JSON instead of text")
    lava.set_defaults(func=_lava)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

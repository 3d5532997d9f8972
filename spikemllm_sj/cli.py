"""``spikemllm`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spikemllm_sj.pipeline import EXAMPLE_IMAGE, QUESTIONS, SAMPLE_DATA
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


def _med(args: argparse.Namespace) -> int:
    import importlib.util

    from spikemllm_sj.med.job import format_summary, run_med, write_outputs

    if importlib.util.find_spec("matplotlib") is None:  # before the analysis, which takes a while
        print("spikemllm med: error: the figures need matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    try:
        result, _ = run_med(
            args.model,
            seed=args.seed,
            calibration_batches=args.batches,
            holdout_batches=args.holdout,
            candidates=tuple(args.candidates),
            groups=args.groups or None,
            budgets=tuple(args.budgets),
            over=args.over,
        )
    except ValueError as error:
        print(f"spikemllm med: error: {error}", file=sys.stderr)
        return 2
    paths = write_outputs(result, Path(args.out))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_summary(result))
        print(f"\nwritten: {', '.join(str(p) for p in paths)}")
    return 0


def _spike_config(args: argparse.Namespace):
    from spikemllm_sj.config import SpikeConfig
    from spikemllm_sj.neurons import MSTSConfig

    msts = MSTSConfig(steps={"text": args.steps_text, "image": args.steps_image, "video": args.steps_image})
    return SpikeConfig(msts=msts, weight_bits=args.weight_bits, act_scales=args.act_scales)


def _convert(args: argparse.Namespace) -> int:
    import time

    import torch

    from spikemllm_sj.models import ModelLoadError
    from spikemllm_sj.pipeline import run_pipeline
    from spikemllm_sj.run_report import format_summary

    start = time.perf_counter()
    try:
        run = run_pipeline(
            args.model, args.out, _spike_config(args), calibration_data=args.calibration_data, image=args.image,
            questions=args.question or QUESTIONS, new_tokens=args.new_tokens,
            lava_layer=None if args.lava_layer == "none" else args.lava_layer, save_model=not args.no_save, seed=args.seed,
            dtype=getattr(torch, args.dtype), med_budget=None if args.med_budget == "none" else float(args.med_budget),
        )
    except (ValueError, ModelLoadError, FileNotFoundError) as error:
        print(f"spikemllm convert: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        print(format_summary(run))
        print(f"\nreport: {Path(args.out) / 'report.md'} (plots and JSON beside it); "
              f"command wall time {time.perf_counter() - start:.1f} s")
    lava_ok = run["lava"].get("exact", True)
    return 0 if run["fidelity"]["spike_equals_twin"] and lava_ok else 1


def _eval(args: argparse.Namespace) -> int:
    import torch

    from spikemllm_sj.eval import evaluate
    from spikemllm_sj.models import ModelLoadError

    try:
        result = evaluate(
            args.model, args.data, _spike_config(args), calibration_data=args.calibration_data,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed, dtype=getattr(torch, args.dtype),
        )
    except (ValueError, ModelLoadError, FileNotFoundError) as error:
        print(f"spikemllm eval: error: {error}", file=sys.stderr)
        return 2
    for problem in result.problems:
        print(f"spikemllm eval: {args.data}: line {problem.line} left out: {problem.reason}", file=sys.stderr)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "eval.json").write_text(json.dumps(result.as_dict(), indent=2))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.format_table())
        if args.out:
            print(f"\nwritten: {Path(args.out) / 'eval.json'}")
    return 0 if result.spike_equals_twin else 1


def _report(args: argparse.Namespace) -> int:
    from spikemllm_sj.run_report import render_report

    try:
        path = render_report(args.run)
    except (ValueError, FileNotFoundError) as error:
        print(f"spikemllm report: error: {error}", file=sys.stderr)
        return 2
    print(f"written: {path} and its plots")
    return 0


def _add_config_args(parser: argparse.ArgumentParser, act_scales: str) -> None:
    parser.add_argument("--steps-text", type=int, default=4, help="TC-LIF time steps of text tokens, Tt (default 4)")
    parser.add_argument("--steps-image", type=int, default=3, help="time steps of image and video tokens, Tv (default 3)")
    parser.add_argument("--weight-bits", type=int, default=8, help="weight bits, per output channel (default 8)")
    parser.add_argument(
        "--act-scales", default=act_scales, choices=("static", "dynamic"),
        help=f"linear-input scales: static (calibrated, per tensor and modality) or dynamic (per token) (default {act_scales})",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights of real checkpoints")


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
    med = sub.add_parser(
        "med",
        help="measure MED and per-modality sensitivity of a tiny offline MLLM, schedule MSTS steps, write JSON, report and plots",
    )
    med.add_argument("--model", default="tiny-qwen2-vl", choices=TINY_MODELS, help="tiny offline model to analyze")
    med.add_argument("--out", default="out/med", help="folder for med.json, report.md and the PNG figures (default: out/med)")
    med.add_argument("--seed", type=int, default=0, help="weights and calibration batches (held-out batches: seed + 1000)")
    med.add_argument("--batches", type=int, default=2, help="calibration seeds (image batch, plus video batch where the family has video)")
    med.add_argument("--holdout", type=int, default=2, help="held-out seeds for the comparison table")
    med.add_argument("--candidates", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7], help="step counts probed; the largest is the reference")
    med.add_argument("--groups", type=int, default=1, help="decoder layer groups measured apart from the vision tower (0: none)")
    med.add_argument("--budgets", type=float, nargs="+", default=[3.0, 3.3, 3.6], help="average steps per token to schedule for")
    med.add_argument(
        "--over", default="tokens", choices=("tokens", "sites"),
        help="budget per language-model token (tokens) or per token encoded at any spike-driven site, vision tower included (sites)",
    )
    med.add_argument("--json", action="store_true", help="print the JSON instead of the summary")
    med.set_defaults(func=_med)
    model_help = (
        f"a built-in offline model ({', '.join(TINY_MODELS)}), a local checkpoint folder, or a hub id such as "
        "Qwen/Qwen2-VL-7B-Instruct (needs a network or the local cache)"
    )
    convert = sub.add_parser(
        "convert",
        help="the whole job: calibrate, convert, compare with the float model and the fake-quant twin, generate, "
        "op and energy report, one layer on Lava, plots and report.md",
    )
    convert.add_argument("--model", default="tiny-qwen2-vl", help=model_help + " (default: tiny-qwen2-vl)")
    convert.add_argument("--out", default="out/run", help="run folder: report.md, plots, JSON, the spiking model (default: out/run)")
    _add_config_args(convert, act_scales="static")
    convert.add_argument("--calibration-data", default=str(SAMPLE_DATA), help="JSONL of {image, question, answer} records to calibrate on")
    convert.add_argument("--image", default=str(EXAMPLE_IMAGE), help="image of the compared and generated rows")
    convert.add_argument("--question", action="append", help=f"a question about the image (repeatable; default: {' / '.join(QUESTIONS)})")
    convert.add_argument("--new-tokens", type=int, default=6, help="greedy tokens generated per row (default 6)")
    convert.add_argument(
        "--lava-layer", default="auto",
        help="module path run on Lava; auto: the first decoder layer's MLP on tiny models, none on real ones; none: skip",
    )
    convert.add_argument(
        "--med-budget", default="3.3",
        help="average steps per language-model token for the MED scheduler, whose choice replaces --steps-text/--steps-image "
        "(measured on a copy of the model); none: use those steps as given (default 3.3)",
    )
    convert.add_argument("--no-save", action="store_true", help="do not save the spiking model")
    convert.add_argument("--seed", type=int, default=0, help="random weights of tiny models")
    convert.add_argument("--json", action="store_true", help="print run.json instead of the summary")
    convert.set_defaults(func=_convert)
    evaluate = sub.add_parser(
        "eval", help="accuracy of the float model, the fake-quant ANN and the spiking model on {image, question, answer} JSONL"
    )
    evaluate.add_argument("--model", default="tiny-qwen2-vl", help=model_help + " (default: tiny-qwen2-vl)")
    evaluate.add_argument("--data", default=str(SAMPLE_DATA), help="JSONL of records (default: the repository's sample)")
    _add_config_args(evaluate, act_scales="dynamic")
    evaluate.add_argument("--calibration-data", default=None, help="JSONL of other records to calibrate on (needed by --act-scales static)")
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument("--max-new-tokens", type=int, default=8)
    evaluate.add_argument("--out", default=None, help="folder to write eval.json in (a run folder: `spikemllm report` adds it)")
    evaluate.add_argument("--seed", type=int, default=0, help="random weights of tiny models")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of the table")
    evaluate.set_defaults(func=_eval)
    report = sub.add_parser("report", help="render report.md and the plots of a run folder from its JSON")
    report.add_argument("--run", default="out/run", help="run folder written by `spikemllm convert` (default: out/run)")
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

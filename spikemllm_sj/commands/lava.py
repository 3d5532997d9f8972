"""``spikemllm lava``: one converted layer of a model, or with ``--whole`` the whole model (a
prefill and greedy decode steps), on Lava against PyTorch, bit for bit, and the accelerator's
view of the same work (with ``--whole``: emulated in the Lava processes, next to the analytic
model and the GPU roofline).

The model is converted with the command's configuration (default
:data:`~spikemllm_sj.config.RECOMMENDED`, calibrated on the model's bundled calibration records
or ``--calibration-data``) and run on the model's bundled rows
(:func:`~spikemllm_sj.commands.common.inputs_for`) or a random batch for tiny models
(``--tiny-batch``)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from spikemllm_sj.analysis import accelerator
from spikemllm_sj.ann2snn.adapters import adapter_for
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import (
    CALIBRATION_BATCH,
    calibration_for,
    convert_compare_report,
    encode_rows,
    inputs_for,
    lava_refusal,
    require_calibration_use,
)
from spikemllm_sj.models.loading import ModelLoadError, load_model
from spikemllm_sj.models.tiny import TINY_MODELS, tiny_batch

__all__ = ["add_parser", "run"]

_PARTS = {
    "linear": "one SpikeLinear",
    "mlp": "spike coder -> gate|up -> act_fn(gate)*up -> spike coder -> down, one Lava network per modality",
    "qkv": "q/k/v projections as one SpikeDense",
}


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "lava", help="run one converted layer of a model (or --whole: the whole model) on Lava and check it equals "
                     "PyTorch bit for bit",
        epilog=options.epilog("the Lava layer differs from PyTorch, or the spiking model from its fake-quant twin"),
    )
    options.add_model(parser)
    parser.add_argument(
        "--layer", default=None,
        help="module path: a converted linear layer, a gated MLP, or an attention module (its q/k/v projections) "
             "(default: the first decoder layer's MLP)",
    )
    parser.add_argument(
        "--whole", action="store_true",
        help="run the whole model on Lava (every spike-driven site of the language model, vision tower and projector, "
             "the non-spiking work in a DecodedForward process): a prefill and --decode-steps greedy decode steps, "
             "checked against PyTorch spike mode, with the accelerator emulated in the processes",
    )
    parser.add_argument("--decode-steps", type=options.non_negative_int, default=None,
                        help="with --whole: greedy decode steps after the prefill (default 4)")
    parser.add_argument("--grouping", choices=("layer", "site"), default=None,
                        help="with --whole: a pair of Lava processes (neurons, synapses) per decoder layer or vision block "
                             "(default; a real model has hundreds of sites, and Lava runs each process as an OS process) "
                             "or per spike-driven site")
    parser.add_argument("--precision", default="fixed_pt", choices=("fixed_pt", "floating_pt"))
    options.add_config(parser)
    parser.add_argument("--calibration-data", default=None, type=options.existing_file,
                        help="JSONL of records to calibrate on (default: the model's bundled records)")
    parser.add_argument("--tiny-batch", action="store_true",
                        help="tiny models: run on a random batch of 2 rows (tiny_batch) instead of the bundled rows")
    options.add_seed(parser)
    parser.add_argument("--params", type=options.existing_file, default=None,
                        help="accelerator parameter file (TOML); default: the packaged one")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)
    return parser


def _print(args, config, cosine: float, check, layer_costs, preset, params_file, build_seconds: float) -> None:
    tokens = ", ".join(f"{n} {c} ({check.steps[n]} steps each)" for n, c in check.tokens.items())
    ratios = preset.totals()["ratios"]
    print(
        f"{args.model}, converted ({config.method!r}, W{config.weight_bits} {config.weight_method}, "
        f"{config.act_scales} scales, act clip {config.act_clip}; logit cosine to the float model {cosine:.4f}); "
        f"layer {check.layer} "
        f"[{check.kind}: {_PARTS[check.kind]}] on Lava ({check.precision}) vs PyTorch spike mode\n"
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


def _print_whole(args, config, cosine: float, run, text: str, build_seconds: float) -> None:
    rows, positions = run.plan.batch_rows, run.reference.positions[0]
    sites = sum(1 for name in run.mapping.sites if run.plan.site_calls(name))
    t = run.timings
    tokens = run.tokens.tolist()
    print(
        f"{args.model}, converted ({config.method!r}, W{config.weight_bits} {config.weight_method}, "
        f"{config.act_scales} scales, act clip {config.act_clip}; logit cosine to the float model {cosine:.4f}); "
        f"the whole model on Lava ({run.precision}) vs PyTorch spike mode: a prefill of {rows} row(s) x {positions} "
        f"tokens and {run.forwards - 1} greedy decode steps\n"
        f"  network: {run.processes} processes ({sites} spike-driven sites in SiteNeurons + SpikeSynapse pairs, one "
        f"per {args.grouping}; DecodedForward; the readout sink), {run.plan.num_steps} Lava steps, "
        f"{len(run.plan.calls)} site calls over {run.forwards} forwards\n"
        f"  logits of every forward equal bit for bit: {'yes' if run.logits_exact else 'no'}; "
        f"generated tokens equal: {'yes' if run.tokens_equal else 'no'} (Lava {tokens}, PyTorch "
        f"{run.reference_tokens.tolist()})\n"
        f"  wall time: build {t['build']:.2f} s, compile + start {t['compile_and_start']:.2f} s, run {t['run']:.2f} s, "
        f"read back {t['read_back']:.3f} s, stop {t['stop']:.2f} s; PyTorch generation {t['reference']:.2f} s; "
        f"load + convert {build_seconds:.2f} s\n"
        f"  not mapped to spike-driven processes: {', '.join(run.mapping.float_layers) or 'nothing'} (float layers), "
        f"and the non-spiking work, in DecodedForward\n"
    )
    print(f"Accelerator ({args.params or accelerator.PARAMS_FILE}), emulated in the Lava processes:\n")
    print(text)


def _whole(args, config, done, model, batch, params, build_seconds: float) -> int:
    from spikemllm_sj.analysis import emulation
    from spikemllm_sj.lava_backend import LavaRunError, run_model_on_lava
    from spikemllm_sj.lava_backend.model_plan import prefill_op_report

    try:
        run = run_model_on_lava(model, batch, decode_steps=args.decode_steps, precision=args.precision,
                                grouping=args.grouping, params=params.accelerator)
    except (ValueError, TypeError, LavaRunError) as error:
        return options.fail("lava", error)
    # The analytic model on the same input: generate's prefill, counted in PyTorch.
    report = prefill_op_report(model, batch)
    workload = accelerator.workload_from_report(report, config.weight_bits, config.kv_bits)
    analytic = accelerator.compare(workload, params)
    forwards = emulation.emulated_costs(run, params.accelerator)
    comparison = emulation.compare_with_analytic(forwards[0], workload, analytic, params)
    root = type(model).__name__
    not_mapped = {n: run.scope_ops[0][f"{root}.{n}"] for n in run.mapping.float_layers}
    blocks = {s: (run.scope_ops[0][s], report.non_spiking_flops[s]) for s in report.non_spiking_flops if s in run.scope_ops[0]}
    text = emulation.format_emulation(forwards, comparison, analytic, params, not_mapped, blocks)
    exact = run.exact and done.run.spike_equals_twin()
    if args.json:
        print(json.dumps({
            "model": args.model, "config": config.to_dict(), "precision": run.precision, "exact": run.exact,
            "logits_exact": run.logits_exact, "tokens_equal": run.tokens_equal, "tokens": run.tokens.tolist(),
            "processes": run.processes, "lava_steps": run.plan.num_steps, "site_calls": len(run.plan.calls),
            "timings_s": run.timings, "build_seconds": build_seconds,
            "logit_cosine": done.run.logit_cosine(),
            "forwards": [{"forward": f.forward, "tokens": f.tokens, "latency_s": f.latency_s, "tokens_per_s": f.tokens_per_s,
                          "energy_j": f.energy_j, "energy_hbm_j": f.energy_hbm_j} for f in forwards],
            "analytic_prefill_s": sum(c.time_s for c in analytic.accelerator),
            "gpu_prefill_s": sum(c.time_s for c in analytic.gpu),
            "sites": [dict(row.__dict__, cycles_difference=row.cycles_difference) for row in comparison],
            "not_mapped_ops": not_mapped,
        }, indent=2))
    else:
        _print_whole(args, config, done.run.logit_cosine(), run, text, build_seconds)
    return options.EXIT_OK if exact else options.EXIT_INEXACT


def run(args: argparse.Namespace) -> int:
    # Lava loads only for this command (it forks worker processes and takes seconds to import).
    from spikemllm_sj.lava_backend import check_lava_layer, check_layer

    start = time.perf_counter()
    params_file = args.params or accelerator.PARAMS_FILE
    try:
        if args.tiny_batch and args.model not in TINY_MODELS:
            raise ValueError(f"--tiny-batch needs a tiny model ({', '.join(TINY_MODELS)}), got --model {args.model}")
        if args.whole and args.layer:
            raise ValueError("--whole runs every layer: give --layer without --whole to run one layer")
        if not args.whole and (args.decode_steps is not None or args.grouping is not None):
            raise ValueError("--decode-steps and --grouping apply to --whole runs only")
        args.decode_steps = 4 if args.decode_steps is None else args.decode_steps
        args.grouping = args.grouping or "layer"
        config = options.spike_config(args)
        if lava_refusal(config):
            raise ValueError(f"--scheme {config.msts.scheme}: {lava_refusal(config)}")
        params = accelerator.load_params(params_file)
        model, processor = load_model(args.model, seed=args.seed, dtype=getattr(torch, args.dtype))
        layer = args.layer or f"{adapter_for(model).language_model}.layers.0.mlp"
        if not args.whole:
            check_lava_layer(model, layer, config)  # on the float model, before converting it
        inputs = inputs_for(args.model)
        if args.tiny_batch:
            batch = tiny_batch(model, batch_size=2, seed=args.seed)
        else:
            batch = encode_rows(model, processor, inputs.rows)
        require_calibration_use(config, args.calibration_data)
        calibration, _ = calibration_for(model, processor, config, args.calibration_data or inputs.calibration,
                                         CALIBRATION_BATCH, False)
    except (ValueError, TypeError, ModelLoadError, FileNotFoundError) as error:
        return options.fail("lava", error)
    done = convert_compare_report(model, batch, config, calibration, new_tokens=1)
    build_seconds = time.perf_counter() - start
    if args.whole:
        return _whole(args, config, done, model, batch, params, build_seconds)
    check = check_layer(model, layer, batch, precision=args.precision)
    # The accelerator's view of the same forward pass: the layer's activity, then the paper's
    # Qwen2VL-7B setting at the firing rates measured here.
    layer_costs = accelerator.compare(accelerator.workload_from_report(done.report, scope=layer), params)
    preset = accelerator.compare(accelerator.paper_preset(accelerator.measured_rates(done.report)), params)
    if args.json:
        print(json.dumps({"model": args.model, "config": config.to_dict(), "build_seconds": build_seconds,
                          "logit_cosine": done.run.logit_cosine(), **check.as_dict(),
                          "accelerator": {"layer": layer_costs.as_dict(), "paper_preset": preset.as_dict()}}, indent=2))
    else:
        _print(args, config, done.run.logit_cosine(), check, layer_costs, preset, params_file, build_seconds)
    return options.EXIT_OK if check.exact and done.run.spike_equals_twin() else options.EXIT_INEXACT

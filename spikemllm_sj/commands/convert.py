"""``spikemllm convert``: the whole job on one model. Calibrate, schedule the MSTS steps with MED,
convert, compare with the float model and the fake-quant twin, generate, count ops and energy,
run one layer on Lava, plot, and write a Markdown report.

:func:`run_convert` writes into ``out_dir``: ``run.json`` (configuration, fidelity, answers,
timings), ``op_report.json`` / ``op_report.txt``, ``activity.json`` (spikes per site and
modality, a raster), ``energy.json`` / ``energy.md``, the saved spiking model
(``spiking_model/``), and then :func:`~spikemllm_sj.commands.report.render_report` turns them
into ``report.md`` and its PNG plots.

Inputs: the calibration records come from a JSONL (default: the repository's
``data/eval_sample/sample.jsonl``), the compared and generated rows are the example image
(``examples/assets/shapes.png``) with :data:`~spikemllm_sj.commands.common.QUESTIONS`: two
different sets, so static scales are not fitted to the rows they are judged on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import torch

from spikemllm_sj.analysis.accelerator import compare, load_params, workload_from_report
from spikemllm_sj.analysis.activity import record_activity
from spikemllm_sj.analysis.fidelity import VARIANTS
from spikemllm_sj.analysis.op_report import OpReport
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.ann2snn.serialization import save_spiking
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import (
    EXAMPLE_IMAGE,
    QUESTIONS,
    SAMPLE_DATA,
    calibration_for,
    convert_compare_report,
    record_batches,
    shown,
)
from spikemllm_sj.commands.report import format_summary, render_report
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.med.analysis import scheduled_config
from spikemllm_sj.models.inputs import decode, encode, model_label, read_image
from spikemllm_sj.models.loading import ModelLoadError, load_model
from spikemllm_sj.models.tiny import TINY_MODELS

__all__ = ["run_convert", "add_parser", "run"]


class _Stages:
    """Wall time of each stage, in seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start


def _energy(report: OpReport, config: SpikeConfig) -> dict:
    """The op report's workload costed on the accelerator model and on the GPU roofline."""
    try:
        comparison = compare(workload_from_report(report, config.weight_bits, config.kv_bits), load_params())
    except ValueError as error:  # e.g. a site that fired no spike: its shape is unknown
        return {"error": str(error)}
    return {"comparison": comparison.as_dict(), "table": comparison.format_table()}


def _lava(model, layer: Optional[str], batch: dict, is_tiny: bool) -> dict:
    # Lava loads only when a layer runs on it (it forks worker processes and takes seconds to import).
    from spikemllm_sj.lava_backend import check_layer

    if layer == "auto":
        if not is_tiny:
            return {"skipped": "real checkpoints run no Lava layer unless one is named (--lava-layer PATH)"}
        layer = f"{spike_state(model).adapter.language_model}.layers.0.mlp"
    if layer is None:
        return {"skipped": "no Lava layer asked for"}
    return check_layer(model, layer, batch).as_dict()


def _fidelity(run) -> dict:
    same = run.spike.tokens == run.float.tokens if run.spike.tokens.shape == run.float.tokens.shape else None
    return {
        "spike_equals_twin": run.spike_equals_twin(),
        "logit_cosine": run.logit_cosine(),
        "top1_agreement": run.top1_agreement(),
        "new_tokens_equal_to_float": None if same is None else float(same.float().mean()),
    }


def _generation(run, questions: list[str], processor) -> list[dict]:
    texts = {variant: decode(processor, run.of(variant).tokens) for variant in VARIANTS}
    return [
        {"question": q, **{variant: texts[variant][i] for variant in VARIANTS},
         "tokens": {variant: run.of(variant).tokens[i].tolist() for variant in VARIANTS}}
        for i, q in enumerate(questions)
    ]


def _ops(report: OpReport) -> dict:
    return {"spikes": report.spikes, "synops": report.synops, "non_spiking_flops": report.non_spiking_flops["total"],
            "steps_per_token": report.steps_per_token()}


def _write(out: Path, summary: dict, report: OpReport, activity: dict, energy: dict) -> None:
    (out / "run.json").write_text(json.dumps(summary, indent=2))
    (out / "op_report.json").write_text(report.to_json())
    (out / "op_report.txt").write_text(report.format_table() + "\n")
    (out / "activity.json").write_text(json.dumps(activity))
    (out / "energy.json").write_text(json.dumps({k: v for k, v in energy.items() if k != "table"}, indent=2))
    if "table" in energy:
        (out / "energy.md").write_text(energy["table"] + "\n")
    render_report(out)


def run_convert(
    model: str = "tiny-qwen2-vl",
    out_dir: str | Path = "out/run",
    config: Optional[SpikeConfig] = None,
    calibration_data: str | Path | None = SAMPLE_DATA,
    image: str | Path = EXAMPLE_IMAGE,
    questions: Sequence[str] = QUESTIONS,
    new_tokens: int = 6,
    lava_layer: Optional[str] = "auto",
    med_budget: Optional[float] = 3.3,
    save_model: bool = True,
    batch_size: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict:
    """Run the whole job on ``model`` (a tiny name, a folder or a hub id) and write ``out_dir``.

    :param config: default ``SpikeConfig(act_scales="static")``: Tv/Tt = 3/4 steps, W8, static
        per-tensor scales calibrated on ``calibration_data``.
    :param lava_layer: a module path for :func:`~spikemllm_sj.lava_backend.check_layer`;
        ``"auto"``: the first decoder layer's MLP on tiny models, none on real checkpoints;
        None: no Lava run.
    :param med_budget: average steps per language-model token for the MED scheduler
        (:func:`~spikemllm_sj.med.analysis.scheduled_config`, measured on a copy of the model:
        twice its memory); its choice replaces ``config``'s steps. None: ``config``'s steps as given.
    :param dtype: the weights' dtype.
    :return: the contents of ``run.json``.
    """
    config = config or SpikeConfig(act_scales="static")
    questions = list(questions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()
    with stage("load"):
        net, processor = load_model(model, seed=seed, dtype=dtype)
        batch = encode(net, processor, [read_image(image)] * len(questions), questions)
    with stage("calibrate"):
        calibration, calibrated_on = calibration_for(net, processor, config, calibration_data, batch_size, progress)
    med = None
    if med_budget is not None:
        with stage("MED schedule"):
            if calibration_data is None:
                raise ValueError("the MED schedule needs calibration records: give a JSONL of them, or no MED budget")
            batches, _ = record_batches(net, processor, calibration_data, batch_size)
            config, med = scheduled_config(net, batches, config, calibration, med_budget, progress)
    with stage("convert + compare + generate + op report"):
        done = convert_compare_report(net, batch, config, calibration, new_tokens, progress)
    with stage("activity"):
        activity = record_activity(net, batch)
    with stage("energy"):
        energy = _energy(done.report, config)
    with stage("lava"):
        lava = _lava(net, lava_layer, batch, model in TINY_MODELS)
    saved = None
    if save_model:
        with stage("save"):
            saved = str(save_spiking(net, out / "spiking_model", processor))
    summary = {
        "model": model,
        "model_class": type(net).__name__,
        "label": model_label(net),
        "seed": seed,
        "config": config.to_dict(),
        "calibration": calibrated_on,
        "med": med,
        "inputs": {"image": shown(image), "questions": questions, "tokens": int(batch["attention_mask"].sum())},
        "fidelity": _fidelity(done.run),
        "generation": _generation(done.run, questions, processor),
        "ops": _ops(done.report),
        "lava": lava,
        "saved_model": saved,
        "timings_s": {**stage.seconds, "total": sum(stage.seconds.values())},
    }
    _write(out, summary, done.report, activity, energy)
    return summary


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "convert",
        help="the whole job: calibrate, convert, compare with the float model and the fake-quant twin, generate, "
        "op and energy report, one layer on Lava, plots and report.md",
    )
    options.add_model(parser)
    parser.add_argument("--out", default="out/run", help="run folder: report.md, plots, JSON, the spiking model (default: out/run)")
    options.add_config(parser, act_scales="static")
    parser.add_argument("--calibration-data", default=str(SAMPLE_DATA), help="JSONL of {image, question, answer} records to calibrate on")
    parser.add_argument("--image", default=str(EXAMPLE_IMAGE), help="image of the compared and generated rows")
    parser.add_argument("--question", action="append", help=f"a question about the image (repeatable; default: {' / '.join(QUESTIONS)})")
    parser.add_argument("--new-tokens", type=int, default=6, help="greedy tokens generated per row (default 6)")
    parser.add_argument(
        "--lava-layer", default="auto",
        help="module path run on Lava; auto: the first decoder layer's MLP on tiny models, none on real ones; none: skip",
    )
    parser.add_argument(
        "--med-budget", default="3.3",
        help="average steps per language-model token for the MED scheduler, whose choice replaces --steps-text/--steps-image "
        "(measured on a copy of the model); none: use those steps as given (default 3.3)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not save the spiking model")
    options.add_seed(parser)
    parser.add_argument("--json", action="store_true", help="print run.json instead of the summary")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        result = run_convert(
            args.model, args.out, options.spike_config(args), calibration_data=args.calibration_data, image=args.image,
            questions=args.question or QUESTIONS, new_tokens=args.new_tokens,
            lava_layer=None if args.lava_layer == "none" else args.lava_layer, save_model=not args.no_save, seed=args.seed,
            dtype=getattr(torch, args.dtype), med_budget=None if args.med_budget == "none" else float(args.med_budget),
        )
    except (ValueError, ModelLoadError, FileNotFoundError) as error:
        print(f"spikemllm convert: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_summary(result))
        print(f"\nreport: {Path(args.out) / 'report.md'} (plots and JSON beside it); "
              f"command wall time {time.perf_counter() - start:.1f} s")
    lava_ok = result["lava"].get("exact", True)
    return 0 if result["fidelity"]["spike_equals_twin"] and lava_ok else 1

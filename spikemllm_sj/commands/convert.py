"""``spikemllm convert``: the whole job on one model. Calibrate, schedule the MSTS steps with MED,
convert, compare with the float model and the fake-quant twin, generate, count ops and energy,
run one layer on Lava, plot, and write a Markdown report.

:func:`run_convert` writes ``out_dir``: ``run.json`` (configuration, fidelity, answers,
timings), ``op_report.json`` / ``op_report.txt``, ``activity.json`` (spikes per site and
modality, a raster), ``energy.json`` / ``energy.md``, the saved spiking model
(``spiking_model/``), and then :func:`~spikemllm_sj.commands.report.render_report` turns them
into ``report.md`` and its PNG plots. All of it goes into a partial folder that replaces
``out_dir`` once complete, so a re-run never mixes with the previous run's files.

Inputs: the calibration records come from a JSONL (default: the repository's
``data/eval_sample/sample.jsonl``), the compared and generated rows are the example image
(``examples/assets/shapes.png``) with :data:`~spikemllm_sj.commands.common.QUESTIONS`: two
different sets, so static scales are not fitted to the rows they are judged on.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import torch

from spikemllm_sj.analysis.accelerator import compare, load_params, workload_from_report
from spikemllm_sj.analysis.activity import record_activity
from spikemllm_sj.analysis.fidelity import VARIANTS
from spikemllm_sj.analysis.op_report import OpReport
from spikemllm_sj.ann2snn.adapters import adapter_for
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import (
    EXAMPLE_IMAGE,
    QUESTIONS,
    SAMPLE_DATA,
    calibration_for,
    convert_compare_report,
    record_batches,
    require_calibration_data,
    shown,
)
from spikemllm_sj.commands.report import format_summary, render_report
from spikemllm_sj.commands.run_folder import check_run_folder, run_folder
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.integrations.serialization import save_spiking
from spikemllm_sj.med.analysis import MEDConfig, scheduled_config
from spikemllm_sj.med.schedule import check_budget
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


_UNSET = object()  # --med-budget not given
DEFAULT_MED_BUDGET = 3.3  # average steps per language-model token for the MED schedule

# Tv/Tt = 3/4 steps, W8, static per-tensor scales calibrated on the calibration records.
DEFAULT_CONFIG = SpikeConfig(act_scales="static")


def _lava_layer(net, layer: Optional[str], config: SpikeConfig, is_tiny: bool) -> Optional[str]:
    """The module path to run on Lava (``"auto"`` resolved), checked on the float model against
    what ``convert`` will make spike-driven, before any work on it; None: no Lava run."""
    if layer == "auto":
        layer = f"{adapter_for(net).language_model}.layers.0.mlp" if is_tiny else None
    if layer is not None:
        # Lava loads only when a layer runs on it (it forks worker processes and takes seconds to import).
        from spikemllm_sj.lava_backend import check_lava_layer

        check_lava_layer(net, layer, config)
    return layer


def _lava(model, layer: Optional[str], asked: Optional[str], batch: dict) -> dict:
    if layer is None:
        reason = "no Lava layer asked for" if asked is None else \
            "real checkpoints run no Lava layer unless one is named (--lava-layer PATH)"
        return {"skipped": reason}
    from spikemllm_sj.lava_backend import check_layer

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


def _check_arguments(
    out_dir, config: Optional[SpikeConfig], calibration_data, image, questions: list[str], new_tokens: int,
    med_budget: Optional[float], batch_size: int,
) -> None:
    """Everything :func:`run_convert` can check before loading the model.

    :raises ValueError: naming the argument, its value and what it accepts.
    """
    check_run_folder(out_dir, "run.json", "out_dir")
    if config is not None and not isinstance(config, SpikeConfig):
        raise TypeError(f"config must be a SpikeConfig, got {type(config).__name__}")
    for name, value in (("new_tokens", new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise ValueError(f"questions must be one or more non-empty strings, got {questions!r}")
    if med_budget is not None:
        check_budget(med_budget, MEDConfig().candidates)
        if calibration_data is None:
            raise ValueError("the MED schedule needs calibration records: give a JSONL of them, or no MED budget")
    require_calibration_data(config or DEFAULT_CONFIG, calibration_data)
    needed = {"image": image, **({"calibration_data": calibration_data} if calibration_data is not None else {})}
    for name, path in needed.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{name} {path} is not a file")


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
    med_budget: Optional[float] = DEFAULT_MED_BUDGET,
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
    :param save_model: save the spiking model in ``out_dir/spiking_model``.
    :return: the contents of ``run.json``.

    Every argument is checked before any work (``lava_layer`` right after loading the model); the
    run is written into a partial folder that replaces ``out_dir`` only once complete
    (:mod:`~spikemllm_sj.commands.run_folder`): ``out_dir`` holds one run or none, and a failed or
    interrupted run leaves the previous one intact.
    """
    questions = list(questions)
    _check_arguments(out_dir, config, calibration_data, image, questions, new_tokens, med_budget, batch_size)
    config = config or DEFAULT_CONFIG
    with run_folder(out_dir, "run.json", "out_dir") as partial:
        summary = _run(model, Path(out_dir), partial, config, calibration_data, image, questions, new_tokens,
                       lava_layer, med_budget, save_model, batch_size, seed, dtype, progress)
    return summary


def _run(
    model: str, out: Path, partial: Path, config: SpikeConfig, calibration_data, image, questions: list[str],
    new_tokens: int, lava_layer: Optional[str], med_budget: Optional[float], save_model: bool, batch_size: int,
    seed: int, dtype: torch.dtype, progress: bool,
) -> dict:
    """The stages of :func:`run_convert`, written into ``partial`` (to become ``out``)."""
    stage = _Stages()
    with stage("load"):
        net, processor = load_model(model, seed=seed, dtype=dtype)
        layer = _lava_layer(net, lava_layer, config, model in TINY_MODELS)
        batch = encode(net, processor, [read_image(image)] * len(questions), questions)
    with stage("calibrate"):
        calibration, calibrated_on = calibration_for(net, processor, config, calibration_data, batch_size, progress)
    med = None
    if med_budget is not None:
        with stage("MED schedule"):
            batches, _ = record_batches(net, processor, calibration_data, batch_size)
            config, med = scheduled_config(net, batches, config, calibration, med_budget, progress)
    with stage("convert + compare + generate + op report"):
        done = convert_compare_report(net, batch, config, calibration, new_tokens, progress)
    with stage("activity"):
        activity = record_activity(net, batch)
    with stage("energy"):
        energy = _energy(done.report, config)
    with stage("lava"):
        lava = _lava(net, layer, lava_layer, batch)
    saved = None
    if save_model:
        with stage("save"):
            save_spiking(net, partial / "spiking_model", processor)
            saved = str(out / "spiking_model")
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
    _write(partial, summary, done.report, activity, energy)
    return summary


def _med_budget(text: str) -> Optional[float]:
    if text == "none":
        return None
    try:
        budget = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of average steps per token or none, got {text!r}") from None
    try:
        check_budget(budget, MEDConfig().candidates)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return budget


def _question(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a non-empty question")
    return text


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "convert",
        help="the whole job: calibrate, convert, compare with the float model and the fake-quant twin, generate, "
        "op and energy report, one layer on Lava, plots and report.md",
        epilog=options.epilog("the spiking model's logits or tokens differ from its fake-quant twin's, or the Lava layer "
                              "from PyTorch"),
    )
    options.add_model(parser)
    parser.add_argument(
        "--out", default="out/run", type=options.run_folder("run.json"),
        help="run folder: report.md, plots, JSON, the spiking model; a new folder, an empty one or a previous run's, "
        "which the new run replaces once complete (default: out/run)",
    )
    options.add_config(parser, act_scales="static")
    parser.add_argument("--calibration-data", default=str(SAMPLE_DATA), type=options.existing_file,
                        help="JSONL of {image, question, answer} records to calibrate on")
    parser.add_argument("--image", default=str(EXAMPLE_IMAGE), type=options.existing_file, help="image of the compared and generated rows")
    parser.add_argument("--question", action="append", type=_question,
                        help=f"a question about the image (repeatable; default: {' / '.join(QUESTIONS)})")
    parser.add_argument("--new-tokens", type=options.positive_int, default=6, help="greedy tokens generated per row (default 6)")
    parser.add_argument(
        "--lava-layer", default="auto",
        help="module path run on Lava, checked against the model right after loading; auto: the first decoder layer's "
        "MLP on tiny models, none on real ones; none: skip",
    )
    parser.add_argument(
        "--med-budget", default=_UNSET, type=_med_budget,
        help=f"average steps per language-model token for the MED scheduler, which chooses the steps per modality "
        f"(measured on a copy of the model), at least the smallest step count it probes (2); none: the steps as given; "
        f"not allowed with --steps-text/--steps-image (default {DEFAULT_MED_BUDGET}, or none when steps are given)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not save the spiking model")
    options.add_seed(parser)
    parser.add_argument("--json", action="store_true", help="print run.json instead of the summary")
    parser.set_defaults(func=run)
    return parser


def med_budget_of(args: argparse.Namespace) -> Optional[float]:
    """The MED budget of ``--med-budget`` and the step options: explicit steps and an explicit
    budget exclude each other; explicit steps alone mean no MED schedule."""
    if args.med_budget is _UNSET:
        return None if options.steps_given(args) else DEFAULT_MED_BUDGET
    if args.med_budget is not None and options.steps_given(args):
        raise ValueError("--med-budget chooses the steps, so it cannot be given with --steps-text/--steps-image; "
                         "give one or the other (or --med-budget none with the steps)")
    return args.med_budget


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        budget = med_budget_of(args)
        result = run_convert(
            args.model, args.out, options.spike_config(args), calibration_data=args.calibration_data, image=args.image,
            questions=args.question or QUESTIONS, new_tokens=args.new_tokens,
            lava_layer=None if args.lava_layer == "none" else args.lava_layer, save_model=not args.no_save, seed=args.seed,
            dtype=getattr(torch, args.dtype), med_budget=budget,
        )
    except (ValueError, TypeError, ModelLoadError, FileNotFoundError) as error:
        return options.fail("convert", error)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_summary(result))
        print(f"\nreport: {Path(args.out) / 'report.md'} (plots and JSON beside it); "
              f"command wall time {time.perf_counter() - start:.1f} s")
    lava_ok = result["lava"].get("exact", True)
    return options.EXIT_OK if result["fidelity"]["spike_equals_twin"] and lava_ok else options.EXIT_INEXACT

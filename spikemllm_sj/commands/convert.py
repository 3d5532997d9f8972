"""``spikemllm convert``: the whole job on one model. Calibrate, schedule the MSTS steps with MED,
convert, compare with the float model and the fake-quant twin, generate, count ops and energy,
run one layer on Lava, plot, and write a Markdown report.

:func:`run_convert` writes ``out_dir``: ``run.json`` (configuration, fidelity, answers,
timings), ``op_report.json`` / ``op_report.txt``, ``activity.json`` (spikes per site and
modality, a raster), ``energy.json`` / ``energy.md``, the saved spiking model
(``spiking_model/``), and then :func:`~spikemllm_sj.commands.report.render_report` turns them
into ``report.md`` and its PNG plots. All of it goes into a partial folder that replaces
``out_dir`` once complete, so a re-run never mixes with the previous run's files.

Inputs (:class:`~spikemllm_sj.commands.common.ModelInputs`, default the model's bundled ones,
:func:`~spikemllm_sj.commands.common.inputs_for`): the calibration records, the compared,
generated and shown rows, and the records scored for accuracy. For ``easyvqa-llava``: 32
easy-VQA train questions to calibrate on, the first 4 of 50 seeded test questions shown, all 50
scored; for other models the repository's ``data/eval_sample`` to calibrate on and its example
image with two questions, nothing scored unless asked. Calibration and scored rows are different
sets, so scales and clip ratios are not fitted to the rows they are judged on.

The fidelity guard: when the spiking model's logit cosine to the float model on the compared rows
is below ``min_cosine``, the output and the report say so, and the command exits with
:data:`~spikemllm_sj.commands.options.EXIT_LOW_FIDELITY`; the MED step refuses a schedule whose
measured cosine is below it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from spikemllm_sj.analysis.accelerator import compare, load_params, workload_from_report
from spikemllm_sj.analysis.activity import record_activity
from spikemllm_sj.analysis.fidelity import VARIANTS, compare_converted, convert_and_compare
from spikemllm_sj.analysis.op_report import OpReport, op_report
from spikemllm_sj.ann2snn.adapters import adapter_for
from spikemllm_sj.ann2snn.calibration import calibrate
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import (
    EXAMPLE_IMAGE,
    QUESTIONS,
    ModelInputs,
    check_prompt,
    encode_rows,
    inputs_for,
    lava_refusal,
    record_batches,
    require_calibration_data,
    shown,
)
from spikemllm_sj.commands.evaluate import eval_inputs, score_runs
from spikemllm_sj.commands.report import format_summary, render_report
from spikemllm_sj.commands.run_folder import check_run_folder, run_folder
from spikemllm_sj.config import RECOMMENDED, SpikeConfig
from spikemllm_sj.integrations.serialization import save_spiking
from spikemllm_sj.med.analysis import LowFidelityError, MEDConfig, scheduled_config
from spikemllm_sj.med.schedule import check_budget
from spikemllm_sj.models.inputs import decode, model_label, read_image
from spikemllm_sj.models.loading import BUILTIN_MODELS, EASYVQA_LLAVA, ModelLoadError, load_model
from spikemllm_sj.neurons import DATA_DEPENDENT_SCHEMES

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


_UNSET = object()  # --med-budget or --eval-data not given
DEFAULT_MED_BUDGET = 3.3  # average steps per language-model token for the MED schedule
MED_BATCHES = 2  # calibration batches MED measures on (each setting it probes runs all of them)


def _lava_layer(net, layer: Optional[str], config: SpikeConfig, is_builtin: bool) -> Optional[str]:
    """The module path to run on Lava (``"auto"`` resolved), checked on the float model against
    what ``convert`` will make spike-driven, before any work on it; None: no Lava run."""
    if lava_refusal(config):
        if layer not in ("auto", None):
            raise ValueError(f"lava_layer {layer!r}: {lava_refusal(config)} (give none)")
        return None
    if layer == "auto":
        layer = f"{adapter_for(net).language_model}.layers.0.mlp" if is_builtin else None
    if layer is not None:
        # Lava loads only when a layer runs on it (it forks worker processes and takes seconds to import).
        from spikemllm_sj.lava_backend import check_lava_layer

        check_lava_layer(net, layer, config)
    return layer


def _lava(model, layer: Optional[str], asked: Optional[str], batch: dict, config: SpikeConfig) -> dict:
    if layer is None:
        reason = lava_refusal(config) or ("no Lava layer asked for" if asked is None else
                                      "checkpoints other than the built-in models run no Lava layer unless one is named "
                                      "(--lava-layer PATH)")
        return {"skipped": reason}
    from spikemllm_sj.lava_backend import check_layer

    return check_layer(model, layer, batch).as_dict()


def _lava_whole(model, batch: dict, decode_steps: int) -> dict:
    """The whole model on Lava (:func:`~spikemllm_sj.lava_backend.run_model_on_lava`): its check
    against PyTorch and the emulated accelerator's prefill and decode figures."""
    from spikemllm_sj.analysis.emulation import emulated_costs
    from spikemllm_sj.lava_backend import run_model_on_lava

    run = run_model_on_lava(model, batch, decode_steps=decode_steps)
    forwards = emulated_costs(run, load_params().accelerator)
    decode = forwards[1:]
    return {
        "exact": run.exact, "logits_exact": run.logits_exact, "tokens_equal": run.tokens_equal,
        "processes": run.processes, "site_calls": len(run.plan.calls), "lava_steps": run.plan.num_steps,
        "forwards": run.forwards, "timings_s": run.timings,
        "prefill_latency_s": forwards[0].latency_s, "prefill_tokens": forwards[0].tokens,
        "decode_tokens_per_s": sum(f.tokens for f in decode) / sum(f.latency_s for f in decode) if decode else None,
        "energy_per_decode_token_j": sum(f.energy_j for f in decode) / sum(f.tokens for f in decode) if decode else None,
    }


def _fidelity(run, min_cosine: Optional[float]) -> dict:
    same = run.spike.tokens == run.float.tokens if run.spike.tokens.shape == run.float.tokens.shape else None
    cosine = run.logit_cosine()
    return {
        "spike_equals_twin": run.spike_equals_twin(),
        "logit_cosine": cosine,
        "top1_agreement": run.top1_agreement(),
        "new_tokens_equal_to_float": None if same is None else float(same.float().mean()),
        "guard": {"min_cosine": min_cosine, "passed": min_cosine is None or cosine >= min_cosine},  # NaN fails
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
    out_dir, config: SpikeConfig, inputs: ModelInputs, new_tokens: int, med_budget: Optional[float], batch_size: int,
    min_cosine: Optional[float], lava_whole: bool,
) -> None:
    """Everything :func:`run_convert` can check before loading the model.

    :raises ValueError: naming the argument, its value and what it accepts.
    """
    check_run_folder(out_dir, "run.json", "out_dir")
    if not isinstance(config, SpikeConfig):
        raise TypeError(f"config must be a SpikeConfig, got {type(config).__name__}")
    if not isinstance(inputs, ModelInputs):
        raise TypeError(f"inputs must be a ModelInputs, got {type(inputs).__name__}")
    for name, value in (("new_tokens", new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if min_cosine is not None and (isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float))
                                   or not -1 <= min_cosine <= 1):
        raise ValueError(f"min_cosine must be None or a cosine in [-1, 1], got {min_cosine!r}")
    if not inputs.rows or not all(isinstance(q, str) and q.strip() for _, q in inputs.rows):
        raise ValueError(f"inputs.rows must be one or more (image, non-empty question) pairs, got {inputs.rows!r}")
    check_prompt(inputs.prompt)
    if med_budget is not None:
        check_budget(med_budget, MEDConfig().candidates)
        if config.plan.overrides:
            raise ValueError("--plan gives per-site steps and a MED budget chooses the steps: give one or the other "
                             "(--med-budget none with --plan)")
        if inputs.calibration is None:
            raise ValueError("the MED schedule needs calibration records: give a JSONL of them, or no MED budget")
    require_calibration_data(config, inputs.calibration)
    if lava_whole and lava_refusal(config):
        raise ValueError(f"lava_whole: {lava_refusal(config)}")
    files = {f"image {image}": image for image, _ in inputs.rows}
    files.update({"calibration data": inputs.calibration, "evaluation data": inputs.evaluation})
    for name, path in files.items():
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{name.split(' ')[0] if name.startswith('image') else name} {path} is not a file")


def _write(out: Path, summary: dict, report: OpReport, activity: dict, energy: dict, evaluation) -> None:
    (out / "run.json").write_text(json.dumps(summary, indent=2))
    (out / "op_report.json").write_text(report.to_json())
    (out / "op_report.txt").write_text(report.format_table() + "\n")
    (out / "activity.json").write_text(json.dumps(activity))
    (out / "energy.json").write_text(json.dumps({k: v for k, v in energy.items() if k != "table"}, indent=2))
    if "table" in energy:
        (out / "energy.md").write_text(energy["table"] + "\n")
    if evaluation is not None:
        (out / "eval.json").write_text(json.dumps(evaluation.as_dict(), indent=2))
    render_report(out)


def run_convert(
    model: str = EASYVQA_LLAVA,
    out_dir: str | Path = "out/run",
    config: Optional[SpikeConfig] = None,
    inputs: Optional[ModelInputs] = None,
    new_tokens: int = 6,
    lava_layer: Optional[str] = "auto",
    lava_whole: bool = False,
    med_budget: Optional[float] = DEFAULT_MED_BUDGET,
    min_cosine: Optional[float] = options.DEFAULT_MIN_COSINE,
    save_model: bool = True,
    batch_size: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict:
    """Run the whole job on ``model`` (a built-in name, a folder or a hub id) and write ``out_dir``.

    :param config: default :data:`~spikemllm_sj.config.RECOMMENDED` (the best configuration
        measured on real weights).
    :param inputs: calibration records, rows and scored records; default the model's
        (:func:`~spikemllm_sj.commands.common.inputs_for`).
    :param lava_layer: a module path for :func:`~spikemllm_sj.lava_backend.check_layer`;
        ``"auto"``: the first decoder layer's MLP on built-in models, none on other checkpoints;
        None: no Lava run.
    :param lava_whole: also run the whole model on Lava, the shown rows' prefill and
        ``new_tokens - 1`` decode steps, checked against PyTorch (off by default: minutes on a real
        model, about 10 s on a tiny one).
    :param med_budget: average steps per language-model token for the MED scheduler
        (:func:`~spikemllm_sj.med.analysis.scheduled_config`, measured on the first
        :data:`MED_BATCHES` calibration batches with a converted copy of the model: twice its
        memory); its choice replaces ``config``'s steps, and the copy it measured,
        with those steps, is the spiking model (searched clip ratios stay those of ``config``'s
        steps). None: ``config``'s steps as given.
    :param min_cosine: the fidelity guard (``summary["fidelity"]["guard"]``); None: no guard.
    :param dtype: the weights' dtype.
    :param save_model: save the spiking model in ``out_dir/spiking_model``.
    :return: the contents of ``run.json``.

    Every argument is checked before any work (``lava_layer`` right after loading the model); the
    run is written into a partial folder that replaces ``out_dir`` only once complete
    (:mod:`~spikemllm_sj.commands.run_folder`): ``out_dir`` holds one run or none, and a failed or
    interrupted run leaves the previous one intact.
    """
    config = RECOMMENDED if config is None else config
    inputs = inputs_for(model) if inputs is None else inputs
    _check_arguments(out_dir, config, inputs, new_tokens, med_budget, batch_size, min_cosine, lava_whole)
    with run_folder(out_dir, "run.json", "out_dir") as partial:
        summary = _run(model, Path(out_dir), partial, config, inputs, new_tokens, lava_layer, lava_whole, med_budget,
                       min_cosine, save_model, batch_size, seed, dtype, progress)
    return summary


def _run(
    model: str, out: Path, partial: Path, config: SpikeConfig, inputs: ModelInputs, new_tokens: int,
    lava_layer: Optional[str], lava_whole: bool, med_budget: Optional[float], min_cosine: Optional[float],
    save_model: bool, batch_size: int, seed: int, dtype: torch.dtype, progress: bool,
) -> dict:
    """The stages of :func:`run_convert`, written into ``partial`` (to become ``out``)."""
    stage = _Stages()
    with stage("load"):
        net, processor = load_model(model, seed=seed, dtype=dtype)
        layer = _lava_layer(net, lava_layer, config, model in BUILTIN_MODELS)
        rows = encode_rows(net, processor, inputs.rows)
        scored = None if inputs.evaluation is None else eval_inputs(net, processor, inputs.evaluation, inputs.prompt, batch_size)
    with stage("calibrate"):
        # The calibration records, encoded once for the calibration and the MED step.
        batches, about = record_batches(net, processor, inputs.calibration, batch_size) \
            if config.needs_calibration or med_budget is not None else (None, None)
        calibration = calibrate(net, batches, config, progress=progress) if config.needs_calibration else None
        calibrated_on = about if calibration is not None else None
    med = None
    compared = [rows, *(scored.batches if scored else ())]
    logits = [True] + [False] * (len(compared) - 1)  # the scored batches' answers only
    if med_budget is not None:
        # MED measures a converted copy; with the chosen steps it is the spiking model (one conversion).
        with stage("convert + MED schedule"):
            config, med, snn = scheduled_config(net, batches[:MED_BATCHES], config, calibration, med_budget, min_cosine,
                                                progress)
        with stage("compare + generate"):
            runs = compare_converted(net, snn, compared, new_tokens, logits, progress)
            del net  # the float model's outputs are taken
            net = snn
    else:
        with stage("convert + compare + generate"):
            runs = convert_and_compare(net, compared, new_tokens, config, calibration, logits, progress)
    evaluation = None if scored is None else score_runs(model, scored, runs[1:], processor, model_label(net), config,
                                                         calibrated_on)
    with stage("op report"):
        report = op_report(net, **rows)
    with stage("activity"):
        activity = record_activity(net, rows)
    with stage("energy"):
        energy = _energy(report, config)
    with stage("lava"):
        lava = _lava(net, layer, lava_layer, rows, config)
    whole = {"skipped": "not asked for; --lava-whole runs it"}
    if lava_whole:
        with stage("lava whole model"):
            whole = _lava_whole(net, rows, new_tokens - 1)
    saved = None
    if save_model:
        with stage("save"):
            save_spiking(net, partial / "spiking_model", processor)
            saved = str(out / "spiking_model")
    shown_images = _copy_images(inputs.rows, partial)
    summary = {
        "model": model,
        "model_class": type(net).__name__,
        "label": model_label(net),
        "seed": seed,
        "config": config.to_dict(),
        "calibration": calibrated_on,
        "med": med,
        "inputs": {"rows": [{"image": shown(image), "shown_as": name, "question": q}
                            for (image, q), name in zip(inputs.rows, shown_images)],
                   "tokens": int(rows["attention_mask"].sum())},
        "fidelity": _fidelity(runs[0], min_cosine),
        "generation": _generation(runs[0], [q for _, q in inputs.rows], processor),
        "evaluation": None if evaluation is None else _accuracy(evaluation),
        "ops": _ops(report),
        "lava": lava,
        "lava_whole": whole,
        "saved_model": saved,
        "timings_s": {**stage.seconds, "stages": sum(stage.seconds.values())},
    }
    _write(partial, summary, report, activity, energy, evaluation)
    return summary


def _copy_images(rows, folder: Path) -> list[str]:
    """The rows' images copied into ``folder/inputs/`` as PNG (the report shows them); their names."""
    (folder / "inputs").mkdir()
    names, done = [], {}
    for image, _ in rows:
        key = str(Path(image).resolve())
        if key not in done:
            done[key] = f"inputs/{len(done)}.png"
            read_image(image).save(folder / done[key])
        names.append(done[key])
    return names


def _accuracy(evaluation) -> dict:
    return {"data": evaluation.data, "records": len(evaluation.records), "prompt": evaluation.prompt,
            "accuracy": {variant: evaluation.accuracy(variant) for variant in VARIANTS},
            "gap_points": evaluation.gap_points, "spike_equals_twin": evaluation.spike_equals_twin}


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


def _cosine(text: str) -> Optional[float]:
    if text == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a cosine in [-1, 1] or none, got {text!r}")
    return value


def _optional_file(text: str) -> Optional[Path]:
    return None if text == "none" else options.existing_file(text)


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "convert",
        help="the whole job: calibrate, schedule the steps with MED, convert, compare with the float model and the "
        "fake-quant twin, generate, score, op and energy report, one layer on Lava, plots and report.md",
        epilog=options.epilog("the spiking model's logits or tokens (compared or scored rows) differ from its fake-quant "
                              "twin's, or the Lava layer from PyTorch", low_fidelity=True),
    )
    options.add_model(parser)
    parser.add_argument(
        "--out", default="out/run", type=options.run_folder("run.json"),
        help="run folder: report.md, plots, JSON, the spiking model; a new folder, an empty one or a previous run's, "
        "which the new run replaces once complete (default: out/run)",
    )
    options.add_config(parser)
    inputs = parser.add_argument_group("inputs (default: the model's bundled ones)")
    inputs.add_argument("--calibration-data", default=None, type=options.existing_file,
                        help="JSONL of {image, question, answer} records to calibrate on (default: 32 easy-VQA train "
                             "questions for easyvqa-llava, data/eval_sample otherwise)")
    inputs.add_argument("--image", default=None, type=options.existing_file,
                        help=f"image of the compared and generated rows (default: the model's rows: 4 easy-VQA test "
                             f"questions with their images for easyvqa-llava, {shown(EXAMPLE_IMAGE)} otherwise)")
    inputs.add_argument("--question", action="append", type=_question,
                        help=f"a question about --image (repeatable; default with --image: {' / '.join(QUESTIONS)})")
    inputs.add_argument("--eval-data", default=_UNSET, type=_optional_file, metavar="FILE|none",
                        help="JSONL of records scored for accuracy, FP32 vs fake-quant vs spiking (default: 50 easy-VQA "
                             "test questions for easyvqa-llava, none otherwise)")
    inputs.add_argument("--prompt", default=None, type=options.prompt_template,
                        help="template of the scored questions, with {question} (default: the model's, as spikemllm eval)")
    parser.add_argument("--new-tokens", type=options.positive_int, default=6, help="greedy tokens generated per row (default 6)")
    parser.add_argument("--batch-size", type=options.positive_int, default=8, help="records per batch (default 8)")
    parser.add_argument(
        "--lava-layer", default="auto",
        help="module path run on Lava, checked against the model right after loading; auto: the first decoder layer's "
        "MLP on built-in models, none on other checkpoints; none: skip",
    )
    parser.add_argument(
        "--lava-whole", action="store_true",
        help="also run the whole model on Lava (the shown rows' prefill and --new-tokens - 1 decode steps) and check it "
             "against PyTorch bit for bit; off by default (minutes on a real model)",
    )
    parser.add_argument(
        "--med-budget", default=_UNSET, type=_med_budget,
        help=f"average steps per language-model token for the MED scheduler, which chooses the steps per modality "
        f"(measured on a copy of the model), at least the smallest step count it probes (2); none: the steps as given; "
        f"not allowed with --steps-text/--steps-image (default {DEFAULT_MED_BUDGET}, or none when steps are given)",
    )
    parser.add_argument(
        "--min-cosine", default=options.DEFAULT_MIN_COSINE, type=_cosine, metavar="COSINE|none",
        help=f"fidelity guard: a spiking model whose logit cosine to the float model on the compared rows is below it "
        f"is reported as failed (exit status {options.EXIT_LOW_FIDELITY}), and MED refuses schedules below it "
        f"(default {options.DEFAULT_MIN_COSINE}; none: no guard)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not save the spiking model")
    options.add_seed(parser)
    parser.add_argument("--json", action="store_true", help="print run.json instead of the summary")
    parser.set_defaults(func=run)
    return parser


def inputs_of(args: argparse.Namespace) -> ModelInputs:
    """The model's bundled inputs with the ones the command line names."""
    inputs = inputs_for(args.model)
    changes = {}
    if args.image is not None or args.question:
        image = args.image or EXAMPLE_IMAGE
        changes["rows"] = tuple((image, q) for q in (args.question or QUESTIONS))
    if args.calibration_data is not None:
        changes["calibration"] = args.calibration_data
    if args.eval_data is not _UNSET:
        changes["evaluation"] = args.eval_data
    if args.prompt is not None:
        changes["prompt"] = args.prompt
    return replace(inputs, **changes)


def med_budget_of(args: argparse.Namespace) -> Optional[float]:
    """The MED budget of ``--med-budget`` and the step options: explicit steps and an explicit
    budget exclude each other; explicit steps alone, or a code with data-dependent steps, mean no
    MED schedule."""
    if args.scheme in DATA_DEPENDENT_SCHEMES:  # its steps follow the values: nothing to schedule
        if args.med_budget not in (_UNSET, None):
            raise ValueError(f"--med-budget: the {args.scheme} code's steps follow the values; MED has no steps to choose")
        return None
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
            args.model, args.out, options.spike_config(args), inputs_of(args), new_tokens=args.new_tokens,
            lava_layer=None if args.lava_layer == "none" else args.lava_layer, lava_whole=args.lava_whole, med_budget=budget,
            min_cosine=args.min_cosine, save_model=not args.no_save, batch_size=args.batch_size, seed=args.seed,
            dtype=getattr(torch, args.dtype),
        )
    except LowFidelityError as error:
        print(f"spikemllm convert: {options.GUARD_FAILED}: {error}", file=sys.stderr)
        return options.EXIT_LOW_FIDELITY
    except (ValueError, TypeError, ModelLoadError, FileNotFoundError) as error:
        return options.fail("convert", error)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_summary(result))
        print(f"\nreport: {Path(args.out) / 'report.md'} (plots and JSON beside it); "
              f"command wall time {time.perf_counter() - start:.1f} s")
    guard_passed = result["fidelity"]["guard"]["passed"]
    if not guard_passed:
        fidelity = result["fidelity"]
        print(f"{options.GUARD_FAILED}: {options.guard_failure(fidelity['logit_cosine'], fidelity['guard']['min_cosine'])}",
              file=sys.stderr)
    scored = result["evaluation"]
    exact = result["fidelity"]["spike_equals_twin"] and result["lava"].get("exact", True) and (
        result["lava_whole"].get("exact", True)) and (scored is None or scored["spike_equals_twin"])
    if not exact:
        return options.EXIT_INEXACT
    return options.EXIT_OK if guard_passed else options.EXIT_LOW_FIDELITY

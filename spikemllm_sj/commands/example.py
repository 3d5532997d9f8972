"""What the per-family scripts in ``examples/`` share: their command line, one image and question
answered by the float model, the spiking model and its fake-quant twin, and the printout."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from spikemllm_sj.analysis.fidelity import VARIANTS, ThreeWay, convert_and_compare
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import CALIBRATION_BATCH, calibration_for, inputs_for, require_calibration_use
from spikemllm_sj.models.inputs import decode, encode, model_label, read_image
from spikemllm_sj.models.loading import EASYVQA_LLAVA, ModelLoadError, load_model
from spikemllm_sj.models.tiny import TINY_MODELS, visual_token_ids

__all__ = ["ExampleRun", "example_parser", "answer_three_ways", "print_run"]


@dataclass(frozen=True)
class ExampleRun:
    """The model (converted, spike mode), its processor (None where none can be built), the inputs and
    the three runs; ``answers`` per variant (``float``, ``fake_quant``, ``spike``)."""

    name: str
    model: object
    processor: object
    batch: dict
    run: ThreeWay
    answers: dict[str, str]
    visual_tokens: int


def example_parser(description: str, tiny: str, checkpoint: str) -> argparse.ArgumentParser:
    """``--model`` (default ``tiny``), ``--image``, ``--question``, ``--new-tokens``,
    ``--calibration-data`` and the conversion options of ``spikemllm convert``
    (:func:`~spikemllm_sj.commands.options.add_config`, default the best measured configuration).

    :param checkpoint: the real checkpoint to name in ``--model``'s help.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=tiny,
        help=f"default {tiny} (built offline, random weights); {EASYVQA_LLAVA} (trained, real SmolLM2 weights); "
             f"real weights: {checkpoint}, or a local folder",
    )
    parser.add_argument("--image", default=None,
                        help=f"image file (default: a red circle and a blue square; for {EASYVQA_LLAVA}, an easy-VQA test image)")
    parser.add_argument("--question", default=None, help="default: What colour is the circle? (or the test image's question)")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens to generate")
    parser.add_argument("--calibration-data", default=None, type=options.existing_file,
                        help="JSONL of records to calibrate on (default: the model's bundled records)")
    options.add_config(parser)
    return parser


def answer_three_ways(args: argparse.Namespace) -> ExampleRun:
    """Answer ``args.question`` about ``args.image`` with ``args.model`` as float model, then
    convert it with the configuration of the options (default
    :data:`~spikemllm_sj.config.RECOMMENDED`, calibrated on ``--calibration-data`` or the model's
    bundled records) and answer again spike-driven and as the fake-quant twin.

    :raises SystemExit: with the message, for an unknown model, an unreadable image or a bad option.
    """
    try:
        config = options.spike_config(args)
        require_calibration_use(config, args.calibration_data)
        bundled = inputs_for(args.model)
        row_image, row_question = bundled.rows[0]
        args.image = args.image or str(row_image)
        args.question = args.question or row_question
        image = read_image(args.image)
        model, processor = load_model(args.model, dtype=getattr(torch, args.dtype))
        calibration, _ = calibration_for(model, processor, config, args.calibration_data or bundled.calibration,
                                         CALIBRATION_BATCH, False)
    except (ValueError, ModelLoadError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    batch = encode(model, processor, [image], [args.question])
    visual = int((batch["input_ids"] == visual_token_ids(model)["image"]).sum())
    (run,) = convert_and_compare(model, [batch], args.new_tokens, config, calibration, progress=False)
    answers = {variant: decode(processor, run.of(variant).tokens)[0] for variant in VARIANTS}
    return ExampleRun(args.model, model, processor, batch, run, answers, visual)


def print_run(result: ExampleRun, question: str) -> int:
    """Print the answers and the checks; the status, as the commands': 0 when the spiking model
    equals its twin bit for bit and its logit cosine to the float model passes the fidelity guard
    (the default ``--min-cosine`` of ``spikemllm convert``), :data:`~spikemllm_sj.commands.options.EXIT_INEXACT`
    when it differs from its twin, :data:`~spikemllm_sj.commands.options.EXIT_LOW_FIDELITY` when it fails the guard."""
    label = model_label(result.model)
    exact = result.run.spike_equals_twin()
    print(f"question: {question!r} ({result.visual_tokens} image tokens, {int(result.batch['attention_mask'].sum())} in all)")
    for name, variant in ((f"{label} ANN", "float"), ("spiking", "spike"), ("fake-quant ANN", "fake_quant")):
        print(f"  {name + ' answer:':<24}{result.answers[variant]!r}")
    print(f"spiking == fake-quant ANN, bit for bit (logits and tokens): {exact}")
    cosine = result.run.logit_cosine()
    print(f"spiking vs {label}: logit cosine {cosine:.4f}, top-1 agreement {result.run.top1_agreement():.3f}")
    if result.name in TINY_MODELS:
        print("(tiny model with random weights: the answers are noise; the checks are the point)")
    if not exact:
        return options.EXIT_INEXACT
    if not cosine >= options.DEFAULT_MIN_COSINE:  # NaN fails too
        print(f"{options.GUARD_FAILED}: {options.guard_failure(cosine, options.DEFAULT_MIN_COSINE, label)}")
        return options.EXIT_LOW_FIDELITY
    return 0

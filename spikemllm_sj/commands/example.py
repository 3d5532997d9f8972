"""What the per-family scripts in ``examples/`` share: their command line, one image and question
answered by the float model, the spiking model and its fake-quant twin, and the printout."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from spikemllm_sj.analysis.fidelity import VARIANTS, ThreeWay, convert_and_compare
from spikemllm_sj.models.inputs import decode, encode, model_label, read_image
from spikemllm_sj.models.loading import ModelLoadError, load_model
from spikemllm_sj.models.tiny import visual_token_ids

__all__ = ["ExampleRun", "example_parser", "answer_three_ways", "print_run"]

ASSETS = Path(__file__).resolve().parents[2] / "examples" / "assets"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ExampleRun:
    """The model (converted, spike mode), its processor (None for tiny models), the inputs and
    the three runs; ``answers`` per variant (``float``, ``fake_quant``, ``spike``)."""

    name: str
    model: object
    processor: object
    batch: dict
    run: ThreeWay
    answers: dict[str, str]
    visual_tokens: int


def example_parser(description: str, tiny: str, checkpoint: str) -> argparse.ArgumentParser:
    """``--model`` (default ``tiny``), ``--image``, ``--question``, ``--new-tokens``, ``--dtype``.

    :param checkpoint: the real checkpoint to name in ``--model``'s help.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=tiny,
        help=f"default {tiny} (built offline, random weights); real weights: {checkpoint}, or a local folder",
    )
    parser.add_argument("--image", default=str(ASSETS / "shapes.png"), help="image file (default: a red circle and a blue square)")
    parser.add_argument("--question", default="What colour is the circle?")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens to generate")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="weights of real checkpoints")
    return parser


def answer_three_ways(args: argparse.Namespace) -> ExampleRun:
    """Answer ``args.question`` about ``args.image`` with ``args.model`` as float model, then
    convert it with ``SpikeConfig()`` (TC-LIF, Tv/Tt = 3/4, W8, dynamic scales) and answer again
    spike-driven and as the fake-quant twin.

    :raises SystemExit: with the message, for an unknown model or an unreadable image.
    """
    try:
        image = read_image(args.image)
        model, processor = load_model(args.model, dtype=DTYPES[args.dtype])
    except (ValueError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from None
    batch = encode(model, processor, [image], [args.question])
    visual = int((batch["input_ids"] == visual_token_ids(model)["image"]).sum())
    (run,) = convert_and_compare(model, [batch], args.new_tokens, progress=False)
    answers = {variant: decode(processor, run.of(variant).tokens)[0] for variant in VARIANTS}
    return ExampleRun(args.model, model, processor, batch, run, answers, visual)


def print_run(result: ExampleRun, question: str) -> int:
    """Print the answers and the checks; 0 when the spiking model equals its twin bit for bit."""
    label = model_label(result.model)
    exact = result.run.spike_equals_twin()
    print(f"question: {question!r} ({result.visual_tokens} image tokens, {int(result.batch['attention_mask'].sum())} in all)")
    for name, variant in ((f"{label} ANN", "float"), ("spiking", "spike"), ("fake-quant ANN", "fake_quant")):
        print(f"  {name + ' answer:':<24}{result.answers[variant]!r}")
    print(f"spiking == fake-quant ANN, bit for bit (logits and tokens): {exact}")
    print(f"spiking vs {label}: logit cosine {result.run.logit_cosine():.4f}, top-1 agreement {result.run.top1_agreement():.3f}")
    if result.processor is None:
        print("(tiny model with random weights: the answers are noise; the checks are the point)")
    return 0 if exact else 1

"""``spikemllm eval``: accuracy of the float model, its fake-quant twin and the spiking model on a
JSONL of {image, question, answer} records (:mod:`spikemllm_sj.data.records`), and the spiking
model's gap to the float one.

Lines that cannot be read are reported by line number and left out; the other records are
evaluated and the left-out ones counted. Scoring is normalised exact match
(:func:`~spikemllm_sj.data.records.is_correct`). The question gets the suffix
:data:`ANSWER_SUFFIX` (as VQA tasks prompt for a short answer); generation is greedy.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from spikemllm_sj.analysis.fidelity import VARIANTS, convert_and_compare
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import SAMPLE_DATA, calibration_for, chunks, require_calibration_data, shown
from spikemllm_sj.commands.run_folder import write_file
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.data.records import Problem, is_correct, read_records
from spikemllm_sj.models.inputs import decode, encode, model_label
from spikemllm_sj.models.loading import ModelLoadError, load_model

__all__ = ["ANSWER_SUFFIX", "RecordResult", "EvalResult", "evaluate", "add_parser", "run"]

ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."


@dataclass(frozen=True)
class RecordResult:
    """One record's answers per variant (``float``, ``fake_quant``, ``spike``), their tokens and scores."""

    line: int
    image: str
    question: str
    answers: tuple[str, ...]
    predictions: dict[str, str]
    tokens: dict[str, list[int]]
    correct: dict[str, bool]


@dataclass(frozen=True)
class EvalResult:
    """Accuracy per variant over the readable records; ``problems`` are the lines left out."""

    model: str
    data: str
    label: str  # the float model's precision: FP32, BF16, FP16
    config: dict
    records: tuple[RecordResult, ...]
    problems: tuple[Problem, ...]

    def accuracy(self, variant: str) -> float:
        """Share of records answered correctly, in [0, 1]."""
        return sum(r.correct[variant] for r in self.records) / len(self.records)

    @property
    def gap_points(self) -> float:
        """Float accuracy minus spiking accuracy, in percentage points."""
        return 100 * (self.accuracy("float") - self.accuracy("spike"))

    @property
    def gap_relative(self) -> Optional[float]:
        """The gap as a percentage of the float accuracy (None when that is 0)."""
        reference = self.accuracy("float")
        return None if reference == 0 else 100 * (reference - self.accuracy("spike")) / reference

    @property
    def spike_equals_twin(self) -> bool:
        """Every record's spiking tokens equal its fake-quant tokens."""
        return all(r.tokens["spike"] == r.tokens["fake_quant"] for r in self.records)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "data": self.data,
            "label": self.label,
            "config": self.config,
            "records_evaluated": len(self.records),
            "lines_left_out": len(self.problems),
            "accuracy": {variant: self.accuracy(variant) for variant in VARIANTS},
            "gap_points": self.gap_points,
            "gap_relative_percent": self.gap_relative,
            "spike_equals_twin": self.spike_equals_twin,
            "records": [asdict(r) for r in self.records],
            "problems": [asdict(p) for p in self.problems],
        }

    def format_table(self) -> str:
        names = {"float": f"{self.label} ANN", "fake_quant": "fake-quant ANN", "spike": "spiking (SNN)"}
        lines = [
            f"{self.model} on {self.data}: {len(self.records)} records evaluated, {len(self.problems)} lines left out",
            "",
            "| model | correct | accuracy |",
            "|---|---:|---:|",
        ]
        for variant in VARIANTS:
            correct = sum(r.correct[variant] for r in self.records)
            lines.append(f"| {names[variant]} | {correct}/{len(self.records)} | {100 * self.accuracy(variant):.1f}% |")
        relative = "n/a (float accuracy 0)" if self.gap_relative is None else f"{self.gap_relative:.1f}% of {self.label}"
        lines += [
            "",
            f"gap {self.label} - spiking: {self.gap_points:.1f} points ({relative}); "
            f"spiking answers == fake-quant answers, token for token: {self.spike_equals_twin}",
        ]
        return "\n".join(lines)


def evaluate(
    model_name: str,
    data: str | Path,
    config: Optional[SpikeConfig] = None,
    calibration_data: str | Path | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> EvalResult:
    """Answer every readable record of ``data`` with ``model_name`` as float model, then convert
    it with ``config`` and answer again as spiking model and as fake-quant twin.

    :param calibration_data: a JSONL of other records to calibrate on, for configs that need a
        calibration (static scales, SmoothQuant, GPTQ).
    :param dtype: the weights' dtype.
    :raises ValueError: no readable record, or a calibration is needed and not given.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    config = config or SpikeConfig()
    require_calibration_data(config, calibration_data)
    records, problems = read_records(data)
    if not records:
        raise ValueError(f"{data} has no readable record ({len(problems)} lines left out, e.g. line "
                         f"{problems[0].line}: {problems[0].reason})" if problems else f"{data} has no record")
    model, processor = load_model(model_name, seed=seed, dtype=dtype)
    calibration, _ = calibration_for(model, processor, config, calibration_data, batch_size, progress)
    batches = [encode(model, processor, [r.image for r in c], [r.question + ANSWER_SUFFIX for r in c]) for c in chunks(records, batch_size)]
    label = model_label(model)
    runs = convert_and_compare(model, batches, max_new_tokens, config, calibration, logits=False, progress=progress)
    results = []
    for chunk, run in zip(chunks(records, batch_size), runs):
        texts = {variant: decode(processor, run.of(variant).tokens) for variant in VARIANTS}
        for i, record in enumerate(chunk):
            predictions = {variant: texts[variant][i] for variant in VARIANTS}
            results.append(
                RecordResult(
                    line=record.line,
                    image=record.image_path,
                    question=record.question,
                    answers=record.answers,
                    predictions=predictions,
                    tokens={variant: run.of(variant).tokens[i].tolist() for variant in VARIANTS},
                    correct={variant: is_correct(predictions[variant], record.answers) for variant in VARIANTS},
                )
            )
    return EvalResult(model_name, shown(data), label, config.to_dict(), tuple(results), tuple(problems))


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "eval", help="accuracy of the float model, the fake-quant ANN and the spiking model on {image, question, answer} JSONL",
        epilog=options.epilog("the spiking model's answers differ from its fake-quant twin's, token for token"),
    )
    options.add_model(parser)
    parser.add_argument("--data", default=str(SAMPLE_DATA), type=options.existing_file,
                        help="JSONL of records (default: the repository's sample)")
    options.add_config(parser, act_scales="dynamic")
    parser.add_argument("--calibration-data", default=None, type=options.existing_file,
                        help="JSONL of other records to calibrate on (needed by --act-scales static)")
    parser.add_argument("--batch-size", type=options.positive_int, default=4)
    parser.add_argument("--max-new-tokens", type=options.positive_int, default=8)
    parser.add_argument("--out", default=None, type=options.folder,
                        help="folder to write eval.json in (a run folder: `spikemllm report` adds it)")
    options.add_seed(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        result = evaluate(
            args.model, args.data, options.spike_config(args), calibration_data=args.calibration_data,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed, dtype=getattr(torch, args.dtype),
        )
    except (ValueError, ModelLoadError, FileNotFoundError) as error:
        return options.fail("eval", error)
    for problem in result.problems:
        print(f"spikemllm eval: {args.data}: line {problem.line} left out: {problem.reason}", file=sys.stderr)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_file(args.out / "eval.json", json.dumps(result.as_dict(), indent=2))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.format_table())
        if args.out:
            print(f"\nwritten: {args.out / 'eval.json'}")
    return options.EXIT_OK if result.spike_equals_twin else options.EXIT_INEXACT

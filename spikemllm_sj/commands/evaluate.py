"""``spikemllm eval``: accuracy of the float model, its fake-quant twin and the spiking model on a
JSONL of {image, question, answer} records (:mod:`spikemllm_sj.data.records`), and the spiking
model's gap to the float one.

Lines that cannot be read are reported by line number and left out; the other records are
evaluated and the left-out ones counted. Scoring is normalised exact match
(:func:`~spikemllm_sj.data.records.is_correct`). Each question is put into a prompt template
(``--prompt``; default the model's, :func:`~spikemllm_sj.commands.common.inputs_for`: the bare
question for the trained easy-VQA LLaVA, :data:`~spikemllm_sj.commands.common.VQA_PROMPT`
otherwise); generation is greedy. The calibration a configuration needs is made on other records
(``--calibration-data``, default the model's calibration records), and the result says which.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from spikemllm_sj.analysis.fidelity import VARIANTS, ThreeWay, convert_and_compare
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import (
    SAMPLE_DATA,
    calibration_for,
    check_prompt,
    chunks,
    inputs_for,
    require_calibration_data,
    require_calibration_use,
    shown,
)
from spikemllm_sj.commands.run_folder import write_file
from spikemllm_sj.config import RECOMMENDED, SpikeConfig
from spikemllm_sj.data.records import Problem, Record, is_correct, read_records
from spikemllm_sj.models.inputs import decode, encode, model_label
from spikemllm_sj.models.loading import ModelLoadError, load_model

__all__ = ["RecordResult", "EvalResult", "EvalInputs", "readable_records", "eval_inputs", "score_runs", "evaluate",
           "add_parser", "run"]


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
    prompt: str = "{question}"
    calibration: Optional[dict] = None  # the records calibrated on (path, count), None: no calibration

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
            "prompt": self.prompt,
            "calibration": self.calibration,
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
        cal = self.calibration
        lines = [
            f"{self.model} on {self.data}: {len(self.records)} records evaluated, {len(self.problems)} lines left out",
            f"prompt {self.prompt!r}; " + (f"calibrated on {cal['records']} records of {cal['path']}"
                                           + (" (the scored records themselves: give --calibration-data other records "
                                              "for an unbiased score)" if cal["path"] == self.data else "")
                                           if cal else "no calibration"),
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


@dataclass(frozen=True)
class EvalInputs:
    """The records of a JSONL, encoded in batches for one model with a prompt template."""

    data: Path
    records: tuple[Record, ...]
    problems: tuple[Problem, ...]
    batches: tuple[dict, ...]
    prompt: str
    batch_size: int


def readable_records(data: str | Path) -> tuple[tuple[Record, ...], tuple[Problem, ...]]:
    """The readable records of the JSONL ``data`` and the problems of its other lines.

    :raises ValueError: no readable record.
    """
    records, problems = read_records(data)
    if not records:
        raise ValueError(f"{data} has no readable record ({len(problems)} lines left out, e.g. line "
                         f"{problems[0].line}: {problems[0].reason})" if problems else f"{data} has no record")
    return tuple(records), tuple(problems)


def eval_inputs(model, processor, data: str | Path, prompt: str, batch_size: int, readable=None) -> EvalInputs:
    """Encode the readable records of the JSONL ``data`` (``readable``: its
    :func:`readable_records` if already read) for ``model`` in batches of ``batch_size``, each
    question put into ``prompt``.

    :raises ValueError: no readable record, or a bad prompt template.
    """
    check_prompt(prompt)
    records, problems = readable_records(data) if readable is None else readable
    batches = tuple(encode(model, processor, [r.image for r in c], [prompt.format(question=r.question) for r in c])
                    for c in chunks(records, batch_size))
    return EvalInputs(Path(data), records, problems, batches, prompt, batch_size)


def score_runs(
    model_name: str, inputs: EvalInputs, runs: list[ThreeWay], processor, label: str, config: SpikeConfig,
    calibrated_on: Optional[dict],
) -> EvalResult:
    """The :class:`EvalResult` of ``runs``, the three variants' outputs on ``inputs.batches``."""
    results = []
    for chunk, run in zip(chunks(inputs.records, inputs.batch_size), runs):
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
    return EvalResult(model_name, shown(inputs.data), label, config.to_dict(), tuple(results), inputs.problems,
                      inputs.prompt, calibrated_on)


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
    prompt: Optional[str] = None,
) -> EvalResult:
    """Answer every readable record of ``data`` with ``model_name`` as float model, then convert
    it with ``config`` and answer again as spiking model and as fake-quant twin.

    :param config: default :data:`~spikemllm_sj.config.RECOMMENDED`.
    :param calibration_data: a JSONL of other records to calibrate on, for configs that need a
        calibration (static scales, the clip search, SmoothQuant, GPTQ); default: the model's
        calibration records (:func:`~spikemllm_sj.commands.common.inputs_for`).
    :param prompt: the question's template (``{question}``); default: the model's.
    :param dtype: the weights' dtype.
    :raises ValueError: no readable record, or a bad prompt template.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    config = config or RECOMMENDED
    require_calibration_use(config, calibration_data)
    defaults = inputs_for(model_name)
    if calibration_data is None and config.needs_calibration:
        calibration_data = defaults.calibration
    prompt = defaults.prompt if prompt is None else prompt
    check_prompt(prompt)
    require_calibration_data(config, calibration_data)
    readable = readable_records(data)  # before the model loads: a file without records is a usage error
    model, processor = load_model(model_name, seed=seed, dtype=dtype)
    inputs = eval_inputs(model, processor, data, prompt, batch_size, readable)
    calibration, calibrated_on = calibration_for(model, processor, config, calibration_data, batch_size, progress)
    label = model_label(model)
    runs = convert_and_compare(model, inputs.batches, max_new_tokens, config, calibration, logits=False, progress=progress)
    return score_runs(model_name, inputs, runs, processor, label, config, calibrated_on)


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "eval", help="accuracy of the float model, the fake-quant ANN and the spiking model on {image, question, answer} JSONL",
        epilog=options.epilog("the spiking model's answers differ from its fake-quant twin's, token for token"),
    )
    options.add_model(parser)
    parser.add_argument("--data", default=None, type=options.existing_file,
                        help="JSONL of {image, question, answer} records (default: the model's: 50 easy-VQA test questions "
                             "for easyvqa-llava, the repository's data/eval_sample otherwise)")
    options.add_config(parser)
    parser.add_argument("--calibration-data", default=None, type=options.existing_file,
                        help="JSONL of other records to calibrate on (default: the model's: 32 easy-VQA train questions "
                             "for easyvqa-llava, data/eval_sample otherwise); the output says which")
    parser.add_argument("--prompt", default=None, type=options.prompt_template,
                        help="template of each question, with {question} (default: the model's: '{question}' for "
                             "easyvqa-llava, '{question}\\nAnswer the question using a single word or phrase.' otherwise)")
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
        data = args.data or inputs_for(args.model).evaluation or SAMPLE_DATA
        result = evaluate(
            args.model, data, options.spike_config(args), calibration_data=args.calibration_data,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed, dtype=getattr(torch, args.dtype),
            prompt=args.prompt,
        )
    except (ValueError, ModelLoadError, FileNotFoundError) as error:
        return options.fail("eval", error)
    for problem in result.problems:
        print(f"spikemllm eval: {data}: line {problem.line} left out: {problem.reason}", file=sys.stderr)
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

"""``spikemllm eval``: accuracy of the float model, its fake-quant twin and the spiking model on a
JSONL of {image, question, answer} records, and the spiking model's gap to the float one.

Records: one JSON object a line with ``"image"`` (a path, relative to the JSONL's folder unless
absolute), ``"question"`` (a string) and ``"answer"`` (a string, or a list of accepted strings).
Blank lines are not records. A line that is not a JSON object, lacks a field, or names an image
that cannot be read is reported by line number and left out; the other records are evaluated
and the left-out ones counted.

Scoring is normalised exact match on the generated answer: both strings lower-cased, punctuation
removed, the articles a / an / the dropped and whitespace collapsed; the prediction is correct when
it equals one accepted answer. The question gets the suffix :data:`ANSWER_SUFFIX` (as VQA tasks
prompt for a short answer); generation is greedy.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from spikemllm_sj.config import SpikeConfig

__all__ = [
    "ANSWER_SUFFIX",
    "Record",
    "Problem",
    "RecordResult",
    "EvalResult",
    "read_records",
    "normalize_answer",
    "is_correct",
    "evaluate",
]

ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
MODES = ("ann", "fake_quant", "spike")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class Record:
    """One readable record; ``image`` is a PIL RGB image."""

    line: int
    image_path: str
    image: object = field(repr=False)
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    """A line left out, and why."""

    line: int
    reason: str


def _parse(line_no: int, text: str, folder: Path) -> Record:
    """The record of one line; ``ValueError`` with the reason otherwise."""
    from spikemllm_sj.models import read_image

    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg}, column {error.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but a {type(data).__name__}")
    missing = [k for k in ("image", "question", "answer") if k not in data]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    image, question, answer = data["image"], data["question"], data["answer"]
    if not isinstance(image, str) or not image:
        raise ValueError(f"'image' must be a non-empty path string, got {image!r}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"'question' must be a non-empty string, got {question!r}")
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"'answer' must be a string or a non-empty list of strings, got {answer!r}")
    path = Path(image) if Path(image).is_absolute() else folder / image
    return Record(line_no, str(path), read_image(path), question, tuple(answers))


def read_records(path: str | Path) -> tuple[list[Record], list[Problem]]:
    """The readable records of a JSONL file and the problems of the other lines (1-based line numbers).

    :raises FileNotFoundError: ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    records, problems = [], []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line_no, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                records.append(_parse(line_no, text, path.parent))
            except ValueError as error:
                problems.append(Problem(line_no, str(error)))
    return records, problems


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def is_correct(prediction: str, answers: tuple[str, ...]) -> bool:
    return normalize_answer(prediction) in {normalize_answer(a) for a in answers}


@dataclass(frozen=True)
class RecordResult:
    """One record's answers per mode (``ann``, ``fake_quant``, ``spike``), their tokens and scores."""

    line: int
    image: str
    question: str
    answers: tuple[str, ...]
    predictions: dict[str, str]
    tokens: dict[str, list[int]]
    correct: dict[str, bool]


@dataclass(frozen=True)
class EvalResult:
    """Accuracy per mode over the readable records; ``problems`` are the lines left out."""

    model: str
    data: str
    label: str  # the float model's precision: FP32, BF16, FP16
    config: dict
    records: tuple[RecordResult, ...]
    problems: tuple[Problem, ...]

    def accuracy(self, mode: str) -> float:
        """Share of records answered correctly, in [0, 1]."""
        return sum(r.correct[mode] for r in self.records) / len(self.records)

    @property
    def gap_points(self) -> float:
        """Float accuracy minus spiking accuracy, in percentage points."""
        return 100 * (self.accuracy("ann") - self.accuracy("spike"))

    @property
    def gap_relative(self) -> Optional[float]:
        """The gap as a percentage of the float accuracy (None when that is 0)."""
        ann = self.accuracy("ann")
        return None if ann == 0 else 100 * (ann - self.accuracy("spike")) / ann

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
            "accuracy": {mode: self.accuracy(mode) for mode in MODES},
            "gap_points": self.gap_points,
            "gap_relative_percent": self.gap_relative,
            "spike_equals_twin": self.spike_equals_twin,
            "records": [asdict(r) for r in self.records],
            "problems": [asdict(p) for p in self.problems],
        }

    def format_table(self) -> str:
        names = {"ann": f"{self.label} ANN", "fake_quant": "fake-quant ANN", "spike": "spiking (SNN)"}
        lines = [
            f"{self.model} on {self.data}: {len(self.records)} records evaluated, {len(self.problems)} lines left out",
            "",
            "| model | correct | accuracy |",
            "|---|---:|---:|",
        ]
        for mode in MODES:
            correct = sum(r.correct[mode] for r in self.records)
            lines.append(f"| {names[mode]} | {correct}/{len(self.records)} | {100 * self.accuracy(mode):.1f}% |")
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
    from spikemllm_sj.compare import run_modes
    from spikemllm_sj.models import decode, encode, load_model, model_label
    from spikemllm_sj.pipeline import calibration_for, chunks, shown

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    config = config or SpikeConfig()
    records, problems = read_records(data)
    if not records:
        raise ValueError(f"{data} has no readable record ({len(problems)} lines left out, e.g. line "
                         f"{problems[0].line}: {problems[0].reason})" if problems else f"{data} has no record")
    model, processor = load_model(model_name, seed=seed, dtype=dtype)
    calibration, _ = calibration_for(model, processor, config, calibration_data, batch_size, progress)
    batches = [encode(model, processor, [r.image for r in c], [r.question + ANSWER_SUFFIX for r in c]) for c in chunks(records, batch_size)]
    label = model_label(model)
    runs = run_modes(model, batches, max_new_tokens, config, calibration, logits=False, progress=progress)
    results = []
    for chunk, run in zip(chunks(records, batch_size), runs):
        outputs = {"ann": run.ann.tokens, "fake_quant": run.fake_quant.tokens, "spike": run.spike.tokens}
        texts = {mode: decode(processor, tokens) for mode, tokens in outputs.items()}
        for i, record in enumerate(chunk):
            predictions = {mode: texts[mode][i] for mode in MODES}
            results.append(
                RecordResult(
                    line=record.line,
                    image=record.image_path,
                    question=record.question,
                    answers=record.answers,
                    predictions=predictions,
                    tokens={mode: outputs[mode][i].tolist() for mode in MODES},
                    correct={mode: is_correct(predictions[mode], record.answers) for mode in MODES},
                )
            )
    return EvalResult(model_name, shown(data), label, config.to_dict(), tuple(results), tuple(problems))

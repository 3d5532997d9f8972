"""JSONL question records: ``{"image", "question", "answer"}`` a line, and how answers match.

Records: one JSON object a line with ``"image"`` (a path, relative to the JSONL's folder unless
absolute), ``"question"`` (a string) and ``"answer"`` (a string, or a list of accepted strings).
Blank lines are not records. A line that is not a JSON object, lacks a field, or names an image
that cannot be read is reported by line number and left out (:func:`read_records`).

Matching (:func:`is_correct`) is normalised exact match: both strings lower-cased, punctuation
removed, the articles a / an / the dropped and whitespace collapsed; a prediction is correct when
it equals one accepted answer.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from spikemllm_sj.models.inputs import read_image

__all__ = ["Record", "Problem", "read_records", "normalize_answer", "is_correct"]

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

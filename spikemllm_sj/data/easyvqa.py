"""easy-VQA (the ``easy-vqa`` package, MIT): loading, the prompt format and answer scoring.

5,000 64x64 RGB images of one coloured shape each (4,000 train, 1,000 test) and about 48,000
question/answer pairs over 13 one-word answers. A question is asked in SmolLM2's ChatML format
(without the system turn, to keep sequences short), with the image's placeholder tokens after the
question::

    <|im_start|>user\\n{question}\\n{<image> x N}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>

The question comes first so that its tokens never depend on the image: training back-propagates
through the image tokens and what follows them only.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

__all__ = [
    "Accuracy",
    "EasyVQA",
    "VQARecord",
    "answers",
    "collate",
    "easyvqa_accuracy",
    "image_attributes",
    "image_file",
    "load_split",
    "normalize",
    "one_question_per_image",
    "prompt_batch",
    "prompt_ids",
    "records_file",
    "score",
]

SPLITS = ("train", "test")
SHAPES = ("circle", "rectangle", "triangle")


@dataclass(frozen=True)
class VQARecord:
    question: str
    answer: str
    image_id: int


@dataclass(frozen=True)
class EasyVQA:
    """One split: its records and its images, ``uint8 [N, 3, 64, 64]`` indexed by ``image_id``."""

    split: str
    records: tuple[VQARecord, ...]
    images: torch.Tensor


def _data_dir() -> Path:
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the easy-vqa package is not installed; run: make weights")
    return Path(spec.submodule_search_locations[0]) / "data"


def image_file(split: str, image_id: int) -> Path:
    """The PNG file of image ``image_id`` of ``split`` in the installed easy-vqa package."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _data_dir() / split / "images" / f"{image_id}.png"


def answers() -> tuple[str, ...]:
    """The 13 answers of easy-VQA, in the package's order."""
    return tuple(a.strip() for a in (_data_dir() / "answers.txt").read_text().split())


def load_split(split: str) -> EasyVQA:
    """Load ``split`` ("train" or "test") with all its images decoded."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = _data_dir() / split
    records = tuple(VQARecord(q, a, int(i)) for q, a, i in json.loads((root / "questions.json").read_text()))
    count = max(r.image_id for r in records) + 1
    images = np.empty((count, 3, 64, 64), dtype=np.uint8)
    for i in range(count):
        with Image.open(root / "images" / f"{i}.png") as im:
            images[i] = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    return EasyVQA(split, records, torch.from_numpy(images))


def image_attributes(data: EasyVQA) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Each image's shape and colour, read off its question/answer pairs.

    easy-VQA ships no labels, but its answers imply them: an open question names the shape or colour
    (``what is the red shape?`` -> ``circle`` gives both), and a yes/no question with its negation
    resolved (``is no circle present?`` -> ``no``) names one when the fact it asks about is true.

    :returns: ``shape [N]`` (index into :data:`SHAPES`), ``colour [N]`` (index into the returned
        colour names), both ``-100`` (cross-entropy's ignore index) where no question of the image
        tells; and the colour names, in the package's answer order.
    """
    colours = tuple(a for a in answers() if a not in SHAPES + ("yes", "no"))
    shape = torch.full((data.images.shape[0],), -100, dtype=torch.long)
    colour = torch.full_like(shape, -100)
    for r in data.records:
        words = re.findall(r"[a-z]+", r.question)
        named_shape = next((SHAPES.index(w) for w in words if w in SHAPES), None)
        named_colour = next((colours.index(w) for w in words if w in colours), None)
        if r.answer in SHAPES:
            shape[r.image_id] = SHAPES.index(r.answer)
            named_shape = None  # the shape named in an open question is the answer itself
        elif r.answer in colours:
            colour[r.image_id] = colours.index(r.answer)
            named_colour = None
        elif (r.answer == "yes") == ("not" in words or "no" in words):
            continue  # the fact asked about is false: it names neither attribute
        if named_shape is not None:
            shape[r.image_id] = named_shape
        if named_colour is not None:
            colour[r.image_id] = named_colour
    return shape, colour, colours


def one_question_per_image(data: EasyVQA, seed: int = 0, limit: int | None = None) -> list[VQARecord]:
    """A fixed seeded subset: one question drawn for each image (first ``limit`` images if given)."""
    by_image: dict[int, list[VQARecord]] = {}
    for r in data.records:
        by_image.setdefault(r.image_id, []).append(r)
    rng = random.Random(seed)
    images = sorted(by_image)[:limit] if limit is not None else sorted(by_image)
    return [rng.choice(by_image[i]) for i in images]


def records_file(split: str, count: int, seed: int = 0, folder: Path | None = None) -> Path:
    """A JSONL of ``{image, question, answer}`` records (:mod:`spikemllm_sj.data.records`): one
    seeded question for each of the first ``count`` images of ``split``
    (:func:`one_question_per_image`), the image paths pointing into the installed easy-vqa package.

    Written once into ``folder`` (default: ``easyvqa/`` in the real-weights cache,
    :func:`~spikemllm_sj.models.real_weights.cache_dir`) as ``{split}-{count}-seed{seed}.jsonl``;
    a later call returns the file when its contents are the same, and rewrites it otherwise (the
    package moved).

    :raises ValueError: a split that is not ``train`` or ``test``, or ``count`` not in [1, images].
    """
    from spikemllm_sj.models.real_weights import cache_dir

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = _data_dir() / split
    records = tuple(VQARecord(q, a, int(i)) for q, a, i in json.loads((root / "questions.json").read_text()))
    images = max(r.image_id for r in records) + 1
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= images:
        raise ValueError(f"count must be an int in [1, {images}] (the images of {split}), got {count!r}")
    chosen = one_question_per_image(EasyVQA(split, records, torch.empty(0)), seed=seed, limit=count)
    text = "".join(
        json.dumps({"image": str(image_file(split, r.image_id)), "question": r.question, "answer": r.answer}) + "\n"
        for r in chosen
    )
    path = Path(folder or cache_dir() / "easyvqa") / f"{split}-{count}-seed{seed}.jsonl"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        partial.replace(path)  # atomic: a reader never sees half a file
    return path


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` -> float32 pixel values in [-1, 1] (the vision tower's input)."""
    return images.float().div(127.5).sub(1.0)


def prompt_ids(tokenizer, question: str, image_token_id: int, image_tokens: int) -> list[int]:
    """Token ids of the prompt up to and including ``<|im_start|>assistant\\n``."""
    head = tokenizer(f"<|im_start|>user\n{question}\n", add_special_tokens=False).input_ids
    tail = tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids
    return head + [image_token_id] * image_tokens + tail


def collate(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token rows into ``input_ids`` / ``attention_mask`` ``[B, L]``."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = torch.tensor(r)
        mask[i, length - len(r) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def prompt_batch(model, tokenizer, data: EasyVQA, records: list[VQARecord]) -> dict[str, torch.Tensor]:
    """Forward / ``generate`` kwargs of ``records`` for a LLaVA ``model``, on its device: the prompts
    left-padded with ``<|im_end|>`` (image placeholders and their count from ``model.config``) and
    the images' pixel values in the model's dtype."""
    config = model.config
    rows = [prompt_ids(tokenizer, r.question, config.image_token_id, config.image_seq_length) for r in records]
    batch = collate(rows, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    batch["pixel_values"] = normalize(data.images[[r.image_id for r in records]]).to(model.dtype)
    return {k: v.to(model.device) for k, v in batch.items()}


@dataclass(frozen=True)
class Accuracy:
    """Exact-match accuracy of generated answers; ``answers[i]`` is the generated text of record i."""

    correct: int
    total: int
    answers: tuple[str, ...]

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / self.total


def score(generated: str, answer: str) -> bool:
    """An answer counts when the generated text, stripped of blanks and case, equals it."""
    return generated.strip().lower() == answer


def easyvqa_accuracy(
    model, tokenizer, data: EasyVQA, records: list[VQARecord], batch_size: int = 32, progress: bool = False
) -> Accuracy:
    """Greedy-generate an answer to every record with a LLaVA ``model`` and score it.

    Image placeholders and their count come from ``model.config`` (``image_token_id``,
    ``image_seq_length``); generation stops at ``<|im_end|>`` or after 4 tokens (the longest
    answer is 2 tokens).
    """
    if not records:
        raise ValueError("records is empty: nothing to score")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generated: list[str] = []
    batches = range(0, len(records), batch_size)
    for start in tqdm(batches, desc="easy-vqa", disable=not progress):
        batch = prompt_batch(model, tokenizer, data, records[start : start + batch_size])
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=4, do_sample=False, eos_token_id=eos, pad_token_id=eos)
        generated += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    correct = sum(score(g, r.answer) for g, r in zip(generated, records))
    return Accuracy(correct, len(records), tuple(g.strip() for g in generated))

"""The local easy-VQA task for lmms-eval (``data/lmms_tasks/easyvqa/``), offline::

    python -m lmms_eval --model spikemllm --model_args model=easyvqa-llava \\
        --tasks easyvqa --include_path data/lmms_tasks/easyvqa --limit 8

The task YAML reads ``easyvqa_test.jsonl`` beside it with ``dataset_path: json``; each line is one
test question of the easy-vqa package: ``{"doc_id", "image", "image_id", "question", "answer"}``,
``image`` relative to the package's data folder. The file holds one seeded question for each of the
first :data:`QUESTIONS` test images (:func:`~spikemllm_sj.data.easyvqa.one_question_per_image`, seed
:data:`SEED`: the first questions of ``docs/fidelity.md``'s 500) and is written by this module
(``python -m spikemllm_sj.integrations.easyvqa_task``; a test checks the shipped file against it).

The task's ``utils.py`` takes its functions from here: the image is read from the installed package
(:func:`doc_to_visual`), the prompt is the bare question (the trained model's prompt), and an
answer counts when it matches after normalisation (:func:`~spikemllm_sj.data.records.is_correct`),
reported as ``accuracy`` in [0, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["TASK", "TASK_DIR", "TASK_DATA", "QUESTIONS", "SEED", "task_records", "write_task_data",
           "doc_to_visual", "doc_to_text", "process_results"]

TASK = "easyvqa"
TASK_DIR = Path(__file__).resolve().parents[2] / "data" / "lmms_tasks" / TASK
TASK_DATA = TASK_DIR / "easyvqa_test.jsonl"
QUESTIONS = 64
SEED = 0


def task_records(count: int = QUESTIONS, seed: int = SEED) -> list[dict]:
    """The task's documents: one ``seed``-ed question for each of the first ``count`` test images."""
    from spikemllm_sj.data.easyvqa import load_split, one_question_per_image

    chosen = one_question_per_image(load_split("test"), seed=seed, limit=count)
    return [
        {"doc_id": i, "image": f"test/images/{r.image_id}.png", "image_id": r.image_id, "question": r.question, "answer": r.answer}
        for i, r in enumerate(chosen)
    ]


def write_task_data(path: str | Path = TASK_DATA, count: int = QUESTIONS, seed: int = SEED) -> Path:
    """Write :func:`task_records` to ``path`` as JSONL; returns the path."""
    path = Path(path)
    path.write_text("".join(json.dumps(doc) + "\n" for doc in task_records(count, seed)))
    return path


def doc_to_visual(doc: dict) -> list:
    """The document's image, read from the installed easy-vqa package, as a one-item list."""
    from spikemllm_sj.data.easyvqa import image_file
    from spikemllm_sj.models.inputs import read_image

    return [read_image(image_file("test", doc["image_id"]))]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question alone (the prompt the model was trained with)."""
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """``{"accuracy": 1.0 or 0.0}``: the generated answer against the document's, normalised."""
    from spikemllm_sj.data.records import is_correct

    return {"accuracy": float(is_correct(results[0], (doc["answer"],)))}


if __name__ == "__main__":
    print(f"wrote {write_task_data()}")

"""What the commands share: the bundled inputs of each model, record batches, the calibration a
configuration needs, and the one convert -> compare -> op report sequence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from spikemllm_sj.analysis.fidelity import ThreeWay, convert_and_compare
from spikemllm_sj.analysis.op_report import OpReport, op_report
from spikemllm_sj.ann2snn.calibration import Calibration, calibrate
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.data.records import read_records
from spikemllm_sj.models.inputs import encode, read_image
from spikemllm_sj.models.loading import EASYVQA_LLAVA, ModelLoadError
from spikemllm_sj.neurons import FIXED_STEP_SCHEMES

__all__ = [
    "SAMPLE_DATA",
    "EXAMPLE_IMAGE",
    "QUESTIONS",
    "VQA_PROMPT",
    "check_prompt",
    "ModelInputs",
    "inputs_for",
    "encode_rows",
    "chunks",
    "shown",
    "record_batches",
    "require_calibration_data",
    "require_calibration_use",
    "CALIBRATION_BATCH",
    "calibration_for",
    "Conversion",
    "convert_compare_report",
]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATA = ROOT / "data" / "eval_sample" / "sample.jsonl"
EXAMPLE_IMAGE = ROOT / "examples" / "assets" / "shapes.png"
QUESTIONS = ("What colour is the circle?", "Which shape is blue?")
CALIBRATION_BATCH = 8  # calibration records per forward where a command has no --batch-size
VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."  # as VQA tasks ask for short answers


def check_prompt(prompt: str) -> str:
    """``prompt`` if it is a template with one ``{question}`` field and no other.

    :raises ValueError: naming the template and what it must hold.
    """
    try:
        filled = prompt.format(question="\0")
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise ValueError(f"prompt must be a template with a {{question}} field (and braces doubled elsewhere), "
                         f"got {prompt!r} ({type(error).__name__}: {error})") from None
    if filled.count("\0") != 1:
        raise ValueError(f"prompt must hold {{question}} exactly once, got {prompt!r}")
    return prompt


@dataclass(frozen=True)
class ModelInputs:
    """The inputs the commands use for a model when the command line names none.

    :param calibration: JSONL of records to calibrate on (scales, clip search, GPTQ, MED).
    :param evaluation: JSONL of records to score (``eval``'s data; ``convert``'s accuracy
        section); None: ``convert`` scores nothing unless asked.
    :param rows: ``(image, question)`` pairs compared, generated and shown by ``convert``.
    :param prompt: the question's template for scoring, with ``{question}``.
    """

    calibration: Path
    evaluation: Optional[Path]
    rows: tuple[tuple[Path, str], ...]
    prompt: str


def inputs_for(model: str) -> ModelInputs:
    """The bundled inputs of ``model``: for :data:`~spikemllm_sj.models.loading.EASYVQA_LLAVA`,
    easy-VQA records (32 train questions to calibrate on, the first 50 test questions with one
    seeded question per image to score, their first 4 to show, the bare question as trained);
    for any other model the repository's sample records and example image, and :data:`VQA_PROMPT`.
    """
    if model == EASYVQA_LLAVA:
        from spikemllm_sj.data.easyvqa import records_file

        try:
            evaluation = records_file("test", 50)
        except ModuleNotFoundError as error:
            raise ModelLoadError(f"{EASYVQA_LLAVA} needs the real weights and easy-VQA: run `make weights` ({error})") from None
        records, _ = read_records(evaluation)
        return ModelInputs(records_file("train", 32), evaluation,
                           tuple((Path(r.image_path), r.question) for r in records[:4]), "{question}")
    return ModelInputs(SAMPLE_DATA, None, tuple((EXAMPLE_IMAGE, q) for q in QUESTIONS), VQA_PROMPT)


def encode_rows(model, processor, rows: Sequence[tuple]) -> dict:
    """Forward kwargs of ``(image path, question)`` rows (:func:`~spikemllm_sj.models.inputs.encode`)."""
    return encode(model, processor, [read_image(image) for image, _ in rows], [question for _, question in rows])


def chunks(items: Sequence, size: int) -> list:
    """``items`` cut into consecutive lists of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (reports stay readable)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(path)


def record_batches(model, processor, data, batch_size: int) -> tuple[list[dict], dict]:
    """``(batches, about)``: the records of the JSONL ``data`` encoded for ``model`` in batches of
    ``batch_size``, and what they are (path, records, batches, lines left out).

    :raises ValueError: ``data`` has no readable record.
    """
    records, problems = read_records(data)
    if not records:
        raise ValueError(f"{data} has no readable record ({len(problems)} lines left out)")
    batches = [encode(model, processor, [r.image for r in c], [r.question for r in c]) for c in chunks(records, batch_size)]
    about = {"path": shown(data), "records": len(records), "batches": len(batches),
             "lines_left_out": [p.__dict__ for p in problems]}
    return batches, about


def lava_refusal(config: SpikeConfig) -> str:
    """Why ``config``'s activation codes cannot run on the Lava backend, "" when they can (its
    time line is planned with each code's own steps), known before Lava or a model loads."""
    if not config.msts.data_dependent:
        return ""
    return (f"the Lava backend maps codes with fixed steps ({', '.join(FIXED_STEP_SCHEMES)}); "
            f"{config.msts.scheme}'s follow the values")


def require_calibration_data(config: SpikeConfig, data) -> None:
    """Refuse a configuration that needs calibration records (static scales, SmoothQuant, GPTQ)
    without them, before any work."""
    if config.needs_calibration and data is None:
        reasons = [name for name, needed in (("static scales", config.act_scales == "static"),
                                            ("GPTQ", config.weight_method == "gptq"),
                                            ("the clip search", config.act_clip == "search"),
                                            (config.method.name, config.method.needs_calibration)) if needed]
        raise ValueError(f"this configuration needs calibration records ({', '.join(reasons)}): give a JSONL of them")


def require_calibration_use(config: SpikeConfig, data) -> None:
    """Refuse calibration records given for a configuration that needs none (they would be ignored)."""
    if data is not None and not config.needs_calibration:
        raise ValueError(f"calibration data {shown(data)} given, but this configuration needs no calibration (dynamic "
                         "scales, no clip search, no GPTQ): leave it out")


def calibration_for(
    model, processor, config: SpikeConfig, data, batch_size: int, progress: bool
) -> tuple[Optional[Calibration], Optional[dict]]:
    """``(calibration, about)``: the calibration ``config`` needs, on the records of the JSONL
    ``data`` (see :func:`record_batches`); ``(None, None)`` when ``config`` needs none.

    :raises ValueError: a calibration is needed and ``data`` is None or has no readable record.
    """
    if not config.needs_calibration:
        return None, None
    require_calibration_data(config, data)
    batches, about = record_batches(model, processor, data, batch_size)
    return calibrate(model, batches, config, progress=progress), about


@dataclass(frozen=True)
class Conversion:
    """A model converted and checked on one batch: the three variants' outputs and the op report
    of one spike-mode forward."""

    run: ThreeWay
    report: OpReport


def convert_compare_report(
    model,
    batch: dict,
    config: Optional[SpikeConfig],
    calibration: Optional[Calibration],
    new_tokens: int,
    progress: bool = False,
) -> Conversion:
    """Convert float ``model`` in place, compare it with its float self and its fake-quant twin on
    ``batch`` (prompt logits and ``new_tokens`` greedy tokens), and count one spike-mode forward."""
    (run,) = convert_and_compare(model, [batch], new_tokens, config, calibration, progress=progress)
    return Conversion(run, op_report(model, **batch))

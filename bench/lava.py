"""Lava simulation speed: a spike-driven TC-LIF linear layer against the same layer in PyTorch, and
the whole converted model on Lava with its emulated accelerator against the analytic model.

Run by hand (``python bench/lava.py``); writes a Markdown table to ``bench/results/lava.md`` and
prints it. TC-LIF at L = 32 (T = 4), int8 weights, a stream of float32 activations with a
per-tensor absmax scale. Lava: ``run_lava`` end to end (build, compile, start, run, read back,
stop) on ``Loihi2SimCfg``; its steady-state rate comes from the extra steps of a longer stream
(``--long-tokens``), which leave out the fixed costs. PyTorch: ``TCLIFNode.encode``, ``W @ s_t``
in int64 at every step and Horner's integration. Every Lava result is checked against PyTorch's. A second table compares
the two read-back paths for the largest layer's output. Times are the best of ``--repeats``.

Target (Lava-backend issue): the 1024 -> 1024 layer runs 64 tokens in under 30 s.

Whole model (``--sections whole``): ``spikemllm lava --model M --tiny-batch --whole --json`` per
model and grouping (the recommended configuration, calibrated on the model's bundled records; a
random batch of 2 padded rows; a prefill and ``--decode-steps`` greedy decode steps, fixed point),
timed by phase; ``--real`` adds the trained ``easyvqa-llava`` on its 4 bundled rows. Targets
(whole-model issue): the whole tiny model, prefill + 4 decode tokens, under 2 minutes on 2 cores;
emulated and analytic cycle counts within 5 % of each other on compute-bound layers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

# This script is named lava.py and Python puts its folder first on sys.path, where it would
# shadow the lava package: take that folder off before anything imports lava.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import spikemllm_sj.lava_backend as lava_backend  # noqa: E402  (before anything from lava)
from spikemllm_sj.lava_backend import SpikeLinearSpec, run_lava, to_lava  # noqa: E402
from spikemllm_sj.neurons import TCLIFNode, absmax_scale, integrate  # noqa: E402

TARGET_S = 30.0


def best_time(fn, repeats: int):
    """``(best seconds, last result)`` of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def pytorch_layer(node: TCLIFNode, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The spike-driven layer in PyTorch: ``[n_tokens, out]`` integer currents."""
    spikes = node.encode(x).to(torch.int64)  # [T, n_tokens, in]
    return integrate(spikes @ weight.to(torch.int64).T, node.code.leak)


def read_back_times(size: int, n_tokens: int) -> tuple[float, float]:
    """Seconds to read ``[size, n_tokens]`` values from a Lava sink: ``Var.get`` vs ``Extractor``."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    data = np.random.default_rng(0).integers(-(1 << 20), 1 << 20, (size, n_tokens)).astype(float)
    run_cfg = Loihi2SimCfg(select_tag="floating_pt", exception_proc_model_map={Extractor: PyLoihiExtractorModel})
    times = []
    for sink in (Sink(shape=(size,), buffer=n_tokens), Extractor(shape=(size,), buffer_size=n_tokens)):
        source = Source(data=data)
        source.s_out.connect(sink.a_in if isinstance(sink, Sink) else sink.in_port)
        try:
            sink.run(condition=RunSteps(num_steps=n_tokens), run_cfg=run_cfg)
            start = time.perf_counter()
            if isinstance(sink, Sink):
                values = sink.data.get()
            else:
                values = np.stack([sink.receive() for _ in range(n_tokens)], axis=-1)
            times.append(time.perf_counter() - start)
        finally:
            sink.stop()
        assert np.array_equal(values, data)
    return times[0], times[1]


WHOLE_TARGET_S = 120.0
WHOLE_CYCLES_TARGET = 0.05


def whole_model_row(model: str, grouping: str, decode_steps: int, tiny: bool) -> tuple[dict, float]:
    """``spikemllm lava --whole --json`` of ``model`` (its JSON) and the command's wall seconds."""
    command = [sys.executable, "-m", "spikemllm_sj.commands.cli", "lava", "--model", model, "--whole", "--json",
               "--decode-steps", str(decode_steps), "--grouping", grouping] + (["--tiny-batch"] if tiny else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout), seconds


def whole_model_section(models: list[str], groupings: list[str], decode_steps: int, real: bool) -> list[str]:
    lines = [
        "",
        f"## The whole model on Lava: a prefill and {decode_steps} greedy decode steps, fixed point",
        "",
        "`spikemllm lava --model M --tiny-batch --whole --decode-steps "
        f"{decode_steps} --grouping G --json` (recommended configuration; a random batch of 2 padded rows of text and "
        "image tokens)" + ("; `easyvqa-llava`: its 4 bundled rows, without `--tiny-batch`" if real else "") + ". "
        "Phases: the PyTorch reference generation, building the processes, compiling and starting them, the Lava "
        "steps, reading the readouts back, stopping. Command: the whole `spikemllm lava` call, loading and "
        "converting included. Exact: every forward's logits and the generated tokens equal PyTorch spike mode's "
        "bit for bit.",
        "",
        "| model | grouping | processes | site calls | Lava steps | reference (s) | build (s) | compile + start (s) "
        "| run (s) | read back (s) | stop (s) | Lava total (s) | command (s) | Lava steps/s | exact | under 2 min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    runs = [(m, g, True) for m in models for g in groupings] + ([("easyvqa-llava", "layer", False)] if real else [])
    comparisons = []
    for model, grouping, tiny in runs:
        out, seconds = whole_model_row(model, grouping, decode_steps, tiny)
        t = out["timings_s"]
        lava_s = t["build"] + t["compile_and_start"] + t["run"] + t["read_back"] + t["stop"]
        lines.append(
            f"| {model} | {grouping} | {out['processes']} | {out['site_calls']} | {out['lava_steps']} | {t['reference']:.2f} "
            f"| {t['build']:.2f} | {t['compile_and_start']:.2f} | {t['run']:.2f} | {t['read_back']:.3f} | {t['stop']:.2f} "
            f"| {lava_s:.1f} | {seconds:.1f} | {out['lava_steps'] / t['run']:.0f} | {'yes' if out['exact'] else 'NO'} "
            f"| {'yes' if lava_s < WHOLE_TARGET_S else 'no'} |"
        )
        print(lines[-1], flush=True)
        if grouping == groupings[0]:
            comparisons.append((model, out))
    lines += [
        "",
        "### Emulated (in the Lava processes) vs analytic accelerator model, the prefill, per site",
        "",
        "Synaptic operations: counted by the synapse processes vs SpikingJelly's `SynOpCounter` in PyTorch on the same "
        "prefill. PE cycles: the processes' `ceil(synops of a step / pe_count)` summed over the steps vs the analytic "
        "`synops / pe_count`. Compute-bound: in the emulation (a call's cycles above its HBM time: the prefill's tokens "
        "share one window, so a layer's weights are read once per call; the analytic model reads them once per token "
        "and is memory-bound on most of these layers).",
        "",
        "| model | sites | synops equal | compute-bound sites | within 5 % | largest difference | mean difference "
        "| prefill emulated (us) | prefill analytic (us) | decode tokens/s emulated (batch rows) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, out in comparisons:
        sites = out["sites"]
        bound = [s for s in sites if s["bound_emulated"] == "compute"]
        diffs = [s["cycles_difference"] for s in bound]
        within = sum(1 for d in diffs if abs(d) <= WHOLE_CYCLES_TARGET)
        largest, mean = (f"{max(diffs, key=abs):+.1%}", f"{sum(diffs) / len(diffs):+.1%}") if diffs else ("", "")
        decode = out["forwards"][1:]
        rate = sum(f["tokens"] for f in decode) / sum(f["latency_s"] for f in decode) if decode else float("nan")
        lines.append(
            f"| {model} | {len(sites)} | {'yes' if all(s['synops_emulated'] == s['synops_analytic'] for s in sites) else 'NO'} "
            f"| {len(bound)} | {within} | {largest} | {mean} "
            f"| {out['forwards'][0]['latency_s'] * 1e6:.2f} | {out['analytic_prefill_s'] * 1e6:.2f} | {rate:,.0f} |"
        )
    model, out = comparisons[0]
    lines += ["", f"Per site, {model} (prefill):", "",
              "| site | kind | synops | PE cycles emulated | PE cycles analytic | difference | bound (emulated / analytic) |",
              "|---|---|---:|---:|---:|---:|---|"]
    for s in out["sites"]:
        lines.append(f"| {s['site']} | {s['kind']} | {s['synops_emulated']:,} | {s['cycles_emulated']:,} "
                     f"| {s['cycles_analytic']:,.1f} | {s['cycles_difference']:+.1%} | {s['bound_emulated']} / {s['bound_analytic']} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=256, help="longer stream for the steady-state rate")
    parser.add_argument("--levels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lava.md"))
    parser.add_argument("--sections", nargs="+", choices=("layer", "whole"), default=["layer", "whole"])
    parser.add_argument("--whole-models", nargs="+", default=["tiny-qwen2-vl", "tiny-llava"])
    parser.add_argument("--groupings", nargs="+", choices=("layer", "site"), default=["layer", "site"])
    parser.add_argument("--decode-steps", type=int, default=4)
    parser.add_argument("--real", action="store_true", help="add easyvqa-llava (minutes: 72 processes, 300 sites)")
    args = parser.parse_args()
    lines = ["# Lava: one spike-driven layer, and the whole converted model", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"lava-nc {version('lava-nc')}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
             f"numpy {np.__version__}. Command: `python bench/lava.py {' '.join(sys.argv[1:])}`."]
    if "layer" in args.sections:
        lines += layer_section(args)
    if "whole" in args.sections:
        lines += whole_model_section(args.whole_models, args.groupings, args.decode_steps, args.real)
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def layer_section(args) -> list[str]:

    torch.manual_seed(0)
    node = TCLIFNode(levels=args.levels)
    steps = node.steps
    n_steps = args.tokens * steps
    lines = [
        "",
        f"## A spike-driven TC-LIF linear layer: L = {args.levels} (T = {steps}), {args.tokens} tokens ({n_steps} steps)",
        "",
        f"Best of {args.repeats}.",
        "",
        f"Lava end to end: `run_lava` from the token tensor to the result (build, compile, start, run, read "
        f"back, stop). Steady state: steps per second of the {args.long_tokens - args.tokens} extra tokens "
        f"of a {args.long_tokens}-token stream, without the fixed costs. Every Lava result equals PyTorch's "
        f"bit for bit.",
        "",
        "| layer | implementation | time (s) | steps/s end to end | steps/s steady state | x PyTorch time |",
        "|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        weight = torch.randint(-128, 128, (size, size), dtype=torch.int8)
        x_long = torch.randn(args.long_tokens, size)
        x = x_long[: args.tokens]
        scale = float(absmax_scale(x_long, node.code.levels))
        scaled_node = TCLIFNode(levels=args.levels, scale=scale)
        spec = SpikeLinearSpec(weight, node.code, scale)
        with torch.no_grad():
            t_torch, reference = best_time(lambda: pytorch_layer(scaled_node, weight, x), args.repeats)
        rows = [("PyTorch (encode + int64 matmul per step)", t_torch, "")]
        for precision in lava_backend.PRECISIONS:
            network = to_lava(spec, precision=precision)
            t_long, acc = best_time(lambda: run_lava(network, x), args.repeats)
            assert torch.equal(acc, reference), f"Lava {precision} differs from PyTorch"
            t_longer, _ = best_time(lambda: run_lava(network, x_long), args.repeats)
            steady = (args.long_tokens - args.tokens) * steps / (t_longer - t_long)
            rows.append((f"Lava {precision}", t_long, f"{steady:.0f}"))
            if size == max(args.sizes) and t_long > TARGET_S:
                print(f"WARNING: {size} -> {size} {precision} took {t_long:.1f} s, over the {TARGET_S:.0f} s target")
        for name, t, steady in rows:
            lines.append(
                f"| {size} -> {size} | {name} | {t:.3f} | {n_steps / t:.0f} | {steady} | {t / t_torch:.0f} |"
            )
            print(lines[-1], flush=True)

    size = max(args.sizes)
    t_get, t_extract = read_back_times(size, args.tokens)
    values = size * args.tokens
    lines += [
        "",
        f"### Read-back of {values} values ({args.tokens} tokens x {size} outputs) after a run",
        "",
        "| path | time (s) | us per value |",
        "|---|---|---|",
        f"| `Var.get` of a `lava.proc.io.sink.RingBuffer` (one message per element) | {t_get:.3f} | "
        f"{t_get / values * 1e6:.2f} |",
        f"| `lava.proc.io.extractor.Extractor`, one array per step (`run_lava`'s path) | {t_extract:.4f} | "
        f"{t_extract / values * 1e6:.3f} |",
    ]
    return lines


if __name__ == "__main__":
    main()

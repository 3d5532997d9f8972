"""Encode + decode throughput of the spike codes, against a plain fake-quantize and SpikingJelly's IFNode.

Run by hand (``make bench`` or ``python bench/neurons.py``); writes a Markdown table to
``bench/results/neurons.md`` and prints it. Activation ``[4, 1024, 4096]`` float32, per-token
absmax scales, inference (no autograd). Trains that would not fit in memory at once are processed
in token chunks (same chunking for every row of a given step count); times are the best of
``--repeats`` rounds, timed round-robin.

Targets (issue #2): TC-LIF >= 4x / 30x the throughput of binary rate coding at L = 16 / 256,
>= 2x / 15x that of bidirectional rate coding, and an encode+decode round trip within (T+1)x
the time of a plain fake-quantize.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
from pathlib import Path

import torch
from spikingjelly.activation_based import functional, neuron

from spikemllm_sj.neurons import BidirectionalRateNode, BinaryRateNode, IntLevels, TCLIFNode, absmax_scale, fake_quantize

CHUNK_BYTES = 1 << 30  # spike trains are processed in token chunks of at most 1 GiB


def best_times(fns: dict, repeats: int) -> dict:
    """Best wall time of each function, timed round-robin after one warm-up round, so that every
    row meets the same allocator and cache state (64 MB temporaries make page faults a large,
    state-dependent share of a pass)."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def chunks(x: torch.Tensor, scale: torch.Tensor, steps: int):
    rows = max(1, CHUNK_BYTES // (steps * x.shape[-1] * x.element_size()))
    flat_x, flat_s = x.reshape(-1, x.shape[-1]), scale.reshape(-1, 1)
    for i in range(0, flat_x.shape[0], rows):
        yield flat_x[i : i + rows], flat_s[i : i + rows]


def round_trip(node, x, scale):
    for xc, sc in chunks(x, scale, node.steps):
        node.decode(node.encode(xc, sc), sc)


def if_node_round_trip(steps, x, scale):
    # SpikingJelly's IF neuron with soft reset, driven by the constant current x / (scale * T):
    # the classic rate-coding conversion. Its spike count approximates the level; not exact.
    node = neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m")
    for xc, sc in chunks(x, scale, steps):
        current = xc / (sc * steps)
        (node(current.expand(steps, *current.shape)).sum(0) * sc)
        functional.reset_net(node)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[4, 1024, 4096])
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "neurons.md"))
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(*args.shape)
    n = x.numel()
    lines = [
        f"# Spike coding throughput: encode + decode of a {list(args.shape)} float32 activation",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}. Command: `python bench/neurons.py`. Best of {args.repeats}.",
        "",
        "| L | method | T | time (s) | Melem/s | x fake-quant time | TC-LIF speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    with torch.no_grad():
        for L in args.levels:
            levels = IntLevels(L)
            scale = absmax_scale(x, levels, "token")
            coders = {
                "TC-LIF": TCLIFNode(L),
                "bidirectional rate": BidirectionalRateNode(L),
                "binary rate (offset code)": BinaryRateNode(L),
            }
            ours = {"fake-quantize (round, clamp, rescale)": lambda: fake_quantize(x, scale, levels)}
            ours.update({name: functools.partial(round_trip, node, x, scale) for name, node in coders.items()})
            t = best_times(ours, args.repeats)
            t_fq = t["fake-quantize (round, clamp, rescale)"]
            rows = [(name, coders[name].steps if name in coders else 0, t[name]) for name in ours]
            # SpikingJelly's IFNode is slow at hundreds of steps: one timed run each.
            stock = {
                f"SpikingJelly IFNode at T of {name}": functools.partial(if_node_round_trip, node.steps, x, scale)
                for name, node in coders.items()
            }
            t = best_times(stock, 1)
            rows += [(name, node.steps, t[name]) for name, node in zip(stock, coders.values())]
            t_tc = rows[1][2]
            for name, steps, t in rows:
                speedup = "" if name.startswith("fake") or name == "TC-LIF" else f"{t / t_tc:.1f}x"
                lines.append(
                    f"| {L} | {name} | {steps or '-'} | {t:.3f} | {n / t / 1e6:.1f} | {t / t_fq:.2f} | {speedup} |"
                )
                print(lines[-1], flush=True)
            tc_steps = coders["TC-LIF"].steps
            lines.append(
                f"| {L} | *TC-LIF round trip / fake-quantize: {t_tc / t_fq:.2f}x "
                f"(budget T+1 = {tc_steps + 1}x)* | | | | | |"
            )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

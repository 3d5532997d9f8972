"""Cost of the randomised Hadamard rotation: the fast Walsh-Hadamard transform against the dense matmul.

Run by hand (``python bench/hadamard.py``); writes ``bench/results/hadamard.md`` and prints it.
Per size: ``x Q`` on ``[256, n]`` float32 activations by
:class:`~spikemllm_sj.quantization.transforms.HadamardRotation` (FWHT over the ``2^k`` factor plus
an ``[m, m]`` matmul) and by ``x @ Q`` with the dense ``Q`` ``[n, n]`` float32 that the old dense
rotation stored; the two rows of a size are timed round-robin (``torch.utils.benchmark``, median of
each round's blocked autorange, best of ``--rounds`` rounds), once per ``--threads`` count.
Memory: bytes of the module's buffers (fast: int8 signs and ``H_m``; dense: the float32 ``Q``).
The load average before and after is recorded: on a shared machine the times are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from spikemllm_sj.quantization.hadamard import hadamard_block, sylvester  # noqa: E402
from spikemllm_sj.quantization.transforms import rotation  # noqa: E402

SIZES = {
    576: "SmolLM2-135M hidden",
    1536: "SmolLM2-135M intermediate",
    3584: "Qwen2-7B hidden",
    18944: "Qwen2-7B intermediate",
    4096: "LLaMA / InternLM2-7B hidden",
    14336: "InternLM2-7B intermediate",
    11008: "LLaVA-1.5-7B intermediate",
}


def dense_q(t) -> torch.Tensor:
    """``Q = diag(s) (H_m (x) H_{2^k}) / sqrt(n)`` ``[n, n]`` float32, built without the fast transform."""
    q = torch.kron(hadamard_block(t.order).float(), sylvester(t.order.block).float())
    return q.mul_(t.signs[:, None].float() * t.size**-0.5)


def best_medians(stmts: dict, x: torch.Tensor, rounds: int, threads: int) -> dict[str, float]:
    """Best over ``rounds`` of each statement's median time (s), the statements timed round-robin."""
    timers = {name: Timer("f(x)", globals={"f": f, "x": x}, num_threads=threads) for name, f in stmts.items()}
    best = {name: float("inf") for name in stmts}
    for _ in range(rounds):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.blocked_autorange(min_run_time=0.2).median)
    return best


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hadamard.md"))
    args = parser.parse_args()

    load_start = os.getloadavg()
    rows = []
    with torch.no_grad():
        for n in args.sizes:
            t = rotation(n)
            q = dense_q(t)
            x = torch.randn(args.tokens, n, generator=torch.Generator().manual_seed(n))
            error = float((t(x) - x @ q).abs().max() / (x @ q).abs().max())
            fast_bytes = sum(b.numel() * b.element_size() for b in t.buffers())
            for threads in args.threads:
                times = best_medians({"fast": t, "dense": lambda x, q=q: x @ q}, x, args.rounds, threads)
                rows.append((threads, n, t, times, fast_bytes, q.numel() * q.element_size(), error))
                print(f"{n}, {threads} threads: fast {times['fast'] * 1e3:.2f} ms, dense {times['dense'] * 1e3:.2f} ms", flush=True)
            del q
    load_end = os.getloadavg()
    busy = max(load_start[0], load_end[0]) > os.cpu_count()
    lines = [
        f"# Randomised Hadamard rotation `x Q`, `x` [{args.tokens}, n] float32: fast transform vs dense matmul",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}. "
        f"Command: `python {' '.join(['bench/hadamard.py', *sys.argv[1:]])}`.",
        f"Load average (1 min) {load_start[0]:.1f} before, {load_end[0]:.1f} after"
        + (": the machine was busy (shared), times are noisy." if busy else "."),
        "",
        f"Times: median of a `torch.utils.benchmark` blocked autorange, best of {args.rounds} rounds, the two rows "
        "of a size timed round-robin. Memory: bytes of buffers (fast: int8 signs [n], H_m [m, m] and the "
        "FWHT kernel H_16; dense: Q [n, n] float32). Error: max |fast - dense| / max |dense|.",
    ]
    for threads in args.threads:
        lines += [
            "",
            f"## {threads} torch thread{'s' if threads > 1 else ''}",
            "",
            "| n | model size | H_n | fast (ms) | dense (ms) | dense / fast | fast buffers (B) | dense buffers (B) "
            "| dense / fast memory | error |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row_threads, n, t, times, fast_bytes, dense_bytes, error in rows:
            if row_threads == threads:
                lines.append(
                    f"| {n} | {SIZES.get(n, '')} | {t.order} | {times['fast'] * 1e3:.2f} | {times['dense'] * 1e3:.2f} "
                    f"| {times['dense'] / times['fast']:.1f}x | {fast_bytes:,} | {dense_bytes:,} "
                    f"| {dense_bytes / fast_bytes:,.0f}x | {error:.1e} |"
                )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

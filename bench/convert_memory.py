"""Peak memory of ``convert`` relative to the model's own size (target: <= 1.3x; 1.10x in bf16).

Run by hand: ``python bench/convert_memory.py``; writes ``bench/results/convert_memory.md``.
Each row runs in a fresh subprocess: build a Qwen2-VL of the size below (random weights), reset
the kernel's peak-RSS mark (``/proc/self/clear_refs``), convert, and read the peak resident set
(``VmHWM``). The ratio is (peak RSS during conversion - RSS before the model was built) / bytes of
the model's parameters and buffers.

glibc keeps freed blocks below its (dynamically raised) mmap threshold in the process instead of
returning them to the system, so the plain peak RSS includes allocator slack that varies with the
order of allocations (seen here: 1.10x to 1.24x for the same conversion). The second measurement
runs the same child with ``MALLOC_MMAP_THRESHOLD_=65536``: every tensor of 64 KiB or more is
mapped on its own and returned when freed, so the peak is the memory the conversion really holds.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROWS = (("float32", "RTN", "disk"), ("bfloat16", "RTN", "disk"), ("bfloat16", "QuaRot", "disk"), ("bfloat16", "RTN", "memory"))
SIZES = dict(text_hidden=1024, text_layers=8, intermediate=4096, vision_hidden=512, vision_layers=8)

CHILD = r"""
import json, sys, torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from spikemllm_sj import SpikeConfig, convert
from spikemllm_sj.quantization.methods import METHODS

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

sizes, dtype, rollback, method = json.loads(sys.argv[1]), getattr(torch, sys.argv[2]), sys.argv[3], METHODS[sys.argv[4]]()
before = rss("VmRSS:")
config = Qwen2VLConfig(
    text_config=dict(hidden_size=sizes["text_hidden"], intermediate_size=sizes["intermediate"],
                     num_hidden_layers=sizes["text_layers"], num_attention_heads=16, num_key_value_heads=4,
                     vocab_size=1024, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [8, 12, 12]}),
    vision_config=dict(depth=sizes["vision_layers"], embed_dim=sizes["vision_hidden"], hidden_size=sizes["text_hidden"],
                       num_heads=8, mlp_ratio=4),
    image_token_id=1000, video_token_id=1001, vision_start_token_id=1002, vision_end_token_id=1003,
)
model = Qwen2VLForConditionalGeneration(config).to(dtype).eval()
size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
convert(model, SpikeConfig(method=method), rollback=rollback)
after = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
print(json.dumps({"model_bytes": size, "converted_bytes": after, "peak": rss("VmHWM:") - before}))
"""


def main():
    lines = [
        "# Peak memory of `convert` (Qwen2-VL with random weights)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}. Command: `python bench/convert_memory.py`.",
        f"Model: {SIZES} (fresh subprocess per row; peak RSS from VmHWM, see the script's docstring).",
        "",
        "`rollback` is where the released float weights wait until the conversion commits (`convert(..., rollback=)`):",
        "`disk`, the default, or host `memory` (which then holds them all).",
        "",
        "| dtype | method | rollback | model (MB) | converted (MB) | peak RSS (MB) | peak / model | held peak (MB) | held / model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, method, rollback in ROWS:
        def child(**env):
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SIZES), dtype, rollback, method],
                                 capture_output=True, text=True, check=True, env={**os.environ, **env})
            return json.loads(out.stdout.strip().splitlines()[-1])

        r, held = child(), child(MALLOC_MMAP_THRESHOLD_="65536")
        mb = 1 << 20
        lines.append(
            f"| {dtype} | {method} | {rollback} | {r['model_bytes'] / mb:.0f} | {r['converted_bytes'] / mb:.0f} | {r['peak'] / mb:.0f} "
            f"| {r['peak'] / r['model_bytes']:.2f}x | {held['peak'] / mb:.0f} | {held['peak'] / held['model_bytes']:.2f}x |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    out_path = Path(__file__).parent / "results" / "convert_memory.md"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

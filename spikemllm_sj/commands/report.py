"""``spikemllm report``: ``report.md`` and its plots from a run folder's JSON
(:func:`~spikemllm_sj.commands.convert.run_convert`).

:func:`render_report` reads ``run.json``, ``activity.json``, ``energy.json`` and, when present,
``eval.json`` (``spikemllm eval --out``), draws the plots of :mod:`spikemllm_sj.commands.plots`
and writes the Markdown report; :func:`format_summary` is the terminal table of the same run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikemllm_sj.analysis.plots import plot_run
from spikemllm_sj.commands import options
from spikemllm_sj.models.loading import EASYVQA_LLAVA
from spikemllm_sj.neurons import MSTSConfig

__all__ = ["render_report", "format_summary", "add_parser", "run"]

REQUIRED = ("run.json", "activity.json", "energy.json")


def _steps_text(msts: dict) -> str:
    codes = MSTSConfig(bits=msts["bits"], scheme=msts["scheme"], signed=msts["signed"]).codes
    return ", ".join(f"{m.name.lower()} {'at most ' if c.data_dependent else ''}{c.steps} steps ({c.levels.bits}-bit)"
                     for m, c in codes.items())


def _med_text(med: dict) -> str:
    chosen = med["chosen"]
    steps = ", ".join(f"{m} {t}" for m, t in med["steps"].items())
    mean_med = ", ".join(f"{m} {v:+.3f}" for m, v in med["mean_med"].items())
    cosine = chosen["measured_fidelity"]
    return (f"budget {med['budget']:g} average steps per language-model token: chose {steps} "
            f"({chosen['average_steps']:.2f} steps on average"
            + (f", logit cosine to FP32 {cosine:.4f} on the calibration batches" if cosine is not None else "")
            + f"; best of {med['candidates_measured']} measured plans); mean MED (text minus modality): {mean_med}"
            + ("" if not med.get("clip_ratios_searched_at") else
               "; the spiking model is the copy MED measured, its clip ratios searched at "
               + ", ".join(f"{m} {t}" for m, t in med["clip_ratios_searched_at"].items()) + " steps"))


def _configuration(run: dict) -> list[str]:
    c = run["config"]
    if c["act_scales"] == "static":
        cal = run["calibration"]
        scales = (f"static, per tensor and modality, calibrated on {cal['records']} records of `{cal['path']}` "
                  f"({cal['batches']} batches, {len(cal['lines_left_out'])} lines left out)")
    else:
        scales = "dynamic, per token (absmax)"
    weights = "random (a tiny offline model: answers mean nothing, fidelity measures the conversion)" \
        if run["model"].startswith("tiny-") else "trained"
    clip = c["act_clip"]
    scales += ("; clip ratio searched per layer and modality on the calibration's inputs" if clip == "search"
               else f"; clip ratio {clip:g}" if clip != 1.0 else "")
    med = "not applied: every layer uses the configuration's steps" if run["med"] is None else _med_text(run["med"])
    method = c["method"]
    rows = [
        ("model", f"`{run['model']}` ({run['model_class']}, {run['label']}, seed {run['seed']}); weights {weights}"),
        ("spike code", f"{c['msts']['scheme']}, {'signed' if c['msts']['signed'] else 'unsigned'}; {_steps_text(c['msts'])}"),
        ("weights", f"{c['weight_bits']}-bit, per output channel, {c['weight_method'].upper()}"
                    + (", scales MSE-clipped" if c["weight_clip"] == "mse" else "")),
        ("activation scales", scales),
        ("quantization method", f"{method['name']}" + "".join(f", {k}={v}" for k, v in method.items() if k != "name")),
        ("attention", f"K/V {c['kv_bits']}-bit" + (f" (clip ratio {c['kv_clip']:g})" if c["kv_clip"] != 1.0 else "")
                      + f", probabilities {c['prob_bits']}-bit (binary TC-LIF)"),
        ("output head", "spike-driven" if c["convert_lm_head"] else f"kept in {run['label']}"),
        ("MED schedule", med),
        ("compared rows", f"{len(run['inputs']['rows'])} (image, question) rows, {run['inputs']['tokens']} real tokens: "
                          + ", ".join(sorted({f"`{r['image']}`" for r in run["inputs"]["rows"]}))),
        ("fidelity guard", "none" if run["fidelity"]["guard"]["min_cosine"] is None else
         f"logit cosine to {run['label']} at least {run['fidelity']['guard']['min_cosine']:g}"),
    ]
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"


def _guard(run: dict) -> list[str]:
    """The fidelity guard's verdict, loud when it failed."""
    f = run["fidelity"]
    guard = f["guard"]
    if guard["min_cosine"] is None:
        return []
    if guard["passed"]:
        return [f"Fidelity guard passed: logit cosine {f['logit_cosine']:.4f} >= {guard['min_cosine']:g}.", ""]
    why = options.guard_failure(f["logit_cosine"], guard["min_cosine"], run["label"])
    return [f"> **{options.GUARD_FAILED}**: {why}. The figures below describe a broken conversion.", ""]


def _fidelity(run: dict) -> list[str]:
    f, label = run["fidelity"], run["label"]
    same = f["new_tokens_equal_to_float"]
    lines = [
        *_guard(run),
        "| check | value |",
        "|---|---:|",
        f"| spiking == fake-quant ANN, bit for bit (prompt logits and new tokens) | {'yes' if f['spike_equals_twin'] else '**no**'} |",
        f"| logit cosine, spiking vs {label} (mean over real prompt tokens) | {f['logit_cosine']:.4f} |",
        f"| next-token top-1 agreement, spiking vs {label} | {f['top1_agreement']:.3f} |",
        f"| greedy new tokens equal to {label}'s | {'n/a (lengths differ)' if same is None else f'{same:.3f}'} |",
        "",
        f"| image | question | {label} ANN | fake-quant ANN | spiking |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| ![]({row['shown_as']}) | {_cell(g['question'])} | {_cell(g['float'])} | {_cell(g['fake_quant'])} | "
              f"{_cell(g['spike'])} |" for row, g in zip(run["inputs"]["rows"], run["generation"])]
    return lines


def _ops_and_energy(run: dict, energy: dict) -> list[str]:
    ops = run["ops"]
    steps = ", ".join(f"{m} {v:.2f}" for m, v in ops["steps_per_token"].items())
    lines = [
        "One spike-mode forward over the prompt rows (SpikingJelly op counters; [`op_report.txt`](op_report.txt)):",
        "",
        "| spikes | synaptic ops | non-spiking FLOPs | mean steps per token (linear inputs and queries; the "
        "attention probabilities' steps excluded) |",
        "|---:|---:|---:|---|",
        f"| {ops['spikes']} | {ops['synops']} | {ops['non_spiking_flops']} | {steps} |",
        "",
    ]
    if "error" in energy:
        return lines + [f"Energy: not computed: {energy['error']}"]
    total = energy["comparison"]["total"]
    tiny = run["model"].startswith("tiny-")
    lines += [
        "Energy (the parameterised accelerator model of `spikemllm_sj/analysis/accelerator.py` against an FP16 GPU "
        "roofline, both costed on this pass's counts; a model, not a measurement: its clock is assumed and its PE "
        "count, power and GPU efficiency are fitted so that the Qwen2-VL-7B preset reproduces the paper's 9.06x / "
        "25.8x (`accelerator_params.toml`); per-site rows in [`energy.md`](energy.md))"
        + (f". `{run['model']}` is a {'random ' if tiny else ''}toy-sized model: its tokens/s say how fast the modelled "
           "chip would run this small network, not what it does on a real MLLM" if tiny or run["model"] == EASYVQA_LLAVA else "")
        + ":",
        "",
        "| device (modelled) | tokens/s | power (W) | energy per token (J) |",
        "|---|---:|---:|---:|",
    ]
    for key, name in (("accelerator_chip", "accelerator, chip"), ("accelerator_with_hbm", "accelerator, chip + HBM"), ("gpu", "GPU")):
        v = total[key]
        lines.append(f"| {name} | {v['tokens_per_s']:.1f} | {v['power_w']:.3g} | {v['energy_per_token_j']:.4g} |")
    lines += ["", "| ratio (model, parameters fitted to the paper) | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in total["ratios"].items()]
    return lines


def _lava_whole(whole: dict) -> list[str]:
    if "skipped" in whole:
        return [f"Not run: {whole['skipped']}."]
    t = whole["timings_s"]
    lines = [
        f"The converted model's generation on the shown rows ({whole['forwards']} forwards: the prefill and "
        f"{whole['forwards'] - 1} greedy decode step{'' if whole['forwards'] == 2 else 's'}) as one Lava network of "
        f"{whole['processes']} processes: "
        f"{whole['site_calls']} site calls, {whole['lava_steps']} Lava steps.",
        "",
        f"Every forward's logits equal PyTorch spike mode's bit for bit: **{'yes' if whole['logits_exact'] else 'no'}**; "
        f"generated tokens equal: **{'yes' if whole['tokens_equal'] else 'no'}**. Wall time: compile + start "
        f"{t['compile_and_start']:.1f} s, run {t['run']:.1f} s, stop {t['stop']:.1f} s.",
        "",
        f"Emulated accelerator (counted in the processes; model, parameters fitted to the paper): prefill of "
        f"{whole['prefill_tokens']} tokens in {whole['prefill_latency_s'] * 1e6:.2f} us",
    ]
    if whole["decode_tokens_per_s"] is not None:
        lines[-1] += (f"; decode {whole['decode_tokens_per_s']:,.0f} tokens/s (the batch's rows together), "
                      f"{whole['energy_per_decode_token_j'] * 1e6:.3f} uJ per token (chip)")
    lines[-1] += ". `spikemllm lava --whole` prints the per-site comparison with the analytic model."
    return lines


def _lava(lava: dict) -> list[str]:
    if "skipped" in lava:
        return [f"Not run: {lava['skipped']}."]
    tokens = ", ".join(f"{n} {c} ({lava['steps'][n]} steps each)" for n, c in lava["tokens"].items())
    return [
        f"`{lava['layer']}` ({lava['kind']}) on Lava ({lava['precision']}) against PyTorch spike mode, on the "
        f"layer's real input in this run: tokens {tokens}; {lava['lava_steps']} Lava steps in {lava['lava_runs']} runs.",
        "",
        f"Exact, bit for bit: **{'yes' if lava['exact'] else 'no'}** (max abs difference {lava['max_abs_diff']:g}); "
        f"wall time Lava {lava['lava_seconds']:.2f} s, PyTorch {lava['torch_seconds'] * 1e3:.1f} ms.",
    ]


def _evaluation(e: dict) -> list[str]:
    names = {"float": f"{e['label']} ANN", "fake_quant": "fake-quant ANN", "spike": "spiking"}
    relative = "n/a" if e["gap_relative_percent"] is None else f"{e['gap_relative_percent']:.1f}% of {e['label']}"
    return [
        f"`{e['model']}` on `{e['data']}` ([`eval.json`](eval.json)): {e['records_evaluated']} records, "
        f"{e['lines_left_out']} lines left out; normalised exact match.",
        "",
        "| model | accuracy |",
        "|---|---:|",
        *[f"| {names[m]} | {100 * a:.1f}% |" for m, a in e["accuracy"].items()],
        "",
        f"Gap {e['label']} - spiking: {e['gap_points']:.1f} points ({relative}); spiking answers == fake-quant answers: "
        f"{'yes' if e['spike_equals_twin'] else '**no**'}.",
    ]


def _plots(activity: dict, plots: dict) -> list[str]:
    raster = activity["raster"]
    return [
        "Firing rate per block and modality ([`firing_rates.png`](firing_rates.png)):",
        "",
        f"![firing rates]({plots['firing_rates'].name})",
        "",
        f"Spike raster of {len(raster['neurons'])} input neurons of `{raster['site']}` ([`raster.png`](raster.png)):",
        "",
        f"![spike raster]({plots['raster'].name})",
        "",
        "Time steps per token ([`steps.png`](steps.png)):",
        "",
        f"![steps per token]({plots['steps'].name})",
    ]


def _files(folder: Path, run: dict) -> str:
    saved = run["saved_model"]
    return (
        "`run.json` (everything above), `op_report.json` / `op_report.txt`, `activity.json`, `energy.json`"
        + (", `energy.md`" if (folder / "energy.md").is_file() else "")
        + (f", the spiking model in `{Path(saved).name}/` (`spikemllm_sj.load_spiking`)" if saved else "")
        + "."
    )


def _read_run(folder: Path) -> tuple[dict, dict, dict]:
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a run folder of `spikemllm convert`: missing {', '.join(missing)}")
    run, activity, energy = (json.loads((folder / name).read_text()) for name in REQUIRED)
    if "guard" not in run.get("fidelity", {}) or "rows" not in run.get("inputs", {}):
        raise ValueError(f"{folder / 'run.json'} was written by an older spikemllm-sj (no fidelity guard or compared rows): "
                         "run `spikemllm convert` again")
    if "comparison" not in energy and "error" not in energy:
        raise ValueError(f"{folder / 'energy.json'} holds neither a comparison nor an error")
    return run, activity, energy


def render_report(folder: str | Path) -> Path:
    """Draw the plots and write ``report.md`` in ``folder``; returns the report's path.

    :raises FileNotFoundError: ``folder`` lacks one of the run's JSON files.
    """
    folder = Path(folder)
    run, activity, energy = _read_run(folder)
    plots = plot_run(activity, folder)
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in run["timings_s"].items())
    evaluation = folder / "eval.json"
    sections = [
        ("Configuration", _configuration(run)),
        ("Fidelity", _fidelity(run)),
        *([("Evaluation", _evaluation(json.loads(evaluation.read_text())))] if evaluation.is_file() else []),
        ("Ops and energy", _ops_and_energy(run, energy)),
        ("One layer on Lava", _lava(run["lava"])),
        *([("The whole model on Lava", _lava_whole(run["lava_whole"]))] if "lava_whole" in run else []),
        ("Plots", _plots(activity, plots)),
        ("Files", [_files(folder, run), "", f"Wall time: {timings}."]),
    ]
    lines = [f"# SpikeMLLM run: `{run['model']}`", ""]
    for title, body in sections:
        lines += [f"## {title}", "", *body, ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def format_summary(run: dict) -> str:
    """The run in a few terminal lines: fidelity, answers, ops, Lava, timings."""
    f, label, ops = run["fidelity"], run["label"], run["ops"]
    steps = ", ".join(f"{m} {v:.2f}" for m, v in ops["steps_per_token"].items())
    lava = run["lava"]
    lava_line = f"skipped ({lava['skipped']})" if "skipped" in lava else (
        f"{lava['layer']} exact: {lava['exact']} (max abs diff {lava['max_abs_diff']:g}, {lava['lava_seconds']:.1f} s)")
    whole = run.get("lava_whole", {"skipped": "an older run"})
    whole_line = f"skipped ({whole['skipped']})" if "skipped" in whole else (
        f"exact: {whole['exact']} ({whole['processes']} processes, {whole['lava_steps']} steps, "
        f"{whole['timings_s']['run']:.1f} s)")
    head = f"{'check':<46}{'value':>14}"
    rows = [
        head,
        "-" * len(head),
        f"{'spiking == fake-quant ANN (bit for bit)':<46}{str(f['spike_equals_twin']):>14}",
        f"{'logit cosine vs ' + label:<46}{f['logit_cosine']:>14.4f}",
        f"{'top-1 agreement vs ' + label:<46}{f['top1_agreement']:>14.3f}",
        f"{'spikes':<46}{ops['spikes']:>14}",
        f"{'synaptic ops':<46}{ops['synops']:>14}",
        f"{'non-spiking FLOPs':<46}{ops['non_spiking_flops']:>14}",
        "-" * len(head),
        f"steps per token (probabilities excluded): {steps}",
        f"Lava: {lava_line}",
        f"Lava, whole model: {whole_line}",
    ]
    for g in run["generation"]:
        rows.append(f"Q: {g['question']!r}\n   {label}: {g['float']!r}\n   fake-quant: {g['fake_quant']!r}\n   spiking: {g['spike']!r}")
    e = run.get("evaluation")
    if e:
        acc = e["accuracy"]
        rows.append(f"accuracy on {e['records']} records of {e['data']}: {label} {100 * acc['float']:.1f}%, fake-quant "
                    f"{100 * acc['fake_quant']:.1f}%, spiking {100 * acc['spike']:.1f}% (gap {e['gap_points']:.1f} points; "
                    f"spiking == fake-quant: {e['spike_equals_twin']})")
    guard = f["guard"]
    if guard["min_cosine"] is not None:
        rows.append(f"fidelity guard (logit cosine >= {guard['min_cosine']:g}): "
                    + ("passed" if guard["passed"] else "**FAILED**"))
    rows.append("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in run["timings_s"].items()))
    return "\n".join(rows)


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("report", help="render report.md and the plots of a run folder from its JSON", epilog=options.epilog())
    parser.add_argument("--run", default="out/run", help="run folder written by `spikemllm convert` (default: out/run)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        path = render_report(args.run)
    except (ValueError, FileNotFoundError) as error:
        return options.fail("report", error)
    print(f"written: {path} and its plots")
    return options.EXIT_OK

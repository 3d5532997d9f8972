"""``spikemllm med``: analyze an MLLM, schedule at a few budgets, write the JSON, a Markdown report
and the figures.

Tiny models are measured on random batches (:func:`tiny_batches`); other models on their bundled
records (:func:`~spikemllm_sj.commands.common.inputs_for`: the calibration records to measure on,
the evaluation records held out), in batches of :data:`BATCH_SIZE`."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Optional, Sequence

from spikemllm_sj.ann2snn.calibration import calibrate
from spikemllm_sj.commands import options
from spikemllm_sj.commands.common import inputs_for, record_batches
from spikemllm_sj.commands.run_folder import run_folder
from spikemllm_sj.config import RECOMMENDED, SpikeConfig
from spikemllm_sj.med.analysis import MEDConfig, MEDStudy, Over, analyze, baselines, compare
from spikemllm_sj.med.plots import plot_med
from spikemllm_sj.med.schedule import check_budget, explain
from spikemllm_sj.med.steps import ALL
from spikemllm_sj.models.loading import BUILTIN_MODELS, load_model
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch, tiny_spec, tiny_video_batch

__all__ = ["command", "format_report", "run_med", "tiny_batches", "write_med", "add_parser", "run"]

BATCH_SIZE = 4
MARKER = "med.json"  # what makes a folder a previous med run's


def tiny_batches(model, count: int, seed: int) -> list[dict]:
    """``count`` image batches (``tiny_batch``, 4 rows each, seeds ``seed..``) plus, for families
    with video, ``count`` video batches (``tiny_video_batch``, 2 rows, 4 frames)."""
    batches = [tiny_batch(model, BATCH_SIZE, seed=seed + i) for i in range(count)]
    if tiny_spec(model).family in ("qwen2_vl", "qwen2_5_vl"):
        batches += [tiny_video_batch(model, 2, seed=seed + i) for i in range(count)]
    return batches


def first_record_batches(model, processor, data, count: int) -> list[dict]:
    """The first ``count`` batches of :data:`BATCH_SIZE` records of the JSONL ``data``
    (:func:`~spikemllm_sj.commands.common.record_batches`).

    :raises ValueError: ``data`` has fewer records than ``count`` batches need.
    """
    batches, about = record_batches(model, processor, data, BATCH_SIZE)
    if about["records"] < count * BATCH_SIZE:
        raise ValueError(f"{data} has {about['records']} readable records; {count} batches of {BATCH_SIZE} need "
                         f"{count * BATCH_SIZE}")
    return batches[:count]


def _model_and_batches(model_name: str, seed: int, calibration_batches: int, holdout_batches: int):
    if model_name in TINY_MODELS:
        model = build_tiny_model(model_name, seed=seed)
        return model, tiny_batches(model, calibration_batches, seed), tiny_batches(model, holdout_batches, seed + 1000), (
            f"tiny_batch({BATCH_SIZE} rows) per seed, plus tiny_video_batch(2 rows, 4 frames) per seed where the family "
            "has video")
    inputs = inputs_for(model_name)
    if inputs.evaluation is None:
        raise ValueError(f"{model_name} has no bundled records to hold out: MED runs on the built-in models")
    model, processor = load_model(model_name, seed=seed)
    return (model, first_record_batches(model, processor, inputs.calibration, calibration_batches),
            first_record_batches(model, processor, inputs.evaluation, holdout_batches),
            f"batches of {BATCH_SIZE} records: calibration from {inputs.calibration.name}, held out from "
            f"{inputs.evaluation.name}")


def run_med(
    model_name: str = "tiny-qwen2-vl",
    seed: int = 0,
    calibration_batches: int = 2,
    holdout_batches: int = 2,
    candidates: Sequence[int] = (2, 3, 4, 5, 6, 7),
    groups: Optional[int] = 1,
    budgets: Sequence[float] = (3.0, 3.3, 3.6),
    over: Over = "tokens",
    config: Optional[SpikeConfig] = None,
    progress: bool = True,
) -> tuple[dict, MEDStudy]:
    """Load ``model_name`` (a tiny one with random weights from ``seed``), analyze it on calibration
    batches (tiny: seeds ``seed..``; others: their bundled calibration records), schedule at
    ``budgets`` (average steps ``over``) and compare on held-out batches (tiny: seeds from
    ``seed + 1000``; others: their bundled evaluation records).

    :return: the JSON-ready result and the study (its model converted).
    """
    for budget in budgets:  # before the analysis, which takes a while
        check_budget(budget, tuple(candidates))
    model, calib, held, description = _model_and_batches(model_name, seed, calibration_batches, holdout_batches)
    config = config or RECOMMENDED
    calibration = calibrate(model, calib, config, progress=False) if config.needs_calibration else None
    study = analyze(model, calib, config, MEDConfig(tuple(candidates), groups), holdout=held, calibration=calibration,
                    progress=progress)
    rows, schedules = compare(study, budgets=budgets, overs=(over,), holdout=True, progress=progress)
    known = baselines(study, rows, over)
    sections = study.table(groups=True) if groups is not None else None
    reports = {}
    for budget in budgets:
        whole, grouped = schedules[over, budget]
        entry = {
            "whole_model": whole.as_dict(),
            "report": explain(whole, study.table(False, over), study.mean_med(), known, sections),
        }
        if grouped is not None:
            entry["per_group"] = grouped.as_dict()
            entry["per_group_report"] = explain(grouped, study.table(True, over), study.mean_med(), known)
        reports[f"{budget:g}"] = entry
    rates_budget = budgets[len(budgets) // 2]
    rates_plan = schedules[over, rates_budget][0].plan
    result = {
        "model": model_name,
        "seed": seed,
        "budgets": list(budgets),
        "groups": groups,
        "batches": {
            "calibration_seeds": calibration_batches,
            "holdout_seeds": holdout_batches,
            "calibration": len(calib),
            "holdout": len(held),
            "description": description,
        },
        **study.as_dict(),
        "over": over,
        "comparison_on": "held-out",
        "comparison": rows,
        "schedules": reports,
        "firing_rates": {"budget": rates_budget, "plan": rates_plan, "rates": study.firing_rates(rates_plan)},
    }
    return result, study


def _steps(plan: dict) -> str:
    return "; ".join(("" if s == ALL else f"{s}: ") + ", ".join(f"{m} {t}" for m, t in v.items()) for s, v in plan.items())


def _layer_errors(result: dict) -> list[str]:
    """Per decoder layer, 1 - cos of a modality's own hidden states when it alone has the second
    smallest candidate steps (whole model)."""
    steps = result["candidates"][1]
    entries = [e for e in result["sensitivity"] if e["section"] == "all" and e["steps"] == steps]
    layers = range(len(entries[0]["layer_error"]))
    out = [
        f"Layer by layer (whole model, one modality alone at T={steps}): 1 - cos of that modality's hidden "
        "states at each decoder layer's output against FP32.",
        "",
        "| modality at T | " + " | ".join(f"layer {i}" for i in layers) + " |",
        "|---|" + "---|" * len(layers),
    ]
    for e in entries:
        out.append(f"| {e['modality']} | " + " | ".join(f"{e['layer_error'][i][e['modality']]:.2e}" for i in layers) + " |")
    return out + [""]


def _comparison(result: dict) -> list[str]:
    out = [
        "| plan | steps | avg steps/token | all sites | logit cosine | top-1 agreement |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["comparison"]:
        out.append(
            f"| {r['label']} | {_steps(r['plan'])} | {r['average_steps']:.3f} | {r['site_steps']:.3f} | "
            f"{r['cosine']:.4f} | {r['top1']:.3f} |"
        )
    return out


def _uncounted(result: dict) -> list[str]:
    """MSTS rows scheduled per language-model token that spend more than their budget per token
    at any site (the vision tower, outside that budget, at higher steps)."""
    out = []
    for r in result["comparison"]:
        if r["kind"].startswith("msts") and r["over"] == "tokens":
            budget = float(r["label"].split()[1])
            if r["site_steps"] > budget + 1e-9:
                vision = r["plan"].get("vision", r["plan"].get("all", {})).get("image")
                out.append(
                    f"- {r['label']}: {r['site_steps']:.3f} steps per token at any site, above {budget:g}: the vision "
                    f"tower, which this budget does not count, runs at {vision} steps (`--over sites` charges it)."
                )
    return ["", *out] if out else []


def _format_summary(result: dict) -> str:
    """A few lines for the terminal: MED, the comparison table and each budget's choice."""
    med = ", ".join(f"{v} {x:+.4f}" for v, x in result["mean_med"].items())
    out = [
        f"{result['model']}: mean MED (text minus visual, 1 - cos per decoder layer): {med}",
        f"uniform T, hand-picked splits and MSTS on the {result['comparison_on']} batches "
        "(avg steps/token: language-model tokens; all sites: every spike-driven site's tokens):",
        "",
        *_comparison(result),
        *_uncounted(result),
        "",
    ]
    for budget, entry in result["schedules"].items():
        out.append(f"budget {budget}: " + entry["report"].splitlines()[1].removeprefix("Chosen: "))
    return "\n".join(out)


def command(result: dict) -> str:
    """The ``spikemllm med`` command line that reproduces ``result``."""
    budgets = " ".join(f"{b:g}" for b in result["budgets"])
    groups = "" if result["groups"] is None else f" --groups {result['groups']}"
    return (
        f"spikemllm med --model {result['model']} --seed {result['seed']} --batches {result['batches']['calibration_seeds']} "
        f"--holdout {result['batches']['holdout_seeds']} --candidates {' '.join(map(str, result['candidates']))}"
        f"{groups} --budgets {budgets} --over {result['over']}"
        + "".join(f" {flag}" for flag in options.config_flags(SpikeConfig.from_dict(result["spike_config"])))
    )


def _introduction(result: dict) -> list[str]:
    tokens = result["tokens"]
    budget = ("per language-model token (the vision tower, which runs at the image steps, is not counted)."
              if result["over"] == "tokens" else "per token encoded at any spike-driven site, the vision tower's included.")
    return [
        f"# MED analysis and MSTS schedules: {result['model']}",
        "",
        f"Generated by `{command(result)}` ({'random' if result['model'] in TINY_MODELS else 'trained'} weights; "
        f"{result['batches']['calibration']} calibration and {result['batches']['holdout']} held-out batches: "
        f"{result['batches']['description']}). Language-model tokens in the calibration batches: "
        + ", ".join(f"{m} {n}" for m, n in tokens.items())
        + ". Fidelity is the logit cosine to the FP32 model, averaged over real tokens; the converted model "
        "runs as its fake-quant twin (bit-identical to spike mode). The scheduler's budget is the average steps "
        + budget,
        "",
    ]


def _evolution(result: dict) -> list[str]:
    """MED per decoder layer (FP32)."""
    mods = list(result["evolution"][0]["cosine_change"])
    visual = list(result["evolution"][0]["med"])
    out = [
        "E_m = mean over tokens of modality m of 1 - cos(layer input, layer output); MED_v = E_text - E_v "
        "(our reading of the paper's cross-layer cosine proxy, see `spikemllm_sj/med/analysis.py`).",
        "",
        "| layer | " + " | ".join(f"E_{m}" for m in mods) + " | " + " | ".join(f"update {m}" for m in mods)
        + " | " + " | ".join(f"MED_{v}" for v in visual) + " |",
        "|---" * (1 + 2 * len(mods) + len(visual)) + "|",
    ]
    for e in result["evolution"]:
        out.append(f"| {e['layer']} | " + " | ".join(f"{e['cosine_change'][m]:.4f}" for m in mods) + " | "
                   + " | ".join(f"{e['relative_update'][m]:.3f}" for m in mods) + " | "
                   + " | ".join(f"{e['med'][v]:+.4f}" for v in visual) + " |")
    return out + ["", "Mean MED: " + ", ".join(f"{v} {x:+.4f}" for v, x in result["mean_med"].items())]


def _sensitivity(result: dict) -> list[str]:
    """1 - logit cosine with one modality alone at each candidate step count."""
    cand = result["candidates"]
    out = [
        "| section | modality | " + " | ".join(f"T={t}" for t in cand) + " |",
        "|---|---|" + "---|" * len(cand),
    ]
    table: dict = {}
    for e in result["sensitivity"]:
        table.setdefault((e["section"], e["modality"]), {})[e["steps"]] = 1 - e["cosine"]
    for (section, modality), per in table.items():
        out.append(f"| {section} | {modality} | " + " | ".join(f"{per[t]:.2e}" for t in cand) + " |")
    return out + [
        "",
        "Section `all` changes the modality everywhere (image steps also drive the vision tower); `vision` is "
        "the vision tower and projector alone; `layer(s) ...` the image, video or text tokens of those decoder layers alone.",
        "",
        *_layer_errors(result),
    ]


def _choices(result: dict) -> list[str]:
    """The scheduler's choice and its explanation, per budget."""
    out = []
    for budget, entry in result["schedules"].items():
        out += [f"### Budget {budget}", "", "Whole model:", "", *[f"- {line}" for line in entry["report"].splitlines()], ""]
        if "per_group_report" in entry:
            out += ["Per layer group (vision tower held at the whole-model image steps; measured with "
                    "`steps_applied`, a converted model carries one MSTSConfig):", "",
                    *[f"- {line}" for line in entry["per_group_report"].splitlines()], ""]
    return out


def _firing_rates(result: dict) -> list[str]:
    mods = list(result["evolution"][0]["cosine_change"])
    out = ["| layer | " + " | ".join(mods) + " |", "|---" * (1 + len(mods)) + "|"]
    for label, per in result["firing_rates"]["rates"].items():
        out.append(f"| {label} | " + " | ".join(f"{per[m]:.3f}" if m in per else "-" for m in mods) + " |")
    return out + ["", "Figures: `med_per_layer.png`, `fidelity_vs_steps.png`, `firing_rate.png`."]


def format_report(result: dict) -> str:
    """The Markdown report of a :func:`run_med` result."""
    ref, fr = result["reference_steps"], result["firing_rates"]
    sections = [
        ("MED per decoder layer (FP32)", _evolution(result)),
        (f"Sensitivity: 1 - logit cosine with one modality alone at T steps (the rest at {ref}; "
         f"reference {1 - result['reference']['cosine']:.2e})", _sensitivity(result)),
        (f"Uniform T, hand-picked splits and MSTS ({result['comparison_on']} batches)",
         ["avg steps/token: language-model tokens (the budget); all sites: every MSTS site's tokens, the vision "
          "tower's patches included (the op report's measure).", "", *_comparison(result), *_uncounted(result)]),
        ("The scheduler's choices (measured on the calibration batches)", _choices(result)),
        (f"Firing rate per layer (MSTS choice at budget {fr['budget']:g}: {_steps(fr['plan'])})", _firing_rates(result)),
    ]
    out = _introduction(result)
    for title, body in sections:
        out += [f"## {title}", "", *body] + ([""] if body[-1] else [])
    return "\n".join(out).rstrip("\n") + "\n"


def write_med(result: dict, out: Path) -> list[Path]:
    """``med.json``, ``report.md`` and the three PNG figures in ``out``, which they replace as a
    whole (:func:`~spikemllm_sj.commands.run_folder.run_folder`: ``out`` must be new, empty or a
    previous ``med.json`` folder)."""
    out = Path(out)
    with run_folder(out, MARKER, "out") as partial:
        (partial / MARKER).write_text(json.dumps(result, indent=2))
        (partial / "report.md").write_text(format_report(result))
        figures = plot_med(result, partial)
    return [out / MARKER, out / "report.md", *(out / f.name for f in figures)]


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "med",
        help="measure MED and per-modality sensitivity of an MLLM, schedule MSTS steps, write JSON, report and plots",
        epilog=options.epilog(),
    )
    options.add_model(parser, choices=BUILTIN_MODELS)
    parser.add_argument(
        "--out", default="out/med", type=options.run_folder(MARKER),
        help="folder for med.json, report.md and the PNG figures: a new folder, an empty one or a previous med run's, "
        "which the new one replaces once complete (default: out/med)",
    )
    parser.add_argument("--seed", type=int, default=0,
                        help="tiny models: weights and calibration batches (held-out batches: seed + 1000); unused otherwise")
    parser.add_argument("--batches", type=options.positive_int, default=2,
                        help=f"calibration batches: tiny models, seeds (image batch, plus video batch where the family has "
                             f"video); other models, batches of {BATCH_SIZE} bundled calibration records")
    parser.add_argument("--holdout", type=options.positive_int, default=2,
                        help="held-out batches for the comparison table (tiny: seeds; others: of the evaluation records)")
    parser.add_argument("--candidates", type=options.positive_int, nargs="+", default=[2, 3, 4, 5, 6, 7],
                        help="step counts probed; the largest is the reference")
    parser.add_argument("--groups", type=options.non_negative_int, default=1, help="decoder layer groups measured apart from the vision tower (0: none)")
    parser.add_argument("--budgets", type=options.positive_float, nargs="+", default=[3.0, 3.3, 3.6],
                        help="average steps per token to schedule for, each at least the smallest candidate")
    parser.add_argument(
        "--over", default="tokens", choices=("tokens", "sites"),
        help="budget per language-model token (tokens) or per token encoded at any spike-driven site, vision tower included (sites)",
    )
    options.add_config(parser, steps=False, dtype=False)
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the summary")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("matplotlib") is None:  # before the analysis, which takes a while
        return options.fail("med", ValueError("the figures need matplotlib: pip install matplotlib"))
    try:
        result, _ = run_med(
            args.model,
            seed=args.seed,
            calibration_batches=args.batches,
            holdout_batches=args.holdout,
            candidates=tuple(args.candidates),
            groups=args.groups or None,
            budgets=tuple(args.budgets),
            over=args.over,
            config=options.spike_config(args),
        )
    except ValueError as error:
        return options.fail("med", error)
    paths = write_med(result, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_format_summary(result))
        print(f"\nwritten: {', '.join(str(p) for p in paths)}")
    return options.EXIT_OK

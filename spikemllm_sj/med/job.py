"""The ``spikemllm med`` job: analyze a tiny offline MLLM, schedule at a few budgets, write the
JSON, a Markdown report and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.med.analysis import MEDConfig, MEDStudy, Over, analyze, baselines, compare
from spikemllm_sj.med.schedule import explain
from spikemllm_sj.med.steps import ALL

__all__ = ["command", "format_report", "format_summary", "run_med", "tiny_batches", "write_outputs"]

BATCH_SIZE = 4


def tiny_batches(model, count: int, seed: int) -> list[dict]:
    """``count`` image batches (``tiny_batch``, 4 rows each, seeds ``seed..``) plus, for families
    with video, ``count`` video batches (``tiny_video_batch``, 2 rows, 4 frames)."""
    from spikemllm_sj.tiny import tiny_batch, tiny_spec, tiny_video_batch

    batches = [tiny_batch(model, BATCH_SIZE, seed=seed + i) for i in range(count)]
    if tiny_spec(model).family in ("qwen2_vl", "qwen2_5_vl"):
        batches += [tiny_video_batch(model, 2, seed=seed + i) for i in range(count)]
    return batches


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
    """Build tiny ``model_name`` (random weights from ``seed``), analyze it on calibration batches
    (seeds ``seed..``), schedule at ``budgets`` (average steps ``over``) and compare on held-out
    batches (seeds from ``seed + 1000``).

    :return: the JSON-ready result and the study (its model converted).
    """
    from spikemllm_sj.tiny import build_tiny_model

    low = [b for b in budgets if b < min(candidates)]
    if low:  # before the analysis, which takes a while
        raise ValueError(f"budget {low[0]:g} is below the smallest step count {min(candidates)}: no plan fits")
    model = build_tiny_model(model_name, seed=seed)
    calib = tiny_batches(model, calibration_batches, seed)
    held = tiny_batches(model, holdout_batches, seed + 1000)
    study = analyze(model, calib, config, MEDConfig(tuple(candidates), groups), holdout=held, progress=progress)
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
            "description": f"tiny_batch({BATCH_SIZE} rows) per seed, plus tiny_video_batch(2 rows, 4 frames) "
            "per seed where the family has video",
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


def format_summary(result: dict) -> str:
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
    )


def format_report(result: dict) -> str:
    """The Markdown report of a :func:`run_med` result."""
    tokens = result["tokens"]
    cand = result["candidates"]
    ref = result["reference_steps"]
    out = [
        f"# MED analysis and MSTS schedules: {result['model']}",
        "",
        f"Generated by `{command(result)}` (random weights; "
        f"{result['batches']['calibration']} calibration and {result['batches']['holdout']} held-out batches: "
        f"{result['batches']['description']}). Language-model tokens in the calibration batches: "
        + ", ".join(f"{m} {n}" for m, n in tokens.items())
        + ". Fidelity is the logit cosine to the FP32 model, averaged over real tokens; the converted model "
        "runs as its fake-quant twin (bit-identical to spike mode). The scheduler's budget is the average steps "
        + ("per language-model token (the vision tower, which runs at the image steps, is not counted)."
           if result["over"] == "tokens" else "per token encoded at any spike-driven site, the vision tower's included."),
        "",
        "## MED per decoder layer (FP32)",
        "",
        "E_m = mean over tokens of modality m of 1 - cos(layer input, layer output); MED_v = E_text - E_v "
        "(our reading of the paper's cross-layer cosine proxy, see `spikemllm_sj/med/analysis.py`).",
        "",
    ]
    mods = list(result["evolution"][0]["cosine_change"])
    visual = list(result["evolution"][0]["med"])
    out.append("| layer | " + " | ".join(f"E_{m}" for m in mods) + " | " + " | ".join(f"update {m}" for m in mods)
               + " | " + " | ".join(f"MED_{v}" for v in visual) + " |")
    out.append("|---" * (1 + 2 * len(mods) + len(visual)) + "|")
    for e in result["evolution"]:
        out.append(f"| {e['layer']} | " + " | ".join(f"{e['cosine_change'][m]:.4f}" for m in mods) + " | "
                   + " | ".join(f"{e['relative_update'][m]:.3f}" for m in mods) + " | "
                   + " | ".join(f"{e['med'][v]:+.4f}" for v in visual) + " |")
    out += ["", f"Mean MED: " + ", ".join(f"{v} {x:+.4f}" for v, x in result["mean_med"].items()), ""]
    out += [
        "## Sensitivity: 1 - logit cosine with one modality alone at T steps (the rest at "
        f"{ref}; reference {1 - result['reference']['cosine']:.2e})",
        "",
        "| section | modality | " + " | ".join(f"T={t}" for t in cand) + " |",
        "|---|---|" + "---|" * len(cand),
    ]
    table: dict = {}
    for e in result["sensitivity"]:
        table.setdefault((e["section"], e["modality"]), {})[e["steps"]] = 1 - e["cosine"]
    for (section, modality), per in table.items():
        out.append(f"| {section} | {modality} | " + " | ".join(f"{per[t]:.2e}" for t in cand) + " |")
    out += [
        "",
        "Section `all` changes the modality everywhere (image steps also drive the vision tower); `vision` is "
        "the vision tower and projector alone; `layer(s) ...` the image, video or text tokens of those decoder layers alone.",
        "",
        *_layer_errors(result),
        f"## Uniform T, hand-picked splits and MSTS ({result['comparison_on']} batches)",
        "",
        "avg steps/token: language-model tokens (the budget); all sites: every MSTS site's tokens, the vision "
        "tower's patches included (the op report's measure).",
        "",
        *_comparison(result),
        *_uncounted(result),
    ]
    out += ["", "## The scheduler's choices (measured on the calibration batches)", ""]
    for budget, entry in result["schedules"].items():
        out += [f"### Budget {budget}", "", "Whole model:", "", *[f"- {line}" for line in entry["report"].splitlines()], ""]
        if "per_group_report" in entry:
            out += ["Per layer group (vision tower held at the whole-model image steps; measured with "
                    "`steps_applied`, a converted model carries one MSTSConfig):", "",
                    *[f"- {line}" for line in entry["per_group_report"].splitlines()], ""]
    fr = result["firing_rates"]
    out += [f"## Firing rate per layer (MSTS choice at budget {fr['budget']:g}: {_steps(fr['plan'])})", "",
            "| layer | " + " | ".join(mods) + " |", "|---" * (1 + len(mods)) + "|"]
    for label, per in fr["rates"].items():
        out.append(f"| {label} | " + " | ".join(f"{per[m]:.3f}" if m in per else "-" for m in mods) + " |")
    out += ["", "Figures: `med_per_layer.png`, `fidelity_vs_steps.png`, `firing_rate.png`."]
    return "\n".join(out) + "\n"


def write_outputs(result: dict, out: Path) -> list[Path]:
    """``med.json``, ``report.md`` and the three PNG figures in ``out``."""
    from spikemllm_sj.med.plots import plot_all

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "med.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(format_report(result))
    return [out / "med.json", out / "report.md", *plot_all(result, out)]

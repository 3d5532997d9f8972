"""The MED figures as PNG files, drawn from the JSON that ``spikemllm med`` writes.

* ``med_per_layer.png``: per decoder layer and modality, ``1 - cos(h_in, h_out)``, the relative
  update norm, and MED (text minus each visual modality);
* ``fidelity_vs_steps.png``: ``1 - logit cosine`` to FP32 against average steps per token for
  uniform T, hand-picked splits and the scheduler's choices;
* ``firing_rate.png``: spikes per neuron and time step, per layer and modality
  (:func:`~spikemllm_sj.analysis.plots.plot_firing_rates`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from spikemllm_sj.analysis.plots import COLOURS, figure, plot_firing_rates

__all__ = ["plot_med", "plot_evolution", "plot_fidelity"]


def plot_evolution(result: Mapping, path: Path) -> Path:
    evolution = result["evolution"]
    layers = [e["layer"] for e in evolution]
    fig = figure(12, 3.6)
    axes = fig.subplots(1, 3)
    for ax, key, title in (
        (axes[0], "cosine_change", "1 - cos(layer input, output)"),
        (axes[1], "relative_update", "||output - input|| / ||input||"),
    ):
        for m in evolution[0][key]:
            ax.plot(layers, [e[key][m] for e in evolution], "o-", color=COLOURS.get(m), label=m)
        ax.set_title(title)
        ax.set_xlabel("decoder layer")
        ax.set_xticks(layers)
        ax.legend()
    visual = list(evolution[0]["med"])
    width = 0.8 / len(visual)
    for k, v in enumerate(visual):
        axes[2].bar([x + (k - (len(visual) - 1) / 2) * width for x in layers], [e["med"][v] for e in evolution],
                    width, color=COLOURS.get(v), label=f"text - {v}")
    axes[2].axhline(0, color="black", lw=0.8)
    axes[2].set_title("MED (> 0: text evolves more)")
    axes[2].set_xlabel("decoder layer")
    axes[2].set_xticks(layers)
    axes[2].legend()
    fig.suptitle(f"{result['model']}: modality evolution through the decoder layers (FP32, calibration batches)")
    fig.savefig(path)
    return path


def plot_fidelity(result: Mapping, path: Path) -> Path:
    fig = figure(7.5, 4.8)
    ax = fig.subplots()
    rows = result["comparison"]
    style = {
        "uniform": dict(marker="o", ls="-", color="black", label="uniform T"),
        "split": dict(marker="s", ls="none", color="tab:purple", label="hand-picked Tv/Tt"),
        "msts": dict(marker="*", ms=12, ls="none", color="tab:red", label="MSTS (whole model)"),
        "msts_groups": dict(marker="D", ls="none", color="tab:olive", label="MSTS (per layer group)"),
    }
    verified = [c for s in result["schedules"].values() for c in s["whole_model"]["verified"]]
    if verified:
        ax.plot([c["average_steps"] for c in verified], [1 - c["measured_fidelity"] for c in verified], ".",
                color="0.7", label="plans the scheduler measured")
    for kind, kw in style.items():
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            continue
        ax.plot([r["average_steps"] for r in chosen], [1 - r["cosine"] for r in chosen], **kw)
    # One label per point: plans that coincide (e.g. T=3 and Tv/Tt=3/3) share it.
    labels: dict[tuple, list[str]] = {}
    for r in rows:
        labels.setdefault((r["average_steps"], 1 - r["cosine"]), []).append(r["label"])
    for (x, y), names in labels.items():
        ax.annotate(", ".join(dict.fromkeys(names)), (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("average steps per language-model token")
    ax.set_ylabel("1 - logit cosine to FP32")
    ax.set_title(f"{result['model']}: fidelity against time steps ({result['comparison_on']} batches)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def plot_med(result: Mapping, out: Path) -> list[Path]:
    """Write the three figures of ``result`` (the ``spikemllm med`` JSON) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rates = result["firing_rates"]
    plan = ", ".join(f"{m} {t}" for v in rates["plan"].values() for m, t in v.items())
    title = f"{result['model']}: firing rate by layer and modality\n(MSTS at budget {rates['budget']:g}: {plan})"
    return [
        plot_evolution(result, out / "med_per_layer.png"),
        plot_fidelity(result, out / "fidelity_vs_steps.png"),
        plot_firing_rates(rates["rates"], out / "firing_rate.png", title),
    ]

"""The MED figures as PNG files, drawn from the JSON that ``spikemllm med`` writes.

* ``med_per_layer.png``: per decoder layer and modality, ``1 - cos(h_in, h_out)``, the relative
  update norm, and MED (text minus each visual modality);
* ``fidelity_vs_steps.png``: ``1 - logit cosine`` to FP32 against average steps per token for
  uniform T, hand-picked splits and the scheduler's choices;
* ``firing_rate.png``: spikes per neuron and time step, per layer and modality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

__all__ = ["plot_all", "plot_evolution", "plot_fidelity", "plot_firing_rates"]

COLORS = {"text": "tab:blue", "image": "tab:orange", "video": "tab:green"}


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the MED plots need matplotlib: pip install matplotlib (or spikemllm-sj[dev])") from None
    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def plot_evolution(result: Mapping, path: Path) -> Path:
    evolution = result["evolution"]
    layers = [e["layer"] for e in evolution]
    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3)
    for ax, key, title in (
        (axes[0], "cosine_change", "1 - cos(layer input, output)"),
        (axes[1], "relative_update", "||output - input|| / ||input||"),
    ):
        for m in evolution[0][key]:
            ax.plot(layers, [e[key][m] for e in evolution], "o-", color=COLORS.get(m), label=m)
        ax.set_title(title)
        ax.set_xlabel("decoder layer")
        ax.set_xticks(layers)
        ax.legend()
    visual = list(evolution[0]["med"])
    width = 0.8 / len(visual)
    for k, v in enumerate(visual):
        axes[2].bar([x + (k - (len(visual) - 1) / 2) * width for x in layers], [e["med"][v] for e in evolution],
                    width, color=COLORS.get(v), label=f"text - {v}")
    axes[2].axhline(0, color="black", lw=0.8)
    axes[2].set_title("MED (> 0: text evolves more)")
    axes[2].set_xlabel("decoder layer")
    axes[2].set_xticks(layers)
    axes[2].legend()
    fig.suptitle(f"{result['model']}: modality evolution through the decoder layers (FP32, calibration batches)")
    fig.savefig(path)
    return path


def plot_fidelity(result: Mapping, path: Path) -> Path:
    fig = _figure(7.5, 4.8)
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


def plot_firing_rates(result: Mapping, path: Path) -> Path:
    rates = result["firing_rates"]["rates"]
    labels = list(rates)
    modalities = [m for m in COLORS if any(m in r for r in rates.values())]
    fig = _figure(max(6.0, 0.7 * len(labels) + 2), 4)
    ax = fig.subplots()
    width = 0.8 / len(modalities)
    for k, m in enumerate(modalities):
        xs = [i + (k - (len(modalities) - 1) / 2) * width for i, label in enumerate(labels) if m in rates[label]]
        ax.bar(xs, [rates[label][m] for label in labels if m in rates[label]], width, color=COLORS[m], label=m)
    ax.set_xticks(range(len(labels)), [label.rsplit(".", 1)[-1] for label in labels], rotation=45, ha="right")
    ax.set_ylabel("spikes per neuron per time step")
    ax.set_ylim(0, 1.25 * max(r for per in rates.values() for r in per.values()))  # room for the legend
    plan = ", ".join(f"{m} {t}" for v in result["firing_rates"]["plan"].values() for m, t in v.items())
    ax.set_title(f"{result['model']}: firing rate by layer and modality\n(MSTS at budget {result['firing_rates']['budget']:g}: {plan})", fontsize=10)
    ax.legend(loc="upper center", ncols=len(modalities))
    fig.savefig(path)
    return path


def plot_all(result: Mapping, out: Path) -> list[Path]:
    """Write the three figures of ``result`` (the ``spikemllm med`` JSON) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_evolution(result, out / "med_per_layer.png"),
        plot_fidelity(result, out / "fidelity_vs_steps.png"),
        plot_firing_rates(result, out / "firing_rate.png"),
    ]

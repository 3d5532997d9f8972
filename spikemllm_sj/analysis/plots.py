"""PNG figures of measured spike activity (matplotlib's object API, no global pyplot state).

* :func:`plot_firing_rates`: firing rate per block, one line per modality; from a run's activity
  (:func:`block_rates` of :func:`~spikemllm_sj.analysis.activity.record_activity`'s dict) or from
  the MED study's per-layer rates;
* :func:`plot_raster`: the spikes (+1 / -1) of a few input neurons of one layer, token by token
  and step by step; padded MSTS steps (a token with fewer steps than the longest code) in grey;
* :func:`plot_steps`: time steps of every token of one sequence, and mean steps per token per
  block and modality;
* :func:`plot_run`: the three figures of a run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["COLOURS", "figure", "block_rates", "plot_firing_rates", "plot_raster", "plot_steps", "plot_run"]

COLOURS = {"text": "tab:blue", "image": "tab:orange", "video": "tab:green", "audio": "tab:purple"}


def figure(width: float, height: float):
    """A matplotlib ``Figure`` (constrained layout) to draw on and save."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the figures need matplotlib: pip install matplotlib (or spikemllm-sj[dev])") from None
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _per_group(activity: dict) -> dict[str, dict[str, dict[str, int]]]:
    """Per block (in model order) and modality, the summed site counts of ``activity``."""
    groups: dict[str, dict[str, dict[str, int]]] = {}
    for site in activity["sites"]:
        per_modality = groups.setdefault(site["group"], {})
        for modality, counts in site["modalities"].items():
            totals = per_modality.setdefault(modality, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                totals[key] += value
    return groups


def block_rates(activity: dict) -> dict[str, dict[str, float]]:
    """Firing rate (spikes per neuron and real time step) per block and modality of a run's activity."""
    return {
        block: {m: c["spikes"] / c["neuron_steps"] if c["neuron_steps"] else 0.0 for m, c in per.items()}
        for block, per in _per_group(activity).items()
    }


def _block_steps(activity: dict) -> dict[str, dict[str, float]]:
    return {block: {m: c["steps"] / c["tokens"] for m, c in per.items()} for block, per in _per_group(activity).items()}


def _lines(ax, values: Mapping[str, Mapping[str, float]]) -> None:
    """One line per modality over the blocks of ``values`` (block -> modality -> value)."""
    names = list(values)
    modalities = [m for m in COLOURS if any(m in per for per in values.values())]
    for m in modalities:
        points = [(i, values[name][m]) for i, name in enumerate(names) if m in values[name]]
        x, y = zip(*points)
        ax.plot(x, y, marker="o", color=COLOURS[m], label=m)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()


def _modality_legend(ax, modalities, **kwargs) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=COLOURS.get(m), label=m) for m in dict.fromkeys(modalities)], **kwargs)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path)
    return path


def plot_firing_rates(rates: Mapping[str, Mapping[str, float]], path: str | Path, title: str) -> Path:
    """Spikes per neuron and real time step, per block and modality (``rates[block][modality]``)."""
    fig = figure(max(6.0, 0.35 * len(rates) + 2), 4.2)
    ax = fig.subplots()
    _lines(ax, rates)
    ax.set(ylabel="firing rate (spikes / neuron / step)", ylim=(0, None))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_raster(activity: dict, path: str | Path) -> Path:
    """Raster of ``activity["raster"]``: one row per neuron, one column per (token, step)."""
    import matplotlib

    r = activity["raster"]
    spikes = np.asarray(r["spikes"], dtype=float)  # [T, tokens, neurons]
    t_max, n_tokens, n_neurons = spikes.shape
    padded = np.arange(t_max)[:, None] < (t_max - np.asarray(r["steps"]))[None, :]  # [T, tokens]
    spikes[np.broadcast_to(padded[..., None], spikes.shape)] = np.nan
    image = spikes.transpose(2, 1, 0).reshape(n_neurons, n_tokens * t_max)
    cmap = matplotlib.colormaps["bwr"].with_extremes(bad="0.85")
    fig = figure(max(7.0, 0.16 * n_tokens * t_max / 4 + 2), 0.3 * n_neurons + 2)
    ax = fig.subplots()
    ax.imshow(image, cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    start = r["token_range"][0]
    for i, modality in enumerate(r["modality"]):
        ax.axvspan(i * t_max - 0.5, (i + 1) * t_max - 0.5, ymin=1.0, ymax=1.04, color=COLOURS.get(modality), clip_on=False)
        if i:
            ax.axvline(i * t_max - 0.5, color="0.6", linewidth=0.4)
    ticks = range(0, n_tokens, max(1, n_tokens // 16))
    ax.set_xticks([i * t_max + (t_max - 1) / 2 for i in ticks], [str(start + i) for i in ticks], fontsize=7)
    ax.set_yticks(range(n_neurons), [str(n) for n in r["neurons"]], fontsize=7)
    _modality_legend(ax, r["modality"], loc="upper left", bbox_to_anchor=(1.0, 1.0), title="token (top band)")
    ax.set(xlabel=f"token position ({t_max} step columns each)", ylabel="input neuron")
    ax.set_title(f"Input spikes of {r['site']}, batch row {r['row']}\nred +1, blue -1, grey: padded steps", fontsize=10, pad=14)
    return _save(fig, path)


def plot_steps(activity: dict, path: str | Path) -> Path:
    """Left: steps of each token of the raster's row. Right: mean steps per token per block and modality."""
    r = activity["raster"]
    steps = _block_steps(activity)
    fig = figure(12, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[1.4, 1])
    colours = [COLOURS.get(m) for m in r["row_modality"]]
    left.bar(range(len(r["row_steps"])), r["row_steps"], width=1.0, color=colours)
    left.set(xlabel="token position", ylabel="time steps", ylim=(0, 1.3 * max(r["row_steps"])))
    left.set_title(f"Steps per token, batch row {r['row']}\n({r['site']})", fontsize=10)
    _modality_legend(left, r["row_modality"])
    _lines(right, steps)
    top = max(v for per in steps.values() for v in per.values())
    right.set(ylabel="mean time steps per token", ylim=(0, 1.3 * top), title="Steps per token per block")
    return _save(fig, path)


def plot_run(activity: dict, folder: str | Path) -> dict[str, Path]:
    """The three figures of a run, as ``firing_rates.png``, ``raster.png`` and ``steps.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = "Firing rate per block and modality\n(linear-layer inputs and attention queries)"
    return {
        "firing_rates": plot_firing_rates(block_rates(activity), folder / "firing_rates.png", title),
        "raster": plot_raster(activity, folder / "raster.png"),
        "steps": plot_steps(activity, folder / "steps.png"),
    }

"""PNG plots of a run's spike activity (the dict of :func:`spikemllm_sj.probe.record_activity`).

* :func:`plot_firing_rates`: firing rate per block (vision tower, projector, decoder layers), one
  line per modality;
* :func:`plot_raster`: the spikes (+1 / -1) of a few input neurons of one layer, token by token
  and step by step; padded MSTS steps (a token with fewer steps than the longest code) in grey;
* :func:`plot_steps`: time steps of every token of one sequence, and mean steps per token per
  block and modality.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_firing_rates", "plot_raster", "plot_steps", "plot_all"]

COLOURS = {"text": "tab:blue", "image": "tab:orange", "video": "tab:green", "audio": "tab:purple"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_group(activity: dict) -> tuple[list[str], dict[str, dict[str, dict[str, int]]]]:
    """Blocks in model order and, per block and modality, the summed site counts."""
    groups: dict[str, dict[str, dict[str, int]]] = {}
    for site in activity["sites"]:
        per_modality = groups.setdefault(site["group"], {})
        for modality, counts in site["modalities"].items():
            totals = per_modality.setdefault(modality, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                totals[key] += value
    return list(groups), groups


def _by_modality(activity: dict, value) -> tuple[list[str], dict[str, list[tuple[int, float]]]]:
    names, groups = _per_group(activity)
    lines: dict[str, list[tuple[int, float]]] = {}
    for i, name in enumerate(names):
        for modality, counts in groups[name].items():
            lines.setdefault(modality, []).append((i, value(counts)))
    return names, lines


def _modality_legend(ax, modalities, **kwargs) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=COLOURS.get(m), label=m) for m in dict.fromkeys(modalities)], **kwargs)


def _block_axis(ax, names: list[str]) -> None:
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_firing_rates(activity: dict, path: str | Path) -> Path:
    """Spikes per neuron and real time step, per block and modality."""
    plt = _pyplot()
    names, lines = _by_modality(activity, lambda c: c["spikes"] / c["neuron_steps"] if c["neuron_steps"] else 0.0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.2))
    for modality, points in lines.items():
        x, y = zip(*points)
        ax.plot(x, y, marker="o", color=COLOURS.get(modality), label=modality)
    _block_axis(ax, names)
    ax.set(ylabel="firing rate (spikes / neuron / step)", ylim=(0, None))
    ax.set_title("Firing rate per block and modality\n(linear-layer inputs and attention queries)", fontsize=10)
    ax.legend()
    return _save(fig, path)


def plot_raster(activity: dict, path: str | Path) -> Path:
    """Raster of ``activity["raster"]``: one row per neuron, one column per (token, step)."""
    import numpy as np

    plt = _pyplot()
    r = activity["raster"]
    spikes = np.asarray(r["spikes"], dtype=float)  # [T, tokens, neurons]
    t_max, n_tokens, n_neurons = spikes.shape
    padded = np.arange(t_max)[:, None] < (t_max - np.asarray(r["steps"]))[None, :]  # [T, tokens]
    spikes[np.broadcast_to(padded[..., None], spikes.shape)] = np.nan
    image = spikes.transpose(2, 1, 0).reshape(n_neurons, n_tokens * t_max)
    cmap = plt.get_cmap("bwr").with_extremes(bad="0.85")
    fig, ax = plt.subplots(figsize=(max(7.0, 0.16 * n_tokens * t_max / 4 + 2), 0.3 * n_neurons + 2))
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
    plt = _pyplot()
    r = activity["raster"]
    names, lines = _by_modality(activity, lambda c: c["steps"] / c["tokens"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.4, 1]})
    colours = [COLOURS.get(m) for m in r["row_modality"]]
    left.bar(range(len(r["row_steps"])), r["row_steps"], width=1.0, color=colours)
    left.set(xlabel="token position", ylabel="time steps", ylim=(0, 1.3 * max(r["row_steps"])))
    left.set_title(f"Steps per token, batch row {r['row']}\n({r['site']})", fontsize=10)
    _modality_legend(left, r["row_modality"])
    for modality, points in lines.items():
        x, y = zip(*points)
        right.plot(x, y, marker="o", color=COLOURS.get(modality), label=modality)
    _block_axis(right, names)
    top = max(y for points in lines.values() for _, y in points)
    right.set(ylabel="mean time steps per token", ylim=(0, 1.3 * top), title="Steps per token per block")
    right.legend()
    return _save(fig, path)


def plot_all(activity: dict, folder: str | Path) -> dict[str, Path]:
    """The three plots, as ``firing_rates.png``, ``raster.png`` and ``steps.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "firing_rates": plot_firing_rates(activity, folder / "firing_rates.png"),
        "raster": plot_raster(activity, folder / "raster.png"),
        "steps": plot_steps(activity, folder / "steps.png"),
    }

"""Time steps of a converted model by section and modality, changed without converting again.

A converted model keeps its MSTS steps in one place: the :class:`~spikemllm_sj.neurons.MSTSEncoder`
of each spike-driven site (linear inputs and attention queries). Integer weights, static scales and
input transforms do not depend on the steps, so giving a site a new encoder is the same as
converting with those steps, bit for bit (``tests/test_med.py`` checks it). A sweep over dozens of
step settings therefore converts once.

A *plan* gives steps per section and modality: ``{"all": {"text": 4, "image": 3, "video": 3}}``
for one setting of the whole model, or per section of :func:`model_sections` with ``groups``:
``"vision"`` (vision tower and projector; every token is visual and uses the image steps) and the
language model's layer groups ``"layers 0-1"``, ``"layers 2-3"``, ... (an output head converted
with ``convert_lm_head`` belongs to the last group).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional

import torch.nn as nn

from spikemllm_sj.ann2snn.plan import MSTSPlan
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.neurons import MSTSConfig, MSTSEncoder

__all__ = ["ALL", "VISION", "Plan", "Sections", "decoder_layers", "model_sections", "plan_config", "steps_applied", "uniform_plan"]

ALL = "all"
VISION = "vision"

Plan = Mapping[str, Mapping[str, int]]
"""Steps per section and modality name: ``{section: {"text": 4, "image": 3}}``."""


def decoder_layers(model: nn.Module, language_model: str) -> nn.ModuleList:
    """The decoder layers ``model.<language_model>.layers`` of a supported model."""
    layers = getattr(model.get_submodule(language_model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: {language_model} has no decoder layer list 'layers'")
    return layers


@dataclass(frozen=True)
class Sections:
    """The MSTS sites of a converted model, by section.

    :param sites: section name -> the module paths of its sites.
    :param layers: section name -> how many decoder layers of the language model it covers (0 for
        ``"vision"``: its tokens are outside the language-model budget).
    """

    sites: Mapping[str, tuple[str, ...]]
    layers: Mapping[str, int]


def _layer_groups(n_layers: int, groups: int) -> list[range]:
    base, extra = divmod(n_layers, groups)
    out, start = [], 0
    for g in range(groups):
        size = base + (g < extra)
        out.append(range(start, start + size))
        start += size
    return out


def model_sections(model: nn.Module, groups: Optional[int] = None) -> Sections:
    """Sections of converted ``model``: ``{"all": every site}`` when ``groups`` is None, else
    ``"vision"`` plus ``groups`` contiguous, near-equal groups of decoder layers."""
    state = spike_state(model)
    adapter = state.adapter
    layers = decoder_layers(model, adapter.language_model)
    sites = [name for name, m in model.named_modules() if isinstance(m, MSTSSite)]
    if groups is None:
        return Sections({ALL: tuple(sites)}, {ALL: len(layers)})
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= len(layers):
        raise ValueError(f"groups must be an int in [1, {len(layers)}] (the decoder layers), got {groups!r}")
    layer_path = f"{adapter.language_model}.layers."
    ranges = _layer_groups(len(layers), groups)
    names = [f"layers {r.start}-{r.stop - 1}" if len(r) > 1 else f"layer {r.start}" for r in ranges]
    by_section: dict[str, list[str]] = {VISION: [], **{n: [] for n in names}}
    visual = tuple(p for p in (adapter.vision, adapter.projector) if p is not None)
    for path in sites:
        if path.startswith(tuple(f"{p}." for p in visual)):
            by_section[VISION].append(path)
        elif path.startswith(layer_path):
            index = int(path[len(layer_path) :].split(".", 1)[0])
            by_section[next(n for n, r in zip(names, ranges) if index in r)].append(path)
        elif path == adapter.lm_head:
            by_section[names[-1]].append(path)
        else:
            raise ValueError(f"site {path} is in no section (vision tower, projector, decoder layers, head)")
    counts = {VISION: 0, **{n: len(r) for n, r in zip(names, ranges)}}
    return Sections({k: tuple(v) for k, v in by_section.items()}, counts)


def plan_config(config: SpikeConfig, plan: Plan) -> SpikeConfig:
    """``config`` with the steps of a section plan (MED's): the whole-model section ``"all"``
    becomes ``msts``, the others (``"vision"``, ``"layers A-B"``) become an
    :class:`~spikemllm_sj.ann2snn.plan.MSTSPlan`, so that ``convert``, ``set_msts`` and
    ``save_spiking`` take it."""
    msts = _msts_with(config.msts, plan[ALL]) if ALL in plan else config.msts
    overrides = tuple((section, dict(steps)) for section, steps in plan.items() if section != ALL)
    return dataclasses.replace(config, msts=msts, plan=MSTSPlan(overrides))


def uniform_plan(sections: Sections, steps: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """The plan giving every section ``steps`` (``"vision"`` only the image steps)."""
    return {s: ({"image": steps["image"]} if s == VISION else dict(steps)) for s in sections.sites}


def _msts_with(base: MSTSConfig, steps: Mapping[str, int]) -> MSTSConfig:
    current = {m.name.lower(): code.steps for m, code in base.codes.items()}
    return MSTSConfig(steps={**current, **steps}, scheme=base.scheme, signed=base.signed)


@contextlib.contextmanager
def steps_applied(model: nn.Module, plan: Plan, sections: Sections) -> Iterator[None]:
    """Run converted ``model`` with the steps of ``plan`` inside the block; restore them after.

    Modalities a section's plan leaves out keep the model's configured steps. A plan of the single
    section ``"all"`` also sets the model's ``SpikeConfig`` inside the block.
    """
    unknown = set(plan) - set(sections.sites)
    if unknown:
        raise ValueError(f"plan names unknown sections {sorted(unknown)}; sections: {list(sections.sites)}")
    state = spike_state(model)
    base = state.config.msts
    modules = dict(model.named_modules())
    saved = []
    for section, steps in plan.items():
        msts = _msts_with(base, steps)
        for path in sections.sites[section]:
            site = modules[path]
            saved.append((site, site.encoder))
            site.encoder = MSTSEncoder(msts)  # one per site, as convert gives (hooks may tell them apart)
    config = state.config
    if set(plan) == {ALL}:
        state.config = dataclasses.replace(config, msts=_msts_with(base, plan[ALL]))
    try:
        yield
    finally:
        for site, encoder in saved:
            site.encoder = encoder
        state.config = config

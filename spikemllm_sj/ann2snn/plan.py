"""Per-site MSTS plans: time steps by group of sites and modality, on top of ``SpikeConfig.msts``.

MED splits the step budget across modalities *and* layers. An :class:`MSTSPlan` says which sites
get which steps: a list of ``(selector, {modality: steps})`` overrides, applied in order over the
configuration's own steps (the last override that selects a site wins for the modalities it
names; the others keep what they had). Selectors, joined with ``/`` to intersect them:

* ``"vision"``: the vision tower and the projector (every token is visual: image steps);
* ``"layers A-B"`` or ``"layer A"``: decoder layers ``A..B`` of the language model (inclusive);
* ``"head"``: the output head (converted with ``convert_lm_head``);
* a site kind: ``"linear"`` (linear-layer inputs) or ``"attention.qk"`` (the attention queries);
* a layer type: the end of a site's path, e.g. ``"mlp.down_proj"`` or ``"self_attn.q_proj"``.

``{"text": 5}`` under ``"layers 0-3/mlp.down_proj"`` gives text tokens 5 steps at the down
projection inputs of the first four decoder layers. A selector that matches no site of the model
is an error (:meth:`MSTSPlan.check`).
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Mapping, Optional

from spikemllm_sj.ann2snn.adapters import ModelAdapter
from spikemllm_sj.neurons import Modality, MSTSConfig

__all__ = ["MSTSPlan", "SiteRef"]

_LAYERS = re.compile(r"^layers? (\d+)(?:-(\d+))?$")
_KINDS = ("linear", "attention.qk")


@dataclass(frozen=True)
class SiteRef:
    """What a selector can see of a site: its module path, kind, and where it sits in the model.

    :param layer: the decoder layer index (None outside the language model's layers).
    :param section: ``"vision"`` (vision tower or projector), ``"language_model"`` or ``"head"``.
    """

    path: str
    kind: str
    section: str
    layer: Optional[int]

    @classmethod
    def of(cls, path: str, kind: str, adapter: ModelAdapter) -> "SiteRef":
        """The reference of the site at ``path`` (of ``kind``) in a model of ``adapter``'s family."""
        visual = tuple(p for p in (adapter.vision, adapter.projector) if p is not None)
        layers = f"{adapter.language_model}.layers."
        if any(path == p or path.startswith(f"{p}.") for p in visual):
            return cls(path, kind, "vision", None)
        if path == adapter.lm_head:
            return cls(path, kind, "head", None)
        layer = int(path[len(layers):].split(".", 1)[0]) if path.startswith(layers) else None
        return cls(path, kind, "language_model", layer)


def _parse(selector: str) -> list[tuple[str, object]]:
    """``selector`` as ``(what, value)`` terms, all of which a site must match."""
    if not isinstance(selector, str) or not selector.strip():
        raise ValueError(f"a plan selector must be a non-empty string, got {selector!r}")
    terms = []
    for term in selector.split("/"):
        term = term.strip()
        match = _LAYERS.match(term)
        if match:
            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
            if last < first:
                raise ValueError(f"plan selector {selector!r}: layer range {first}-{last} is empty")
            terms.append(("layers", range(first, last + 1)))
        elif term in ("vision", "head"):
            terms.append(("section", term))
        elif term in _KINDS:
            terms.append(("kind", term))
        elif re.fullmatch(r"[A-Za-z_][\w.]*", term):
            terms.append(("suffix", term))
        else:
            raise ValueError(
                f"plan selector {selector!r}: {term!r} is none of 'vision', 'head', 'layers A-B', 'layer A', "
                f"a site kind {_KINDS} or a layer type such as 'mlp.down_proj'"
            )
    return terms


def _selects(terms: list[tuple[str, object]], site: SiteRef) -> bool:
    for what, value in terms:
        if what == "layers" and (site.layer is None or site.layer not in value):
            return False
        if what == "section" and site.section != value:
            return False
        if what == "kind" and site.kind != value:
            return False
        if what == "suffix" and not (site.path == value or site.path.endswith(f".{value}")):
            return False
    return True


@dataclass(frozen=True)
class MSTSPlan:
    """Ordered ``(selector, {modality: steps})`` overrides of ``SpikeConfig.msts`` (see the module
    docstring). The empty plan gives every site the configuration's steps.

    :param overrides: a sequence of ``(selector, steps)`` pairs; ``steps`` maps modality names (or
        :class:`~spikemllm_sj.neurons.Modality`) to positive step counts.
    """

    overrides: tuple[tuple[str, Mapping[str, int]], ...] = ()

    def __post_init__(self):
        if isinstance(self.overrides, (str, Mapping)) or not hasattr(self.overrides, "__iter__"):
            raise TypeError(f"overrides must be a sequence of (selector, steps) pairs, got {self.overrides!r}")
        normalised = []
        for item in self.overrides:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"each override must be a (selector, steps) pair, got {item!r}")
            selector, steps = item
            _parse(selector)
            if not isinstance(steps, Mapping) or not steps:
                raise ValueError(f"override {selector!r}: steps must be a non-empty mapping of modality to steps, got {steps!r}")
            named = {}
            for key, value in steps.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"override {selector!r}: steps must be positive ints, got {key}={value!r}")
                named[Modality.parse(key).name.lower()] = value
            normalised.append((selector.strip(), types.MappingProxyType(named)))
        object.__setattr__(self, "overrides", tuple(normalised))

    def __bool__(self) -> bool:
        return bool(self.overrides)

    def msts_for(self, site: SiteRef, base: MSTSConfig) -> MSTSConfig:
        """The steps of ``site``: ``base``, then every override that selects it, in order."""
        steps = {m.name.lower(): code.steps for m, code in base.codes.items()}
        for selector, override in self.overrides:
            if _selects(_parse(selector), site):
                steps.update(override)
        if steps == {m.name.lower(): code.steps for m, code in base.codes.items()}:
            return base
        return MSTSConfig(steps=steps, scheme=base.scheme, signed=base.signed)

    def check(self, sites: list[SiteRef], base: MSTSConfig) -> None:
        """Raise unless every override selects at least one of ``sites`` and every resolved
        configuration is a valid MSTS configuration for ``base``'s scheme."""
        for selector, _ in self.overrides:
            terms = _parse(selector)
            if not any(_selects(terms, site) for site in sites):
                examples = ", ".join(s.path for s in sites[:3])
                raise ValueError(f"plan selector {selector!r} selects none of the model's {len(sites)} spike-coded sites (e.g. {examples})")
        for site in sites:
            self.msts_for(site, base)  # raises for steps the scheme cannot take

    def to_list(self) -> list:
        """JSON-ready form; ``MSTSPlan.from_list`` inverts it."""
        return [[selector, dict(steps)] for selector, steps in self.overrides]

    @classmethod
    def from_list(cls, data) -> "MSTSPlan":
        if not isinstance(data, list):
            raise ValueError(f"a plan must be a list of [selector, steps] pairs, got {type(data).__name__}")
        return cls(tuple((tuple(item) if isinstance(item, list) else item) for item in data))

"""``analyze(model, batches)``: MED statistics and quantization sensitivity of an MLLM, measured.

The float model is run once on the calibration batches to record the reference (logits and decoder
layer outputs) and each layer's evolution by modality (MED); it is then converted in place, and the
converted model is run as its fake-quant twin (the same numbers as spike mode, bit for bit) with
one modality at a time encoded with fewer steps (:mod:`spikemllm_sj.med.steps` swaps the steps
without converting again). The result feeds the scheduler (:mod:`spikemllm_sj.med.schedule`).

What the paper defines and what is ours (INFERENCE): the paper
guides MSTS by MED, described by a reader as a cross-layer cosine-similarity proxy. We take, per
decoder layer ``l`` and modality ``m``, ``E_m^l = 1 - mean_{tokens of m} cos(h^l_in, h^l_out)`` and
``MED_v^l = E_text^l - E_v^l`` for each visual modality ``v``; the relative update norm is recorded
beside it. MED is reported and cross-checked; the schedule itself is decided by measured errors.

Two budgets (``over``): ``"tokens"``, the mean steps per language-model token (the paper's Tv/Tt
view; the vision tower, which always runs at the image steps, is not counted), and ``"sites"``,
the mean steps per token encoded at any spike-driven site (the vision tower's patches and every
layer's inputs included, as :func:`~spikemllm_sj.analysis.op_report.op_report` counts them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Literal, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from spikemllm_sj.ann2snn.adapters import adapter_for
from spikemllm_sj.ann2snn.preconditions import require_eval_mode
from spikemllm_sj.ann2snn.recipe import convert, set_msts, spike_state
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.med.measure import (
    LayerEvolution,
    Measurement,
    Reference,
    check_modalities,
    firing_rates,
    measure,
    present_modalities,
    record_reference,
)
from spikemllm_sj.med.schedule import (
    Candidate,
    Fidelity,
    Schedule,
    SensitivityTable,
    check_budget,
    check_candidates,
    schedule,
)
from spikemllm_sj.med.steps import ALL, VISION, Plan, Sections, decoder_layers, model_sections, steps_applied, uniform_plan
from spikemllm_sj.neurons import FIXED_STEP_SCHEMES, MSTSConfig

__all__ = [
    "OVER", "LowFidelityError", "MEDConfig", "MEDStudy", "SensitivityEntry", "analyze", "baselines", "compare",
    "scheduled_config",
]

Batch = Mapping[str, torch.Tensor]
Over = Literal["tokens", "sites"]
OVER = ("tokens", "sites")
UNITS = {"tokens": "language-model token", "sites": "token encoded at any site"}


@dataclass(frozen=True)
class MEDConfig:
    """What :func:`analyze` measures.

    :param candidates: step counts probed per modality, increasing; the largest is the reference
        at which the other modalities are held (default 2..7; TC-LIF L = 2^(T+1) levels).
    :param groups: also measure each modality in each of ``groups`` groups of decoder layers, and
        the vision tower, alone (for per-group schedules); None: the whole model only.
    """

    candidates: tuple[int, ...] = (2, 3, 4, 5, 6, 7)
    groups: Optional[int] = None

    def __post_init__(self):
        check_candidates(self.candidates)
        if self.groups is not None and (isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1):
            raise ValueError(f"groups must be None or a positive int, got {self.groups!r}")


@dataclass(frozen=True)
class SensitivityEntry:
    """One measurement: ``modality`` in ``section`` alone at ``steps``, everything else at the reference."""

    section: str
    modality: str
    steps: int
    result: Measurement

    def as_dict(self) -> dict:
        return {"section": self.section, "modality": self.modality, "steps": self.steps, **self.result.as_dict()}


def _check_over(over: str) -> None:
    if over not in OVER:
        raise ValueError(f"over must be one of {OVER}, got {over!r}")


@dataclass
class MEDStudy:
    """A converted model with its FP32 references: the measurements, and plans measured on demand.

    :param evolution: per decoder layer, the MED statistics (FP32 model, calibration batches).
    :param entries: the sensitivity measurements (error = 1 - logit cosine to FP32).
    :param sections: the whole model as one section; ``group_sections``: the vision tower and the
        decoder layer groups, when ``MEDConfig.groups`` was given.
    """

    model: nn.Module
    config: SpikeConfig
    med_config: MEDConfig
    reference: Reference
    holdout: Optional[Reference]
    evolution: list[LayerEvolution]
    entries: list[SensitivityEntry]
    sections: Sections
    group_sections: Optional[Sections]
    _cache: dict = field(default_factory=dict, repr=False)
    _site_tokens: Optional[dict] = field(default=None, repr=False)

    @property
    def layers(self) -> nn.ModuleList:
        return decoder_layers(self.model, spike_state(self.model).adapter.language_model)

    @property
    def tokens(self) -> dict[str, int]:
        return self.reference.tokens()

    @property
    def modalities(self) -> list[str]:
        return present_modalities(self.tokens)

    @property
    def reference_steps(self) -> int:
        return self.med_config.candidates[-1]

    def mean_med(self) -> dict[str, float]:
        """MED per visual modality, averaged over the decoder layers."""
        per_layer = [e.med() for e in self.evolution]
        return {v: sum(m[v] for m in per_layer) / len(per_layer) for v in per_layer[0]}

    def _sections(self, groups: bool) -> Sections:
        if groups and self.group_sections is None:
            raise ValueError("per-group plans need analyze(..., med=MEDConfig(groups=...))")
        return self.group_sections if groups else self.sections

    def _sections_of(self, plan: Plan) -> Sections:
        return self._sections(set(plan) != {ALL})

    def site_tokens(self) -> dict[str, dict[str, int]]:
        """Tokens each MSTS site encodes per modality on the calibration batches (one spike pass)."""
        if self._site_tokens is None:
            self.firing_rates(self.uniform({m: self.reference_steps for m in self.modalities}))
        return self._site_tokens

    def table(self, groups: bool = False, over: Over = "tokens") -> SensitivityTable:
        """The sensitivity table of the whole model or of its sections, with the budget ``over``."""
        _check_over(over)
        sections = self._sections(groups)
        error: dict[str, dict[str, dict[int, float]]] = {}
        for e in self.entries:
            if e.section in sections.sites:
                error.setdefault(e.section, {}).setdefault(e.modality, {})[e.steps] = max(0.0, 1.0 - e.result.cosine)
        tokens = self.tokens
        if over == "tokens":
            weights = {s: {m: sections.layers[s] * tokens.get(m, 0) for m in v} for s, v in error.items()}
        else:
            counts = self.site_tokens()
            weights = {
                s: {m: sum(counts[p].get(m, 0) for p in sections.sites[s]) for m in v} for s, v in error.items()
            }
        reference = next(e for e in self.entries if e.steps == self.reference_steps)
        return SensitivityTable(
            tokens, self.med_config.candidates, max(0.0, 1.0 - reference.result.cosine), error, weights, UNITS[over]
        )

    def applied(self, plan: Plan):
        """Context manager: the converted model runs with ``plan`` inside the block (see
        :func:`~spikemllm_sj.med.steps.steps_applied`)."""
        return steps_applied(self.model, plan, self._sections_of(plan))

    def measure(self, plan: Plan, holdout: bool = False) -> Measurement:
        """Fidelity of the model run with ``plan`` (cached per plan), on the calibration batches or
        the held-out ones."""
        reference = self.holdout if holdout else self.reference
        if reference is None:
            raise ValueError("no held-out batches were given to analyze()")
        key = (holdout, tuple(sorted((s, tuple(sorted(v.items()))) for s, v in plan.items())))
        if key not in self._cache:
            with self.applied(plan):
                self._cache[key] = measure(self.model, reference, self.layers)
        return self._cache[key]

    def average_steps(self, plan: Plan, over: Over = "tokens") -> float:
        """Average steps of ``plan`` per language-model token (``"tokens"``) or per token encoded
        at any site (``"sites"``)."""
        return self.table(set(plan) != {ALL}, over).average_steps(plan)

    def uniform(self, steps: Mapping[str, int]) -> dict[str, dict[str, int]]:
        """The whole-model plan of ``steps`` (modalities without tokens left out)."""
        return {ALL: {m: steps[m] for m in self.modalities}}

    def schedule(
        self,
        budget: Optional[float] = None,
        target: Optional[float] = None,
        verify: int = 8,
        groups: bool = False,
        over: Over = "tokens",
        fidelity: Optional[Fidelity] = None,
    ) -> Schedule:
        """Schedule by ``fidelity`` (default: logit cosine on the calibration batches). ``groups``:
        per layer group and vision tower; with ``over="tokens"`` the vision tower (outside that
        budget) is held at the image steps of the whole-model schedule for the same request."""
        fidelity = fidelity or (lambda plan: self.measure(plan).cosine)
        if not groups:
            return schedule(self.table(False, over), budget, target, fidelity, verify)
        table = self.table(True, over)
        fixed = None
        if not table.in_budget(VISION):
            whole = self.schedule(budget, target, verify, False, over, fidelity)
            fixed = {VISION: {"image": whole.steps.get("image", self.reference_steps)}}
        return schedule(table, budget, target, fidelity, verify, fixed)

    def firing_rates(self, plan: Plan) -> dict[str, dict[str, float]]:
        """Firing rate per layer and modality with ``plan``, on the calibration batches."""
        with self.applied(plan):
            rates, self._site_tokens = firing_rates(self.model, self.reference.batches)
        return rates

    def as_dict(self) -> dict:
        def describe(sections: Sections) -> dict:
            return {s: {"layers": n, "sites": len(sections.sites[s])} for s, n in sections.layers.items()}

        return {
            "spike_config": self.config.to_dict(),
            "candidates": list(self.med_config.candidates),
            "reference_steps": self.reference_steps,
            "tokens": self.tokens,
            "evolution": [e.as_dict() for e in self.evolution],
            "mean_med": self.mean_med(),
            "reference": self.measure(self.uniform({m: self.reference_steps for m in self.modalities})).as_dict(),
            "sensitivity": [e.as_dict() for e in self.entries],
            "sections": describe(self.sections),
            "group_sections": None if self.group_sections is None else describe(self.group_sections),
        }


def _check_model(model: nn.Module) -> None:
    try:
        adapter = adapter_for(model)
    except ValueError as error:
        raise ValueError(f"MED needs a model that spikemllm_sj.convert supports: {error}") from None
    if getattr(model, "spikemllm_state", None) is not None:
        raise ValueError("the model is already converted: pass the float model (MED needs its FP32 outputs)")
    if adapter.vision is None:
        raise ValueError(f"{type(model).__name__} has no vision tower: MED compares visual and text tokens")
    require_eval_mode(model, "the MED analysis")


def _check_batches(batches, name: str) -> list:
    if isinstance(batches, Mapping) or not isinstance(batches, Sequence) or not batches:
        raise ValueError(f"{name} must be a non-empty list of forward kwargs (dicts with input_ids)")
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ValueError(f"{name}[{i}] has no input_ids: each batch is the forward kwargs of the model")
    return list(batches)


def _sweep(model, reference, layers, sections: Sections, modalities, candidates, progress) -> list[SensitivityEntry]:
    """Each (section, modality) alone at each candidate below the reference; the reference once."""
    ref = candidates[-1]
    base = uniform_plan(sections, {m: ref for m in modalities})
    units = [(s, m) for s in sections.sites for m in base[s]]
    with steps_applied(model, base, sections):
        at_ref = measure(model, reference, layers)
    entries = [SensitivityEntry(s, m, ref, at_ref) for s, m in units]
    jobs = [(s, m, t) for s, m in units for t in candidates[:-1]]
    for s, m, t in tqdm(jobs, desc="med: sensitivity", unit="setting", disable=not progress):
        plan = {**base, s: {**base[s], m: t}}
        with steps_applied(model, plan, sections):
            entries.append(SensitivityEntry(s, m, t, measure(model, reference, layers)))
    return entries


def analyze(
    model: nn.Module,
    batches: Sequence[Batch],
    config: Optional[SpikeConfig] = None,
    med: Optional[MEDConfig] = None,
    holdout: Optional[Sequence[Batch]] = None,
    calibration=None,
    progress: bool = True,
) -> MEDStudy:
    """Measure MED and per-modality sensitivity of float ``model`` on ``batches``, converting it in
    place with ``config`` (see the module docstring).

    :param batches: calibration batches (forward kwargs); they need text and image (or video) tokens.
    :param holdout: other batches whose FP32 outputs are kept too, for held-out evaluation.
    :param calibration: what ``convert`` needs for static scales, SmoothQuant or GPTQ.
    """
    config = config or SpikeConfig()
    med = med or MEDConfig()
    if not isinstance(config, SpikeConfig):
        raise TypeError(f"config must be a SpikeConfig, got {type(config).__name__}")
    if not isinstance(med, MEDConfig):
        raise TypeError(f"med must be a MEDConfig, got {type(med).__name__}")
    if config.msts.data_dependent:
        raise ValueError(
            f"config.msts.scheme {config.msts.scheme!r} has data-dependent steps (each token's follow its counts): "
            f"MED has no steps to choose for it; use a scheme with fixed steps ({', '.join(FIXED_STEP_SCHEMES)})"
        )
    for t in med.candidates:  # raises for step counts the scheme cannot take
        MSTSConfig(steps={"text": t}, scheme=config.msts.scheme, signed=config.msts.signed)
    _check_model(model)
    batches = _check_batches(batches, "batches")
    holdout = None if holdout is None else _check_batches(holdout, "holdout")
    adapter = adapter_for(model)
    visual_ids = adapter.visual_token_ids(model)
    layers = decoder_layers(model, adapter.language_model)
    if med.groups is not None and med.groups > len(layers):
        raise ValueError(f"groups must be at most the {len(layers)} decoder layers, got {med.groups}")
    reference, evolution = record_reference(model, batches, layers, visual_ids, progress)
    check_modalities(reference.tokens(), "the calibration batches")
    held = None if holdout is None else record_reference(model, holdout, layers, visual_ids, progress)[0]
    convert(model, config, calibration)
    modalities = present_modalities(reference.tokens())
    sections = model_sections(model)
    entries = _sweep(model, reference, layers, sections, modalities, med.candidates, progress)
    group_sections = None
    if med.groups is not None:
        group_sections = model_sections(model, med.groups)
        entries += _sweep(model, reference, layers, group_sections, modalities, med.candidates, progress)
    return MEDStudy(model, config, med, reference, held, evolution, entries, sections, group_sections)


def compare(
    study: MEDStudy,
    uniform: Sequence[int] = (2, 3, 4, 7),
    splits: Sequence[tuple[int, int]] = ((3, 4), (4, 3), (2, 3), (3, 3)),
    budgets: Sequence[float] = (3.0, 3.3, 3.6),
    overs: Sequence[Over] = ("tokens",),
    holdout: bool = False,
    fidelity: Optional[Fidelity] = None,
    progress: bool = False,
) -> tuple[list[dict], dict[tuple[str, float], tuple[Schedule, Optional[Schedule]]]]:
    """Measured rows for uniform T, hand-picked splits ``(Tv, Tt)`` (video at Tv) and the
    scheduler's choices at each budget and budget measure (whole model, and per layer group when
    the study has groups; chosen by ``fidelity``, default the calibration logit cosine), measured
    on the calibration or held-out batches.

    :return: the rows (``kind`` uniform / split / msts / msts_groups, ``over`` (None for fixed
        plans), ``label``, ``plan``, ``average_steps`` (per language-model token), ``site_steps``
        (per token at any site), ``cosine``, ``top1``) and, per ``(over, budget)``, the
        whole-model and per-group schedules (None without groups).
    """
    for over in overs:
        _check_over(over)
    plans = [("uniform", None, f"T={t}", study.uniform({"text": t, "image": t, "video": t})) for t in uniform]
    plans += [("split", None, f"Tv/Tt={v}/{t}", study.uniform({"text": t, "image": v, "video": v})) for v, t in splits]
    schedules = {}
    for over in overs:
        tag = "" if over == "tokens" else " (sites)"
        for budget in budgets:
            whole = study.schedule(budget=budget, over=over, fidelity=fidelity)
            grouped = None
            if study.group_sections is not None:
                grouped = study.schedule(budget=budget, groups=True, over=over, fidelity=fidelity)
            schedules[over, budget] = (whole, grouped)
            plans.append(("msts", over, f"MSTS {budget:g}{tag}", whole.plan))
            if grouped is not None:
                plans.append(("msts_groups", over, f"MSTS/groups {budget:g}{tag}", grouped.plan))
    rows = []
    for kind, over, label, plan in tqdm(plans, desc="med: compare", unit="plan", disable=not progress):
        m = study.measure(plan, holdout=holdout)
        rows.append(
            {
                "kind": kind,
                "over": over,
                "label": label,
                "plan": {s: dict(v) for s, v in plan.items()},
                "average_steps": study.average_steps(plan, "tokens"),
                "site_steps": study.average_steps(plan, "sites"),
                "cosine": m.cosine,
                "top1": m.top1,
            }
        )
    return rows, schedules


def baselines(study: MEDStudy, rows: list[dict], over: Over = "tokens") -> list[Candidate]:
    """The uniform and hand-picked plans of :func:`compare`'s rows as candidates measured on the
    calibration batches (the scheduler's own measurements), with average steps ``over``, for
    ``explain``."""
    key = "average_steps" if over == "tokens" else "site_steps"
    return [
        Candidate(r["plan"], r[key], float("nan"), study.measure(r["plan"]).cosine)
        for r in rows
        if r["kind"] in ("uniform", "split")
    ]


class LowFidelityError(RuntimeError):
    """No schedule within the budget reaches the required fidelity (a finding, not a bad argument)."""


def scheduled_config(
    model: nn.Module, batches: Sequence[Batch], config: SpikeConfig, calibration, budget: float,
    min_cosine: Optional[float] = None, progress: bool = False,
) -> tuple[SpikeConfig, dict, nn.Module]:
    """``(config with the scheduled steps, record, the converted model)``: MED and per-modality
    sensitivity measured on a copy of float ``model`` converted with ``config`` (:func:`analyze`;
    twice the model's memory), then the steps per modality the scheduler picks for an average of
    ``budget`` steps per language-model token, given to that copy (:func:`set_msts`): the model
    returned is the one whose fidelity the scheduler measured. Modalities absent from ``batches``
    keep the configuration's steps.

    With ``act_clip="search"`` the clip ratios were searched at ``config``'s steps and stay as
    searched; converting the float model again with the returned config would search them at the
    new steps (``record["clip_ratios_searched_at"]``).

    :param min_cosine: refuse a schedule whose measured logit cosine to FP32 on ``batches`` is
        below it (the scheduler's choice is the best it measured within the budget, so no plan
        within the budget reaches it).
    :raises LowFidelityError: the chosen schedule is below ``min_cosine``.
    """
    check_budget(budget, MEDConfig().candidates)  # before the analysis, which takes a while
    if config.plan.overrides:
        raise ValueError("a configuration with a per-site plan cannot be scheduled: MED probes whole-model steps per "
                         "modality and would measure a model without the plan; give the plan or a MED budget")
    study = analyze(copy.deepcopy(model), batches, config, calibration=calibration, progress=progress)
    chosen = study.schedule(budget=budget)
    measured = chosen.chosen.measured
    if min_cosine is not None and measured is not None and not measured >= min_cosine:  # NaN fails too
        raise LowFidelityError(
            f"MED: the best schedule within the budget of {budget:g} steps per token ({chosen.steps}) has a logit "
            f"cosine of {measured:.4f} to FP32 on the calibration batches, below the fidelity guard's {min_cosine:g}; "
            "give a larger budget, other quantization settings, or a lower --min-cosine"
        )
    steps = {modality.name.lower(): code.steps for modality, code in config.msts.codes.items()}
    searched_at = dict(steps) if config.act_clip == "search" else None
    steps.update(chosen.steps)
    scheduled = replace(config, msts=MSTSConfig(steps=steps, scheme=config.msts.scheme, signed=config.msts.signed))
    set_msts(study.model, scheduled.msts)
    record = {"budget": budget, "steps": steps, "mean_med": study.mean_med(), "tokens": study.tokens,
              "chosen": chosen.chosen.as_dict(), "candidates_measured": len(chosen.verified),
              "clip_ratios_searched_at": searched_at}
    return scheduled, record, study.model

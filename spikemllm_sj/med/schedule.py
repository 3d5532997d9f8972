"""The MSTS scheduler: time steps per modality (optionally per layer group) from measurements.

Inputs are a :class:`SensitivityTable` (measured: the model's error when one modality, in one
section, alone is encoded with fewer steps) and, optionally, a function that measures the fidelity
of a whole plan. The scheduler

1. predicts the error of every plan as the reference error plus the sum of the single-modality
   error increases (an additive model; exact when modalities do not interact),
2. finds the ``verify`` best predicted plans that fit the budget (a multiple-choice knapsack over
   sections and modalities, solved exactly by dynamic programming over integer costs),
3. measures them and returns the best *measured* plan.

Cost is an average number of steps per token, the weighted mean of each section's and modality's
steps (:class:`SensitivityTable` ``weights``): per language-model token (vision-tower tokens not
counted; with layer groups the ``"vision"`` section is then held at given steps), or per token
encoded at any spike-driven site (the vision tower's patches included).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from spikemllm_sj.med.steps import ALL, VISION, Plan

__all__ = ["SensitivityTable", "Candidate", "Schedule", "check_budget", "explain", "schedule"]

Fidelity = Callable[[Plan], float]
MODALITIES = ("text", "image", "video")  # the vision tower's section is "image" even for video frames


def check_candidates(c) -> None:
    if not isinstance(c, tuple) or len(c) < 2 or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in c):
        raise ValueError(f"candidates must be a tuple of at least two positive ints, got {c!r}")
    if list(c) != sorted(set(c)):
        raise ValueError(f"candidates must be strictly increasing, got {c!r}")


@dataclass(frozen=True)
class SensitivityTable:
    """Measured error of a model (``1 - fidelity``, e.g. ``1 - logit cosine to FP32``).

    :param tokens: language-model tokens per modality name (the token mix); needs text and at
        least one visual modality.
    :param candidates: the step counts probed, increasing; the largest is the reference.
    :param reference_error: error with every modality at the reference steps.
    :param error: ``error[section][modality][steps]``: error when only that modality in that
        section has ``steps`` (everything else at the reference); a section ``"all"`` covers the
        whole model. Every candidate must be present.
    :param weights: ``weights[section][modality]``: what one step of that modality in that section
        costs (tokens, or tokens times layers); the average steps of a plan is the weighted mean.
        A section of zero weights is outside the budget and a schedule must hold it fixed.
        Default: the language-model tokens of each modality, in every section.
    :param unit: what the average counts, for reports.
    """

    tokens: Mapping[str, int]
    candidates: tuple[int, ...]
    reference_error: float
    error: Mapping[str, Mapping[str, Mapping[int, float]]]
    weights: Optional[Mapping[str, Mapping[str, int]]] = None
    unit: str = "language-model token"

    def __post_init__(self):
        check_candidates(self.candidates)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in self.tokens.values()):
            raise ValueError(f"token counts must be ints >= 0, got {dict(self.tokens)}")
        if not self.tokens.get("text") or not any(self.tokens.get(m) for m in ("image", "video")):
            raise ValueError(f"tokens must count text and image or video tokens, got {dict(self.tokens)}")
        if not 0 <= self.reference_error <= 2:
            raise ValueError(f"reference_error must be in [0, 2] (1 - cosine), got {self.reference_error}")
        if not self.error:
            raise ValueError("error must have at least one section")
        for section, per_modality in self.error.items():
            for modality, per_steps in per_modality.items():
                if modality not in MODALITIES:
                    raise ValueError(f"error[{section!r}] names {modality!r}; modalities: {MODALITIES}")
                missing = set(self.candidates) - set(per_steps)
                if missing:
                    raise ValueError(f"error[{section!r}][{modality!r}] lacks step counts {sorted(missing)}")
                bad = {t: e for t, e in per_steps.items() if not (isinstance(e, float | int) and 0 <= e <= 2)}
                if bad:
                    raise ValueError(f"error[{section!r}][{modality!r}] must be in [0, 2], got {bad}")
        if self.weights is None:
            weights = {s: {m: self.tokens.get(m, 0) for m in v} for s, v in self.error.items()}
            object.__setattr__(self, "weights", weights)
        if set(self.weights) != set(self.error):
            raise ValueError(f"weights and error must name the same sections: {sorted(self.weights)} vs {sorted(self.error)}")
        for section, per_modality in self.weights.items():
            if set(per_modality) != set(self.error[section]):
                raise ValueError(f"weights[{section!r}] must weigh exactly the modalities of error[{section!r}]")
            if any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in per_modality.values()):
                raise ValueError(f"weights[{section!r}] must be ints >= 0, got {dict(per_modality)}")
        if not any(w for v in self.weights.values() for w in v.values()):
            raise ValueError("at least one weight must be positive")

    @property
    def reference_steps(self) -> int:
        return self.candidates[-1]

    @property
    def modalities(self) -> list[str]:
        return [m for m, n in self.tokens.items() if n > 0]

    def in_budget(self, section: str) -> bool:
        return any(self.weights[section].values())

    def cost(self, plan: Plan) -> int:
        """Integer cost of ``plan``: the sum of weight x steps over its sections and modalities."""
        return sum(self.weights[s].get(m, 0) * t for s, steps in plan.items() for m, t in steps.items())

    def average_steps(self, plan: Plan) -> float:
        """Weighted average steps of ``plan``, which must give every weighted unit its steps."""
        missing = [(s, m) for s, v in self.weights.items() for m, w in v.items() if w and m not in plan.get(s, {})]
        if missing:
            raise ValueError(f"plan gives no steps to (section, modality) {missing}")
        return self.cost(plan) / sum(w for v in self.weights.values() for w in v.values())

    def increase(self, section: str, modality: str, steps: int) -> float:
        """Measured error increase of ``modality`` in ``section`` alone at ``steps``."""
        return self.error[section][modality][steps] - self.reference_error

    def predict(self, plan: Plan) -> float:
        """Predicted error of ``plan`` (additive model)."""
        return self.reference_error + sum(
            self.increase(s, m, t) for s, steps in plan.items() for m, t in steps.items() if m in self.error[s]
        )

    def sensitivity(self, modality: str, section: str = ALL) -> float:
        """Mean error increase over the candidates below the reference: the modality's sensitivity."""
        lower = self.candidates[:-1]
        return sum(self.increase(section, modality, t) for t in lower) / len(lower)


@dataclass(frozen=True)
class Candidate:
    plan: Mapping[str, Mapping[str, int]]
    average_steps: float
    predicted: float  # predicted fidelity, 1 - predicted error
    measured: Optional[float] = None

    def as_dict(self) -> dict:
        return {
            "plan": {s: dict(v) for s, v in self.plan.items()},
            "average_steps": self.average_steps,
            "predicted_fidelity": self.predicted,
            "measured_fidelity": self.measured,
        }


@dataclass(frozen=True)
class Schedule:
    """The scheduler's choice and the candidates it measured.

    :param chosen: the chosen plan; ``chosen.measured`` is None when no fidelity function was given.
    :param budget: the average-steps budget, or None when a ``target`` fidelity was asked.
    :param verified: every candidate measured, in the order measured.
    :param considered: how many plans the search kept (that fit the budget).
    """

    chosen: Candidate
    budget: Optional[float]
    target: Optional[float]
    verified: tuple[Candidate, ...]
    considered: int

    @property
    def plan(self) -> Mapping[str, Mapping[str, int]]:
        return self.chosen.plan

    @property
    def steps(self) -> dict[str, int]:
        """Steps per modality of a single-section plan."""
        if len(self.plan) != 1:
            raise ValueError(f"a plan over sections {list(self.plan)} has no single steps per modality")
        return dict(next(iter(self.plan.values())))

    def as_dict(self) -> dict:
        return {
            "budget": self.budget,
            "target": self.target,
            "chosen": self.chosen.as_dict(),
            "verified": [c.as_dict() for c in self.verified],
            "considered": self.considered,
        }


def _search(table: SensitivityTable, fixed: Plan, keep: int) -> list[tuple[int, float, dict]]:
    """Every plan that could be among the ``keep`` best predicted plans of some budget:
    ``(integer cost, predicted error, plan)`` (integer cost: :meth:`SensitivityTable.cost`).

    Dynamic programming over the (section, modality) units, dropping a partial plan once ``keep``
    others are both cheaper (or as cheap) and better: each of them, completed the same way, stays
    cheaper and better, so nothing that could rank among the ``keep`` best is lost (the error is
    additive). ``keep=1`` leaves the Pareto front.
    """
    units = [(s, m) for s in table.error if s not in fixed for m in table.error[s]]
    states: list[tuple[int, float, tuple]] = [(table.cost(fixed), table.predict(fixed), ())]
    for section, modality in units:
        w = table.weights[section][modality]
        grown = [
            (cost + w * t, err + table.increase(section, modality, t), picks + ((section, modality, t),))
            for cost, err, picks in states
            for t in table.candidates
        ]
        grown.sort(key=lambda state: (state[0], state[1]))
        states, errors = [], []  # errors: sorted errors of the kept, cheaper-or-equal states
        for state in grown:
            if bisect.bisect_left(errors, state[1]) < keep:
                states.append(state)
                bisect.insort(errors, state[1])
    out = []
    for cost, err, picks in states:
        plan: dict[str, dict[str, int]] = {s: dict(v) for s, v in fixed.items()}
        for section, modality, t in picks:
            plan.setdefault(section, {})[modality] = t
        out.append((cost, err, plan))
    return out


def check_budget(budget: float, candidates: tuple[int, ...]) -> None:
    """A budget of average steps per token must be a finite number no smaller than the smallest
    of the step ``candidates`` (no plan fits below it).

    :raises ValueError: naming the budget and the candidates.
    """
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number of average steps per token, got {budget!r}")
    if budget < min(candidates):
        raise ValueError(
            f"budget {budget:g} is below the smallest step count {min(candidates)}: no plan fits (candidates {candidates})"
        )


def _check_request(table: SensitivityTable, budget, target, verify, fixed: dict) -> None:
    if (budget is None) == (target is None):
        raise ValueError("give exactly one of budget (average steps per token) and target (fidelity)")
    if isinstance(verify, bool) or not isinstance(verify, int) or verify < 1:
        raise ValueError(f"verify must be a positive int, got {verify!r}")
    unknown = set(fixed) - set(table.error)
    if unknown:
        raise ValueError(f"fixed names unknown sections {sorted(unknown)}; sections: {sorted(table.error)}")
    for section, steps in fixed.items():
        bad = {m: t for m, t in steps.items() if t not in table.candidates}
        if bad or set(steps) != set(table.error[section]):
            raise ValueError(
                f"fixed[{section!r}] must give each of {sorted(table.error[section])} one of the candidates "
                f"{table.candidates}, got {dict(steps)}"
            )
    free = [s for s in table.error if not table.in_budget(s) and s not in fixed]
    if free:
        raise ValueError(f"sections {free} are outside the budget (zero weights): give their steps in fixed")
    if budget is not None:
        check_budget(budget, table.candidates)
    elif isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise ValueError(f"target must be a fidelity in (0, 1], got {target!r}")


def schedule(
    table: SensitivityTable,
    budget: Optional[float] = None,
    target: Optional[float] = None,
    fidelity: Optional[Fidelity] = None,
    verify: int = 8,
    fixed: Optional[Plan] = None,
) -> Schedule:
    """Choose steps per section and modality (see the module docstring).

    :param budget: the largest weighted average steps; the plan of best measured fidelity among
        the ``verify`` best predicted plans that fit is chosen (ties: the cheaper).
    :param target: instead of a budget, the smallest fidelity wanted; the cheapest plan whose
        measured fidelity reaches it is chosen (at most ``verify`` plans measured, cheapest first).
    :param fidelity: measures a plan (higher is better, e.g. logit cosine to FP32); without it the
        choice rests on the prediction alone.
    :param fixed: steps of sections the schedule must not change (e.g. ``{"vision": {"image": 3}}``);
        every section outside the budget must be fixed.
    """
    fixed = {s: dict(v) for s, v in (fixed or {}).items()}
    _check_request(table, budget, target, verify, fixed)
    total = sum(w for v in table.weights.values() for w in v.values())
    plans = [
        Candidate(plan, table.average_steps(plan), 1 - err)
        for cost, err, plan in _search(table, fixed, verify)
        if budget is None or cost <= budget * total * (1 + 1e-12)  # float budget against an integer cost
    ]
    if not plans:
        raise ValueError(f"no plan fits budget {budget} with the fixed sections {fixed}")
    if budget is not None:
        order = sorted(plans, key=lambda c: (-c.predicted, c.average_steps))
    else:
        order = sorted(plans, key=lambda c: (c.average_steps, -c.predicted))
        order = [c for c in order if c.predicted >= target] or order[-1:]
    if fidelity is None:
        return Schedule(order[0], budget, target, (), len(plans))
    verified: list[Candidate] = []
    for cand in order[:verify]:
        verified.append(Candidate(cand.plan, cand.average_steps, cand.predicted, float(fidelity(cand.plan))))
        if target is not None and verified[-1].measured >= target:
            return Schedule(verified[-1], budget, target, tuple(verified), len(plans))
    if target is not None:
        best = max(verified, key=lambda c: c.measured)
        raise ValueError(
            f"no plan reached fidelity {target}: measured {len(verified)} (the cheapest predicted to reach it); "
            f"best {best.measured:.4f} at {best.average_steps:.2f} steps per token with {best.plan}"
        )
    chosen = max(verified, key=lambda c: (c.measured, -c.average_steps))
    return Schedule(chosen, budget, target, tuple(verified), len(plans))


def _plan_text(plan: Mapping[str, Mapping[str, int]]) -> str:
    return "; ".join(("" if s == ALL else f"{s}: ") + ", ".join(f"{m} {t}" for m, t in v.items()) for s, v in plan.items())


def _why(chosen: Candidate, table: SensitivityTable) -> str:
    why = []
    for section, steps in chosen.plan.items():
        for m, t in steps.items():
            lower = f" (at {t - 1}: {table.increase(section, m, t - 1):.2e})" if t - 1 in table.candidates else ""
            where = "" if section == ALL else f" in {section}"
            why.append(f"{m}{where} at {t} steps alone costs {table.increase(section, m, t):.2e}{lower}")
    return "Why: " + "; ".join(why) + "."


def _med_notes(med: Mapping[str, float], table: SensitivityTable, by_section: Optional[SensitivityTable]) -> list[str]:
    """Whether each visual modality's MED agrees with its measured sensitivity. MED is measured on
    the decoder layers: it is compared with their sensitivity when a per-section table tells it."""
    decoder = [s for s in by_section.error if s != VISION] if by_section is not None else []

    def sens(m: str) -> float:
        return sum(by_section.sensitivity(m, s) for s in decoder) if decoder else table.sensitivity(m)

    scope = "decoder layers" if decoder else "whole model, vision tower included"
    notes = []
    for v, value in med.items():
        if v not in table.modalities:
            continue
        evolves_less, less_sensitive = value > 0, sens(v) < sens("text")
        notes.append(
            f"{v} evolves {'less' if evolves_less else 'more'} than text (mean MED {value:+.3f}) and is "
            f"{'less' if less_sensitive else 'more'} sensitive ({scope}): "
            f"{'agrees' if evolves_less == less_sensitive else 'disagrees'}"
        )
    return ["MED: " + "; ".join(notes) + "."] if notes else []


def _best_baseline(result: Schedule, baselines: Sequence[Candidate]) -> list[str]:
    fitting = [
        b for b in baselines if b.measured is not None and (result.budget is None or b.average_steps <= result.budget + 1e-9)
    ]
    if not fitting or result.chosen.measured is None:
        return []
    best = max(fitting, key=lambda b: b.measured)
    verdict = "at least as good" if result.chosen.measured >= best.measured else "worse"
    return [
        f"Best compared plan that fits: {_plan_text(best.plan)} ({best.average_steps:.3f} steps, "
        f"{best.measured:.4f}); the choice is {verdict}."
    ]


def explain(
    result: Schedule,
    table: SensitivityTable,
    med: Optional[Mapping[str, float]] = None,
    baselines: Sequence[Candidate] = (),
    sections: Optional[SensitivityTable] = None,
) -> str:
    """A short report of why ``result`` was chosen.

    :param table: the table ``result`` was chosen from.
    :param med: mean MED per visual modality (text minus visual evolution, see
        :mod:`~spikemllm_sj.med.measure`).
    :param baselines: measured plans to compare with (e.g. uniform T; their ``average_steps`` in
        the table's unit); the best that fits the budget is named.
    :param sections: a per-section table (vision tower apart from the decoder layers), used to
        split each modality's sensitivity by section and to check MED, which is measured on the
        decoder layers, against the decoder layers' sensitivity alone.
    """
    total = sum(table.tokens[m] for m in table.modalities)
    mix = ", ".join(f"{m} {table.tokens[m]} ({100 * table.tokens[m] / total:.0f}%)" for m in table.modalities)
    chosen = result.chosen
    ask = f"budget {result.budget:g} average steps" if result.budget is not None else f"target fidelity {result.target:g}"
    measured = (
        f"measured fidelity {chosen.measured:.4f} (predicted {chosen.predicted:.4f}; {len(result.verified)} of "
        f"{result.considered} plans kept by the search measured)"
        if chosen.measured is not None
        else f"predicted fidelity {chosen.predicted:.4f} (not measured)"
    )
    lines = [
        f"Asked: {ask} per {table.unit} (language-model tokens: {mix}).",
        f"Chosen: {_plan_text(chosen.plan)} -> {chosen.average_steps:.3f} steps per {table.unit}, {measured}; "
        f"every modality at {table.reference_steps} steps: {1 - table.reference_error:.4f}.",
        _why(chosen, table),
    ]
    if ALL in table.error:
        ranked = sorted(table.modalities, key=lambda m: table.sensitivity(m))
        lines.append(
            "Sensitivity (mean error increase below the reference, whole model): "
            + ", ".join(f"{m} {table.sensitivity(m):.2e}" for m in table.modalities)
            + f"; least sensitive: {ranked[0]}."
        )
    by_section = sections if sections is not None else (table if ALL not in table.error else None)
    if by_section is not None:
        parts = [
            f"{s}: " + ", ".join(f"{m} {by_section.sensitivity(m, s):.2e}" for m in by_section.error[s])
            for s in by_section.error
        ]
        lines.append("By section: " + "; ".join(parts) + ".")
    if med:
        lines += _med_notes(med, table, by_section)
    return "\n".join(lines + _best_baseline(result, baselines))

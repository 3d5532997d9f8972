"""What the processes of one site share: where its calls fall on the time line, its spike codes,
and how counts travel in 32-bit words."""

from __future__ import annotations

import typing as ty
from dataclasses import dataclass

import numpy as np

from spikemllm_sj.lava_backend._fixed_point import INT32_MAX
from spikemllm_sj.lava_backend.model_plan import SiteCall, SiteSpec
from spikemllm_sj.neurons import Modality, SpikeCode

__all__ = ["call_phases", "CodeTable", "count_words", "words_count", "check_range", "check_accumulator", "WORD"]

WORD = 1 << 31
"""Counts travel as two words ``hi * 2**31 + lo`` (both fit int32 and float64 exactly)."""


def call_phases(calls: ty.Sequence[SiteCall]) -> dict[int, tuple[SiteCall, int]]:
    """Lava time step -> (the call running then, its phase ``0 .. T-1``)."""
    return {call.start + phase: (call, phase) for call in calls for phase in range(call.steps)}


def count_words(counts: ty.Sequence[int]) -> np.ndarray:
    """Non-negative counts (below ``2**62``) as words ``[hi_0, lo_0, hi_1, lo_1, ...]``."""
    words = []
    for count in counts:
        count = int(count)
        if not 0 <= count < WORD * WORD:
            raise OverflowError(f"count {count} does not fit two 31-bit words")
        words += [count // WORD, count % WORD]
    return np.asarray(words, dtype=np.int64)


def words_count(words: np.ndarray) -> list[int]:
    """Inverse of :func:`count_words`."""
    words = np.asarray(words).astype(np.int64).reshape(-1, 2)
    return [int(hi) * WORD + int(lo) for hi, lo in words]


def check_range(values: np.ndarray, bound: int, what: str) -> None:
    """Raise ``OverflowError`` if any ``|value|`` exceeds ``bound`` (nothing wraps around)."""
    peak = int(np.abs(values).max()) if values.size else 0
    if peak > bound:
        raise OverflowError(f"{what}: |value| = {peak} exceeds {bound}")


@dataclass(frozen=True)
class CodeTable:
    """Per modality id, the spike code's numbers, as arrays indexed by id (-1 steps: no code).

    Every code of a site has the same scheme, so the same leak and spike signs; steps, threshold,
    offset and levels differ by modality (MSTS).
    """

    steps: np.ndarray
    threshold: np.ndarray
    offset: np.ndarray
    qmin: np.ndarray
    qmax: np.ndarray
    leak: int
    ternary: bool
    weight_sum: int  # the largest sum of a code's step weights: the largest value a train carries

    @classmethod
    def of(cls, codes: ty.Mapping[int, SpikeCode]) -> "CodeTable":
        n = len(Modality)
        steps, threshold, offset = np.full(n, -1), np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        qmin, qmax = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        schemes = {(code.leak, code.ternary) for code in codes.values()}
        if len(schemes) != 1:
            raise ValueError(f"the codes of one site must share a scheme, got {sorted(c.scheme for c in codes.values())}")
        for m, code in codes.items():
            steps[m], threshold[m], offset[m] = code.steps, code.threshold, code.offset
            qmin[m], qmax[m] = code.levels.qmin, code.levels.qmax
        (leak, ternary), = schemes
        weight_sum = max(sum(code.weights) for code in codes.values())
        return cls(steps, threshold, offset, qmin, qmax, leak, ternary, weight_sum)

    def token_codes(self, ids: np.ndarray, what: str) -> np.ndarray:
        """``ids`` as int64, after checking that each has a code."""
        ids = np.asarray(ids).astype(np.int64)
        bad = (ids < 0) | (ids >= len(self.steps))
        if bad.any() or (self.steps[ids[~bad]] < 0).any():
            raise ValueError(f"{what}: token modality ids {sorted(set(ids.tolist()))} include one without a spike code")
        return ids


def check_accumulator(site: SiteSpec, positions: int = 0) -> None:
    """Refuse, before anything runs, a site whose window could leave the int32 accumulator (or
    whose weights do not fit their width): the bound is the largest sum of operands a train can
    select times the largest value a train carries (the sum of its code's step weights). A linear
    site's is the largest row sum of ``|W|``; an attention site's, ``fan-in * qmax`` with the head
    size (keys) or ``positions`` (values) as fan-in.

    :raises ValueError: naming the site, with the bound.
    """
    qmax = (1 << (site.operand_bits - 1)) - 1  # symmetric levels: [-qmax, qmax]
    weight_sum = CodeTable.of(site.codes).weight_sum
    if site.kind == "linear":
        weights = np.asarray(site.weights).astype(np.int64)
        if weights.min() < -qmax or weights.max() > qmax:
            raise ValueError(f"{site.name}: weights in [{weights.min()}, {weights.max()}], outside [-{qmax}, {qmax}]")
        bound = int(np.abs(weights).sum(axis=1).max()) * weight_sum
    else:
        bound = positions * qmax * weight_sum
    if bound > INT32_MAX:
        raise ValueError(
            f"{site.name}: a window of its spikes can accumulate |acc| up to {bound}, beyond the int32 accumulator "
            f"({INT32_MAX}): this site cannot be mapped to fixed point (use fewer levels or a smaller operand)"
        )

"""Spike codes: how integer activation levels become a spike train of ``T`` steps, and back.

Every code here is exact: a spike train decodes to the quantized value, bit for bit. The three
codes differ only in the membrane's leak factor ``leak`` and threshold ``threshold`` (both in
units of the quantization scale), which fix the weight of a spike at step ``t``,
``leak ** (T - 1 - t)``:

================== ====== ===================== ======== =====================================
scheme             leak   steps T               spikes   reference
================== ====== ===================== ======== =====================================
tc_lif, signed     2      log2(L) - 1           -1, 0, 1 SpikeMLLM's TC-LIF (INFERENCE, below)
tc_lif, unsigned   2      log2(L)               0, 1     same, for non-negative activations
rate_binary        1      L - 1 (L - 2 signed)  0, 1     rate coding, the paper's T = L - 1
rate_bidirectional 1      L/2 - 1               -1, 0, 1 ST-BIF (SpikeZIP-TF), SDLLM
================== ====== ===================== ======== =====================================

Signed binary rate coding carries the offset code ``q + (L/2 - 1)`` in ``[0, L - 2]``; the
decoder subtracts the offset (a bias of the downstream layer).

INFERENCE (ours, not the paper's text): the paper gives TC-LIF's step count, T = log2(L) - 1,
but not its equations. Signed spikes weighted by powers of two, most significant first, are the
reading that reaches that count for symmetric levels: ``2**T - 1 = L/2 - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .levels import IntLevels

__all__ = ["Scheme", "SCHEMES", "SpikeCode"]

Scheme = Literal["tc_lif", "rate_binary", "rate_bidirectional"]
SCHEMES: tuple[str, ...] = get_args(Scheme)


@dataclass(frozen=True)
class SpikeCode:
    """A spike code for the integer levels ``levels`` (see the module docstring for the table).

    :param scheme: ``"tc_lif"``, ``"rate_binary"`` or ``"rate_bidirectional"``.
    :param levels: the integer levels that the spikes carry.
    """

    scheme: Scheme
    levels: IntLevels

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if not isinstance(self.levels, IntLevels):
            raise TypeError(f"levels must be an IntLevels, got {type(self.levels).__name__}")
        if self.scheme == "rate_bidirectional" and not self.levels.signed:
            raise ValueError(
                "scheme 'rate_bidirectional' needs signed levels; for unsigned levels use 'rate_binary'"
            )

    @classmethod
    def from_steps(cls, scheme: Scheme, steps: int, signed: bool = True) -> "SpikeCode":
        """The code of ``scheme`` that uses exactly ``steps`` time steps.

        Raises ``ValueError`` when no power-of-two number of levels gives that many steps.
        """
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if scheme == "tc_lif":
            levels = 1 << (steps + 1 if signed else steps)
        elif scheme == "rate_binary":
            levels = steps + 2 if signed else steps + 1
        else:
            levels = 2 * (steps + 1)
        if levels & (levels - 1):
            valid = {
                "tc_lif": "any positive number",
                "rate_binary": "2**k - 2 (signed) or 2**k - 1 (unsigned)",
                "rate_bidirectional": "2**k - 1",
            }[scheme]
            raise ValueError(
                f"steps={steps} does not match a power-of-two number of levels for scheme "
                f"{scheme!r} (signed={signed}); valid steps: {valid}"
            )
        return cls(scheme, IntLevels(levels, signed))

    @property
    def steps(self) -> int:
        """``T``, the number of time steps."""
        L, signed = self.levels.levels, self.levels.signed
        if self.scheme == "tc_lif":
            return self.levels.bits - 1 if signed else self.levels.bits
        if self.scheme == "rate_binary":
            return L - 2 if signed else L - 1
        return L // 2 - 1

    @property
    def leak(self) -> int:
        """Factor applied to the membrane at each step (2: each step halves the spike weight)."""
        return 2 if self.scheme == "tc_lif" else 1

    @property
    def threshold(self) -> int:
        """Firing threshold, in units of the quantization scale."""
        return 1 << (self.steps - 1) if self.scheme == "tc_lif" else 1

    @property
    def ternary(self) -> bool:
        """Whether spikes are signed (-1, 0, +1) rather than binary (0, 1)."""
        return self.levels.signed and self.scheme != "rate_binary"

    @property
    def offset(self) -> int:
        """Offset added to the level before encoding (and subtracted by the decoder)."""
        return self.levels.qmax if self.scheme == "rate_binary" and self.levels.signed else 0

    @property
    def weights(self) -> tuple[int, ...]:
        """Weight of a spike at each step, most significant first (length ``T``)."""
        return tuple(self.leak ** (self.steps - 1 - t) for t in range(self.steps))

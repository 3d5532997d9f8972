"""Spike codes: how integer activation levels become a spike train of ``T`` steps, and back.

Every code here is exact: a spike train decodes to the quantized value, bit for bit. The codes
differ in the membrane's leak factor ``leak`` and threshold ``threshold`` (both in units of the
quantization scale), which fix the weight of a spike at step ``t``, ``leak ** (T - 1 - t)``, and in
the scale their quantizer divides by:

========================== ====== ======================= ======== ================= ===============================
scheme                     leak   steps T                 spikes   scale             reference
========================== ====== ======================= ======== ================= ===============================
tc_lif, signed             2      log2(L) - 1             -1, 0, 1 absmax / qmax     SpikeMLLM's TC-LIF (INFERENCE)
tc_lif, unsigned           2      log2(L)                 0, 1     absmax / qmax     same, non-negative inputs
rate_binary                1      L - 1 (L - 2 signed)    0, 1     absmax / qmax     rate coding, T = L - 1
rate_bidirectional         1      L/2 - 1                 -1, 0, 1 absmax / qmax     ST-BIF (SpikeZIP-TF), SDLLM
rate_bidirectional_clipped 1      L/2 - 1                 -1, 0, 1 absmax / (L - 1)  SDLLM's clipping (INFERENCE)
mean_threshold_bitwise     2      per call, log2(L) - 1   -1, 0, 1 mean|x| / 3       SpikingBrain's W8ASpike
                                  at most
========================== ====== ======================= ======== ================= ===============================

Signed binary rate coding carries the offset code ``q + (L/2 - 1)`` in ``[0, L - 2]``; the
decoder subtracts the offset (a bias of the downstream layer).

INFERENCE (ours, not the paper's text): the paper gives TC-LIF's step count, T = log2(L) - 1,
but not its equations. Signed spikes weighted by powers of two, most significant first, are the
reading that reaches that count for symmetric levels: ``2**T - 1 = L/2 - 1``.

The two neighbouring codes (baselines; neither is presented as its authors' exact method):

* ``mean_threshold_bitwise``, after SpikingBrain-7B's public W8ASpike code
  (``W8ASpike/quant_linear.py``, ``dynamic_spikes``; "INT8-Spiking coding" in SpikingBrain 2.0):
  each token's threshold is ``vth = mean(|x|) / 3`` (:func:`~spikemllm_sj.neurons.levels.mean_threshold_scale`),
  its spike count ``round(x / vth)`` is never clipped, and the count is sent as signed bits, most
  significant first (sign-magnitude: Int2Spike's ``SpikeCountBitwiseNode(is_bidirectional=True)``).
  Those are TC-LIF's dynamics with another scale: the code's levels ``L`` only bound the count
  (``|round(x / vth)| <= 3 D`` for ``D`` channels, since ``max |x| <= D mean |x|``), and the steps
  are data-dependent: a token needs the bit length of its largest count (:func:`bitwise_steps`),
  a call the largest of its tokens'. Where we differ from that code: ties round half up (its
  ``torch.round`` rounds half to even: one level apart, on exact ties only), an all-zero token gets
  the threshold 1 (its clamp gives 1e-5; either encodes zeros exactly), and its upper clamp of
  ``vth`` at 1e4 is not applied (it would clip tokens with ``mean |x| > 3e4``).
* ``rate_bidirectional_clipped``: SDLLM (arXiv 2604.16475) names "bidirectional encoding under
  symmetric quantization and membrane potential clipping mechanisms, leading to spike trains with
  no or low firing counts dominating, [...] while halving the number of time steps"; its equations
  (and those of its two-step gamma-SQP encoding, not built here) are not public.
  INFERENCE (ours, from that sentence): the membrane is clipped at charge to ``+-T`` thresholds
  (:attr:`SpikeCode.membrane_clip`), on the symmetric grid of twice the levels: the scale maps a
  token's absmax onto ``L - 1`` (the largest level of ``2 L`` symmetric levels) while the neuron
  carries at most ``L/2 - 1`` spikes, so a train needs half the steps of the bidirectional code on
  that grid, and the tokens' outliers saturate instead of setting a coarse scale for the rest.
  What the clip does and does not do: an activation presented once fires ``min(|q|, T)`` weight-1
  spikes in ``T`` steps whether or not the membrane is clipped, so the clip changes no spike, only
  the charge left after the train (none instead of the excess). As a quantizer the code is the
  bidirectional code with the fixed clip ratio ``(L/2 - 1) / (L - 1)`` (about 1/2) of its scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch

from .levels import IntLevels, mean_threshold_scale, scale_from_absmax

__all__ = ["Scheme", "SCHEMES", "DATA_DEPENDENT_SCHEMES", "FIXED_STEP_SCHEMES", "SpikeCode", "MEAN_THRESHOLD_DIVISOR", "bitwise_steps"]

Scheme = Literal[
    "tc_lif", "rate_binary", "rate_bidirectional", "rate_bidirectional_clipped", "mean_threshold_bitwise"
]
SCHEMES: tuple[str, ...] = get_args(Scheme)
DATA_DEPENDENT_SCHEMES: tuple[str, ...] = ("mean_threshold_bitwise",)
"""The schemes whose trains take as many steps as their values need."""
FIXED_STEP_SCHEMES: tuple[str, ...] = tuple(s for s in SCHEMES if s not in DATA_DEPENDENT_SCHEMES)
"""The schemes whose codes have their own number of steps."""

MEAN_THRESHOLD_DIVISOR = 3.0
"""``k`` of the mean-threshold code's ``vth = mean(|x|) / k`` (SpikingBrain's ``dynamic_sfr=3.0``)."""

_SIGNED_ONLY = ("rate_bidirectional", "rate_bidirectional_clipped", "mean_threshold_bitwise")
_LEAK_TWO = ("tc_lif", "mean_threshold_bitwise")


@dataclass(frozen=True)
class SpikeCode:
    """A spike code for the integer levels ``levels`` (see the module docstring for the table).

    :param scheme: one of :data:`SCHEMES`.
    :param levels: the integer levels that the spikes carry (for ``mean_threshold_bitwise``, the
        range that bounds its counts).
    """

    scheme: Scheme
    levels: IntLevels

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if not isinstance(self.levels, IntLevels):
            raise TypeError(f"levels must be an IntLevels, got {type(self.levels).__name__}")
        if self.scheme in _SIGNED_ONLY and not self.levels.signed:
            raise ValueError(
                f"scheme {self.scheme!r} needs signed levels; for unsigned levels use 'tc_lif' or 'rate_binary'"
            )

    @classmethod
    def from_steps(cls, scheme: Scheme, steps: int, signed: bool = True) -> "SpikeCode":
        """The code of ``scheme`` that uses exactly ``steps`` time steps (for
        ``mean_threshold_bitwise``: at most ``steps``, its counts' range).

        Raises ``ValueError`` when no power-of-two number of levels gives that many steps.
        """
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if scheme in _LEAK_TWO:
            levels = 1 << (steps + 1 if signed else steps)
        elif scheme == "rate_binary":
            levels = steps + 2 if signed else steps + 1
        else:
            levels = 2 * (steps + 1)
        if levels & (levels - 1):
            valid = "2**k - 2 (signed) or 2**k - 1 (unsigned)" if scheme == "rate_binary" else "2**k - 1"
            raise ValueError(
                f"steps={steps} does not match a power-of-two number of levels for scheme "
                f"{scheme!r} (signed={signed}); valid steps: {valid}"
            )
        return cls(scheme, IntLevels(levels, signed))

    @property
    def steps(self) -> int:
        """``T``, the number of time steps (for a :attr:`data_dependent` code, the most a train
        may use; each train uses :func:`bitwise_steps` of its levels)."""
        L, signed = self.levels.levels, self.levels.signed
        if self.scheme in _LEAK_TWO:
            return self.levels.bits - 1 if signed else self.levels.bits
        if self.scheme == "rate_binary":
            return L - 2 if signed else L - 1
        return L // 2 - 1

    @property
    def data_dependent(self) -> bool:
        """Whether a train's step count depends on its values (``mean_threshold_bitwise``)."""
        return self.scheme in DATA_DEPENDENT_SCHEMES

    @property
    def leak(self) -> int:
        """Factor applied to the membrane at each step (2: each step halves the spike weight)."""
        return 2 if self.scheme in _LEAK_TWO else 1

    @property
    def threshold(self) -> int:
        """Firing threshold of a train of :attr:`steps` steps, in units of the quantization scale
        (a shorter train of a data-dependent code has the threshold of its own length)."""
        return 1 << (self.steps - 1) if self.leak == 2 else 1

    @property
    def ternary(self) -> bool:
        """Whether spikes are signed (-1, 0, +1) rather than binary (0, 1)."""
        return self.levels.signed and self.scheme != "rate_binary"

    @property
    def offset(self) -> int:
        """Offset added to the level before encoding (and subtracted by the decoder)."""
        return self.levels.qmax if self.scheme == "rate_binary" and self.levels.signed else 0

    @property
    def membrane_clip(self) -> Optional[int]:
        """Bound of the charged membrane, ``|H| <= membrane_clip`` (in scale units), or None
        (``rate_bidirectional_clipped``: ``T`` thresholds, the most its ``T`` steps can fire)."""
        return self.steps if self.scheme == "rate_bidirectional_clipped" else None

    @property
    def scale_rule(self) -> Literal["absmax", "mean"]:
        """What a token's dynamic scale comes from: its absmax over :attr:`absmax_level`, or its
        mean magnitude over :data:`MEAN_THRESHOLD_DIVISOR` (``mean_threshold_bitwise``)."""
        return "mean" if self.data_dependent else "absmax"

    @property
    def absmax_level(self) -> int:
        """The level a token's absmax maps onto: ``qmax``, or ``L - 1`` for
        ``rate_bidirectional_clipped`` (the symmetric grid of ``2 L`` levels, see the module docstring)."""
        if self.scale_rule != "absmax":
            raise ValueError(f"scheme {self.scheme!r} scales by the mean magnitude, not by the absmax")
        return self.levels.levels - 1 if self.scheme == "rate_bidirectional_clipped" else self.levels.qmax

    def token_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The dynamic per-token scale ``[..., 1]`` of tokens ``x`` ``[..., D]`` by :attr:`scale_rule`:
        ``absmax / absmax_level``, or ``mean(|x|) / 3``; in ``level_dtype(x.dtype)``."""
        if self.scale_rule == "mean":
            return mean_threshold_scale(x, MEAN_THRESHOLD_DIVISOR)
        return scale_from_absmax(x.detach().abs().amax(-1, keepdim=True), self.absmax_level)

    @property
    def weights(self) -> tuple[int, ...]:
        """Weight of a spike at each step, most significant first (length ``T``)."""
        return tuple(self.leak ** (self.steps - 1 - t) for t in range(self.steps))


def bitwise_steps(levels: torch.Tensor, dim: Optional[int] = -1) -> torch.Tensor:
    """Steps a sign-magnitude bitwise train of integer ``levels`` needs: the bit length of the
    largest magnitude over ``dim`` (every element if None), at least 1 (Int2Spike's
    ``max(1, ceil(log2(max + 1)))``), as int64.
    """
    top = levels.detach().abs().amax() if dim is None else levels.detach().abs().amax(dim)
    # frexp: top = m * 2**e with m in [0.5, 1), so e is the bit length of a positive integer.
    return torch.frexp(top.to(torch.float64)).exponent.to(torch.int64).clamp_(min=1)

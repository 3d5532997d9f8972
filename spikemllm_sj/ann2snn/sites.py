"""Spike-driven sites: the base classes of the modules that replace a model's linear layers and
attention matmuls.

Each site runs in one of two modes (:data:`MODES`) that compute the same numbers:

* ``"spike"``: activations become MSTS spike trains, and the site accumulates integer operands
  selected by the spikes (:func:`~spikemllm_sj.neurons.spike_ops.spike_matmul`);
* ``"fake_quant"``: the quantized ANN twin, the same integer levels multiplied directly.

Integer accumulations are exact in both (see :func:`~spikemllm_sj.neurons.spike_ops.exact_dtype`),
and the rescaling that follows is the same code, so the two modes agree bit for bit.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Literal, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base

from spikemllm_sj.ann2snn.modalities import ModalitySource
from spikemllm_sj.neurons import (
    MEAN_THRESHOLD_DIVISOR,
    Modality,
    MSTSConfig,
    MSTSEncoder,
    exact_dtype,
    integer_matmul,
    level_dtype,
    mean_threshold_scale,
    scale_from_absmax,
    spike_matmul,
)

__all__ = ["Mode", "MODES", "ProductBackend", "SiteActivity", "SpikeSite", "MSTSSite"]

Mode = Literal["spike", "fake_quant"]
MODES: tuple[str, ...] = ("spike", "fake_quant")
"""How a converted model runs: spike-driven, or as its quantized ANN twin."""

ProductBackend = Callable[["SpikeSite", torch.Tensor, Optional[torch.Tensor], torch.Tensor, int], torch.Tensor]
"""Where a spike-mode site's spike-driven product runs when not in PyTorch (the Lava backend's
whole-model runs): ``backend(site, levels, ids, other, other_qmax)`` takes the integer levels
``[..., M, K]`` that the site's spikes would carry, the tokens' modality ids ``[..., M]`` (``None``
for attention probabilities, which have one code), the integer operand ``other`` (``[K, N]``, or
``[..., K, N]``) with ``|other| <= other_qmax``, and returns the exact integer product
``[..., M, N]`` of the spike trains that encode the levels (offsets undone), as any dtype that
holds it exactly."""


class SiteActivity:
    """Spikes a site emitted since the last :meth:`reset` (summed over forward calls).

    Recording costs no device synchronisation: counts accumulate as tensors on the site's device
    and are read (one transfer each) when an attribute is read. With ``recording`` False (see
    :func:`~spikemllm_sj.ann2snn.recipe.set_activity_recording`), :meth:`add` does nothing.

    Read-only attributes: ``spikes`` (non-zero spikes), ``neuron_steps`` (neurons times the steps
    each really used, the firing rate's denominator), ``tokens`` (tokens encoded, per modality
    name) and ``token_steps`` (time steps those tokens used, per modality name; MSTS padding
    excluded).
    """

    def __init__(self):
        self.recording = True
        self.reset()

    def reset(self) -> None:
        self._spikes: int | torch.Tensor = 0
        self._neuron_steps: int | torch.Tensor = 0
        self._per_modality: torch.Tensor | None = None  # [len(Modality), 2] int64: tokens, steps
        self._named: dict[str, list[int]] = {}  # counts known from shapes: name -> [tokens, steps]

    def add(
        self,
        spikes: torch.Tensor,
        neuron_steps: int | torch.Tensor,
        ids: torch.Tensor | None = None,
        steps: torch.Tensor | None = None,
        named: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        """Count a spike train ``spikes`` (any shape) and its ``neuron_steps``; the tokens it coded
        either by modality (``ids`` and their ``steps``, both ``[B, L]``) or ``named`` as
        ``{name: (tokens, steps)}``."""
        if not self.recording:
            return
        self._spikes = self._spikes + torch.count_nonzero(spikes)
        self._neuron_steps = self._neuron_steps + neuron_steps
        if ids is not None:
            if steps is None:
                raise ValueError("steps (the steps of each token [B, L]) must be given with ids")
            flat = ids.reshape(-1).long()
            if self._per_modality is None:
                self._per_modality = torch.zeros(len(Modality), 2, dtype=torch.int64, device=flat.device)
            elif self._per_modality.device != flat.device:  # the model moved since the last reset
                self._per_modality = self._per_modality.to(flat.device)
            both = torch.stack([torch.ones_like(flat), steps.reshape(-1).long()], dim=-1)
            self._per_modality.index_add_(0, flat, both)
        for name, (count, used) in (named or {}).items():
            tally = self._named.setdefault(name, [0, 0])
            tally[0] += count
            tally[1] += used

    @property
    def spikes(self) -> int:
        """Non-zero spikes (+1 and -1)."""
        return int(self._spikes)

    @property
    def neuron_steps(self) -> int:
        """Neurons times the steps each really used: the firing rate's denominator."""
        return int(self._neuron_steps)

    def _counts(self, column: int) -> dict[str, int]:
        counts = {name: tally[column] for name, tally in self._named.items()}
        if self._per_modality is not None:
            table = self._per_modality.tolist()
            counts.update({Modality(m).name.lower(): row[column] for m, row in enumerate(table) if row[0]})
        return counts

    @property
    def tokens(self) -> dict[str, int]:
        """Tokens encoded, per modality name (``"probabilities"``: attention rows)."""
        return self._counts(0)

    @property
    def token_steps(self) -> dict[str, int]:
        """Time steps those tokens used, per modality name (MSTS padding excluded)."""
        return self._counts(1)


class SpikeSite(nn.Module, base.MultiStepModule):
    """A spike-driven site: its mode and the activity it records in spike mode.

    A SpikingJelly multi-step module whose step mode is always ``'m'``: one forward call runs every
    time step of its input tokens' spike trains (``functional.set_step_mode(model, 's')`` is
    refused, see :meth:`step_mode`).

    :cvar kind: what the site computes, as reports name it (``"linear"``, ``"attention.qk"``,
        ``"attention.pv"``).
    """

    kind: ClassVar[str]

    def __init__(self):
        super().__init__()
        self.mode: Mode = "spike"
        self.activity = SiteActivity()
        # Spike mode's product computed elsewhere (see ProductBackend); None: in PyTorch.
        self.product_backend: Optional[ProductBackend] = None

    @property
    def step_mode(self) -> str:
        """``'m'``: a site takes the layer's input ``[B, L, D]``, encodes each token over its
        modality's ``T`` steps, accumulates and decodes within one call."""
        return "m"

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value != "m":
            raise ValueError(
                f"step_mode of {type(self).__name__} (a spike-driven site of a converted model) can only be 'm', "
                f"got {value!r}: each site runs all T time steps of its tokens' spike trains inside its own forward "
                "(encode, accumulate the integer weights the spikes select, decode), because the norms, softmax and "
                "activations between two sites need the decoded values and each token has its own T (MSTS); "
                "a converted model has no state between calls to step through one step at a time"
            )

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode


class MSTSSite(SpikeSite):
    """A site whose input tokens are MSTS spike trains: the encoder and the token modalities.

    :param msts: steps (or bits) per modality of the input's spike code.
    :param modality: the source of the modality ids of the tokens the site encodes.
    """

    def __init__(self, msts: MSTSConfig, modality: ModalitySource):
        super().__init__()
        self.encoder = MSTSEncoder(msts)
        self.modality = modality
        # Static (calibrated) input absmax per modality, indexed by Modality value; NaN where the
        # calibration saw no token of that modality. All NaN: dynamic per-token scales.
        self.register_buffer("static_absmax", torch.full((len(Modality),), float("nan")))
        # Clip ratio per modality in (0, 1]: the scale maps ratio * absmax onto the code's absmax
        # level (qmax for most codes), and levels beyond clamp (the neuron's saturation is the quantizer's clamp).
        self.register_buffer("clip", torch.ones(len(Modality)))

    def _refuse_for_data_dependent(self, what: str) -> None:
        if self.encoder.config.data_dependent:
            raise ValueError(f"{what}: the {self.encoder.config.scheme} code takes each token's threshold from its own "
                             "mean magnitude and never clips")

    def set_static_absmax(self, absmax: dict[Modality, float]) -> None:
        self._refuse_for_data_dependent("static input scales")
        values = torch.full_like(self.static_absmax, float("nan"))
        for modality, value in absmax.items():
            if not value > 0:
                raise ValueError(f"calibrated absmax must be > 0, got {value} for {Modality(modality).name.lower()}")
            values[int(modality)] = float(value)
        self.static_absmax = values

    def set_clip(self, ratios: dict[Modality, float]) -> None:
        """Clip ratios per modality, each in (0, 1] (the others stay at 1; a code that never clips
        takes 1 only)."""
        if any(ratio != 1 for ratio in ratios.values()):
            self._refuse_for_data_dependent("clip ratios")
        values = self.clip.clone()
        for modality, ratio in ratios.items():
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                raise ValueError(f"clip ratio must be in (0, 1], got {ratio!r} for {Modality(modality).name.lower()}")
            values[int(modality)] = float(ratio)
        self.clip = values

    @property
    def static(self) -> bool:
        return not bool(torch.isnan(self.static_absmax).all())

    def token_absmax_level(self, ids: torch.Tensor) -> torch.Tensor:
        """The level each token's absmax maps onto ``[B, L, 1]`` (float32): its modality's
        :attr:`~spikemllm_sj.neurons.SpikeCode.absmax_level` (1 for a modality without steps, which
        the encoder refuses)."""
        return self.encoder.level_table(torch.float32, ids.device)[2].clamp_min(1)[ids].unsqueeze(-1)

    def token_scale(self, x3: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Per-token scales ``[B, L, 1]`` (``level_dtype(x3.dtype)``) of tokens ``x3`` ``[B, L, K]``
        with modalities ``ids`` ``[B, L]``: ``clip * absmax / absmax_level``, the absmax from the
        calibration (static) or each token's own (dynamic); for a code scaled by the mean
        magnitude (``mean_threshold_bitwise``; no static scales, no clip: see
        :class:`~spikemllm_sj.config.SpikeConfig`), each token's ``mean(|x|) / 3``. Each depends
        on that token alone."""
        if self.encoder.config.data_dependent:
            return mean_threshold_scale(x3, MEAN_THRESHOLD_DIVISOR)
        if self.static:
            absmax = self.static_absmax.to(ids.device)[ids]
            if torch.isnan(absmax).any():
                missing = sorted({Modality(int(m)).name.lower() for m in ids[torch.isnan(absmax)].unique()})
                raise ValueError(f"this site was calibrated without {', '.join(missing)} tokens")
            absmax = absmax.unsqueeze(-1)
        else:
            absmax = x3.detach().abs().amax(-1, keepdim=True)
        clip = self.clip.to(ids.device)[ids].unsqueeze(-1)
        return scale_from_absmax(absmax.to(level_dtype(x3.dtype)) * clip, self.token_absmax_level(ids))

    def quantize_tokens(self, x3: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The integer levels ``[B, L, K]`` and scales ``[B, L, 1]`` of tokens ``x3`` ``[B, L, K]``
        (modalities ``ids`` ``[B, L]``): what this site's spikes carry."""
        return self.encoder.quantize(x3, ids, self.token_scale(x3, ids))

    def accumulation_dtype(self, fan_in: int, other_qmax: int, dtype: torch.dtype) -> torch.dtype:
        """The floating-point dtype in which the product of this site's levels with integer
        operands of magnitude at most ``other_qmax`` over ``fan_in`` terms is exact: the dtype of
        :meth:`accumulate`'s result, and so of the rescaling that follows."""
        return exact_dtype(float(self._level_bound()) * other_qmax * fan_in, dtype)

    def _level_bound(self) -> int:
        # Horner's partial sums never exceed the largest level (plus offset) times |other| times K.
        return max(code.levels.qmax + code.offset for code in self.encoder.config.codes.values())

    def accumulate(
        self, x3: torch.Tensor, ids: torch.Tensor, other: torch.Tensor, other_qmax: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer product of ``x3``'s levels ``[B, L, K]`` (token modalities ``ids`` ``[B, L]``)
        with integer ``other`` ``[..., K, N]`` (``|other| <= other_qmax``): from the spikes in spike
        mode, from the levels in fake-quant mode, both with integer GEMMs
        (:func:`~spikemllm_sj.neurons.integer_matmul`); in spike mode with a
        :attr:`product_backend`, from that backend.

        :return: the exact integer accumulation ``[B, L, N]`` (held in :meth:`accumulation_dtype`)
            and the per-token scale ``[B, L, 1]``.
        """
        ids = ids.to(x3.device)
        dtype = self.accumulation_dtype(x3.shape[-1], other_qmax, x3.dtype)
        scale = self.token_scale(x3, ids)
        if self.mode == "fake_quant" or self.product_backend is not None:
            levels, scale = self.encoder.quantize(x3, ids, scale)
            if self.mode == "fake_quant":
                # A data-dependent code's bound is the call's largest count (its range is far wider).
                bound = max(1, int(levels.abs().amax())) if self.encoder.config.data_dependent and levels.numel() else self._level_bound()
                return integer_matmul(levels, other, bound, other_qmax).to(dtype), scale
            # Spike mode with the spike-driven product elsewhere: its neurons encode these levels.
            return self.product_backend(self, levels, ids, other, other_qmax).to(dtype), scale
        out = self.encoder(x3, ids, scale, spike_dtype=torch.int8)
        self.activity.add(out.spikes, out.steps.sum() * out.spikes.shape[-1], ids=ids, steps=out.steps)
        acc = spike_matmul(out.spikes, other, out.leak, other_qmax)
        if any(code.offset for code in self.encoder.config.codes.values()):
            acc = acc - out.offset.to(acc.dtype) * other.sum(-2, keepdim=True, dtype=acc.dtype)
        return acc.to(dtype), out.scale

"""MSTS: modality-specific temporal scales. Each token is encoded with its own modality's steps.

Modality ids follow ``transformers``' ``mm_token_type_ids`` (0 text, 1 image, 2 video, 3 audio),
so a processor's output can be passed straight in.

Alignment: a token with fewer steps than the longest modality is padded at the *start* of the
train. The last step then always carries the least significant spike, so one weighted
integration over ``T_max`` steps (:func:`~spikemllm_sj.neurons.nodes.integrate`) decodes every
token, and a TC-LIF token's padded steps are exactly the high-order steps its range never fires.

A data-dependent code (``mean_threshold_bitwise``) has no steps of its own: each call's train is
as long as its largest count needs, and each token's steps, the bit length of its own largest
count, are reported as such (:attr:`MSTSSpikes.steps`).
"""

from __future__ import annotations

import enum
import numbers
import types
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional, Union

import torch
from spikingjelly.activation_based import encoding

from .coding import DATA_DEPENDENT_SCHEMES, MEAN_THRESHOLD_DIVISOR, SCHEMES, Scheme, SpikeCode
from .levels import (
    IntLevels,
    check_finite,
    check_scale,
    divide_by_scale,
    level_dtype,
    mean_threshold_scale,
    round_half_up,
    scale_from_absmax,
)
from .nodes import NODE_CLASSES, integrate
from .stats import SpikeStats, spike_statistics

__all__ = ["Modality", "MSTSConfig", "MSTSEncoder", "MSTSSpikes", "token_mask"]


class Modality(enum.IntEnum):
    """Token modality, numbered as ``transformers``' ``mm_token_type_ids``."""

    TEXT = 0
    IMAGE = 1
    VIDEO = 2
    AUDIO = 3

    @classmethod
    def parse(cls, key: Union["Modality", int, str]) -> "Modality":
        """The modality named (``"image"``) or numbered (``1``) by ``key``; a bool or a float is
        neither (``True`` and ``1.5`` are refused, not read as image)."""
        if isinstance(key, cls):
            return key
        names = ", ".join(f"{m.name.lower()}={m.value}" for m in cls)
        if isinstance(key, str):
            if key.upper() in cls.__members__:
                return cls[key.upper()]
        elif isinstance(key, numbers.Integral) and not isinstance(key, bool):
            if int(key) in cls._value2member_map_:
                return cls(int(key))
        raise ValueError(f"unknown modality {key!r}; accepted: {names}")


ModalityKey = Union[Modality, int, str]
# The paper's aggressive setting Tv/Tt = 3/4, read as time steps: with TC-LIF, image and video
# tokens get 16 levels (3 steps) and text tokens 32 levels (4 steps).
DEFAULT_STEPS: dict[str, int] = {"text": 4, "image": 3, "video": 3}
# The mean-threshold code's range when none is given: 18 bits hold 3 x the widest fan-in of the
# supported families (Qwen2-72B's 29568-wide down_proj).
DEFAULT_DATA_DEPENDENT_BITS: dict[str, int] = {"text": 18, "image": 18, "video": 18}


@dataclass(frozen=True)
class MSTSConfig:
    """Time steps per modality, given either as ``steps`` or as ``bits`` (not both).

    :param steps: time steps per modality, e.g. ``{"image": 3, "text": 4}``; each must match a
        power-of-two number of levels for ``scheme``. Default: :data:`DEFAULT_STEPS`
        (Tv/Tt = 3/4 read as steps).
    :param bits: quantization bits per modality instead, e.g. ``{"image": 4, "text": 5}``
        (the other reading of Tv/Tt; with TC-LIF, ``bits - 1`` steps). For the data-dependent
        ``"mean_threshold_bitwise"``, steps and bits give the range of its counts (at most that
        many steps); default :data:`DEFAULT_DATA_DEPENDENT_BITS`.
    :param scheme: spike code of every modality, one of :data:`~spikemllm_sj.neurons.coding.SCHEMES`.
    :param signed: signed (symmetric) or unsigned levels.
    """

    steps: Optional[Mapping[ModalityKey, int]] = None
    bits: Optional[Mapping[ModalityKey, int]] = None
    scheme: Scheme = "tc_lif"
    signed: bool = True
    codes: Mapping[Modality, SpikeCode] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool, got {self.signed!r}")
        if self.steps is not None and self.bits is not None:
            raise ValueError("give either steps or bits per modality, not both")
        if self.bits is not None:
            name, per_modality = "bits", self.bits
            make = lambda b: SpikeCode(self.scheme, IntLevels.from_bits(b, self.signed))  # noqa: E731
        elif self.steps is None and self.scheme in DATA_DEPENDENT_SCHEMES:
            name, per_modality = "bits", DEFAULT_DATA_DEPENDENT_BITS
            make = lambda b: SpikeCode(self.scheme, IntLevels.from_bits(b, self.signed))  # noqa: E731
        else:
            name, per_modality = "steps", DEFAULT_STEPS if self.steps is None else self.steps
            make = lambda t: SpikeCode.from_steps(self.scheme, t, self.signed)  # noqa: E731
        if not isinstance(per_modality, Mapping):
            raise TypeError(f"{name} must be a mapping of modality to {name}, e.g. {DEFAULT_STEPS}, got {per_modality!r}")
        if not per_modality:
            raise ValueError("at least one modality must be configured")
        codes, given = {}, {}
        for key, value in per_modality.items():
            modality = Modality.parse(key)
            if modality in codes:
                raise ValueError(f"modality {modality.name.lower()} is configured twice")
            codes[modality] = make(value)
            given[modality.name.lower()] = value
        # A copy the caller's dict cannot change, keyed by modality name.
        if self.steps is not None or self.bits is not None:
            object.__setattr__(self, name, types.MappingProxyType(given))
        object.__setattr__(self, "codes", types.MappingProxyType(codes))

    # Two configurations are equal when they give every modality the same code, however the
    # steps were stated (steps or bits, names or numbers).
    def __eq__(self, other):
        return self.codes == other.codes if isinstance(other, MSTSConfig) else NotImplemented

    def __hash__(self):
        return hash(tuple(sorted(self.codes.items())))

    def __repr__(self):
        stated = {"steps": self.steps, "bits": self.bits}
        given = ", ".join(f"{k}={dict(v)!r}" for k, v in stated.items() if v is not None)
        return f"MSTSConfig({given + ', ' if given else ''}scheme={self.scheme!r}, signed={self.signed})"

    @property
    def leak(self) -> int:
        """Leak factor of the scheme, the same for every modality."""
        return next(iter(self.codes.values())).leak

    @property
    def max_steps(self) -> int:
        """The most steps a token may use (a data-dependent code's trains use at most this many)."""
        return max(code.steps for code in self.codes.values())

    @property
    def data_dependent(self) -> bool:
        """Whether the steps depend on the values (``mean_threshold_bitwise``)."""
        return next(iter(self.codes.values())).data_dependent

    def steps_of(self, modality: ModalityKey) -> int:
        return self.code_of(modality).steps

    def code_of(self, modality: ModalityKey) -> SpikeCode:
        modality = Modality.parse(modality)
        if modality not in self.codes:
            configured = ", ".join(m.name.lower() for m in self.codes)
            raise ValueError(f"modality {modality.name.lower()} has no configured time steps (configured: {configured})")
        return self.codes[modality]


class MSTSSpikes(NamedTuple):
    """Output of :class:`MSTSEncoder`.

    :param spikes: ``[T_max, B, L, D]`` in the input's dtype or the ``spike_dtype`` asked for
        (int8 carries no gradient); a token's padded steps come first and carry no spikes
        (a data-dependent code: ``T_max`` is the call's longest train).
    :param steps: ``[B, L]`` (int64) steps each token really uses (0 for masked-out tokens; a
        data-dependent code's: the bit length of the token's largest count).
    :param scale: ``[B, L, 1]`` quantization scale of each token, in ``level_dtype`` of the input's
        dtype (float32 at least).
    :param offset: ``[B, L, 1]`` level offset of each token's code (non-zero only for signed
        binary rate coding), in the scale's dtype.
    :param leak: the code's leak factor, shared by all modalities.
    """

    spikes: torch.Tensor
    steps: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    leak: int

    def decode(self) -> torch.Tensor:
        """Decoded activations ``[B, L, D]``, in the scale's dtype."""
        return (integrate(self.spikes.to(self.scale.dtype), self.leak) - self.offset) * self.scale

    def statistics(self) -> SpikeStats:
        """Spike counts per step; the firing rate counts only the steps each token really uses."""
        return spike_statistics(self.spikes, int(self.steps.sum()) * self.spikes.shape[-1])


class MSTSEncoder(encoding.StatelessEncoder):
    """Encode activations ``[B, L, D]`` with per-token time steps chosen by modality.

    Each token is quantized to its modality's levels (per-token scale by the code's rule, the
    absmax over its :attr:`~spikemllm_sj.neurons.SpikeCode.absmax_level` or the mean threshold,
    unless ``scale`` is given) and encoded by that modality's spiking neuron (``nodes[name]``, step mode ``'m'``), called
    through its forward (:meth:`~spikemllm_sj.neurons.SpikeCodingNode.present`), so that
    SpikingJelly's monitors on ``neuron.BaseNode`` record each modality's train ``[T, N, D]`` of the
    ``N`` tokens of that modality. Multi-step only.

    :param config: steps (or bits) per modality and the spike code.
    """

    def __init__(self, config: MSTSConfig = MSTSConfig()):
        super().__init__(step_mode="m")
        if not isinstance(config, MSTSConfig):
            raise TypeError(f"config must be an MSTSConfig, got {type(config).__name__}")
        self.config = config
        self._level_tables: dict[tuple, torch.Tensor] = {}
        self.nodes = torch.nn.ModuleDict(
            {
                m.name.lower(): NODE_CLASSES[code.scheme](code.levels.levels, step_mode="m", **_signed_kwarg(code))
                for m, code in config.codes.items()
            }
        )

    def supported_step_mode(self):
        return ("m",)

    def forward(
        self,
        x: torch.Tensor,
        modality_ids: torch.Tensor,
        scale: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        spike_dtype: Optional[torch.dtype] = None,
    ) -> MSTSSpikes:
        """
        :param x: activations ``[B, L, D]``.
        :param modality_ids: ``[B, L]`` integer modality of each token (``mm_token_type_ids``).
        :param scale: quantization scale per tensor (``[]``) or per token (``[B, L, 1]``);
            default: per-token absmax over ``D`` divided by the token's absmax level
            (``mean(|x|) / 3`` for the mean-threshold code).
        :param attention_mask: ``[B, L]`` of 0 (padding: no steps, no spikes) and 1 (a token).
        :param spike_dtype: dtype of the returned spikes: ``torch.int8`` (what an integer
            spike-driven product reads; a quarter of float32's memory) or a floating-point dtype;
            default ``x``'s.
        """
        B, L, D = _check_activations(x)
        if spike_dtype is not None and spike_dtype != torch.int8 and not spike_dtype.is_floating_point:
            raise ValueError(f"spike_dtype must be torch.int8 or a floating-point dtype, got {spike_dtype}")
        dtype = spike_dtype or x.dtype
        if scale is None and self.config.data_dependent:
            scale = mean_threshold_scale(x, MEAN_THRESHOLD_DIVISOR)  # every token's at once, as quantize takes them
        groups = (
            (code, mask, self.nodes[modality.name.lower()].present(x_m, s_m).to(dtype), s_m)
            for modality, code, mask, x_m, s_m in self._token_groups(x, modality_ids, scale, attention_mask)
        )
        if self.config.data_dependent:  # the call's train is as long as its longest group's
            groups = list(groups)
            t_max = max((train.shape[0] for _, _, train, _ in groups), default=1)
        else:  # one group's train at a time
            t_max = self.config.max_steps
        spikes = x.new_zeros(t_max, B, L, D, dtype=dtype)
        steps = torch.zeros(B, L, dtype=torch.int64, device=x.device)
        token_scale = torch.ones(B, L, 1, dtype=level_dtype(x.dtype), device=x.device)
        offset = torch.zeros_like(token_scale)
        # Written through views over the B * L tokens; a group without a mask holds every token
        # (one modality, no padding: a decode step, a text-only model) and is a plain copy.
        flat = spikes.view(t_max, B * L, D), steps.view(B * L), token_scale.view(B * L, 1), offset.view(B * L, 1)
        for code, mask, train, s_m in groups:
            where = slice(None) if mask is None else mask.reshape(B * L)
            flat[0][t_max - train.shape[0] :, where] = train
            flat[1][where] = _train_token_steps(train) if code.data_dependent else code.steps
            flat[2][where] = s_m.to(token_scale.dtype)
            flat[3][where] = float(code.offset)
        return MSTSSpikes(spikes, steps, token_scale, offset, self.config.leak)

    def quantize(
        self,
        x: torch.Tensor,
        modality_ids: torch.Tensor,
        scale: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ANN twin of :meth:`forward`: the same per-token quantization without spikes.

        :return: integer levels ``[B, L, D]`` (0 for masked-out tokens) and scales ``[B, L, 1]``,
            both in ``level_dtype(x.dtype)``; ``levels * scale`` equals ``forward(...).decode()``.
        """
        B, L, _ = _check_activations(x)
        modality_ids = _check_token_tensor(modality_ids, (B, L), "modality_ids")
        active = None if attention_mask is None else token_mask(attention_mask, (B, L))
        qmin, qmax, absmax_level = self._token_bounds(modality_ids, active, level_dtype(x.dtype))
        if scale is not None:
            token_scale = self._check_scale(scale, x).expand(B, L, 1)
        elif self.config.data_dependent:
            token_scale = mean_threshold_scale(x, MEAN_THRESHOLD_DIVISOR)
        else:
            token_scale = scale_from_absmax(x.detach().abs().amax(-1, keepdim=True), absmax_level)
        # One pass over every token at once, each with its own bounds: the same levels as
        # quantizing each modality's tokens apart, elementwise.
        levels = round_half_up(divide_by_scale(x, token_scale), inplace=True).to(qmax.dtype)
        if self.config.data_dependent:
            # Its counts are never clipped: one beyond the code's range is an error, as in forward.
            self._check_range(levels if active is None else levels[active], qmax if active is None else qmax[active])
        levels = torch.clamp_(levels, qmin, qmax)
        if active is None:
            return levels, token_scale
        levels.masked_fill_(~active[..., None], 0)
        return levels, torch.where(active[..., None], token_scale, torch.ones_like(token_scale))

    def _token_bounds(self, modality_ids: torch.Tensor, active: torch.Tensor, dtype: torch.dtype):
        """``(qmin, qmax, absmax_level)`` ``[B, L, 1]`` of each token's modality (raises for a
        modality present among the ``active`` tokens without configured steps)."""
        self._present_codes(modality_ids, active)  # raises for a modality without steps
        table = self.level_table(dtype, modality_ids.device)
        ids = modality_ids.long().clamp(0, len(Modality) - 1)  # inactive tokens may carry any id
        bounds = table[:, ids][..., None]
        return bounds[0], bounds[1], bounds[2]

    def _check_range(self, levels: torch.Tensor, qmax: torch.Tensor) -> None:
        beyond = levels.abs() > qmax
        if beyond.any():
            index = beyond.nonzero()[0].tolist()
            raise ValueError(
                f"a spike count of {int(levels[tuple(index)])} (element {index}) is beyond the +-{int(qmax[tuple(index[:-1])][0])} "
                f"of its modality's {self.config.scheme} code ({self.config!r}); its counts are never clipped: give it more bits"
            )

    def _present_codes(self, modality_ids: torch.Tensor, active: Optional[torch.Tensor]) -> tuple[list[int], list[SpikeCode]]:
        """The modalities among the ``active`` tokens (all if None), sorted, and their codes.

        :raises ValueError: one of them has no configured steps."""
        present = torch.unique(modality_ids if active is None else modality_ids[active]).tolist()
        return present, [self.config.code_of(int(m)) for m in present]

    def level_table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``[3, len(Modality)]``: ``qmin``, ``qmax`` and the absmax level
        (:attr:`~spikemllm_sj.neurons.SpikeCode.absmax_level`; 0 for a code scaled by the mean)
        of each configured modality (0 for the others), built once per dtype and device (the
        configuration is frozen)."""
        key = (self.config, dtype, torch.device(device))
        if key not in self._level_tables:
            table = torch.zeros(3, len(Modality), dtype=dtype)
            for modality, code in self.config.codes.items():
                table[0, int(modality)], table[1, int(modality)] = code.levels.qmin, code.levels.qmax
                table[2, int(modality)] = code.absmax_level if code.scale_rule == "absmax" else 0
            self._level_tables[key] = table.to(device)
        return self._level_tables[key]

    def _token_groups(self, x, modality_ids, scale, attention_mask):
        """Per configured modality present: ``(modality, code, token mask [B, L], x [N, D], scale [N, 1])``;
        the mask is None when every token is active and of that one modality (``N = B * L``)."""
        B, L, _ = x.shape
        modality_ids = _check_token_tensor(modality_ids, (B, L), "modality_ids")
        active = None if attention_mask is None else token_mask(attention_mask, (B, L))
        present, codes = self._present_codes(modality_ids, active)
        if scale is not None:
            scale = self._check_scale(scale, x).expand(B, L, 1)
        if active is not None and bool(active.all()):
            active = None
        if len(present) == 1 and active is None:
            x_m = x.reshape(B * L, x.shape[-1])
            s_m = codes[0].token_scale(x_m) if scale is None else scale.reshape(B * L, 1)
            yield Modality(present[0]), codes[0], None, x_m, s_m
            return
        if active is None:
            active = torch.ones(B, L, dtype=torch.bool, device=x.device)
        for m, code in zip(present, codes):
            mask = active & (modality_ids == m)
            x_m = x[mask]
            s_m = code.token_scale(x_m) if scale is None else scale[mask]
            yield Modality(m), code, mask, x_m, s_m

    @staticmethod
    def _check_scale(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        scale = check_scale(scale, x)
        if scale.dim() > 3 or torch.broadcast_shapes(scale.shape, (B, L, 1)) != (B, L, 1):
            raise ValueError(
                f"scale must be per tensor ([]) or per token ([B, L, 1] = {[B, L, 1]}), got shape {list(scale.shape)}"
            )
        return scale

    def extra_repr(self) -> str:
        steps = ", ".join(f"{m.name.lower()}={c.steps}" for m, c in self.config.codes.items())
        return f"scheme={self.config.scheme}, steps=({steps})"


def _signed_kwarg(code: SpikeCode) -> dict:
    # Only TC-LIF and binary rate nodes take `signed`; the others are signed by definition.
    return {"signed": code.levels.signed} if code.scheme in ("tc_lif", "rate_binary") else {}


def _train_token_steps(train: torch.Tensor) -> torch.Tensor:
    """Steps each token ``[N]`` of a bitwise train ``[T, N, D]`` uses: from its first step with a
    spike (most significant first, so the bit length of its largest count), at least 1."""
    fired = train.ne(0).any(-1)  # [T, N]
    first = fired.to(torch.int8).argmax(0)  # the first step with a spike (0 where none fired)
    return torch.where(fired.any(0), train.shape[0] - first, torch.ones_like(first)).to(torch.int64)


def _check_activations(x: torch.Tensor) -> torch.Size:
    check_finite(x)
    if x.dim() != 3:
        raise ValueError(f"x must have shape [B, L, D], got {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise ValueError(f"x must have a hidden size D >= 1, got shape {tuple(x.shape)}")
    return x.shape


def _check_token_tensor(t: torch.Tensor, shape: tuple[int, int], name: str) -> torch.Tensor:
    if not torch.is_tensor(t) or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be an integer or bool tensor of shape [B, L]")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} (the [B, L] of x), got {list(t.shape)}")
    return t


def token_mask(attention_mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The real tokens ``[B, L]`` (bool) of an ``attention_mask`` of that ``shape``, which must
    hold only 0 (padding) and 1 (a token), as ``transformers`` processors write it.

    :raises ValueError: another value (-1 or 2 is not read as "keep"), or another shape.
    """
    mask = _check_token_tensor(attention_mask, shape, "attention_mask")
    if mask.dtype == torch.bool:
        return mask
    other = (mask != 0) & (mask != 1)
    if other.any():
        values = mask[other].unique()[:5].tolist()
        raise ValueError(f"attention_mask must hold 0 (padding) and 1 (a token) only, got {values}")
    return mask == 1

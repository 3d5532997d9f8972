"""Input transforms of a linear layer: exactly invertible, non-spiking maps ``x -> x'`` whose
inverse a quantization method folds into the weight, so that ``x' W'^T = x W^T``.

A transform runs on decoded values (it is part of the layer's non-spiking work) before the input
is quantized and encoded as spikes.

Rotations (:class:`Rotation`, ``x -> x Q`` with an orthogonal ``Q``) are made by :func:`rotation`:
QuaRot's randomised Hadamard matrix ``Q = diag(s) H_n / sqrt(n)`` applied by a fast Walsh-Hadamard
transform (:class:`HadamardRotation`), or, only when asked for, a seeded random orthogonal matrix
for sizes without a Hadamard construction (:class:`RandomOrthogonal`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from spikemllm_sj.quantization.hadamard import NoHadamardOrder, hadamard_block, hadamard_order, sylvester

__all__ = [
    "InputTransform", "ChannelDivide", "Rotation", "HadamardRotation", "RandomOrthogonal", "rotation",
    "check_rotation_options",
]

_FOLD_ROWS = 4096  # weight rows rotated at a time: the transform's temporaries stay small
# Order of the FWHT's pass kernel H_16 (4 index bits per pass): on CPU a [16, 16] +-1 matmul per pass
# measured faster than kernels of order 8 or 32 and than 2-point butterflies (one pass per bit).
_RADIX = 16


class InputTransform(nn.Module):
    """Base of the input transforms: ``forward`` maps ``[..., in] -> [..., in]``."""

    def input_absmax(self, channel_absmax: torch.Tensor) -> float:
        """The largest magnitude of the transformed input, given the largest magnitude of each
        input channel ``[in]`` (what static activation scales are calibrated from).

        :raises ValueError: the transform mixes channels, so per-channel ranges do not bound it.
        """
        raise ValueError(
            f"static activation scales are not supported with {type(self).__name__}: it mixes channels, so "
            "its range does not follow from per-channel ranges; use act_scales='dynamic'"
        )

    def matrix(self, size: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """The transform as a matrix ``A`` ``[in, in]`` (``x' = x A``)."""
        return self(torch.eye(size, dtype=dtype, device=device))


class ChannelDivide(InputTransform):
    """``x / s`` per input channel (a fixed per-channel gain, foldable into the preceding norm)."""

    def __init__(self, s: torch.Tensor):
        super().__init__()
        self.register_buffer("s", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.s.to(x.dtype)

    def input_absmax(self, channel_absmax: torch.Tensor) -> float:
        return float((channel_absmax / self.s).max())


def check_rotation_options(seed: int, fallback: bool = False) -> None:
    """Raise ``ValueError`` unless ``seed`` is an int in ``[0, 2**64)`` (what ``torch.Generator``
    takes) and ``fallback`` a bool (the arguments of :func:`rotation`)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    if not isinstance(fallback, bool):
        raise ValueError(f"fallback must be a bool, got {fallback!r}")


class Rotation(InputTransform):
    """Base of the rotations ``x -> x Q`` ``[..., size] -> [..., size]``, ``Q`` ``[size, size]``
    orthogonal, drawn from ``seed``.

    :cvar kind: what the rotation is, for reports (``"hadamard"``, ``"random_orthogonal"``).
    """

    kind: ClassVar[str]

    def __init__(self, size: int, seed: int):
        super().__init__()
        check_rotation_options(seed)
        self.size, self.seed = size, seed

    def check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.size:
            raise ValueError(f"input has {x.shape[-1]} features (shape {list(x.shape)}), the rotation expects {self.size}")

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """``x Q^T`` ``[..., size]``, in ``x``'s dtype: ``inverse(forward(x)) == x`` up to rounding."""
        raise NotImplementedError

    def fold(self, weight: torch.Tensor) -> torch.Tensor:
        """``W Q`` for a linear layer's weight ``W`` ``[out, size]`` (so that ``(x Q) (W Q)^T = x W^T``):
        each row rotated by the transform itself (a Hadamard rotation builds no ``[size, size]``
        matrix), row block by row block, in ``weight``'s dtype or float32 if that is wider; returned
        in ``weight``'s dtype."""
        compute = torch.promote_types(weight.dtype, torch.float32)
        out = torch.empty_like(weight)
        for start in range(0, weight.shape[0], _FOLD_ROWS):
            out[start : start + _FOLD_ROWS] = self(weight[start : start + _FOLD_ROWS].to(compute)).to(weight.dtype)
        return out


def _along(x: torch.Tensor, h: torch.Tensor, inner: int) -> torch.Tensor:
    """``x`` ``[..., n]`` seen as ``[outer, f, inner]`` (``f = h.shape[0]``), times ``h`` ``[f, f]``
    on the middle axis: ``y[o, c, t] = sum_a x[o, a, t] h[a, c]`` (its elements in ``x``'s order;
    the caller reshapes)."""
    f = h.shape[0]
    return x.reshape(-1, f) @ h if inner == 1 else torch.matmul(h.T, x.reshape(-1, f, inner))


def _fwht(x: torch.Tensor, kernel: torch.Tensor, b: int) -> torch.Tensor:
    """``x H_b`` on each run of ``b`` consecutive elements of ``x`` (``[..., m * b]`` as
    ``[..., m, b]``), ``H_b`` Sylvester's (unnormalised), ``b`` a power of two: a fast
    Walsh-Hadamard transform in radix-``f`` passes (``kernel`` = ``H_f``, ``f = 2**r``). Sylvester's
    ``H_b`` is the Kronecker power of ``H_2`` over the index bits, so ``H_b = H_f (x) ... (x) H_f
    (x) H_(b / f**j)``: one pass per group of ``r`` bits, innermost first, each an ``[f, f]`` matmul;
    ``O(b log b)`` per row (``f / r`` multiply-adds per element and bit)."""
    inner, y = 1, x
    while inner < b:
        f = min(kernel.shape[0], b // inner)
        y = _along(y, kernel[:f, :f], inner)  # H_f's leading block is H_(f'), f' | f
        inner *= f
    return y.reshape(x.shape)


class HadamardRotation(Rotation):
    """QuaRot's randomised Hadamard rotation ``Q = diag(s) H_n / sqrt(n)``: ``s`` a random sign vector
    drawn from ``seed``, ``H_n = H_m (x) H_{2^k}`` (:func:`~spikemllm_sj.quantization.hadamard.hadamard_order`:
    Paley's or Sylvester's ``H_m``, Sylvester's ``H_{2^k}``). Every entry of ``Q`` is
    ``+-1 / sqrt(n)``: each input channel reaches every output channel with the same weight.

    ``x -> x Q`` is computed as ``x * s / sqrt(n)`` viewed as ``[..., m, 2^k]``, a fast
    Walsh-Hadamard transform over the last dim (``O(n log 2^k)``, :func:`_fwht`) and an ``[m, m]``
    matmul over ``m``, in ``x``'s dtype. Buffers, all int8 (+-1 is exact in every dtype, and
    ``module.to(dtype)`` leaves them so) and all saved with the model (a loader that builds the
    model on the meta device restores only saved tensors): ``signs`` ``[n]``, ``block`` ``H_m``
    ``[m, m]`` and ``kernel`` ``H_16``, the matrix of the transform's passes.

    :param size: ``n``.
    :param seed: seed of the sign vector.
    :raises NoHadamardOrder: ``size`` has no Hadamard construction.
    """

    kind = "hadamard"

    def __init__(self, size: int, seed: int = 0):
        order = hadamard_order(size)
        super().__init__(size, seed)
        self.order = order
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("signs", torch.randint(0, 2, (size,), generator=generator, dtype=torch.int8) * 2 - 1)
        self.register_buffer("block", hadamard_block(order))
        self.register_buffer("kernel", sylvester(min(_RADIX, order.block)))
        self._converted: dict[tuple, tuple[tuple, torch.Tensor]] = {}  # see _held

    def _hadamard(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        # x H_n with H_n = H_m (x) H_b: on x as [..., m, b], block^T X H_b (block = H_m); x H_n^T
        # is the same with block = H_m^T (H_b is symmetric).
        y = _fwht(x, self._held("kernel", x), self.order.block)
        if self.order.m > 1:
            block = self._held("block", x)
            y = _along(y, block.T if transpose else block, self.order.block)
        return y.reshape(x.shape)

    def _held(self, name: str, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Buffer ``name`` times ``scale`` in ``x``'s dtype, converted once per dtype and scale, and
        again when the buffer is replaced or written (``.to()``, ``load_state_dict``). Not cached
        in inference mode (its tensors could not be saved for a later backward) or while
        ``torch.compile`` traces (no version counter or storage to key on there)."""
        buffer = getattr(self, name)
        if buffer.is_inference() or torch.is_inference_mode_enabled() or torch.compiler.is_compiling():
            return buffer.to(x.dtype) * scale if scale != 1 else buffer.to(x.dtype)
        slot, stamp = (name, x.dtype, scale), (buffer.data_ptr(), buffer.device, buffer._version)
        held = self._converted.get(slot)
        if held is None or held[0] != stamp:
            held = (stamp, buffer.to(x.dtype) * scale if scale != 1 else buffer.to(x.dtype))
            self._converted[slot] = held
        return held[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x Q`` ``[..., n]``; the scale first, so that float16 sums stay in range."""
        self.check_input(x)
        return self._hadamard(x * self._held("signs", x, self.size**-0.5), transpose=False)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self._hadamard(x * self.size**-0.5, transpose=True) * self._held("signs", x)

    def extra_repr(self) -> str:
        return f"size={self.size}, {self.order}, seed={self.seed}"


class RandomOrthogonal(Rotation):
    """A seeded random orthogonal rotation ``x -> x Q`` (Haar-distributed: the QR factor of a
    Gaussian matrix with the signs of ``R``'s diagonal moved into ``Q``, Mezzadri 2007), for sizes
    without a Hadamard construction. Dense: stores ``q`` ``[n, n]`` float64 and costs a matmul.

    :param size: ``n``.
    :param seed: seed of the Gaussian matrix.
    """

    kind = "random_orthogonal"

    def __init__(self, size: int, seed: int = 0):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        super().__init__(size, seed)
        generator = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=generator))
        self.register_buffer("q", q * torch.sign(torch.diagonal(r)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x @ self.q.to(x.dtype)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x @ self.q.T.to(x.dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, seed={self.seed}"


def rotation(size: int, seed: int = 0, fallback: bool = False) -> Rotation:
    """The rotation of ``size`` channels: :class:`HadamardRotation` (``size`` with a Hadamard
    construction), else, with ``fallback=True`` only, :class:`RandomOrthogonal`; ``seed`` draws
    its signs (or its matrix).

    :raises ValueError: ``size`` has no Hadamard construction and ``fallback`` is False (the message
        names ``size`` and the orders tried), or an argument is invalid.
    """
    check_rotation_options(seed, fallback)
    try:
        return HadamardRotation(size, seed)
    except NoHadamardOrder as error:
        if not fallback:
            raise ValueError(f"{error}; pass fallback=True for a seeded random orthogonal rotation") from None
    return RandomOrthogonal(size, seed)

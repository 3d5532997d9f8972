"""Hadamard matrices of the orders of real models' hidden, intermediate and head sizes.

A Hadamard matrix ``H_n`` is an ``[n, n]`` matrix of +-1 with ``H_n H_n^T = n I``; ``H_n / sqrt(n)``
is orthonormal and mixes every input channel into every output channel with the same weight.
A size ``n`` is factored as ``n = m * 2**k`` with the largest ``2**k`` for which ``H_m`` is
constructed here, and ``H_n = H_m (x) H_{2^k}`` (a Kronecker product of Hadamard matrices is one):

* Sylvester (1867): ``H_1 = [1]``, ``H_{2j} = [[H_j, H_j], [H_j, -H_j]]``, the ``2**k`` factor
  (and the whole matrix, ``m = 1``, when ``n`` is a power of two);
* Paley I (Paley 1933): order ``q + 1`` for a prime power ``q = 3 mod 4``;
* Paley II (Paley 1933): order ``2 (q + 1)`` for a prime power ``q = 1 mod 4``;

with the quadratic character of GF(q) (:mod:`~spikemllm_sj.quantization.finite_field`), so prime
powers such as ``27 = 3**3`` (order 28: Qwen2-7B's 3584 = 28 * 128) and ``343 = 7**3`` (order 344:
LLaVA-1.5-7B's 11008 = 344 * 32) are covered. QuaRot ships a table of such matrices (orders 12,
20, 28, 36, 40, 52, 60, 76, ...); here they are generated (40 as ``H_20 (x) H_2``), and the tests
check every order up to 400 and every model size claimed.

The fast transform that applies these matrices is :class:`~spikemllm_sj.quantization.transforms.HadamardRotation`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from spikemllm_sj.quantization.finite_field import FiniteField, prime_power

__all__ = ["Construction", "HadamardOrder", "NoHadamardOrder", "hadamard_order", "sylvester", "paley", "hadamard_block", "hadamard_matrix"]

Construction = Literal["sylvester", "paley1", "paley2"]


@dataclass(frozen=True)
class HadamardOrder:
    """The factorization ``size = m * block`` of a Hadamard matrix ``H_size = H_m (x) H_block``.

    :param size: the order ``n``.
    :param m: the order of the non-Sylvester factor ``H_m`` (1 when ``size`` is a power of two).
    :param construction: how ``H_m`` is built: ``"sylvester"`` (``m = 1``: ``size`` is a power of
        two), ``"paley1"`` (``m = q + 1``) or ``"paley2"`` (``m = 2 (q + 1)``).
    :param q: the prime power of a Paley construction (None for Sylvester's).
    """

    size: int
    m: int
    construction: Construction
    q: Optional[int] = None

    def __post_init__(self):
        if self.construction not in ("sylvester", "paley1", "paley2"):
            raise ValueError(f"construction must be 'sylvester', 'paley1' or 'paley2', got {self.construction!r}")
        if self.construction == "sylvester":
            valid = self.m == 1 and self.q is None
        else:
            residue = 3 if self.construction == "paley1" else 1
            valid = self.q == _paley_q(self.m, self.construction) and prime_power(self.q) is not None and self.q % 4 == residue
        if not valid:
            raise ValueError(f"construction={self.construction!r} does not build H_{self.m} with q={self.q!r}")
        if self.size % self.m or self.block & (self.block - 1):
            raise ValueError(f"size={self.size} is not m={self.m} times a power of two")

    @property
    def block(self) -> int:
        """The Sylvester factor's order ``2**k = size / m``."""
        return self.size // self.m

    def __str__(self) -> str:
        if self.construction == "sylvester":
            return f"H_{self.size} (Sylvester)"
        paley = "Paley I" if self.construction == "paley1" else "Paley II"
        return f"H_{self.m} ({paley}, q={self.q}) (x) H_{self.block} (Sylvester)"


class NoHadamardOrder(ValueError):
    """A valid size for which no Hadamard construction here applies (see :func:`hadamard_order`)."""


def _paley_q(m: int, construction: Construction) -> int:
    """The ``q`` of Paley's ``H_m``: ``m - 1`` (Paley I) or ``m / 2 - 1`` (Paley II)."""
    return m - 1 if construction == "paley1" else m // 2 - 1


def _paley_construction(m: int) -> Optional[Construction]:
    """The Paley construction of ``H_m`` for ``m = 0 mod 4``, if one applies."""
    for construction, residue in (("paley1", 3), ("paley2", 1)):
        q = _paley_q(m, construction)
        if q % 4 == residue and prime_power(q) is not None:
            return construction
    return None


def hadamard_order(size: int) -> HadamardOrder:
    """The factorization ``size = m * 2**k`` with the largest ``2**k`` for which ``H_m`` is
    constructible (``m = 1`` when ``size`` is a power of two, else ``m = 0 mod 4`` with a Paley
    construction).

    :raises ValueError: ``size`` is not an int >= 1.
    :raises NoHadamardOrder: no such ``m`` exists (the message lists the orders ``m`` tried and why
        each has no construction).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    odd, twos = size, 0
    while odd % 2 == 0:
        odd, twos = odd // 2, twos + 1
    if odd == 1:
        return HadamardOrder(size, 1, "sylvester")
    tried = []
    for j in range(2, twos + 1):  # m = odd * 2**j must be 0 mod 4 (odd > 1)
        m = odd * 2**j
        construction = _paley_construction(m)
        if construction is not None:
            return HadamardOrder(size, m, construction, _paley_q(m, construction))
        tried.append(f"m={m} (neither q=m-1={m - 1} a prime power = 3 mod 4 nor q=m/2-1={m // 2 - 1} one = 1 mod 4)")
    orders = ", ".join(tried) if tried else f"none (the odd part {odd} needs m = 0 mod 4, and 2**{twos} has no factor 4)"
    raise NoHadamardOrder(
        f"size={size} = {odd} * 2**{twos} has no Hadamard construction H_m (x) H_(2^k) here (Sylvester, "
        f"Paley I or Paley II for H_m); orders m tried: {orders}"
    )


@functools.lru_cache(maxsize=None)
def _sylvester(order: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.int8)
    while h.shape[0] < order:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def sylvester(order: int) -> torch.Tensor:
    """Sylvester's ``H_order`` ``[order, order]`` int8 (+-1, symmetric), ``order`` a power of two."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1 or order & (order - 1):
        raise ValueError(f"order must be a power of two (an int >= 1), got {order!r}")
    return _sylvester(order).clone()


def paley(q: int) -> torch.Tensor:
    """Paley's Hadamard matrix for the prime power ``q``, int8 +-1: ``[q + 1, q + 1]`` (Paley I) for
    ``q = 3 mod 4``, ``[2 (q + 1), 2 (q + 1)]`` (Paley II) for ``q = 1 mod 4``.

    With the Jacobsthal matrix ``J[a, b] = chi(a - b)`` of GF(q) and ``S = [[0, 1^T], [e, J]]``
    (``e = -1`` for Paley I, whose ``J`` is antisymmetric; ``e = 1`` for Paley II, a symmetric
    conference matrix): Paley I is ``I + S``; Paley II replaces each 0 of ``S`` by
    ``[[1, -1], [-1, -1]]`` and each +-1 by +-``[[1, 1], [1, -1]]``.
    """
    if isinstance(q, bool) or not isinstance(q, int) or prime_power(q) is None or q % 2 == 0:
        raise ValueError(f"q must be an odd prime power, got {q!r}")
    jacobsthal = FiniteField(q).jacobsthal()
    first = -1 if q % 4 == 3 else 1
    s = torch.zeros(q + 1, q + 1, dtype=torch.int8)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, first, jacobsthal
    if q % 4 == 3:
        return s + torch.eye(q + 1, dtype=torch.int8)
    one = torch.tensor([[1, 1], [1, -1]], dtype=torch.int8)
    zero = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int8)
    return torch.kron(s, one) + torch.kron(torch.eye(q + 1, dtype=torch.int8), zero)


@functools.lru_cache(maxsize=None)
def _paley(q: int) -> torch.Tensor:
    return paley(q)


def hadamard_block(order: HadamardOrder) -> torch.Tensor:
    """``H_m`` ``[m, m]`` int8 (+-1) of ``order`` (a fresh copy: callers may keep it as a buffer)."""
    return sylvester(1) if order.construction == "sylvester" else _paley(order.q).clone()


def hadamard_matrix(size: int) -> torch.Tensor:
    """``H_size / sqrt(size)`` ``[size, size]`` float64, orthonormal, with ``H_size = H_m (x) H_{2^k}``
    of :func:`hadamard_order` (dense: for references and small sizes; rotate activations and fold
    weights with :class:`~spikemllm_sj.quantization.transforms.HadamardRotation`).

    :raises ValueError: ``size`` has no Hadamard construction (see :func:`hadamard_order`).
    """
    order = hadamard_order(size)
    h = torch.kron(hadamard_block(order).double(), sylvester(order.block).double())
    return h / size**0.5

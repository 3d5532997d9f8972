"""Finite fields GF(q), q = p**e a prime power: the quadratic character that Paley's Hadamard
constructions (:mod:`~spikemllm_sj.quantization.hadamard`) are built from.

An element is coded as an int in ``[0, q)`` whose base-``p`` digits are the coefficients
(constant term first) of a polynomial of degree < e over GF(p); the field is GF(p)[x] modulo a
monic irreducible polynomial of degree e, the first one (in lexicographic order of its
coefficients) that trial division by every monic polynomial of degree <= e / 2 finds
irreducible. Addition is digitwise modulo p; GF(p) itself is the case e = 1.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["prime_power", "FiniteField"]

_BLOCK_ELEMENTS = 1 << 24  # differences computed per row block: temporaries of at most 16 M ints


def prime_power(q: int) -> Optional[tuple[int, int]]:
    """``(p, e)`` with ``q == p**e``, ``p`` prime and ``e >= 1``; None when ``q`` is not a prime
    power (``q < 2`` included)."""
    if isinstance(q, bool) or not isinstance(q, int):
        raise TypeError(f"q must be an int, got {type(q).__name__}")
    if q < 2:
        return None
    p = next((d for d in range(2, math.isqrt(q) + 1) if q % d == 0), q)  # the smallest prime factor
    e, rest = 0, q
    while rest % p == 0:
        rest, e = rest // p, e + 1
    return (p, e) if rest == 1 else None


def _remainder(a: list[int], modulus: tuple[int, ...], p: int) -> list[int]:
    """``a mod modulus`` over GF(p), polynomials as coefficient lists (constant first), ``modulus``
    monic: the ``len(modulus) - 1`` coefficients of the remainder."""
    a, d = list(a), len(modulus) - 1
    for top in range(len(a) - 1, d - 1, -1):
        c = a[top] % p
        if c:
            for j, m in enumerate(modulus):
                a[top - d + j] = (a[top - d + j] - c * m) % p
    return [c % p for c in a[:d]]


def _monic(degree: int, p: int):
    """Every monic polynomial of ``degree`` over GF(p), coefficients constant first."""
    for low in itertools.product(range(p), repeat=degree):
        yield (*low, 1)


def _is_irreducible(f: tuple[int, ...], p: int) -> bool:
    # Reducible iff it has a monic factor of degree between 1 and deg(f) / 2.
    return not any(
        not any(_remainder(list(f), g, p)) for degree in range(1, (len(f) - 1) // 2 + 1) for g in _monic(degree, p)
    )


@dataclass(frozen=True)
class FiniteField:
    """GF(``order``), ``order`` a prime power (see the module docstring for the element codes).

    :ivar p: the characteristic.
    :ivar e: the degree over GF(p) (``order == p**e``).
    :ivar modulus: the monic irreducible polynomial of degree ``e`` defining the field,
        coefficients constant first.
    """

    order: int
    p: int = field(init=False)
    e: int = field(init=False)
    modulus: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int):
            raise TypeError(f"order must be an int, got {type(self.order).__name__}")
        factors = prime_power(self.order)
        if factors is None:
            raise ValueError(f"order must be a prime power p**e (p prime, e >= 1), got {self.order}")
        p, e = factors
        modulus = next(f for f in _monic(e, p) if _is_irreducible(f, p))  # exists for every p, e
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "e", e)
        object.__setattr__(self, "modulus", modulus)

    def digits(self) -> torch.Tensor:
        """``[order, e]`` int64: the polynomial coefficients of each element code."""
        codes = torch.arange(self.order)
        return torch.stack([codes // self.p**i % self.p for i in range(self.e)], dim=1)

    def square(self, a: int) -> int:
        """The code of ``a * a``."""
        digits = [a // self.p**i % self.p for i in range(self.e)]
        product = [0] * (2 * self.e - 1)
        for i, x in enumerate(digits):
            for j, y in enumerate(digits):
                product[i + j] += x * y
        return sum(c * self.p**i for i, c in enumerate(_remainder(product, self.modulus, self.p)))

    def quadratic_character(self) -> torch.Tensor:
        """``[order]`` int8, by element code: 0 for 0, 1 for a nonzero square, -1 otherwise."""
        chi = torch.full((self.order,), -1, dtype=torch.int8)
        chi[[self.square(a) for a in range(1, self.order)]] = 1
        chi[0] = 0
        return chi

    def jacobsthal(self) -> torch.Tensor:
        """``[order, order]`` int8 Jacobsthal matrix ``J[a, b] = chi(a - b)`` over the element codes."""
        chi, digits = self.quadratic_character(), self.digits()
        powers = self.p ** torch.arange(self.e)
        out = torch.empty(self.order, self.order, dtype=torch.int8)
        rows = max(1, _BLOCK_ELEMENTS // (self.order * self.e))
        for start in range(0, self.order, rows):
            difference = (digits[start : start + rows, None, :] - digits[None, :, :]) % self.p
            out[start : start + rows] = chi[(difference * powers).sum(-1)]
        return out

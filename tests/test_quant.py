import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from properties import examples
from reference import LEVELS, qrange, reference_fake_quant, reference_levels

from spikemllm_sj.neurons import (
    IntLevels,
    TCLIFNode,
    absmax_scale,
    check_scale,
    decode,
    fake_quantize,
    quantize,
    round_half_up,
)


def test_levels_ranges():
    assert (IntLevels(16).qmin, IntLevels(16).qmax) == (-7, 7)
    assert (IntLevels(16, signed=False).qmin, IntLevels(16, signed=False).qmax) == (0, 15)
    assert IntLevels.from_bits(8).levels == 256 and IntLevels(256).bits == 8


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_bits(bad):
    with pytest.raises(ValueError, match="bits must be a positive int"):
        IntLevels.from_bits(bad)


def test_quantize_matches_the_reference_and_rounds_half_up():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 100.0, -100.0])
    assert quantize(x, 1.0, IntLevels(16)).tolist() == [-2, -1, 0, 1, 2, 3, 7, -7]
    x = torch.randn(64, 32) * 4
    scale = absmax_scale(x, IntLevels(16), "channel")
    assert torch.equal(quantize(x, scale, IntLevels(16)), reference_levels(x, scale, 16, True))
    assert torch.equal(fake_quantize(x, scale, IntLevels(16)), reference_fake_quant(x, scale, 16, True))


def test_absmax_scale_granularities():
    x = torch.randn(2, 3, 8)
    x[0, 1] = 0.0
    lv = IntLevels(32)
    assert absmax_scale(x, lv, "tensor").shape == ()
    assert absmax_scale(x, lv, "channel").shape == (8,)
    per_token = absmax_scale(x, lv, "token")
    assert per_token.shape == (2, 3, 1)
    assert per_token[0, 1, 0] == 1.0  # an all-zero token: any scale encodes it exactly
    assert torch.equal(per_token[1, 2, 0], x[1, 2].abs().amax() / 15)
    # The largest magnitude lands exactly on qmax.
    assert quantize(x, per_token, lv).abs().amax(-1)[1].tolist() == [15, 15, 15]


def test_bad_granularity():
    with pytest.raises(ValueError, match="granularity must be one of"):
        absmax_scale(torch.ones(3), IntLevels(16), "row")


# Exact rounding and half precision: levels are floor(x / scale + 1/2) for every representable input.

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def rational_round(values: torch.Tensor) -> list[int]:
    return [math.floor(Fraction(v) + Fraction(1, 2)) for v in values.double().reshape(-1).tolist()]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_half_up_is_exact_next_to_every_half_level(dtype):
    halves = torch.arange(-8, 9, dtype=dtype) + 0.5
    below = torch.nextafter(halves, torch.full_like(halves, -math.inf))
    above = torch.nextafter(halves, torch.full_like(halves, math.inf))
    info = torch.finfo(dtype)
    u = torch.cat([halves, below, above, torch.tensor([0.0, -0.0, info.tiny, -info.tiny, info.max, -info.max], dtype=dtype)])
    # floor(u + 0.5) in u's dtype rounds 0.5 - ulp up to 1 (in bf16, 0.498046875 -> 1).
    assert rational_round(torch.nextafter(torch.tensor(0.5, dtype=dtype), torch.tensor(0.0, dtype=dtype))) == [0]
    assert round_half_up(u).tolist() == rational_round(u)
    assert round_half_up(u.clone(), inplace=True).tolist() == rational_round(u)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@examples(300)
@given(data=st.data())
def test_round_half_up_property(dtype, data):
    width = {torch.float16: 16, torch.float64: 64}.get(dtype, 32)
    values = data.draw(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=width), min_size=1, max_size=64))
    near_half = data.draw(st.lists(st.integers(-300, 300).map(lambda k: k + 0.5), max_size=8))
    u = torch.tensor(values + near_half, dtype=torch.float64).to(dtype)
    nudge = data.draw(st.sampled_from([0, 1, -1]))
    if nudge:
        u = torch.nextafter(u, torch.full_like(u, nudge * math.inf))
    u = torch.where(torch.isfinite(u), u, torch.zeros_like(u))  # beyond bf16's range, or nudged past max
    assert round_half_up(u).tolist() == rational_round(u)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_levels_use_the_exact_quotient(dtype):
    # 3 / float32(1.2) is 2.4999999..., which float32 division rounds to the tie 2.5 (level 3).
    x = torch.tensor([3.0, -3.0], dtype=dtype)
    scale = torch.tensor(1.2, dtype=torch.float32)
    assert Fraction(3) / Fraction(scale.item()) < Fraction(5, 2)
    got = quantize(x, scale, IntLevels(16))
    assert got.dtype == torch.float32 and got.tolist() == [2.0, -2.0]
    assert torch.equal(got, reference_levels(x, scale, 16, True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_levels_beyond_the_half_precision_integers_are_held_in_float32(dtype):
    # fp16 holds integers up to 2048 and bf16 up to 256; 16-bit levels go to 32767.
    x = torch.tensor([32767.0, 2049.0, 257.0, -32767.0]).to(dtype)
    got = quantize(x, 1.0, IntLevels(1 << 16))
    assert got.dtype == torch.float32
    assert torch.equal(got, reference_levels(x, 1.0, 1 << 16, True))


def test_tiny_fp16_activations_get_a_positive_float32_scale():
    # absmax 1e-7 / 15 underflows to 0 in fp16; a zero row keeps scale 1 and encodes as zeros.
    x = torch.tensor([[1e-7, -6e-8, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float16)
    scale = absmax_scale(x, IntLevels(32), "token")
    assert scale.dtype == torch.float32 and bool((scale > 0).all())
    assert scale[1].item() == 1.0
    levels = quantize(x, scale, IntLevels(32))
    assert torch.equal(levels, reference_levels(x, scale, 32, True))
    assert levels[0].abs().max().item() == 15 and not levels[1].any()


def test_a_subnormal_absmax_gets_the_smallest_normal_scale():
    x = torch.tensor([1e-44, -3e-45])  # float32 subnormals: absmax / 127 underflows to 0
    scale = absmax_scale(x, IntLevels(256))
    assert scale.item() == torch.finfo(torch.float32).tiny
    assert torch.equal(quantize(x, scale, IntLevels(256)), reference_levels(x, scale, 256, True))


@st.composite
def half_activations(draw, dtype):
    L = draw(st.sampled_from(LEVELS + (1 << 12, 1 << 16)))
    signed = draw(st.booleans())
    n, d = draw(st.integers(1, 4)), draw(st.integers(1, 16))
    width = 16 if dtype == torch.float16 else 32
    qmax = qrange(L, signed)[1]
    finite = st.floats(allow_nan=False, allow_infinity=False, width=width)
    on_level = st.integers(-2 * qmax - 4, 2 * qmax + 4).map(lambda k: k / 2)
    tiny = st.floats(-(2.0**-20), 2.0**-20, width=width)
    values = draw(st.lists(st.one_of(finite, on_level, tiny), min_size=n * d, max_size=n * d))
    x = torch.tensor(values, dtype=torch.float64).to(dtype).reshape(n, d)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    kind = draw(st.sampled_from(["absmax", "drawn", "near tie"]))
    if kind == "absmax":
        scale = absmax_scale(x, IntLevels(L, signed), draw(st.sampled_from(["tensor", "channel", "token"])))
    elif kind == "drawn":
        scale = torch.tensor(draw(st.floats(2.0**-40, 2.0**20, width=32)), dtype=torch.float32)
    else:
        # A float32 scale that puts one element next to the half-level k + 1/2: its quotient is
        # within float32's rounding of a tie.
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))
        k = draw(st.integers(0, max(qmax, 1)))
        target = abs(float(x[i, j])) or 1.0
        scale = torch.tensor(target / (k + 0.5), dtype=torch.float32)
        scale = torch.nextafter(scale, torch.tensor(draw(st.sampled_from([0.0, math.inf]))))
        if not (scale > 0 and torch.isfinite(scale)):
            scale = torch.tensor(1.0)
    return x, scale, L, signed


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@examples(300)
@given(data=st.data())
def test_half_precision_quantizer_property(dtype, data):
    x, scale, L, signed = data.draw(half_activations(dtype))
    levels = IntLevels(L, signed)
    want = reference_levels(x, scale, L, signed)
    got = quantize(x, scale, levels)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(fake_quantize(x, scale, levels), reference_fake_quant(x, scale, L, signed))
    # The TC-LIF code carries the same levels, bit for bit.
    node = TCLIFNode(L, signed=signed)
    spikes = node.encode(x, scale=scale)
    assert torch.equal(decode(spikes, node.code), want)


def test_bad_scales_name_the_argument_and_the_value():
    with pytest.raises(ValueError, match=r"scale must be finite and > 0 everywhere, got 0.0 at index \(1,\)"):
        check_scale(torch.tensor([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError, match="scale must have at least one element, got shape \\(0,\\)"):
        check_scale(torch.tensor([]), torch.ones(2))
    with pytest.raises(ValueError, match="scale must be finite and > 0 everywhere in torch.float32, got 0.0"):
        check_scale(torch.tensor(1e-60, dtype=torch.float64), torch.ones(2))
    with pytest.raises(TypeError, match="scale must be a real number"):
        check_scale(torch.tensor(True), torch.ones(2))


@pytest.mark.parametrize("granularity,shape", [("tensor", (0,)), ("token", (3, 0)), ("channel", (0, 4)), ("channel", ())])
def test_absmax_over_nothing_is_refused(granularity, shape):
    with pytest.raises(ValueError, match=f"a {granularity} absmax needs x with elements to reduce over"):
        absmax_scale(torch.zeros(shape), IntLevels(16), granularity)

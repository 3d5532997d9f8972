import pytest
import torch
from reference import reference_fake_quant, reference_levels

from spikemllm_sj.neurons import IntLevels, absmax_scale, fake_quantize, quantize


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

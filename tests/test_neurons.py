import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from properties import examples
from reference import LEVELS, boundary_values, reference_fake_quant, reference_levels
from spikingjelly.activation_based import functional, surrogate
from spikingjelly.activation_based.neuron import BaseNode
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

from spikemllm_sj.neurons import (
    BidirectionalRateNode,
    BinaryRateNode,
    ClippedBidirectionalRateNode,
    IntLevels,
    SpikeCode,
    SpikeDecoder,
    TCLIFNode,
    binary_planes,
    decode,
)

# (node factory, scheme, signed); bidirectional rate coding is signed by definition.
CODERS = [
    (lambda L, **kw: TCLIFNode(L, signed=True, **kw), "tc_lif", True),
    (lambda L, **kw: TCLIFNode(L, signed=False, **kw), "tc_lif", False),
    (lambda L, **kw: BinaryRateNode(L, signed=True, **kw), "rate_binary", True),
    (lambda L, **kw: BinaryRateNode(L, signed=False, **kw), "rate_binary", False),
    (lambda L, **kw: BidirectionalRateNode(L, **kw), "rate_bidirectional", True),
    (lambda L, **kw: ClippedBidirectionalRateNode(L, **kw), "rate_bidirectional_clipped", True),
]
CODER_IDS = ["tc_lif", "tc_lif_unsigned", "rate_binary", "rate_binary_unsigned", "rate_bidirectional",
             "rate_bidirectional_clipped"]


def expected_steps(scheme: str, L: int, signed: bool) -> int:
    if scheme == "tc_lif":
        return int(math.log2(L)) - (1 if signed else 0)
    if scheme == "rate_binary":
        return L - 2 if signed else L - 1
    return L // 2 - 1


@pytest.mark.parametrize("make,scheme,signed", CODERS, ids=CODER_IDS)
@pytest.mark.parametrize("L", LEVELS)
def test_step_counts_and_spike_alphabet(make, scheme, signed, L):
    node = make(L)
    assert node.steps == expected_steps(scheme, L, signed)
    x = boundary_values(L)
    spikes = node.encode(x)
    assert spikes.shape == (node.steps, *x.shape)
    allowed = {-1.0, 0.0, 1.0} if node.code.ternary else {0.0, 1.0}
    assert set(spikes.unique().tolist()) <= allowed
    assert node.code.ternary == (signed and scheme != "rate_binary")


def test_tc_lif_step_ladder_matches_the_paper():
    # Section 4.1: 4-bit activations take 15 steps with rate coding; TC-LIF takes log2(L) - 1.
    assert [TCLIFNode(L).steps for L in LEVELS] == [1, 2, 3, 4, 5, 6, 7]
    assert BinaryRateNode(16, signed=False).steps == 15
    assert BidirectionalRateNode(16).steps == 7


def test_tc_lif_spikes_are_signed_binary_digits_msb_first():
    node = TCLIFNode(16)
    spikes = node.encode(torch.tensor([5.0, -6.0, 7.0, 0.0]))
    assert spikes.T.tolist() == [[1, 0, 1], [-1, -1, 0], [1, 1, 1], [0, 0, 0]]
    assert node.code.weights == (4, 2, 1)


@pytest.mark.parametrize("make,scheme,signed", CODERS, ids=CODER_IDS)
@pytest.mark.parametrize("L", LEVELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundaries_extremes_and_out_of_range_are_exact(make, scheme, signed, L, dtype):
    node = make(L).to(dtype)
    for scale in (1.0, 0.37, 1e-3, 3.0e4):
        x = boundary_values(L, dtype) * scale
        x = x[torch.isfinite(x)]
        got = node.decode(node.encode(x, scale=torch.tensor(scale, dtype=dtype)), scale=torch.tensor(scale, dtype=dtype))
        want = reference_fake_quant(x, scale, L, signed)
        assert torch.equal(got, want), (scale, x[got != want], got[got != want], want[got != want])


# Property tests: many thousands of random elements, every level count, every scale granularity.
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def activations(draw):
    L = draw(st.sampled_from(LEVELS))
    n, d = draw(st.integers(1, 6)), draw(st.integers(1, 24))
    granularity = draw(st.sampled_from(["tensor", "channel", "token"]))
    shape = {"tensor": (), "channel": (d,), "token": (n, 1)}[granularity]
    numel = math.prod(shape)
    scales = draw(st.lists(st.floats(2.0**-20, 2.0**20, width=32), min_size=numel, max_size=numel))
    scale = torch.tensor(scales, dtype=torch.float32).reshape(shape)
    # Mix of arbitrary floats, values in range and values sitting on or next to rounding boundaries.
    q = L // 2 + 1
    in_range = st.floats(-q, q, width=32)
    on_boundary = st.integers(-2 * q, 2 * q).map(lambda k: k / 2)
    units = draw(st.lists(st.one_of(in_range, on_boundary, finite32), min_size=n * d, max_size=n * d))
    u = torch.tensor(units, dtype=torch.float32).reshape(n, d)
    nudge = draw(st.sampled_from([0, 1, -1]))
    if nudge:
        u = torch.nextafter(u, torch.full_like(u, nudge * float("inf")))
    x = u * scale
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    return L, x, scale


@pytest.mark.parametrize("make,scheme,signed", CODERS, ids=CODER_IDS)
@examples(250)
@given(data=activations())
def test_decode_equals_quantizer_property(make, scheme, signed, data):
    L, x, scale = data
    node = make(L, scale=scale)
    spikes = node.encode(x)
    assert torch.equal(node.decode(spikes), reference_fake_quant(x, scale, L, signed))
    # The integrated spikes are the integer levels themselves.
    want_levels = reference_levels(x, scale, L, signed)
    assert torch.equal(decode(spikes, node.code), want_levels)


# Every coder at 16 levels; TC-LIF also at 4096 (rate codes would take thousands of steps).
HALF_CASES = [
    pytest.param(make, scheme, signed, L, id=f"{name}-L{L}")
    for (make, scheme, signed), name in zip(CODERS, CODER_IDS)
    for L in ((16, 1 << 12) if scheme == "tc_lif" else (16,))
]


@pytest.mark.parametrize("make,scheme,signed,L", HALF_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_exact(make, scheme, signed, L, dtype):
    node = make(L).to(dtype)
    x = (torch.randn(512, generator=torch.Generator().manual_seed(0)) * L / 4).to(dtype)
    scale = torch.tensor(0.37, dtype=dtype)
    spikes = node.encode(x, scale=scale)
    got = node.decode(spikes, scale=scale)
    # Levels, membranes and decoded values in float32: fp16 and bf16 lose integers above 2048 and 256.
    assert spikes.dtype == got.dtype == torch.float32
    assert torch.equal(decode(spikes, node.code), reference_levels(x, scale, L, signed))
    assert torch.equal(got, reference_fake_quant(x, scale, L, signed))
    node.step_mode = "m"
    seq = torch.cat([x[None], torch.zeros(node.steps - 1, *x.shape, dtype=dtype)])
    assert torch.equal(node(seq, scale=scale), spikes)
    assert node.v.dtype == torch.float32


# SpikingJelly neuron behaviour.


def test_is_a_spikingjelly_base_node():
    assert isinstance(TCLIFNode(16), BaseNode)


@pytest.mark.parametrize("make,scheme,signed", CODERS, ids=CODER_IDS)
def test_single_and_multi_step_modes_match_encode(make, scheme, signed):
    L = 32
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(1)) * 9
    node = make(L, scale=0.7)
    T = node.steps
    x_seq = torch.cat([x[None], torch.zeros(T - 1, *x.shape)])

    node.step_mode = "s"
    s_single = torch.stack([node(x_t) for x_t in x_seq])
    functional.reset_net(node)
    node.step_mode = "m"
    s_multi = node(x_seq)
    assert torch.equal(s_single, node.encode(x))
    assert torch.equal(s_multi, node.encode(x))


def test_reset_net_restores_the_resting_membrane():
    node = BinaryRateNode(16, signed=True)  # offset code: resting membrane = qmax
    node(torch.tensor([3.0, -2.0]))
    assert not torch.equal(node.v, torch.full((2,), 7.0))
    functional.reset_net(node)
    assert node.v == 7.0
    tc = TCLIFNode(16)
    tc(torch.tensor([3.0]))
    functional.reset_net(tc)
    assert tc.v == 0.0


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_store_v_seq_records_the_membrane(step_mode):
    node = TCLIFNode(16, store_v_seq=True, step_mode=step_mode)
    x = torch.tensor([5.0, -6.0])
    x_seq = torch.stack([x, torch.zeros(2), torch.zeros(2)])
    if step_mode == "s":
        for x_t in x_seq:
            node(x_t)
    else:
        node(x_seq)
    # Threshold 4, membrane doubling: 5 fires (1 left), 2 stays, 4 fires (0 left); -6 fires (-2), -4 fires (0).
    assert node.v_seq.tolist() == [[1.0, -2.0], [2.0, 0.0], [0.0, 0.0]]


def test_dtype_moves_and_state_dict_round_trip():
    scale = torch.rand(8) + 0.1
    node = TCLIFNode(64, scale=scale).to(torch.float64)
    assert node.scale.dtype == torch.float64
    x = torch.randn(4, 8, dtype=torch.float64) * 3
    twin = TCLIFNode(64, scale=torch.ones(8)).to(torch.float64)
    twin.load_state_dict(node.state_dict())
    assert torch.equal(twin.scale, node.scale)
    assert torch.equal(twin.encode(x), node.encode(x))
    assert torch.equal(copy.deepcopy(node).encode(x), node.encode(x))


def test_encode_is_pure_and_does_not_touch_the_membrane():
    node = TCLIFNode(16)
    node(torch.tensor([3.0]))
    v = node.v.clone()
    node.encode(torch.tensor([6.0]))
    assert torch.equal(node.v, v)


def test_surrogate_gradient_flows_for_fine_tuning():
    node = TCLIFNode(16, scale=0.25, surrogate_function=surrogate.ATan())
    x = torch.linspace(-2, 2, 17, requires_grad=True)
    y = node.decode(node.encode(x))
    y.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # Forward values stay exact with gradients enabled.
    assert torch.equal(y.detach(), reference_fake_quant(x.detach(), 0.25, 16, True))


def test_dynamic_per_token_scale_at_call_time():
    x = torch.randn(5, 16) * torch.arange(1, 6)[:, None]
    scale = x.abs().amax(-1, keepdim=True) / 7
    node = TCLIFNode(16)
    assert torch.equal(node.decode(node.encode(x, scale=scale), scale=scale), reference_fake_quant(x, scale, 16, True))
    node.step_mode = "m"
    seq = torch.cat([x[None], torch.zeros(2, 5, 16)])
    assert torch.equal(node(seq, scale=scale), node.encode(x, scale=scale))


def test_spike_decoder_module_is_the_weighted_integration():
    code = SpikeCode("tc_lif", IntLevels(32))
    spikes = torch.tensor([[1.0], [0.0], [-1.0], [1.0]])  # 8 - 2 + 1
    assert SpikeDecoder(code, scale=0.5)(spikes).item() == 3.5


def test_spike_driven_linear_counts_synops_with_spikingjelly_op_counter():
    # A spike-driven layer adds the weight columns that spikes select (W @ pos - W @ neg per step)
    # and integrates over steps; it equals the integer matmul exactly, and SpikingJelly's SynOpCounter
    # counts one accumulation per spike and output.
    g = torch.Generator().manual_seed(3)
    W = torch.randint(-7, 8, (6, 20), generator=g).float()
    x = torch.randn(4, 20, generator=g) * 3
    node = TCLIFNode(16, scale=0.5)
    spikes = node.encode(x)
    counter = SynOpCounter()
    with DispatchCounterMode([counter]):
        currents = []
        for s in spikes:
            pos, neg = binary_planes(s)
            currents.append(F.linear(pos, W) - F.linear(neg, W))
    acc = decode(torch.stack(currents), node.code)
    assert torch.equal(acc, reference_levels(x, 0.5, 16, True) @ W.T)
    stats = node.statistics(spikes)
    assert counter.get_total() == stats.spikes * W.shape[0]
    assert stats.spikes == int(torch.count_nonzero(spikes))
    assert stats.neuron_steps == spikes.numel()
    assert stats.firing_rate == pytest.approx(stats.spikes / spikes.numel())
    assert list(stats.spikes_per_step) == [int(torch.count_nonzero(s)) for s in spikes]


# Bad input.


@pytest.mark.parametrize("L", [0, 2, 3, 12, 100, 1 << 25])
def test_bad_level_counts(L):
    with pytest.raises(ValueError, match="levels must be a power of two"):
        TCLIFNode(L)


def test_bad_level_type():
    with pytest.raises(TypeError, match="levels must be an int"):
        TCLIFNode(16.0)


@pytest.mark.parametrize("scheme,steps", [("rate_bidirectional", 4), ("rate_binary", 3), ("rate_binary", 1)])
def test_steps_that_do_not_match_levels(scheme, steps):
    with pytest.raises(ValueError, match=f"steps={steps} does not match"):
        SpikeCode.from_steps(scheme, steps)


def test_unknown_scheme():
    with pytest.raises(ValueError, match="scheme must be one of"):
        SpikeCode("poisson", IntLevels(16))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs(bad):
    node = TCLIFNode(16)
    with pytest.raises(ValueError, match="NaN or infinite"):
        node.encode(torch.tensor([1.0, bad]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        node(torch.tensor([bad]))


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_zero_negative_or_nan_scales(scale):
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        TCLIFNode(16, scale=scale)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        TCLIFNode(16).encode(torch.ones(3), scale=torch.tensor([1.0, scale, 1.0]))


def test_an_empty_scale_is_refused():
    with pytest.raises(ValueError, match=r"scale must have at least one element, got shape \(0,\)"):
        TCLIFNode(16, scale=torch.tensor([]))
    with pytest.raises(ValueError, match=r"scale must have at least one element"):
        SpikeDecoder(SpikeCode("tc_lif", IntLevels(16)), scale=torch.tensor([]))
    with pytest.raises(ValueError, match=r"scale must be finite and > 0 everywhere, got 0.0"):
        SpikeDecoder(SpikeCode("tc_lif", IntLevels(16)), scale=0.0)


@pytest.mark.parametrize("x_seq", [torch.zeros(0, 3), torch.tensor(1.0)], ids=["T=0", "0-d"])
def test_multi_step_input_needs_a_time_dimension(x_seq):
    node = TCLIFNode(16, step_mode="m")
    with pytest.raises(ValueError, match=r"multi-step input x_seq must be \[T, N, \*\] with T >= 1 steps"):
        node(x_seq)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_decode_refuses_non_finite_spikes(bad):
    node = TCLIFNode(16)
    spikes = node.encode(torch.tensor([3.0, -2.0]))
    spikes[1, 0] = bad
    with pytest.raises(ValueError, match="spikes contains NaN or infinite values"):
        node.decode(spikes)


def test_scale_shape_mismatch():
    with pytest.raises(ValueError, match="does not broadcast"):
        TCLIFNode(16, scale=torch.ones(5)).encode(torch.ones(2, 3))


def test_decode_with_the_wrong_number_of_steps():
    node = TCLIFNode(16)
    with pytest.raises(ValueError, match="time steps but the code"):
        node.decode(torch.zeros(4, 3))


def test_bidirectional_needs_signed_levels():
    with pytest.raises(ValueError, match="needs signed levels"):
        SpikeCode("rate_bidirectional", IntLevels(16, signed=False))

"""The Lava processes against the PyTorch neurons and the quantizer, bit for bit.

Each test runs a small network on Lava's CPU simulator: a few tokens streamed back to back, one
per window of T steps. References: ``SpikeCodingNode.encode`` for spikes, and an int64 numpy
matmul of ``spikemllm_sj.neurons.quantize``'s levels for the spike-driven layer.
"""

import numpy as np
import pytest
import torch

from spikemllm_sj.lava_backend import SpikeLinearSpec, run_lava, to_lava
from spikemllm_sj.neurons import BidirectionalRateNode, BinaryRateNode, IntLevels, SpikeCode, TCLIFNode, quantize

pytestmark = pytest.mark.lava

PRECISIONS = ["floating_pt", "fixed_pt"]
SCALE = 0.25  # a power of two: float64 activations hit the rounding ties exactly
N_TOKENS, SIZE, OUT = 6, 8, 5


def activations(code: SpikeCode, seed: int, dtype=torch.float64) -> torch.Tensor:
    """``[N_TOKENS, SIZE]`` activations: levels up to twice the range, on and off rounding ties."""
    g = torch.Generator().manual_seed(seed)
    qmax = code.levels.qmax
    levels = torch.randint(-2 * qmax, 2 * qmax + 1, (N_TOKENS, SIZE), generator=g)
    fractions = torch.tensor([0.0, 0.5, -0.5, 0.3, -0.49])[torch.randint(0, 5, (N_TOKENS, SIZE), generator=g)]
    x = (levels + fractions) * SCALE
    x[0] = 0.0  # a silent token, between busy ones
    return x.to(dtype)


def int8_weights(seed: int, shape=(OUT, SIZE)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    w[0, :2] = torch.tensor([-128, 127], dtype=torch.int8)  # both ends of the range
    return w


def matmul_reference(x: torch.Tensor, spec: SpikeLinearSpec) -> torch.Tensor:
    q = quantize(x, spec.scale, spec.code.levels).numpy().astype(np.int64)
    return torch.from_numpy(q @ spec.weight.numpy().astype(np.int64).T)


def tc_lif(levels: int) -> SpikeCode:
    return SpikeCode("tc_lif", IntLevels(levels))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("levels", [8, 16, 256])
def test_tclif_spikes_match_tclif_node(levels, precision):
    node = TCLIFNode(levels=levels, scale=SCALE)
    x = activations(node.code, seed=levels)
    spikes = run_lava(to_lava(node, size=SIZE, precision=precision), x)
    assert spikes.shape == (node.steps, N_TOKENS, SIZE)
    assert torch.equal(spikes.double(), node.encode(x))
    assert spikes.abs().sum() > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("levels", [8, 256])
def test_fixed_tclif_is_bit_exact_on_unclamped_integer_levels(levels):
    # Levels up to 4x the range (the neuron itself saturates) reach the int32 model unchanged.
    node = TCLIFNode(levels=levels, scale=1.0)
    qmax = node.code.levels.qmax
    q = torch.randint(-4 * qmax, 4 * qmax + 1, (N_TOKENS, SIZE), generator=torch.Generator().manual_seed(1))
    spikes = run_lava(to_lava(node, size=SIZE, precision="fixed_pt"), q.to(torch.int32))
    assert torch.equal(spikes.double(), node.encode(q.double()))


@pytest.mark.timeout(60)
def test_fixed_tclif_rounds_float32_activations_like_the_node():
    # The host rounds in the input's own dtype, as the node does: float32 ties behave alike.
    node = TCLIFNode(levels=16, scale=0.1)
    x = torch.randn(N_TOKENS, SIZE, generator=torch.Generator().manual_seed(2)) * 0.6
    x[1] = torch.arange(SIZE) * 0.05  # near-ties of the 0.1 grid in float32
    spikes = run_lava(to_lava(node, size=SIZE, precision="fixed_pt"), x)
    assert torch.equal(spikes.float(), node.encode(x))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("node_class", [BidirectionalRateNode, BinaryRateNode])
def test_rate_code_spikes_match_their_nodes(node_class):
    node = node_class(levels=8, scale=SCALE)
    x = activations(node.code, seed=3)
    spikes = run_lava(to_lava(node, size=SIZE, precision="fixed_pt"), x)
    assert torch.equal(spikes.double(), node.encode(x))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("levels", [8, 16, 256])
def test_spike_linear_accumulates_the_integer_matmul(levels, precision):
    spec = SpikeLinearSpec(int8_weights(seed=levels), tc_lif(levels), SCALE)
    x = activations(spec.code, seed=levels + 1)
    acc = run_lava(to_lava(spec, precision=precision), x)
    assert acc.dtype == torch.int64 and acc.shape == (N_TOKENS, OUT)
    assert torch.equal(acc, matmul_reference(x, spec))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["rate_bidirectional", "rate_binary"])
def test_spike_linear_with_rate_codes(scheme):
    # rate_binary carries q + offset: the synapse's bias must take offset * W.sum(1) back off.
    spec = SpikeLinearSpec(int8_weights(seed=4), SpikeCode(scheme, IntLevels(8)), SCALE)
    x = activations(spec.code, seed=5)
    acc = run_lava(to_lava(spec, precision="fixed_pt"), x)
    assert torch.equal(acc, matmul_reference(x, spec))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_spike_dense_fed_pytorch_spike_trains(precision):
    node = TCLIFNode(levels=32, scale=SCALE)
    spec = SpikeLinearSpec(int8_weights(seed=6), node.code, SCALE)
    x = activations(node.code, seed=7)
    acc = run_lava(to_lava(spec, precision=precision, encode=False), node.encode(x))
    assert torch.equal(acc, matmul_reference(x, spec))


@pytest.mark.timeout(60)
def test_long_inputs_run_in_several_chunks_with_the_same_result():
    spec = SpikeLinearSpec(int8_weights(seed=8), tc_lif(16), SCALE)
    x = activations(spec.code, seed=9)
    # A buffer of 8 * T * OUT bytes holds one token: one RunSteps per token.
    acc = run_lava(to_lava(spec), x, buffer_bytes=8 * spec.code.steps * OUT)
    assert torch.equal(acc, matmul_reference(x, spec))

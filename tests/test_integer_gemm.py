"""The integer spike-driven products: exact against int64 references, and the converted models'
outputs the same bit for bit as with float64 products (the path before integer GEMMs).

The float64 reference of a product of integer operands is exact while the bound stays below
2**53 (every case here); the int64 one (``torch.matmul`` on int64) always is.
"""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import spikemllm_sj.ann2snn.attention as attention_module
import spikemllm_sj.ann2snn.sites as sites_module
from spikemllm_sj import SpikeConfig, convert, set_mode
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch
from spikemllm_sj.neurons import MSTSConfig, integer_dtype, integer_matmul, spike_matmul, spike_ops
from spikemllm_sj.quantization.methods import Hadamard, QuaRot


def _ints(shape, bound, generator, dtype=torch.float32):
    return torch.randint(-bound, bound + 1, shape, generator=generator).to(dtype)


def _reference_horner(spikes, other, leak):
    acc = torch.zeros(*spikes.shape[1:-1], other.shape[-1], dtype=torch.int64)
    for s in spikes:
        acc = acc * leak + torch.matmul(s.long(), other.long())
    return acc


@pytest.mark.parametrize(
    "a_max, b_max, k, batched",
    [
        (1, 127, 576, False),  # spikes x int8 weights: torch._int_mm
        (15, 127, 1536, False),  # 5-bit levels, K > 1040 (float32 would not be exact): _int_mm
        (255, 127, 2048, True),  # probabilities x values, batched: float32 limbs
        (255, 127, 300, True),  # one float32 limb
        (32767, 127, 64, False),  # 16-bit levels: more than int8, limbs
        (127, 127, 140_000, False),  # past int32 and past one-bit limbs in float32: float64, int64
        (255, 127, 70_000, True),  # b_max * K in [2**23, 2**24): no one-bit limb fits, float64
        (32767, 127, 500, False),  # 16-bit levels with the bound near 2**31: signed top limbs
    ],
)
def test_integer_matmul_is_exact(a_max, b_max, k, batched):
    g = torch.Generator().manual_seed(k)
    rows = 3 if k > 10_000 else 33
    a = _ints((2, rows, k) if batched else (rows, k), a_max, g)
    a.view(-1)[0] = a_max  # the bound is reached
    a[..., 1, :] = -a_max  # and its negative (the limbs' signed top limb)
    b = _ints((2, k, 5) if batched else (k, 24), b_max, g, torch.int8 if b_max <= 127 and not batched else torch.float32)
    b.view(-1)[0] = b_max
    out = integer_matmul(a, b, a_max, b_max)
    assert not out.is_floating_point() or out.dtype == torch.float32 and a_max * b_max * k < 2**24
    assert torch.equal(out.long(), torch.matmul(a.long(), b.long()))


def test_integer_dtype_is_chosen_from_the_bound():
    assert integer_dtype(2**31 - 1) == torch.int32
    assert integer_dtype(2**31) == torch.int64
    with pytest.raises(ValueError, match="overflows int64"):
        integer_dtype(2.0**63)


@pytest.mark.parametrize("leak, steps", [(2, 4), (2, 8), (1, 15)])
@pytest.mark.parametrize("batched", [False, True])
def test_spike_matmul_equals_the_horner_reference(leak, steps, batched, monkeypatch):
    g = torch.Generator().manual_seed(steps)
    k = 1536
    spikes = torch.randint(-1, 2, (steps, *((3,) if batched else ()), 7, k), generator=g).to(torch.int8)
    other = _ints(((3,) if batched else ()) + (k, 9), 127, g)
    expected = _reference_horner(spikes, other, leak)
    assert torch.equal(spike_matmul(spikes, other, leak, 127).long(), expected)
    # Step by step (the long-prompt path) gives the same integers.
    monkeypatch.setattr(spike_ops, "STACKED_ELEMENTS", 0)
    assert torch.equal(spike_matmul(spikes, other, leak, 127).long(), expected)


def test_spike_matmul_horner_overflowing_int32_goes_to_int64():
    # 8 steps of leak 2 (sum 255) x 127 x K = 70,000 passes 2**31: int64, still exact.
    k = 70_000
    g = torch.Generator().manual_seed(0)
    spikes = torch.ones(8, 2, k, dtype=torch.int8)
    other = torch.full((k, 3), 127, dtype=torch.int8)
    other[: k // 2] = _ints((k // 2, 3), 127, g, torch.int8)
    out = spike_matmul(spikes, other, 2, 127)
    assert out.dtype == torch.int64
    assert torch.equal(out, _reference_horner(spikes, other, 2))


def _float64_products(monkeypatch):
    """Make the sites compute every product with float64 GEMMs (the path before integer GEMMs)."""

    def matmul(a, b, a_max, b_max):
        return torch.matmul(a.double(), b.double())

    def spikes_matmul(spikes, other, leak, other_max):
        acc = torch.matmul(spikes[0].double(), other.double())
        for s in spikes[1:]:
            acc = acc * leak + torch.matmul(s.double(), other.double())
        return acc

    for module in (sites_module, attention_module):
        monkeypatch.setattr(module, "integer_matmul", matmul)
        monkeypatch.setattr(module, "spike_matmul", spikes_matmul)


def _outputs(model, batch):
    out = {}
    with torch.no_grad():
        for mode in ("fake_quant", "spike"):
            set_mode(model, mode)
            out[mode] = model(**batch, use_cache=False).logits
    return out


@pytest.mark.parametrize("method", [Hadamard(), QuaRot()], ids=["Hadamard", "QuaRot"])
@pytest.mark.parametrize("name", TINY_MODELS)
def test_integer_path_equals_float64_path_on_every_family(name, method, monkeypatch):
    model = convert(build_tiny_model(name, seed=0), SpikeConfig(method=method))
    batch = tiny_batch(name, batch_size=2, seed=0)
    integer = _outputs(model, batch)
    assert torch.equal(integer["spike"], integer["fake_quant"])
    _float64_products(monkeypatch)
    reference = _outputs(model, batch)
    for mode in integer:
        assert torch.equal(integer[mode], reference[mode]), mode


def test_integer_path_equals_float64_path_with_fan_in_beyond_float32(monkeypatch):
    """Fan-in 2048 at 8-bit weights and activations (T = 7): before, float64 GEMMs; now int8 GEMMs
    with int32 accumulators (and in spike mode the float64 result dtype of the rescaling)."""
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=2048, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        source = Qwen2ForCausalLM(config).eval()
    model = convert(source, SpikeConfig(msts=MSTSConfig(steps={"text": 7})))
    ids = torch.randint(3, 120, (2, 16), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    integer = _outputs(model, batch)
    assert torch.equal(integer["spike"], integer["fake_quant"])
    down = model.model.layers[0].mlp.down_proj
    assert down.accumulation_dtype(2048, down.weight_levels.qmax, torch.float32) == torch.float64
    _float64_products(monkeypatch)
    reference = _outputs(model, batch)
    for mode in integer:
        assert torch.equal(integer[mode], reference[mode]), mode


def test_hadamard_rotation_follows_its_buffers_after_load_and_dtype_changes():
    """The rotation keeps converted copies of its int8 buffers; writing or moving them is seen."""
    from spikemllm_sj.quantization.transforms import HadamardRotation

    x = torch.randn(3, 48, generator=torch.Generator().manual_seed(0))
    rotation, other = HadamardRotation(48, seed=0), HadamardRotation(48, seed=1)
    assert not torch.equal(rotation(x), other(x))
    rotation.load_state_dict(other.state_dict())
    assert torch.equal(rotation(x), other(x))
    assert torch.equal(rotation.inverse(rotation(x)), other.inverse(other(x)))
    assert torch.equal(rotation.double()(x.double()), other.double()(x.double()))


def test_int_mm_is_checked_and_its_fallback_is_exact(monkeypatch):
    """torch._int_mm is used only where a worst-case check found it exact (a CPU without VNNI may
    saturate int16 partial sums); without it the same products come from float32 GEMMs."""
    assert spike_ops.int_mm_is_exact(torch.device("cpu"))  # this project's machines
    g = torch.Generator().manual_seed(3)
    a, b = _ints((40, 1536), 15, g), _ints((1536, 24), 127, g, torch.int8)
    expected = a.long() @ b.long()
    monkeypatch.setitem(spike_ops._INT_MM_EXACT, torch.device("cpu"), False)
    out = integer_matmul(a, b, 15, 127)
    assert out.dtype == torch.float32 and torch.equal(out.long(), expected)


def test_hadamard_rotation_in_inference_mode_leaves_no_inference_tensors():
    from spikemllm_sj.quantization.transforms import HadamardRotation

    rotation, x = HadamardRotation(64, seed=0), torch.randn(2, 64)
    with torch.inference_mode():
        rotation(x)
    rotation(x.clone().requires_grad_()).sum().backward()  # raised before: a cached inference tensor

"""QuaRot complete: R1 (residual stream) and R2 (values, head-wise) folded into the weights, R3
(queries and keys, online after RoPE), R4 (down-projection input, online); GPTQ on the rotated
model with the Hessians of the rotated inputs."""

import copy

import pytest
import torch

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj.ann2snn.adapters import adapter_for
from spikemllm_sj.ann2snn.attention import SpikeAttention
from spikemllm_sj.ann2snn.journal import Journal
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch
from spikemllm_sj.neurons import MSTSConfig
from spikemllm_sj.quantization.methods import QuaRot
from spikemllm_sj.quantization.transforms import HadamardRotation

BITS16 = dict(msts=MSTSConfig(bits={"text": 16, "image": 16, "video": 16}), weight_bits=16, kv_bits=16, prob_bits=16)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def rewritten(model, method=QuaRot()):
    """``model`` with QuaRot's folded rotations (R1, R2) applied in place; their input maps."""
    journal = Journal("memory")
    maps = method.rewrite_model(model, adapter_for(model), journal)
    journal.commit()
    return maps


@pytest.mark.parametrize("name", TINY_MODELS)
def test_the_folded_rotations_keep_the_function(name):
    model = build_tiny_model(name, dtype=torch.float64)
    batch = tiny_batch(model, batch_size=2)
    before = logits(model, batch)
    maps = rewritten(model)
    # RMSNorm computes in float32 inside transformers: agreement to float32 rounding.
    torch.testing.assert_close(logits(model, batch), before, rtol=1e-5, atol=1e-5)
    lm = adapter_for(model).language_model
    layer = model.get_submodule(f"{lm}.layers.0")
    assert torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
    readers = {f"{lm}.layers.{i}.{n}" for i in range(2) for n in
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.o_proj")}
    assert readers | {"lm_head"} == set(maps)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_every_rotation_at_16_bits_gives_the_float_model(name):
    model = build_tiny_model(name)
    batch = tiny_batch(model, batch_size=2)
    fp32 = logits(model, batch)
    snn = convert(model, SpikeConfig(method=QuaRot(seed=3), **BITS16))
    attention = [m for n, m in snn.named_modules() if isinstance(m, SpikeAttention)]
    lm = adapter_for(snn).language_model
    rotated = [n for n, m in snn.named_modules() if isinstance(m, SpikeAttention) and m.query_key_rotation is not None]
    assert rotated and all(n.startswith(lm) for n in rotated) and len(rotated) < len(attention) + (adapter_for(snn).vision is None)
    assert all(isinstance(snn.get_submodule(n).query_key_rotation, HadamardRotation) for n in rotated)
    online = sorted(n for n, m in snn.named_modules() if isinstance(m, SpikeLinear) and m.transform is not None)
    assert {n.rsplit(".", 1)[-1] for n in online} == {"down_proj", "o_proj"} and all(n.startswith(lm) for n in online)
    real = batch["attention_mask"].bool()  # padding rows attend to nothing: their logits mean nothing
    torch.testing.assert_close(logits(snn, batch)[real], fp32[real], rtol=0, atol=2e-3)


def test_quarot_spikes_equal_the_fake_quant_twin_with_every_rotation():
    model = build_tiny_model("tiny-qwen2-vl")
    batch = tiny_batch(model, batch_size=2)
    snn = convert(model, SpikeConfig(method=QuaRot()))
    spike = logits(snn, batch)
    set_mode(snn, "fake_quant")
    assert torch.equal(logits(snn, batch), spike)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_gptq_gets_the_hessians_of_the_rotated_inputs(name, monkeypatch):
    # The converter derives them from the float model's calibration (A^T H A); an independent
    # reference calibrates the rotated model itself.
    model = build_tiny_model(name, dtype=torch.float64)
    batch = tiny_batch(model, batch_size=2)
    gptq = SpikeConfig(method=QuaRot(), weight_method="gptq")
    calibration = calibrate(model, [batch], gptq, progress=False)
    rotated = copy.deepcopy(model)
    rewritten(rotated)
    reference = calibrate(rotated, [batch], SpikeConfig(weight_method="gptq"), progress=False).hessians
    seen = {}
    original = SpikeLinear.__init__

    def record(self, linear, msts, weight_levels, modality, method=None, channel_absmax=None, hessian=None, *rest):
        seen[id(linear)] = hessian
        original(self, linear, msts, weight_levels, modality, method, channel_absmax, hessian, *rest)

    monkeypatch.setattr(SpikeLinear, "__init__", record)
    paths = {id(m): p for p, m in model.named_modules()}
    convert(model, gptq, calibration)
    checked = 0
    for key, hessian in seen.items():
        path = paths[key]
        if path.endswith(("mlp.down_proj", "self_attn.o_proj")):
            continue  # their own online rotations map their Hessians inside SpikeLinear
        # The rotated model's RMSNorm computes in float32 inside transformers: float32 agreement.
        torch.testing.assert_close(hessian, reference[path], rtol=1e-5, atol=1e-6 * float(reference[path].abs().max()))
        checked += 1
    assert checked > 10


def test_quarot_with_gptq_is_exact_and_better_than_rtn_weights_at_4_bits():
    model = build_tiny_model("tiny-llava")
    batch = tiny_batch(model, batch_size=2)
    calibration_batch = tiny_batch(model, batch_size=4, seed=7)
    fp32 = logits(model, batch)
    msts = MSTSConfig(bits={"text": 16, "image": 16})
    errors = {}
    for method in ("rtn", "gptq"):
        config = SpikeConfig(method=QuaRot(), weight_method=method, weight_bits=4, msts=msts)
        calibration = calibrate(model, [calibration_batch], config, progress=False) if config.needs_calibration else None
        snn = convert(copy.deepcopy(model), config, calibration)
        spike = logits(snn, batch)
        set_mode(snn, "fake_quant")
        assert torch.equal(logits(snn, batch), spike)
        errors[method] = float((spike - fp32).pow(2).mean())
    assert errors["gptq"] < errors["rtn"]


def test_quarot_configuration():
    with pytest.raises(ValueError, match="not supported with QuaRot"):
        SpikeConfig(method=QuaRot(), act_scales="static")
    with pytest.raises(ValueError, match="seed must be an int"):
        QuaRot(seed=-1)
    with pytest.raises(ValueError, match="rotate_values must be a bool"):
        QuaRot(rotate_values=1)
    for method in (QuaRot(), QuaRot(seed=5, rotate_values=False, rotate_queries_keys=False)):
        assert SpikeConfig.from_dict(SpikeConfig(method=method).to_dict()).method == method
    model = build_tiny_model("tiny-llava")
    snn = convert(model, SpikeConfig(method=QuaRot(rotate_values=False, rotate_queries_keys=False)))
    assert all(m.query_key_rotation is None for m in snn.modules() if isinstance(m, SpikeAttention))

import pytest
import torch
import torch.nn as nn

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.modalities import FixedModality
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch
from spikemllm_sj.neurons import IntLevels, Modality, MSTSConfig
from spikemllm_sj.quantization.methods import RTN, Hadamard, SmoothQuant


def outlier_layer(seed=0):
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(64, 32)
    x = torch.randn(4, 16, 64, generator=g)
    x[..., 5] *= 60.0  # one outlier channel, as in LLM activations
    return linear, x


@pytest.mark.parametrize("method", [RTN(), SmoothQuant(0.5), Hadamard()])
def test_transforms_preserve_the_float_product(method):
    linear, x = outlier_layer()
    w = linear.weight.detach()
    w2, transform = method.prepare_linear(w, x.abs().reshape(-1, 64).amax(0))
    x2 = x if transform is None else transform(x)
    torch.testing.assert_close(x2 @ w2.T, x @ w.T, rtol=1e-4, atol=1e-3)


def test_smoothquant_and_hadamard_reduce_the_4_bit_error_of_outlier_activations():
    linear, x = outlier_layer()
    ref = linear(x).detach()
    msts = MSTSConfig(bits={"text": 4})
    errors = {}
    for method in (RTN(), SmoothQuant(0.5), Hadamard()):
        site = SpikeLinear(linear, msts, IntLevels(256), FixedModality(Modality.TEXT), method, x.abs().reshape(-1, 64).amax(0))
        with torch.no_grad():
            errors[type(method).__name__] = float((site(x) - ref).norm() / ref.norm())
    assert errors["SmoothQuant"] < errors["RTN"] and errors["Hadamard"] < errors["RTN"], errors


@pytest.mark.parametrize("method", [SmoothQuant(0.6), Hadamard()])
def test_converted_models_stay_exact_against_their_twin(method):
    model = build_tiny_model("tiny-qwen2-vl")
    batch = tiny_batch(model, batch_size=2)
    calib = calibrate(model, [batch], progress=False) if isinstance(method, SmoothQuant) else None
    snn = convert(model, SpikeConfig(method=method), calibration=calib)
    with torch.no_grad():
        spike = snn(**batch).logits
        set_mode(snn, "fake_quant")
        assert torch.equal(snn(**batch).logits, spike)


def test_static_smoothquant_scales_cover_the_transformed_range():
    model = build_tiny_model("tiny-llava")
    batch = tiny_batch(model, batch_size=2)
    calib = calibrate(model, [batch], progress=False)
    snn = convert(model, SpikeConfig(method=SmoothQuant(0.5), act_scales="static"), calibration=calib)
    with torch.no_grad():
        assert torch.isfinite(snn(**batch).logits).all()
    site = snn.get_submodule("model.language_model.layers.0.mlp.down_proj")
    assert site.static and site.transform is not None


def test_method_errors():
    with pytest.raises(ValueError, match="alpha must be in"):
        SmoothQuant(1.5)
    with pytest.raises(TypeError, match="method must be"):
        SpikeConfig(method="gptq")
    model = build_tiny_model("tiny-llava")
    with pytest.raises(ValueError, match="SmoothQuant and GPTQ need a calibration"):
        convert(model, SpikeConfig(method=SmoothQuant()))
    with pytest.raises(ValueError, match="not supported with Hadamard"):
        SpikeConfig(method=Hadamard(), act_scales="static")
    assert not any(isinstance(m, SpikeLinear) for m in model.modules())


def test_method_survives_the_config_dict():
    config = SpikeConfig(method=SmoothQuant(0.75))
    assert SpikeConfig.from_dict(config.to_dict()).method == SmoothQuant(0.75)


def test_a_method_is_one_registered_class_that_the_config_and_the_converter_ask():
    from dataclasses import dataclass
    from typing import ClassVar

    from spikemllm_sj.quantization.methods import METHODS, QuantMethod
    from spikemllm_sj.quantization.transforms import ChannelDivide

    @dataclass(frozen=True)
    class HalfGain(QuantMethod):  # x' = x / 2, W' = 2 W: exactly invertible
        needs_calibration: ClassVar[bool] = True

        def prepare_linear(self, weight, channel_absmax):
            return weight * 2, ChannelDivide(torch.full((weight.shape[1],), 2.0))

    try:
        config = SpikeConfig(method=HalfGain())
        assert config.needs_calibration and SpikeConfig.from_dict(config.to_dict()) == config
        model = build_tiny_model("tiny-llava")
        batch = tiny_batch(model, batch_size=2)
        snn = convert(model, config, calibration=calibrate(model, [batch], config, progress=False))
        site = snn.get_submodule("model.language_model.layers.0.mlp.up_proj")
        assert isinstance(site.transform, ChannelDivide) and torch.equal(site.transform.s, torch.full((64,), 2.0))
        with pytest.raises(ValueError, match="already registered"):

            @dataclass(frozen=True)
            class HalfGain(QuantMethod):  # noqa: F811 (the same name again)
                pass
    finally:
        METHODS.pop("HalfGain")
    with pytest.raises(ValueError, match="unknown quantization method 'HalfGain'"):
        SpikeConfig.from_dict(config.to_dict())

"""Clipping: activation clip ratios (fixed or searched per layer and modality on the calibration's
sampled inputs), key/value clip ratios, and MSE-searched weight scales."""

import copy

import pytest
import torch
import torch.nn as nn

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj.ann2snn.calibration import SAMPLE_TOKENS, SAMPLE_TOKENS_PER_BATCH, Calibration
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.modalities import FixedModality
from spikemllm_sj.config import CLIP_RATIOS
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch
from spikemllm_sj.neurons import IntLevels, Modality, MSTSConfig
from spikemllm_sj.quantization.methods import QuaRot
from spikemllm_sj.quantization.weights import mse_scale, quantize_weight


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(act_clip=0.0), "act_clip must be a ratio in (0, 1] or 'search', got 0.0"),
        (dict(act_clip=1.5), "act_clip must be a ratio in (0, 1] or 'search', got 1.5"),
        (dict(act_clip=True), "act_clip must be a ratio in (0, 1] or 'search', got True"),
        (dict(act_clip="mse"), "act_clip must be a ratio in (0, 1] or 'search', got 'mse'"),
        (dict(kv_clip=-0.5), "kv_clip must be a ratio in (0, 1], got -0.5"),
        (dict(weight_clip="search"), "weight_clip must be 'none' or 'mse', got 'search'"),
    ],
)
def test_clip_options_are_validated(kwargs, message):
    with pytest.raises(ValueError) as error:
        SpikeConfig(**kwargs)
    assert str(error.value) == message


def test_clip_options_round_trip_and_search_needs_a_calibration():
    config = SpikeConfig(act_clip="search", kv_clip=0.9, weight_clip="mse")
    assert SpikeConfig.from_dict(config.to_dict()) == config
    assert config.needs_calibration and not SpikeConfig(act_clip=0.8, weight_clip="mse").needs_calibration
    assert CLIP_RATIOS[0] == 1.0 and CLIP_RATIOS[-1] == 0.5 and len(CLIP_RATIOS) == 11


def brute_force_rows(w, levels, ratios):
    """Per row, the ratio with the least squared error, each row quantized on its own."""
    best = []
    for row in w:
        errors = []
        for r in ratios:
            scale = max(float(row.abs().max()) * r / levels.qmax, 1e-30)
            q = torch.clamp(torch.floor(row / scale + 0.5), levels.qmin, levels.qmax) * scale
            errors.append(float((q - row).pow(2).sum()))
        best.append(ratios[min(range(len(ratios)), key=errors.__getitem__)])
    return best


def test_mse_weight_scales_pick_each_rows_best_ratio():
    torch.manual_seed(0)
    w = torch.randn(24, 64)
    w[:, 0] *= 12  # an outlier column: clipping pays at 4 bits
    levels = IntLevels(16)
    scale = mse_scale(w, levels, CLIP_RATIOS)
    ratios = brute_force_rows(w, levels, CLIP_RATIOS)
    expected = torch.tensor([w[i].abs().max() * r / levels.qmax for i, r in enumerate(ratios)])
    torch.testing.assert_close(scale.squeeze(1), expected)
    assert min(ratios) < 1.0
    plain, plain_scale = quantize_weight(w, levels)
    clipped, clipped_scale = quantize_weight(w, levels, clip_ratios=CLIP_RATIOS)
    assert ((clipped * clipped_scale - w).pow(2).sum() < (plain * plain_scale - w).pow(2).sum())
    # Only a 1.0 ratio: the absmax scales.
    torch.testing.assert_close(mse_scale(w, levels, (1.0,)), plain_scale)


def test_mse_weight_scales_work_with_gptq():
    torch.manual_seed(1)
    w, x = torch.randn(16, 32), torch.randn(256, 32)
    x[:, 3] *= 10
    h = (x.T @ x).double()
    levels = IntLevels(16)
    q, scale = quantize_weight(w, levels, h, CLIP_RATIOS)
    torch.testing.assert_close(scale, mse_scale(w, levels, CLIP_RATIOS))
    assert q.min() >= levels.qmin and q.max() <= levels.qmax


def test_fixed_act_clip_clamps_the_levels_at_the_clipped_scale():
    torch.manual_seed(2)
    linear = nn.Linear(32, 8)
    msts = MSTSConfig(bits={"text": 4, "image": 4, "video": 4})
    spike = SpikeLinear(linear, msts, IntLevels(256), FixedModality(Modality.TEXT))
    x = torch.randn(1, 5, 32)
    spike.set_clip({Modality.TEXT: 0.5})
    levels = spike.input_levels(x)
    expected_scale = x.abs().amax(-1, keepdim=True) * 0.5 / 7
    torch.testing.assert_close(levels.scale.float(), expected_scale)
    assert levels.levels.abs().max() == 7 and (levels.levels.abs() == 7).sum() > 5  # clamped tokens
    with pytest.raises(ValueError, match=r"clip ratio must be in \(0, 1\], got 1.2 for text"):
        spike.set_clip({Modality.TEXT: 1.2})


def test_search_picks_the_ratio_with_the_least_output_error():
    torch.manual_seed(3)
    linear = nn.Linear(64, 16)
    msts = MSTSConfig(bits={"text": 4, "image": 4, "video": 4})
    spike = SpikeLinear(linear, msts, IntLevels(256), FixedModality(Modality.TEXT))
    x = torch.randn(200, 64)
    x[:, 5] *= 20  # a heavy-tailed channel: per-token absmax scales waste levels on it
    x[::7] *= 3
    chosen = spike.search_clip({Modality.TEXT: x}, CLIP_RATIOS)
    w = spike.qweight.double() * spike.weight_scale.double().reshape(-1, 1)

    def error(ratio):
        scale = x.abs().amax(-1, keepdim=True) * ratio / 7
        q = torch.clamp(torch.floor(x / scale + 0.5), -7, 7) * scale
        return float(((q.double() - x.double()) @ w.T).pow(2).sum())

    errors = {r: error(r) for r in CLIP_RATIOS}
    assert chosen[Modality.TEXT] == min(errors, key=errors.get)
    assert errors[chosen[Modality.TEXT]] < errors[1.0]
    assert spike.clip[int(Modality.TEXT)] == torch.tensor(chosen[Modality.TEXT])  # held in float32


def test_calibration_samples_inputs_evenly_up_to_the_limits(tmp_path):
    calibration = Calibration()
    first = torch.arange(300, dtype=torch.float32).reshape(300, 1).repeat(1, 4)
    calibration.add_samples("layer", Modality.TEXT, first)
    kept = calibration.samples_of("layer")[Modality.TEXT]
    assert kept.shape == (SAMPLE_TOKENS_PER_BATCH, 4) and kept[0, 0] == 0 and kept[-1, 0] == 299
    for _ in range(10):
        calibration.add_samples("layer", Modality.TEXT, first)
    assert calibration.samples_of("layer")[Modality.TEXT].shape[0] == SAMPLE_TOKENS
    calibration.save(tmp_path / "c.json")
    loaded = Calibration.load(tmp_path / "c.json")
    assert torch.equal(loaded.samples_of("layer")[Modality.TEXT], calibration.samples_of("layer")[Modality.TEXT])
    with pytest.raises(ValueError, match="no sampled inputs of other: calibrate with SpikeConfig\\(act_clip='search'\\)"):
        calibration.samples_of("other")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_clipped_spikes_equal_their_fake_quant_twin(name):
    model = build_tiny_model(name)
    batch = tiny_batch(model, batch_size=2)
    config = SpikeConfig(act_clip="search", kv_clip=0.9, weight_clip="mse")
    calibration = calibrate(model, [tiny_batch(model, batch_size=2, seed=5)], config, progress=False)
    snn = convert(model, config, calibration)
    searched = [m for m in snn.modules() if isinstance(m, SpikeLinear)]
    assert searched and all(float(m.clip.min()) >= 0.5 for m in searched)
    set_mode(snn, "fake_quant")
    fake = logits(snn, batch)
    set_mode(snn, "spike")
    assert torch.equal(logits(snn, batch), fake)


def test_the_search_runs_on_the_rotated_inputs_of_quarot():
    model = build_tiny_model("tiny-llava")
    batch = tiny_batch(model, batch_size=2)
    config = SpikeConfig(method=QuaRot(seed=0), act_clip="search")
    calibration = calibrate(model, [batch], config, progress=False)
    seen = {}
    original = SpikeLinear.search_clip

    def record(self, inputs, ratios):
        seen[id(self)] = {m: x.clone() for m, x in inputs.items()}
        return original(self, inputs, ratios)

    SpikeLinear.search_clip = record
    try:
        snn = convert(copy.deepcopy(model), config, calibration)
    finally:
        SpikeLinear.search_clip = original
    # The rotated model's q_proj sees x' = (x / gain) H: its samples are the calibration's, mapped.
    path = "model.language_model.layers.0.self_attn.q_proj"
    spike = snn.get_submodule(path)
    recorded = calibration.samples_of(path)
    gain = model.get_submodule("model.language_model.layers.0.input_layernorm").weight.detach()
    for modality, x in seen[id(spike)].items():
        rotated = recorded[modality] / gain
        assert x.shape == recorded[modality].shape
        # A rotation keeps each token's norm.
        torch.testing.assert_close(x.norm(dim=-1), rotated.norm(dim=-1), rtol=1e-4, atol=1e-4)

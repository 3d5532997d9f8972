import pytest
import torch
import torch.nn as nn
from reference import reference_levels

from spikemllm_sj import SpikeConfig, convert, set_mode, supported_models
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.modalities import FixedModality
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch, visual_token_ids
from spikemllm_sj.neurons import IntLevels, Modality, MSTSConfig, MSTSSpikes


def logits(model, batch, mode):
    set_mode(model, mode)
    try:
        with torch.no_grad():
            return model(**batch).logits
    finally:
        set_mode(model, "spike")


def test_spiking_model_equals_its_fake_quant_twin(converted_family):
    name, snn, batch, fp32 = converted_family
    spike = logits(snn, batch, "spike")
    assert spike.shape == fp32.shape and torch.isfinite(spike).all()
    # Integer accumulations are exact in both modes and rescaled by the same code: bit for bit.
    assert torch.equal(spike, logits(snn, batch, "fake_quant"))
    # Reported, not asserted (random weights): fidelity to FP32.
    cos = torch.nn.functional.cosine_similarity(spike.flatten(), fp32.flatten(), dim=0)
    print(f"{name}: logit cosine to FP32 {cos:.4f}")


def test_every_linear_of_vision_projector_and_language_model_is_spike_driven(converted_family):
    name, snn, _, _ = converted_family
    state = spike_state(snn)
    for path in (state.adapter.vision, state.adapter.projector, state.adapter.language_model):
        if path is None:
            continue
        plain = [n for n, m in snn.get_submodule(path).named_modules() if type(m) is nn.Linear]
        assert plain == [], f"{name}: {path} still has float linear layers {plain}"
    assert type(snn.get_submodule(state.adapter.lm_head)) is nn.Linear  # stays in model precision
    attention = [m for m in snn.modules() if hasattr(m, "spike_attention")]
    assert attention, f"{name}: no attention module was given spike-driven matmuls"


def test_tokens_get_their_modalitys_steps(converted_family):
    name, snn, batch, _ = converted_family
    state = spike_state(snn)
    lm_site = next(m for m in snn.get_submodule(state.adapter.language_model).modules() if isinstance(m, SpikeLinear))
    vision_site = next(m for m in snn.get_submodule(state.adapter.vision).modules() if isinstance(m, SpikeLinear))
    seen = {}

    def capture(key):
        return lambda module, args, out: seen.setdefault(key, out)

    handles = [lm_site.encoder.register_forward_hook(capture("lm")), vision_site.encoder.register_forward_hook(capture("vision"))]
    try:
        with torch.no_grad():
            snn(**batch)
    finally:
        for h in handles:
            h.remove()
    image_id = visual_token_ids(snn)["image"]
    lm: MSTSSpikes = seen["lm"]
    want = torch.where(batch["input_ids"] == image_id, 3, 4)
    assert torch.equal(lm.steps, want), name
    assert (seen["vision"].steps == 3).all()


def test_generate_with_kv_cache_matches_the_twin(converted_family):
    name, snn, batch, _ = converted_family
    outputs = {}
    for mode in ("spike", "fake_quant"):
        set_mode(snn, mode)
        outputs[mode] = snn.generate(**batch, max_new_tokens=3, do_sample=False)
    set_mode(snn, "spike")
    assert outputs["spike"].shape[1] == batch["input_ids"].shape[1] + 3
    assert torch.equal(outputs["spike"], outputs["fake_quant"]), name


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", TINY_MODELS)
def test_spiking_model_equals_its_fake_quant_twin_in_half_precision(name, dtype):
    model = build_tiny_model(name, dtype=dtype)
    batch = tiny_batch(model, batch_size=2, padding=True)
    snn = convert(model, SpikeConfig())
    spike = logits(snn, batch, "spike")
    assert spike.dtype == dtype and torch.isfinite(spike).all()
    assert torch.equal(spike, logits(snn, batch, "fake_quant"))
    outputs = {}
    for mode in ("spike", "fake_quant"):
        set_mode(snn, mode)
        outputs[mode] = snn.generate(**batch, max_new_tokens=2, do_sample=False)
    set_mode(snn, "spike")
    assert torch.equal(outputs["spike"], outputs["fake_quant"])


def test_rate_coded_variant_gives_the_same_logits_with_more_steps():
    bits = {"text": 5, "image": 4, "video": 4}
    results = {}
    for scheme in ("tc_lif", "rate_bidirectional"):
        model = build_tiny_model("tiny-llava")
        batch = tiny_batch(model, batch_size=1, padding=False)
        with torch.no_grad():
            results[scheme] = convert(model, SpikeConfig(msts=MSTSConfig(bits=bits, scheme=scheme)))(**batch).logits
    assert torch.equal(results["tc_lif"], results["rate_bidirectional"])


def test_spike_linear_against_an_independent_reference():
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(24, 10)
    x = torch.randn(3, 5, 24, generator=g) * 4
    site = SpikeLinear(linear, MSTSConfig(), IntLevels(256), FixedModality(Modality.TEXT))
    w = linear.weight.detach()
    w_scale = w.abs().amax(1, keepdim=True) / 127
    x_scale = x.abs().amax(-1, keepdim=True) / 15  # text tokens: 32 levels
    acc = reference_levels(x, x_scale, 32, True).double() @ reference_levels(w, w_scale, 256, True).double().T
    want = acc * x_scale.double() * w_scale.double().T + linear.bias.detach().double()
    with torch.no_grad():
        got = site(x)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


# Bad input.


def test_unsupported_model_lists_the_supported_ones():
    with pytest.raises(ValueError, match="not a supported model; supported: .*LlavaForConditionalGeneration"):
        convert(nn.Sequential(nn.Linear(4, 4)).eval())
    assert "Qwen2VLForConditionalGeneration" in supported_models()


def test_training_mode_is_refused_and_the_model_is_untouched():
    model = build_tiny_model("tiny-llava").train()
    with pytest.raises(ValueError, match="training mode"):
        convert(model)
    assert not any(isinstance(m, SpikeLinear) for m in model.modules())
    assert model.training


def test_converting_twice_is_refused():
    model = convert(build_tiny_model("tiny-llava"))
    with pytest.raises(ValueError, match="already converted"):
        convert(model)


def test_non_finite_inputs_are_refused():
    model = convert(build_tiny_model("tiny-llava"))
    batch = tiny_batch(model, batch_size=1, padding=False)
    batch["pixel_values"] = batch["pixel_values"].clone()
    batch["pixel_values"].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        with torch.no_grad():
            model(**batch)


def test_set_mode_checks_its_arguments():
    with pytest.raises(ValueError, match="has not been converted"):
        set_mode(build_tiny_model("tiny-llava"), "spike")
    with pytest.raises(ValueError, match="mode must be one of"):
        set_mode(convert(build_tiny_model("tiny-llava")), "ann")


def test_image_tokens_without_pixel_values_are_refused():
    model = convert(build_tiny_model("tiny-llava"))
    batch = tiny_batch(model, batch_size=1, padding=False)
    del batch["pixel_values"]
    with pytest.raises(ValueError, match="image tokens but no pixel_values"):
        model(**batch)


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_video_tokens_are_a_third_modality(name):
    from spikemllm_sj.models.tiny import tiny_video_batch

    config = SpikeConfig(msts=MSTSConfig(steps={"text": 4, "image": 3, "video": 2}))
    snn = convert(build_tiny_model(name), config)
    batch = tiny_video_batch(snn, batch_size=2)
    site = next(m for m in snn.get_submodule("model.language_model").modules() if isinstance(m, SpikeLinear))
    seen = []
    handle = site.encoder.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.no_grad():
            spike = snn(**batch).logits
    finally:
        handle.remove()
    video = batch["input_ids"] == visual_token_ids(snn)["video"]
    assert video.any() and (seen[0].steps[video] == 2).all() and (seen[0].steps[~video] == 4).all()
    assert torch.equal(spike, logits(snn, batch, "fake_quant"))


def test_tied_embeddings_survive_a_converted_output_head():
    model = build_tiny_model("tiny-internvl")
    embed = model.get_input_embeddings().weight
    assert embed is model.lm_head.weight  # tied in this family
    before = embed.detach().clone()
    snn = convert(model, SpikeConfig(convert_lm_head=True))
    assert isinstance(snn.lm_head, SpikeLinear)
    assert torch.equal(snn.get_input_embeddings().weight, before)
    batch = tiny_batch(snn, batch_size=2)
    assert torch.equal(logits(snn, batch, "spike"), logits(snn, batch, "fake_quant"))


def test_models_loaded_with_a_device_map_convert(tmp_path):
    pytest.importorskip("accelerate", reason="device_map loading needs accelerate (the dev extra installs it)")
    from transformers import Qwen2VLForConditionalGeneration

    build_tiny_model("tiny-qwen2-vl").save_pretrained(tmp_path / "fp32")
    batch = tiny_batch("tiny-qwen2-vl", batch_size=2)
    with torch.no_grad():
        want = convert(build_tiny_model("tiny-qwen2-vl"))(**batch).logits
        mapped = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "fp32", device_map="auto").eval()
        assert torch.equal(convert(mapped)(**batch).logits, want)
    offloaded = Qwen2VLForConditionalGeneration.from_pretrained(
        tmp_path / "fp32", device_map="auto", max_memory={"cpu": "200KB"}, offload_folder=str(tmp_path / "off")
    ).eval()
    with pytest.raises(ValueError, match="on the meta device"):
        convert(offloaded)
    assert not any(isinstance(m, SpikeLinear) for m in offloaded.modules())


def test_an_attention_mask_other_than_zeros_and_ones_is_refused_before_any_forward():
    from spikemllm_sj.analysis.fidelity import convert_and_compare
    from spikemllm_sj.med import analyze

    model = build_tiny_model("tiny-llava")
    batch = tiny_batch(model, batch_size=2, padding=True)
    batch["attention_mask"] = batch["attention_mask"] * 2
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=r"attention_mask must hold 0 \(padding\) and 1 \(a token\) only, got \[2\]"):
        convert_and_compare(model, [batch], new_tokens=1, progress=False)
    with pytest.raises(ValueError, match=r"attention_mask must hold 0 \(padding\) and 1 \(a token\) only, got \[2\]"):
        analyze(model, [batch], progress=False)
    assert calls == [] and not any(isinstance(m, SpikeLinear) for m in model.modules())

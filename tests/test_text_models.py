"""Text-only language models converted on their own (every token is text): Llama (SmolLM2's
architecture) and Gemma 3 (sandwich and query/key RMSNorms with (1 + w) gains, sliding-window
layers, scaled and tied embeddings), tiny and seeded; the real weights are in test_real_weights.py."""

import pytest
import torch
from test_causality import cached_and_full
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode, supported_models
from spikemllm_sj.neurons import MSTSConfig
from spikemllm_sj.quantization.methods import RTN, Hadamard, SmoothQuant

WINDOW = 4  # Gemma 3's sliding window, in tokens: shorter than the inputs below


def tiny_text_model(kind: str, layer_types: tuple[str, ...] = ("sliding_attention", "full_attention")):
    """A seeded tiny ``LlamaForCausalLM`` or ``Gemma3ForCausalLM`` (vocabulary 512, width 64) in
    eval mode. Gemma's norm gains start at w = 0 (a gain of 1): they are drawn at random here so
    that a converter mishandling the (1 + w) gains or the sandwich norms shows."""
    torch.manual_seed(0)
    sizes = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=128, num_hidden_layers=len(layer_types))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**sizes)).eval()
    model = Gemma3ForCausalLM(Gemma3TextConfig(**sizes, head_dim=16, sliding_window=WINDOW, layer_types=list(layer_types)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.5)
    return model.eval()


def text_ids(length: int = 12, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_a_text_model_converts_and_its_spikes_equal_the_fake_quant_twin(kind):
    model = tiny_text_model(kind)
    assert type(model).__name__ in supported_models()
    ids = text_ids()
    fp32 = logits(model, ids)
    snn = convert(model, SpikeConfig())
    spike = logits(snn, ids)
    set_mode(snn, "fake_quant")
    assert torch.equal(spike, logits(snn, ids))
    # Close to the float model: the norms, gains and embeddings were kept as the model defines them.
    assert torch.nn.functional.cosine_similarity(spike.flatten(), fp32.flatten(), dim=0) > 0.95


@pytest.mark.parametrize("method", [RTN(), SmoothQuant(0.5), Hadamard()], ids=lambda m: m.name)
@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_at_16_bits_the_converted_text_model_is_the_float_model(kind, method):
    # Every method's input transform is exactly invertible: at 16 bits only rounding is left.
    # (QuaRot refuses Gemma 3: test_quarot_refuses_gemma3s_post_norms_before_any_change.)
    model = tiny_text_model(kind)
    ids = text_ids()
    fp32 = logits(model, ids)
    bits16 = SpikeConfig(msts=MSTSConfig(bits={"text": 16}), weight_bits=16, kv_bits=16, prob_bits=16, method=method)
    calibration = calibrate(model, [{"input_ids": text_ids(seed=2)}], bits16) if bits16.needs_calibration else None
    snn = convert(model, bits16, calibration=calibration)
    torch.testing.assert_close(logits(snn, ids), fp32, rtol=0, atol=1e-3)


def test_gemma3s_sliding_window_holds_in_the_spiking_model():
    # One sliding layer: the token at position t sees positions t - WINDOW + 1 .. t only, so changing
    # token 0 changes the logits of positions 0 .. WINDOW - 1 and leaves every later one bit-identical.
    model = tiny_text_model("gemma3", layer_types=("sliding_attention",))
    ids = text_ids(length=3 * WINDOW, batch=1)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 500 + 3
    float_before, float_after = logits(model, ids), logits(model, changed)
    assert torch.equal(float_before[0, WINDOW:], float_after[0, WINDOW:])
    snn = convert(model, SpikeConfig())
    before, after = logits(snn, ids), logits(snn, changed)
    assert torch.equal(before[0, WINDOW:], after[0, WINDOW:])
    assert all(not torch.equal(before[0, t], after[0, t]) for t in range(WINDOW))


def test_a_full_attention_gemma3_layer_sees_the_whole_prefix():
    # The counterpart of the test above: without the window, changing token 0 changes every position.
    snn = convert(tiny_text_model("gemma3", layer_types=("full_attention",)), SpikeConfig())
    ids = text_ids(length=3 * WINDOW, batch=1)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 500 + 3
    before, after = logits(snn, ids), logits(snn, changed)
    assert all(not torch.equal(before[0, t], after[0, t]) for t in range(3 * WINDOW))


def test_a_kv_cached_gemma3_decode_past_the_window_equals_the_full_forward():
    # The sliding layers' cache keeps only the window; decoding past it with a spike-driven head is
    # still exact integer work on the same levels as the full forward.
    snn = convert(tiny_text_model("gemma3"), SpikeConfig(convert_lm_head=True))
    ids = text_ids(length=2 * WINDOW, batch=1)
    prompt = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cached, full, generated = cached_and_full(snn, prompt, new_tokens=WINDOW + 2)
    assert torch.equal(cached, full) and torch.equal(generated[0], full.argmax(-1))


def test_quarot_refuses_gemma3s_post_norms_before_any_change():
    from spikemllm_sj.quantization.methods import QuaRot

    model = tiny_text_model("gemma3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="post-norms .*pre_feedforward_layernorm, post_feedforward_layernorm.* use Hadamard"):
        convert(model, SpikeConfig(method=QuaRot()))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    # Llama (pre-norm only) takes it: the rotated model is still the float model at 16 bits.
    llama = tiny_text_model("llama")
    ids = text_ids()
    fp32 = logits(llama, ids)
    bits16 = SpikeConfig(msts=MSTSConfig(bits={"text": 16}), weight_bits=16, kv_bits=16, prob_bits=16, method=QuaRot())
    torch.testing.assert_close(logits(convert(llama, bits16), ids), fp32, rtol=0, atol=1e-3)

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from properties import examples
from reference import held_in, qrange, reference_fake_quant
from spikingjelly.activation_based import encoding

from spikemllm_sj.neurons import Modality, MSTSConfig, MSTSEncoder, token_mask

TEXT, IMAGE, VIDEO = Modality.TEXT, Modality.IMAGE, Modality.VIDEO


def mixed_batch(seed=0, D=12):
    g = torch.Generator().manual_seed(seed)
    # text, image, text (and a video span) inside one sequence; batch rows differ.
    ids = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 2, 2, 0, 1, 0, 0],
        ]
    )
    x = torch.randn(*ids.shape, D, generator=g) * torch.rand(*ids.shape, 1, generator=g) * 10
    return x, ids


def per_token_reference(x, ids, levels_of, signed=True):
    """Fake quantization of each token with its modality's levels and per-token absmax scale
    (in float32 at least)."""
    out = torch.empty_like(x, dtype=held_in(x.dtype))
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            L = levels_of[int(ids[b, t])]
            qmax = qrange(L, signed)[1]
            amax = x[b, t].abs().amax().to(held_in(x.dtype))
            # absmax / qmax, at least the smallest normal number; 1 for an all-zero token.
            scale = (amax / qmax).clamp_min(torch.finfo(amax.dtype).tiny) if amax > 0 else torch.tensor(1.0)
            out[b, t] = reference_fake_quant(x[b, t], scale, L, signed)
    return out


def test_is_a_spikingjelly_encoder():
    assert isinstance(MSTSEncoder(), encoding.StatelessEncoder)
    assert MSTSEncoder().step_mode == "m"


def test_default_config_is_the_papers_three_four_split():
    config = MSTSConfig()
    assert config.steps_of("image") == 3 and config.steps_of(VIDEO) == 3 and config.steps_of(0) == 4
    assert config.code_of(IMAGE).levels.levels == 16 and config.code_of(TEXT).levels.levels == 32


def test_mixed_sequence_uses_each_modalitys_steps_and_decodes_exactly():
    x, ids = mixed_batch()
    out = MSTSEncoder(MSTSConfig(steps={"text": 4, "image": 3, "video": 2}))(x, ids)
    assert out.spikes.shape == (4, *x.shape)
    want_steps = torch.tensor([4, 3, 2])[ids]
    assert torch.equal(out.steps, want_steps)
    # Padded steps come first and carry no spikes; every real step may carry spikes.
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            pad = 4 - int(want_steps[b, t])
            assert not out.spikes[:pad, b, t].any()
    assert torch.equal(out.decode(), per_token_reference(x, ids, {0: 32, 1: 16, 2: 8}))


def test_bits_configuration_reads_tv_tt_as_bit_widths():
    x, ids = mixed_batch(1)
    by_bits = MSTSEncoder(MSTSConfig(bits={"text": 5, "image": 4, "video": 4}))(x, ids)
    by_steps = MSTSEncoder(MSTSConfig(steps={"text": 4, "image": 3, "video": 3}))(x, ids)
    assert torch.equal(by_bits.spikes, by_steps.spikes)
    # The other reading of Tv/Tt = 3/4: 3 and 4 bits, i.e. 2 and 3 TC-LIF steps.
    small = MSTSConfig(bits={"image": 3, "text": 4})
    assert (small.steps_of("image"), small.steps_of("text")) == (2, 3)


@pytest.mark.parametrize(
    "scheme,steps,levels",
    [
        ("rate_bidirectional", {"text": 15, "image": 7, "video": 7}, {0: 32, 1: 16, 2: 16}),
        ("rate_binary", {"text": 30, "image": 14, "video": 14}, {0: 32, 1: 16, 2: 16}),
    ],
)
def test_rate_coded_msts_is_exact_too(scheme, steps, levels):
    x, ids = mixed_batch(2)
    out = MSTSEncoder(MSTSConfig(steps=steps, scheme=scheme))(x, ids)
    assert out.spikes.shape[0] == max(steps.values())
    assert torch.equal(out.decode(), per_token_reference(x, ids, levels))


def test_attention_mask_tokens_get_no_steps_and_no_spikes():
    x, ids = mixed_batch(3)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    out = MSTSEncoder()(x, ids, attention_mask=mask)
    assert (out.steps[1, -3:] == 0).all()
    assert not out.spikes[:, 1, -3:].any()
    assert (out.decode()[1, -3:] == 0).all()
    ref = per_token_reference(x, ids, {0: 32, 1: 16, 2: 16})
    assert torch.equal(out.decode()[mask.bool()], ref[mask.bool()])


def test_statistics_count_only_real_steps():
    x, ids = mixed_batch(4)
    out = MSTSEncoder()(x, ids)
    stats = out.statistics()
    D = x.shape[-1]
    real = int(sum(3 if m in (1, 2) else 4 for m in ids.flatten().tolist())) * D
    assert stats.neuron_steps == real
    assert stats.spikes == int(torch.count_nonzero(out.spikes))
    assert stats.firing_rate == pytest.approx(stats.spikes / real)
    assert len(stats.spikes_per_step) == 4


def test_given_per_token_scale_is_used():
    x, ids = mixed_batch(5)
    scale = torch.full((*ids.shape, 1), 0.25)
    out = MSTSEncoder()(x, ids, scale=scale)
    assert torch.equal(out.scale, scale)
    want = torch.where(
        (ids == 0)[..., None],
        reference_fake_quant(x, 0.25, 32, True),
        reference_fake_quant(x, 0.25, 16, True),
    )
    assert torch.equal(out.decode(), want)


def test_modality_from_processor_ids_needs_configured_steps():
    x, ids = mixed_batch()
    with pytest.raises(ValueError, match="modality video has no configured time steps"):
        MSTSEncoder(MSTSConfig(steps={"text": 4, "image": 3}))(x, ids)
    ids_audio = ids.clone()
    ids_audio[0, 0] = 3
    with pytest.raises(ValueError, match="modality audio has no configured"):
        MSTSEncoder()(x, ids_audio)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps={"text": 4}, bits={"text": 5}), "either steps or bits"),
        (dict(steps={"pixels": 3}), "unknown modality 'pixels'"),
        (dict(steps={"text": 4, 0: 3}), "configured twice"),
        (dict(steps={}), "at least one modality"),
        (dict(steps={"image": 0}), "steps must be a positive int"),
        (dict(steps={"image": 4}, scheme="rate_bidirectional"), "steps=4 does not match"),
        (dict(scheme="poisson"), "scheme must be one of"),
    ],
)
def test_bad_configurations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MSTSConfig(**kwargs)


def test_bad_inputs():
    x, ids = mixed_batch()
    enc = MSTSEncoder()
    with pytest.raises(ValueError, match=r"x must have shape \[B, L, D\]"):
        enc(x[0], ids[0])
    with pytest.raises(ValueError, match=r"modality_ids must have shape \[2, 9\]"):
        enc(x, ids[:, :5])
    with pytest.raises(TypeError, match="modality_ids must be an integer"):
        enc(x, ids.float())
    with pytest.raises(ValueError, match=r"attention_mask must have shape"):
        enc(x, ids, attention_mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or infinite"):
        enc(x.index_fill(0, torch.tensor([1]), float("nan")), ids)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        enc(x, ids, scale=torch.zeros(2, 9, 1))
    with pytest.raises(ValueError, match="per token"):
        enc(x, ids, scale=torch.ones(2, 9, 12))


def test_quantize_is_the_ann_twin_of_the_spikes():
    x, ids = mixed_batch(6)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    enc = MSTSEncoder()
    levels, scale = enc.quantize(x, ids, attention_mask=mask)
    out = enc(x, ids, attention_mask=mask)
    assert torch.equal(levels * scale, out.decode())
    assert torch.equal(scale, out.scale)
    assert torch.equal(levels[mask.bool()] * scale[mask.bool()], per_token_reference(x, ids, {0: 32, 1: 16, 2: 16})[mask.bool()])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_tiny_half_precision_tokens_encode_and_a_zero_token_encodes_as_zeros(dtype):
    # Per-token absmax 1e-7: absmax / qmax underflows to 0 in fp16, so scales are float32.
    x = torch.full((1, 3, 8), 1e-7, dtype=dtype)
    x[0, 1] = 0.0
    x[0, 2, 0] = -3e-7
    ids = torch.tensor([[0, 1, 0]])
    out = MSTSEncoder()(x, ids)
    assert out.scale.dtype == torch.float32 and bool((out.scale > 0).all())
    decoded = out.decode()
    assert not decoded[0, 1].any()
    assert torch.equal(decoded, per_token_reference(x, ids, {0: 32, 1: 16}))
    levels, scale = MSTSEncoder().quantize(x, ids)
    assert torch.equal(levels * scale, decoded)


@pytest.mark.parametrize("value", [-1, 2])
def test_an_attention_mask_holds_zeros_and_ones_only(value):
    x, ids = mixed_batch()
    mask = torch.ones_like(ids)
    mask[0, 3] = value
    with pytest.raises(ValueError, match=rf"attention_mask must hold 0 \(padding\) and 1 \(a token\) only, got \[{value}\]"):
        MSTSEncoder()(x, ids, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask must hold 0"):
        MSTSEncoder().quantize(x, ids, attention_mask=mask)
    assert torch.equal(token_mask(mask.clamp(0, 1), tuple(ids.shape)), mask.clamp(0, 1) == 1)
    assert torch.equal(token_mask(mask.clamp(0, 1).bool(), tuple(ids.shape)), mask.clamp(0, 1) == 1)


def test_hidden_size_zero_is_refused():
    with pytest.raises(ValueError, match=r"x must have a hidden size D >= 1, got shape \(2, 9, 0\)"):
        MSTSEncoder()(torch.zeros(2, 9, 0), torch.zeros(2, 9, dtype=torch.long))


@pytest.mark.parametrize("shape", [(12,), (9, 12), (1, 1, 12), (2, 1, 1, 1)])
def test_a_scale_that_is_not_per_tensor_or_per_token_is_refused(shape):
    x, ids = mixed_batch()
    with pytest.raises(ValueError, match=rf"scale must be per tensor \(\[\]\) or per token \(\[B, L, 1\] = \[2, 9, 1\]\), got shape \[{', '.join(map(str, shape))}\]"):
        MSTSEncoder()(x, ids, scale=torch.ones(shape))


@pytest.mark.parametrize("steps", [{1.5: 3}, {True: 3}, {False: 4}])
def test_float_and_bool_modality_keys_are_refused(steps):
    key = next(iter(steps))
    with pytest.raises(ValueError, match=rf"unknown modality {key!r}; accepted: text=0, image=1, video=2, audio=3"):
        MSTSConfig(steps=steps)


@pytest.mark.parametrize("kwargs", [dict(steps=[3, 4]), dict(bits=(4, 5)), dict(steps="text")])
def test_steps_and_bits_must_be_mappings(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(TypeError, match=rf"{name} must be a mapping of modality to {name}"):
        MSTSConfig(**kwargs)


def test_the_config_keeps_its_own_copy_of_the_steps():
    steps = {"text": 4, "image": 3}
    config = MSTSConfig(steps=steps)
    before = repr(config)
    steps["text"] = 2
    steps["video"] = 5
    assert repr(config) == before and config.steps_of("text") == 4 and dict(config.steps) == {"text": 4, "image": 3}
    assert config == MSTSConfig(steps={"text": 4, "image": 3})
    with pytest.raises(TypeError):
        config.steps["text"] = 2


@st.composite
def mixed_tokens(draw):
    B, L, D = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    width = 16 if dtype == torch.float16 else 32
    values = draw(st.lists(st.floats(-1e3, 1e3, width=width), min_size=B * L * D, max_size=B * L * D))
    gains = draw(st.lists(st.sampled_from([0.0, 2.0**-140, 2.0**-20, 1.0, 64.0]), min_size=B * L, max_size=B * L))
    x = (torch.tensor(values).reshape(B, L, D) * torch.tensor(gains).reshape(B, L, 1)).to(dtype)
    ids = torch.tensor(draw(st.lists(st.integers(0, 2), min_size=B * L, max_size=B * L))).reshape(B, L)
    mask = torch.tensor(draw(st.lists(st.integers(0, 1), min_size=B * L, max_size=B * L))).reshape(B, L)
    steps = {m: draw(st.integers(1, 7)) for m in ("text", "image", "video")}
    return x, ids, mask, steps


@examples(200)
@given(data=mixed_tokens())
def test_msts_decodes_to_each_tokens_own_quantizer_property(data):
    x, ids, mask, steps = data
    config = MSTSConfig(steps=steps)
    out = MSTSEncoder(config)(x, ids, attention_mask=mask)
    levels_of = {int(m): c.levels.levels for m, c in config.codes.items()}
    want = per_token_reference(x, ids, levels_of) * mask[..., None]
    assert torch.equal(out.decode(), want)
    assert torch.equal(out.steps, torch.tensor([steps[n] for n in ("text", "image", "video")])[ids] * mask)

"""The neighbouring systems' codes: SpikingBrain's mean-threshold bitwise code and our reading of
SDLLM's clipped bidirectional code, each exact against its own quantizer (references written
from the definitions in ``spikemllm_sj.neurons.coding``, with rational rounding), through the
MSTS encoder, the converter, the op report and the refusals of what they cannot do."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from properties import examples

from spikemllm_sj import SpikeConfig, convert, set_mode
from spikemllm_sj.analysis.op_report import op_report
from spikemllm_sj.commands import options
from spikemllm_sj.med import analyze
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_batch
from spikemllm_sj.neurons import (
    BidirectionalRateNode,
    ClippedBidirectionalRateNode,
    IntLevels,
    MeanThresholdBitwiseNode,
    MSTSConfig,
    MSTSEncoder,
    SpikeCode,
    SpikeDrivenLinear,
    decode,
    input_current,
    mean_threshold_scale,
)

MEAN = MSTSConfig(scheme="mean_threshold_bitwise")
CLIPPED = MSTSConfig(steps={"text": 7, "image": 3, "video": 3}, scheme="rate_bidirectional_clipped")


def rational_round(quotients: torch.Tensor) -> list[int]:
    """``floor(u + 1/2)`` of each (float) quotient, in exact arithmetic."""
    return [math.floor(Fraction(u) + Fraction(1, 2)) for u in quotients.flatten().tolist()]


def reference_counts(x: torch.Tensor) -> torch.Tensor:
    """SpikingBrain's counts ``round(x / vth)`` per token (ties half up, in rational arithmetic),
    unclipped, with the thresholds of :func:`mean_threshold_scale` once they are checked against
    ``mean(|x|) / 3`` taken in float64 (float32 sums may differ from it in the last places)."""
    vth = mean_threshold_scale(x, 3.0)
    mean = x.double().abs().mean(-1, keepdim=True)
    want = torch.where(mean > 0, (mean / 3).clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(mean))
    assert torch.allclose(vth.double(), want, rtol=1e-5, atol=0)
    return torch.tensor(rational_round(x / vth), dtype=torch.float32).reshape(x.shape)


def reference_bits(counts: torch.Tensor) -> torch.Tensor:
    """Int2Spike's ``SpikeCountBitwiseNode(is_bidirectional=True)`` train ``[T, *counts.shape]``:
    sign-magnitude bits, most significant first, over the bit length of the largest count (at
    least 1), in integer arithmetic."""
    ints = [int(c) for c in counts.flatten().tolist()]
    steps = max(1, max(abs(c) for c in ints).bit_length())
    train = [[(1 if c > 0 else -1) * ((abs(c) >> (steps - 1 - t)) & 1) for c in ints] for t in range(steps)]
    return torch.tensor(train, dtype=torch.float32).reshape(steps, *counts.shape)


@st.composite
def tokens(draw):
    """Tokens ``[N, D]`` with heavy tails: Gaussian bulk, outliers up to 1e4 times larger, zero
    tokens and exact zeros."""
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * draw(st.sampled_from([1e-38, 1e-30, 1e-3, 1.0, 7.0, 3e4]))
    outliers = draw(st.integers(0, min(3, d)))
    for _ in range(outliers):
        x[torch.randint(n, (1,), generator=g), torch.randint(d, (1,), generator=g)] *= draw(st.sampled_from([30.0, 1e3, 1e4]))
    if draw(st.booleans()):
        x[torch.randint(n, (1,), generator=g)] = 0.0
    if draw(st.booleans()):
        x[x.abs() < x.abs().median()] = 0.0
    return x


# Mean-threshold bitwise (SpikingBrain's W8ASpike).


@examples(300)
@given(x=tokens())
def test_mean_threshold_code_is_int2spike_bitwise_of_the_unclipped_counts(x):
    node = MeanThresholdBitwiseNode()
    counts = reference_counts(x)
    vth = mean_threshold_scale(x, 3.0)
    spikes = node.encode(x)
    assert torch.equal(spikes, reference_bits(counts))
    assert torch.equal(decode(spikes, node.code, vth), counts * vth)
    # Its counts are never clipped: up to 3 D, however large the outlier.
    assert counts.abs().max() <= 3 * x.shape[-1]
    # SpikingBrain's own torch.round (half to even) differs on exact ties only, by one.
    theirs = torch.round(x / vth)
    ties = (x / vth - torch.floor(x / vth)) == 0.5
    assert torch.equal(counts[~ties], theirs[~ties]) and bool(((counts - theirs)[ties].abs() <= 1).all())


@examples(300)
@given(counts=st.lists(st.integers(-(2**17 - 2), 2**17 - 2), min_size=1, max_size=24),
       scale=st.sampled_from([1.0, 0.37, 3.0e-3, 1.5e4]), nudge=st.sampled_from([0.0, 0.49, -0.49, 0.5]))
def test_mean_threshold_long_trains_up_to_the_18_bit_range(counts, scale, nudge):
    """Given thresholds, counts anywhere in the default range (trains of up to 17 steps), on and
    next to the rounding ties."""
    node = MeanThresholdBitwiseNode()
    x = (torch.tensor(counts, dtype=torch.float64) + nudge) * scale
    x = x.float()[None]
    s = torch.tensor([[scale]])
    want = torch.tensor(rational_round(x / s), dtype=torch.float32).reshape(x.shape)
    spikes = node.encode(x, scale=s)
    assert torch.equal(spikes, reference_bits(want))
    assert torch.equal(node.decode(spikes, scale=s), want * s)


@examples(200)
@given(x=tokens(), modality=st.lists(st.integers(0, 1), min_size=5, max_size=5))
def test_mean_threshold_msts_steps_are_each_tokens_bit_length(x, modality):
    n, d = x.shape
    enc = MSTSEncoder(MEAN)
    ids = torch.tensor(modality[:n])[None]
    out = enc(x[None], ids, spike_dtype=torch.int8)
    counts = reference_counts(x)
    want = [max(1, int(c.abs().max()).bit_length()) for c in counts]
    assert out.steps[0].tolist() == want
    assert out.spikes.shape[0] == max(want)  # the call's train: as long as its largest count needs
    levels, scale = enc.quantize(x[None], ids)
    assert torch.equal(levels[0], counts)
    assert torch.equal(out.decode(), levels * scale)
    # The firing rate counts each token's own steps.
    assert out.statistics().neuron_steps == sum(want) * d


def test_mean_threshold_present_is_encode_and_monitors_see_the_train():
    from spikingjelly.activation_based import monitor

    node = MeanThresholdBitwiseNode()
    x = torch.randn(3, 64)
    x[1, 5] = 300.0
    mon = monitor.OutputMonitor(node, MeanThresholdBitwiseNode)
    try:
        seen = node.present(x)
    finally:
        mon.remove_hooks()
    assert torch.equal(seen, node.encode(x)) and len(mon.records) == 1 and torch.equal(mon.records[0], seen)


def test_mean_threshold_count_beyond_range_raises():
    x = torch.zeros(1, 64)
    x[0, 0] = 1.0  # count 3 * 64 = 192: 8 steps, beyond the 3 of a 4-bit range
    with pytest.raises(ValueError, match="needs 8 steps, beyond the 3"):
        MeanThresholdBitwiseNode(16).encode(x)
    # Text within its 9-bit range, the image token beyond its 4 bits: the error names the image count.
    enc = MSTSEncoder(MSTSConfig(bits={"text": 9, "image": 4}, scheme="mean_threshold_bitwise"))
    both, ids = torch.cat([x, x])[None], torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match=r"count of 192 \(element \[0, 1, 0\]\) is beyond the \+-7"):
        enc.quantize(both, ids)
    with pytest.raises(ValueError, match="never clipped"):
        enc(both, ids)
    # Driven directly with too short a current, the node refuses instead of saturating.
    node = MeanThresholdBitwiseNode()
    with pytest.raises(ValueError, match="bits cannot hold"):
        node(input_current(x, 3))


def test_mean_threshold_node_refusals():
    node = MeanThresholdBitwiseNode()
    with pytest.raises(ValueError, match="step_mode"):
        node.step_mode = "s"
    with pytest.raises(ValueError, match="needs scale="):
        node.decode(node.encode(torch.randn(2, 8)))
    with pytest.raises(ValueError, match="mean threshold"):
        SpikeDrivenLinear(torch.nn.Linear(8, 4), node)


# Clipped bidirectional rate coding (our reading of SDLLM's).


@st.composite
def clipped_cases(draw):
    L = draw(st.sampled_from([4, 8, 16, 32, 64]))
    return L, draw(tokens())


@examples(300)
@given(case=clipped_cases())
def test_clipped_bidirectional_carries_the_clipped_levels_of_the_doubled_grid(case):
    L, x = case
    T = L // 2 - 1
    node = ClippedBidirectionalRateNode(L, step_mode="m")
    amax = x.abs().amax(-1, keepdim=True)
    scale = torch.where(amax > 0, (amax / (L - 1)).clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(amax))
    want = torch.tensor([min(max(q, -T), T) for q in rational_round(x / scale)], dtype=torch.float32).reshape(x.shape)
    # The encoder takes the same scale by the code's own rule (absmax onto L - 1).
    out = MSTSEncoder(MSTSConfig(bits={"text": int(math.log2(L))}, scheme="rate_bidirectional_clipped"))(
        x[None], torch.zeros(1, x.shape[0], dtype=torch.long))
    assert torch.equal(out.scale[0], scale) and torch.equal(out.decode()[0], want * scale)
    spikes = node.encode(x, scale=scale)
    # |q| spikes of sign(q) over the first |q| of T steps, weight 1 each.
    steps = torch.arange(T).reshape(T, *([1] * x.dim()))
    assert torch.equal(spikes, torch.where(steps < want.abs(), want.sign(), torch.zeros_like(want)))
    assert torch.equal(node.decode(spikes, scale=scale), want * scale)
    # The clipped membrane leaves no residue; the unclipped bidirectional neuron keeps the excess.
    node.reset()
    node(input_current(x, T), scale=scale)
    assert torch.equal(node.v, torch.zeros_like(x))
    free = BidirectionalRateNode(L, step_mode="m")
    free(input_current(x, T), scale=scale)
    excess = torch.tensor(rational_round(x / scale), dtype=torch.float32).reshape(x.shape) - want
    assert torch.equal(free.v, excess)


def test_clipped_code_scales_and_steps():
    code = SpikeCode("rate_bidirectional_clipped", IntLevels(16))
    assert (code.steps, code.absmax_level, code.membrane_clip, code.leak, code.ternary) == (7, 15, 7, 1, True)
    assert SpikeCode.from_steps("rate_bidirectional_clipped", 7) == code
    enc = MSTSEncoder(CLIPPED)
    x = torch.randn(1, 4, 32)
    levels, scale = enc.quantize(x, torch.zeros(1, 4, dtype=torch.long))
    assert torch.equal(scale, x.abs().amax(-1, keepdim=True) / 15)  # text: 16 carried levels, on a grid of 32
    want = torch.tensor([min(max(q, -7), 7) for q in rational_round(x / scale)], dtype=torch.float32).reshape(x.shape)
    assert torch.equal(levels, want) and bool((want.abs() == 7).any())  # some saturate


def test_mean_threshold_code_fields():
    code = SpikeCode.from_steps("mean_threshold_bitwise", 17)
    assert code == SpikeCode("mean_threshold_bitwise", IntLevels(1 << 18)) and code.data_dependent
    assert (code.leak, code.scale_rule, code.membrane_clip) == (2, "mean", None)
    with pytest.raises(ValueError, match="mean magnitude"):
        code.absmax_level
    with pytest.raises(ValueError, match="needs signed levels"):
        SpikeCode("mean_threshold_bitwise", IntLevels(16, signed=False))
    assert MEAN.codes[next(iter(MEAN.codes))].levels.bits == 18


# Through the converter, the op report and the refusals.


@pytest.mark.parametrize("msts", [MEAN, CLIPPED], ids=["mean_threshold_bitwise", "rate_bidirectional_clipped"])
@pytest.mark.parametrize("name", TINY_MODELS)
def test_converted_spiking_equals_its_quantized_twin(name, msts):
    model = build_tiny_model(name)
    batch = tiny_batch(model, batch_size=2, padding=True)
    with torch.no_grad():
        convert(model, SpikeConfig(msts=msts))
        spike = model(**batch).logits
        set_mode(model, "fake_quant")
        twin = model(**batch).logits
    assert torch.equal(spike, twin)


def test_op_report_counts_each_tokens_own_steps():
    model = build_tiny_model("tiny-llava")
    batch = tiny_batch(model, batch_size=2, padding=True)
    with torch.no_grad():
        convert(model, SpikeConfig(msts=MEAN))
    encoded = {}

    def record(module, args, out):
        encoded.setdefault(module, []).append((args[1], out.steps))

    encoders = {name: m.encoder for name, m in model.named_modules() if isinstance(getattr(m, "encoder", None), MSTSEncoder)}
    handles = [e.register_forward_hook(record) for e in encoders.values()]
    try:
        report = op_report(model, **batch)
    finally:
        for h in handles:
            h.remove()
    assert report.data_dependent_steps and "data-dependent steps" in report.format_table()
    sites = {s.name: s for s in report.sites}
    fractional = False
    for name, encoder in encoders.items():
        ids = torch.cat([i.reshape(-1) for i, _ in encoded[encoder]])
        steps = torch.cat([s.reshape(-1) for _, s in encoded[encoder]])
        site = sites[name]
        for modality, mean in site.steps_per_token.items():
            real = steps[(ids == {"text": 0, "image": 1}[modality]) & (steps > 0)]
            assert mean == pytest.approx(real.double().mean().item())
            fractional |= mean != int(mean)
        assert 0 < site.firing_rate <= 1 and site.synops > 0
    assert fractional  # the steps do follow the values


def test_configuration_refusals():
    with pytest.raises(ValueError, match="got act_scales='dynamic', act_clip='search'"):
        SpikeConfig(msts=MEAN, act_clip="search")
    with pytest.raises(ValueError, match="got act_scales='static', act_clip=1.0"):
        SpikeConfig(msts=MEAN, act_scales="static")
    model = build_tiny_model("tiny-llava")
    batch = tiny_batch(model, batch_size=2, padding=True)
    with pytest.raises(ValueError, match="data-dependent"):
        analyze(model, [batch], SpikeConfig(msts=MEAN), progress=False)
    from spikemllm_sj.lava_backend import model_mapping

    with torch.no_grad():
        convert(model, SpikeConfig(msts=MEAN))
    with pytest.raises(ValueError, match="fixed steps"):
        model_mapping(model)
    from spikemllm_sj.ann2snn.linear import SpikeLinear

    site = next(m for m in model.modules() if isinstance(m, SpikeLinear))
    site.set_clip({0: 1.0})  # no clip: what the code already does
    with pytest.raises(ValueError, match="clip ratios: the mean_threshold_bitwise code"):
        site.set_clip({0: 0.9})
    with pytest.raises(ValueError, match="static input scales"):
        site.set_static_absmax({0: 1.0})


@pytest.mark.parametrize("msts, steps", [(MEAN, []), (CLIPPED, ["--steps-text", "7", "--steps-image", "3"])],
                         ids=["mean_threshold_bitwise", "rate_bidirectional_clipped"])
def test_config_round_trips(msts, steps):
    import argparse

    config = SpikeConfig(msts=msts, act_clip=1.0)
    assert SpikeConfig.from_dict(config.to_dict()) == config
    flags = options.config_flags(config)
    assert flags[:2] == ["--scheme", msts.scheme]
    parser = argparse.ArgumentParser()
    options.add_config(parser)
    assert options.spike_config(parser.parse_args(flags + steps)) == config


def test_cli_scheme_option():
    import argparse

    parser = argparse.ArgumentParser()
    options.add_config(parser)
    mean = options.spike_config(parser.parse_args(["--scheme", "mean_threshold_bitwise", "--act-clip", "1"]))
    assert mean.msts == MEAN
    clipped = options.spike_config(parser.parse_args(["--scheme", "rate_bidirectional_clipped", "--steps-text", "7",
                                                      "--steps-image", "3"]))
    assert clipped.msts == CLIPPED
    with pytest.raises(ValueError, match="give no steps"):
        options.spike_config(parser.parse_args(["--scheme", "mean_threshold_bitwise", "--steps-text", "4"]))
    with pytest.raises(ValueError, match=r"--steps-text 4 / --steps-image 3 \(the defaults\): steps=4 does not match"):
        options.spike_config(parser.parse_args(["--scheme", "rate_bidirectional"]))


def test_clipped_code_on_lava_equals_pytorch():
    from spikemllm_sj.lava_backend import run_model_on_lava

    model = build_tiny_model("tiny-llava")
    batch = tiny_batch(model, batch_size=2, padding=True)
    with torch.no_grad():
        convert(model, SpikeConfig(msts=CLIPPED))
    run = run_model_on_lava(model, batch, decode_steps=1)
    assert run.exact and run.tokens_equal


def test_lava_command_refuses_the_data_dependent_code_up_front(capsys):
    from spikemllm_sj.commands.cli import main

    assert main(["lava", "--model", "tiny-llava", "--scheme", "mean_threshold_bitwise", "--act-clip", "1"]) == 2
    assert "maps codes with fixed steps" in capsys.readouterr().err

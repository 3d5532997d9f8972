"""Converted layers of a real (tiny) converted model on Lava, against PyTorch bit for bit.

The inputs are the layers' real inputs on ``tiny_batch`` (captured with forward hooks), with text
and image tokens: each modality runs in a Lava network of its own code (4 and 3 steps).
"""

import json

import numpy as np
import pytest
import torch

from spikemllm_sj import SpikeConfig, calibrate, convert
from spikemllm_sj.commands.cli import main
from spikemllm_sj.lava_backend import (
    DecodedOp,
    capture_input,
    check_layer,
    lava_layers,
    run_attention_projections,
    run_mlp,
    run_spike_linear,
    simulate,
    spec_from_spike_linear,
)
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch
from spikemllm_sj.neurons import Modality
from spikemllm_sj.quantization.methods import SmoothQuant

# isort: split
from lava.proc.io.extractor import Extractor  # noqa: E402  (after spikemllm_sj.lava_backend's fixes)
from lava.proc.io.source import RingBuffer  # noqa: E402

pytestmark = pytest.mark.lava

LAYER0 = "model.language_model.layers.0"
# The tiny model on its random batch of 2 rows, RTN without clipping (no calibration): the cheapest lava run.
TINY_RTN = ["--model", "tiny-qwen2-vl", "--tiny-batch", "--method", "RTN", "--act-clip", "1", "--weight-clip", "none"]


@pytest.fixture(scope="module")
def converted(converted_qwen2_vl):
    return converted_qwen2_vl.model, converted_qwen2_vl.batch


def captured_input(model, batch, path):
    """The module at ``path``, its real input on ``batch`` and its tokens' modality ids."""
    return (model.get_submodule(path), *capture_input(model, path, batch))


def test_spec_from_spike_linear(converted):
    model, _ = converted
    layer = model.get_submodule(f"{LAYER0}.mlp.gate_proj")
    codes = layer.encoder.config.codes
    for modality in (Modality.TEXT, Modality.IMAGE):
        spec = spec_from_spike_linear(layer, modality)
        assert torch.equal(spec.weight, layer.qweight.to(torch.int32))
        assert spec.code == codes[modality] and spec.scale == 1.0 and spec.weight_bits == 8
    assert spec_from_spike_linear(layer, "text").code.steps == 4
    with pytest.raises(TypeError, match="SpikeLinear"):
        spec_from_spike_linear(torch.nn.Linear(2, 2), Modality.TEXT)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("precision", ["fixed_pt", "floating_pt"])
def test_spike_linear_on_lava_equals_pytorch(converted, precision):
    model, batch = converted
    layer, x, ids = captured_input(model, batch, f"{LAYER0}.mlp.gate_proj")
    assert set(ids.unique().tolist()) == {int(Modality.TEXT), int(Modality.IMAGE)}
    result = run_spike_linear(layer, x, ids, precision=precision)
    with torch.no_grad():
        expected = layer(x)
    assert result.output.dtype == expected.dtype and torch.equal(result.output, expected)
    assert result.tokens == {"text": int((ids == 0).sum()), "image": int((ids == 1).sum())}
    assert result.steps == {"text": 4, "image": 3} and result.lava_runs == 2
    # Not vacuous: running every token with the text code (wrong for the image tokens) differs.
    wrong = run_spike_linear(layer, x, Modality.TEXT, precision=precision).output
    assert not torch.equal(wrong, expected)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("precision", ["fixed_pt", "floating_pt"])
def test_decoded_op_time_line(precision):
    # fn runs at the last step of a token's window; its output leaves at the first step of the
    # next window, its side values at the last step of the next window.
    T = 3
    op = DecodedOp(fn=lambda a, aux: (2 * a + 1, aux + 10), in_size=2, out_size=2, aux_in_size=1, aux_out_size=1, window=T)
    a, aux = np.zeros((2, 3 * T)), np.zeros((1, 3 * T))
    a[:, T - 1], a[:, 2 * T - 1], aux[0, T - 1], aux[0, 2 * T - 1] = [1, 2], [3, 4], 5, 6
    for data, port in ((a, op.a_in), (aux, op.aux_in)):
        RingBuffer(data=data).s_out.connect(port)
    sinks = [Extractor(shape=(2,), buffer_size=3 * T), Extractor(shape=(1,), buffer_size=3 * T)]
    op.a_out.connect(sinks[0].in_port)
    op.aux_out.connect(sinks[1].in_port)
    out, side = simulate(sinks, precision=precision, num_steps=3 * T, steps_per_run=3 * T, keep=lambda step: True)
    assert out.T.tolist() == [[0, 0, 0, 3, 0, 0, 7, 0, 0], [0, 0, 0, 5, 0, 0, 9, 0, 0]]
    assert side[:, 0].tolist() == [0, 0, 0, 0, 0, 15, 0, 0, 16]
    with pytest.raises(ValueError, match="window must be a positive int"):
        DecodedOp(fn=abs, in_size=1, out_size=1, aux_in_size=1, aux_out_size=1, window=0)
    with pytest.raises(TypeError, match="fn must be callable"):
        DecodedOp(fn=None, in_size=1, out_size=1, aux_in_size=1, aux_out_size=1, window=1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("precision", ["fixed_pt", "floating_pt"])
def test_mlp_block_on_lava_equals_pytorch(converted, precision):
    model, batch = converted
    mlp, x, ids = captured_input(model, batch, f"{LAYER0}.mlp")
    result = run_mlp(mlp, x, ids, precision=precision)
    with torch.no_grad():
        expected = mlp(x)
    assert torch.equal(result.output, expected)
    assert result.lava_runs == 2  # one network (TC-LIF, gate|up, DecodedOp, TC-LIF, down) per modality


@pytest.mark.timeout(120)
def test_qkv_group_on_lava_equals_pytorch(converted):
    model, batch = converted
    attention, x, ids = captured_input(model, batch, f"{LAYER0}.self_attn")
    result = run_attention_projections(attention, x, ids)
    assert set(result.outputs) == {"q_proj", "k_proj", "v_proj"}
    with torch.no_grad():
        for name, output in result.outputs.items():
            assert torch.equal(output, getattr(attention, name)(x)), name
    assert result.lava_runs == 2  # one stacked SpikeDense per modality


@pytest.mark.timeout(120)
def test_static_smoothquant_mlp_on_lava_equals_pytorch():
    # Input transforms (SmoothQuant, one per layer) and calibrated static scales: gate and up
    # quantize their inputs differently, so they run as separate Lava layers.
    model = build_tiny_model("tiny-qwen2-vl")
    batch = tiny_batch(model, batch_size=2)
    config = SpikeConfig(act_scales="static", method=SmoothQuant())
    with torch.no_grad():
        convert(model, config, calibrate(model, [batch], config, progress=False))
    check = check_layer(model, f"{LAYER0}.mlp", batch)
    assert check.exact and check.max_abs_diff == 0.0 and check.lava_runs == 2


def test_lava_layers_and_errors(converted):
    model, batch = converted
    layers = lava_layers(model)
    assert {f"{LAYER0}.mlp", f"{LAYER0}.self_attn", f"{LAYER0}.mlp.down_proj", "model.visual.blocks.0.attn.qkv"} <= set(
        layers
    )
    with pytest.raises(ValueError, match=r"unknown layer 'model.language_model.layers.0.mlpx'; valid layers include: .*layers\.0\.mlp"):
        check_layer(model, f"{LAYER0}.mlpx", batch)
    with pytest.raises(TypeError, match="RMSNorm, which cannot run on Lava"):
        check_layer(model, f"{LAYER0}.input_layernorm", batch)
    with pytest.raises(ValueError, match="precision"):
        check_layer(model, f"{LAYER0}.mlp", batch, precision="double")


@pytest.mark.timeout(120)
def test_cli_lava_reports_exact_equality(capsys):
    assert main(["lava", *TINY_RTN, "--layer", f"{LAYER0}.mlp"]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference: 0;" in printed and "exact (bit for bit): yes" in printed
    assert "text 18 (4 steps each), image 24 (3 steps each)" in printed
    # The accelerator report of the same layer, then the paper preset at the measured rates.
    assert "| model.language_model.layers.0.mlp.down_proj |" in printed and "| throughput_ratio |" in printed
    assert "Paper preset (Qwen2VL-7B decode, batch 1, A800 FP16) at the firing rates measured here" in printed


@pytest.mark.timeout(120)
def test_cli_lava_json_floating_pt(capsys):
    argv = ["lava", *TINY_RTN, "--layer", f"{LAYER0}.self_attn", "--precision", "floating_pt", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exact"] is True and result["max_abs_diff"] == 0.0
    assert result["kind"] == "qkv" and result["precision"] == "floating_pt"
    assert result["steps"] == {"text": 4, "image": 3} and result["lava_steps"] == 18 * 4 + 24 * 3
    layer_rows = [row["name"] for row in result["accelerator"]["layer"]["accelerator"]]
    assert layer_rows[:3] == [f"{LAYER0}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
    assert set(result["accelerator"]["paper_preset"]["total"]["ratios"]) >= {"throughput_ratio", "power_ratio_chip"}


def test_cli_lava_bad_layer(capsys):
    assert main(["lava", *TINY_RTN, "--layer", "model.language_model.layers.0.mlpx"]) == 2
    error = capsys.readouterr().err
    assert "unknown layer 'model.language_model.layers.0.mlpx'" in error and f"{LAYER0}.mlp" in error
    assert main(["lava", *TINY_RTN, "--layer", f"{LAYER0}.input_layernorm"]) == 2
    assert "cannot run on Lava" in capsys.readouterr().err

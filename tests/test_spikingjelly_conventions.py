"""SpikingJelly's conventions on converted models and on the neurons: which of its modules import,
its monitors and its SynOpCounter on a converted model, step modes and reset_net, and a deep TC-LIF
network built by hand (examples/deep_tclif_network.py) against its quantized ANN."""

import importlib
import importlib.util
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import convert_tiny
from reference import reference_levels
from spikingjelly.activation_based import base, functional, monitor, neuron
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

from spikemllm_sj import SpikeConfig, op_report, set_mode
from spikemllm_sj.ann2snn.attention import SpikeContext
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.neurons import (
    BinaryRateNode,
    IntLevels,
    MSTSEncoder,
    SpikeDrivenLinear,
    TCLIFNode,
    input_current,
)
from spikemllm_sj.quantization.methods import Hadamard

ROOT = Path(__file__).resolve().parents[1]
SJ = "spikingjelly.activation_based"

# What SpikingJelly users import, all available with the project's set-up (monitor needs tensorboard).
AVAILABLE = ["base", "neuron", "layer", "functional", "surrogate", "encoding", "monitor", "op_counter",
             "ann2snn", "learning", "memopt", "quantize", "profiler", "rnn", "lava_exchange"]
# Unavailable by choice, for the packages named (see the README): the model zoo wants h5py (its
# spikformer imports distributed.vision) and, for the ResNets and VGGs, torchvision (the companion
# of torch's CUDA build, never used here); the datasets want torchvision, the NIR exchange nir.
UNAVAILABLE = [
    (f"{SJ}.model", ("h5py",)),
    (f"{SJ}.distributed.vision", ("h5py",)),
    (f"{SJ}.model.spiking_resnet", ("h5py", "torchvision")),
    (f"{SJ}.model.sew_resnet", ("h5py", "torchvision")),
    (f"{SJ}.model.spiking_vgg", ("h5py", "torchvision")),
    (f"{SJ}.nir_exchange", ("nir",)),
    ("spikingjelly.datasets", ("torchvision",)),
]


@pytest.mark.parametrize("name", AVAILABLE)
def test_the_commonly_used_spikingjelly_modules_import(name):
    assert importlib.import_module(f"{SJ}.{name}").__name__ == f"{SJ}.{name}"


@pytest.mark.parametrize("name, packages", UNAVAILABLE)
def test_the_unavailable_spikingjelly_modules_lack_only_the_documented_packages(name, packages):
    # A failed import of distributed.vision leaves its submodule `config` behind, and the model zoo
    # then imports: each attempt starts from none of them.
    for loaded in [m for m in sys.modules if m.startswith((f"{SJ}.model", f"{SJ}.distributed.vision", name))]:
        del sys.modules[loaded]
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if not missing:
        assert importlib.import_module(name).__name__ == name
    else:
        with pytest.raises(ModuleNotFoundError) as error:
            importlib.import_module(name)
        assert error.value.name in missing


# The neuron's forward path, which the converted model now takes.


@pytest.mark.parametrize(
    "node", [TCLIFNode(16), TCLIFNode(8, signed=False), BinaryRateNode(8)], ids=["tc_lif", "tc_lif_unsigned", "rate"]
)
def test_present_is_encode_through_the_forward_hooks(node):
    node.step_mode = "m"
    x = torch.randn(5, 7) * 4
    scale = x.abs().amax(-1, keepdim=True) / node.code.levels.qmax
    with monitor.OutputMonitor(node) as out, monitor.InputMonitor(node) as current:
        spikes = node.present(x, scale)
    assert torch.equal(spikes, node.encode(x, scale))
    assert torch.equal(out[0], spikes) and len(out.records) == 1
    assert torch.equal(current[0], torch.cat([x[None], torch.zeros(node.steps - 1, 5, 7)]))
    assert not torch.is_tensor(node.v)  # back at rest: no membrane held between calls


def test_present_needs_multi_step_mode():
    with pytest.raises(ValueError, match="needs step_mode 'm', got step_mode 's'"):
        TCLIFNode(16).present(torch.ones(3))


# A converted model under SpikingJelly's monitors, counters and step-mode functions.


def _site_trains(site_name, site, inputs, spikes):
    """``(tokens [N, D], code, train [T, N, D])`` of each modality of each call of an MSTS site (a
    site called more than once in a forward, attention per image, has records per call)."""
    calls = {}
    for x3, ids, _ in inputs[f"{site_name}.encoder"]:
        for m in ids.unique().tolist():
            modality = ["text", "image", "video"][m]
            calls[modality] = calls.get(modality, -1) + 1
            train = spikes[f"{site_name}.encoder.nodes.{modality}"][calls[modality]]
            yield x3[ids == m], site.encoder.config.code_of(m), train


def test_output_monitor_records_every_site_spike_trains(converted_qwen2_vl):
    model, batch = converted_qwen2_vl.model, converted_qwen2_vl.batch
    with torch.no_grad(), monitor.OutputMonitor(model, neuron.BaseNode) as spikes, \
            monitor.InputMonitor(model, MSTSEncoder) as inputs:
        model(**batch)
    sites = {n: m for n, m in model.named_modules() if isinstance(m, MSTSSite)}
    checked = set()
    for name, site in sites.items():
        for tokens, code, train in _site_trains(name, site, inputs, spikes):
            assert train.shape == (code.steps, *tokens.shape)
            # Decoded with the powers of two, the train is the tokens' round-half-up levels at
            # their per-token absmax scale (1 for a token of zeros).
            weights = torch.tensor([2.0 ** (code.steps - 1 - t) for t in range(code.steps)]).reshape(-1, 1, 1)
            absmax = tokens.abs().amax(-1, keepdim=True)
            scale = torch.where(absmax > 0, absmax / code.levels.qmax, 1.0)
            assert torch.equal((train * weights).sum(0), reference_levels(tokens, scale, code.levels.levels, True)), name
            checked.add(name)
    assert checked == set(sites)
    contexts = {n: m for n, m in model.named_modules() if isinstance(m, SpikeContext)}
    assert contexts
    for name, context in contexts.items():
        for train in spikes[f"{name}.prob"]:
            assert set(train.unique().tolist()) <= {0.0, 1.0} and train.shape[0] == context.prob.steps


def test_attribute_monitor_reads_the_membrane_of_each_step(converted_qwen2_vl):
    model, batch = converted_qwen2_vl.model, converted_qwen2_vl.batch
    nodes = [m for m in model.modules() if isinstance(m, TCLIFNode)]
    for node in nodes:
        node.store_v_seq = True
    try:
        with torch.no_grad(), monitor.AttributeMonitor("v_seq", False, model, TCLIFNode) as v_seq, \
                monitor.OutputMonitor(model, TCLIFNode) as spikes:
            model(**batch)
    finally:
        for node in nodes:
            node.store_v_seq = False
    name = "model.language_model.layers.0.mlp.down_proj.encoder.nodes.text"
    (v,), (s,) = v_seq[name], spikes[name]
    node = model.get_submodule(name)
    # V_t = 2 V_(t-1) + I_t - theta S_t, with the level as the current of the first step.
    level = (s * torch.tensor([2.0 ** (node.steps - 1 - t) for t in range(node.steps)]).reshape(-1, 1, 1)).sum(0)
    expected, membrane = [], torch.zeros_like(level)
    for t in range(node.steps):
        membrane = 2 * membrane + (level if t == 0 else 0) - node.v_threshold * s[t]
        expected.append(membrane)
    assert torch.equal(v, torch.stack(expected))
    assert torch.equal(v[-1], torch.zeros_like(v[-1]))  # in range: every digit fired, nothing left
    assert len(v_seq.records) == len(spikes.records) > 0


def test_spikingjelly_synop_counter_counts_what_op_report_counts(converted_qwen2_vl):
    model, batch = converted_qwen2_vl.model, converted_qwen2_vl.batch
    counter = SynOpCounter()
    with torch.no_grad(), monitor.OutputMonitor(model, neuron.BaseNode) as spikes, DispatchCounterMode([counter]):
        counted = model(**batch).logits
    set_mode(model, "fake_quant")
    with torch.no_grad():
        twin = model(**batch).logits
    set_mode(model, "spike")
    assert torch.equal(counted, twin)  # counted on binary planes, still the fake-quant twin's numbers
    report = op_report(model, **batch)
    assert counter.get_total() == report.synops > 0
    # Independently: a linear site's synaptic ops are its input spikes (+1 and -1) times its fan-out.
    root = type(model).__name__
    counts = counter.get_counts()
    for name, site in model.named_modules():
        if isinstance(site, SpikeLinear):
            trains = [r for key in spikes.monitored_layers if key.startswith(f"{name}.") for r in spikes[key]]
            nnz = sum(int(torch.count_nonzero(r)) for r in trains)
            assert sum(counts[f"{root}.{name}"].values()) == nnz * site.out_features, name


def test_single_step_mode_is_refused_and_changes_nothing(converted_qwen2_vl):
    model = converted_qwen2_vl.model
    with pytest.raises(ValueError, match=r"can only be 'm', got 's': each site runs all T time steps"):
        functional.set_step_mode(model, "s")
    assert {m.step_mode for m in model.modules() if isinstance(m, base.StepModule)} == {"m"}
    functional.set_step_mode(model, "m")
    assert {m.step_mode for m in model.modules() if isinstance(m, base.StepModule)} == {"m"}


def test_a_converted_model_holds_no_neuron_state_between_calls(converted_qwen2_vl):
    model, batch = converted_qwen2_vl.model, converted_qwen2_vl.batch
    with torch.no_grad():
        first = model(**batch).logits
        nodes = [m for m in model.modules() if isinstance(m, neuron.BaseNode)]
        assert nodes and not any(torch.is_tensor(n.v) for n in nodes)
        functional.reset_net(model)  # a no-op on a converted model: resets every node to its rest
        again = model(**batch).logits
    assert torch.equal(first, again)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, config",
    [
        ("tiny-llava", SpikeConfig()),
        ("tiny-internvl", SpikeConfig()),
        ("tiny-qwen2-vl", SpikeConfig(method=Hadamard(fallback=True))),
    ],
    ids=["llava", "internvl", "qwen2-vl-hadamard"],
)
def test_synop_counter_matches_op_report_on_other_families(name, config):
    tiny = convert_tiny(name, config)
    counter = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([counter]):
        tiny.model(**tiny.batch)
    report = op_report(tiny.model, **tiny.batch)
    assert counter.get_total() == report.synops > 0
    # The online rotation's +-1 Hadamard kernels are weights, not spikes: no synaptic ops of theirs.
    modules = dict(tiny.model.named_modules())
    for site in report.sites:
        if site.kind == "linear":
            assert site.synops == site.spikes * modules[site.name].out_features, site.name


# A deep TC-LIF network built by hand: the README's example.


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(ROOT / "examples" / "deep_tclif_network.py"))


def reference_network(linears, scales, x):
    """The quantized ANN, from the definitions: round-half-up levels of each layer's input (32
    signed levels, then 16 unsigned after ReLU), 8-bit per-output-channel weights at each row's
    absmax / 127, the integer matmul in int64, then the scales and the bias."""
    h = x
    for i, (linear, scale) in enumerate(zip(linears, scales)):
        levels, signed = (32, True) if i == 0 else (16, False)
        q = reference_levels(h, torch.tensor(scale), levels, signed).long()
        w = linear.weight.detach()
        w_scale = w.abs().amax(1) / 127
        qw = reference_levels(w, w_scale[:, None], 256, True).long()
        acc = (q @ qw.T).to(torch.float32)
        h = acc * torch.tensor(scale, dtype=torch.float32) * w_scale + linear.bias.detach()
        if i < len(linears) - 1:
            h = torch.relu(h)
    return h


@pytest.mark.parametrize("clip", [1.0, 0.5], ids=["calibrated", "saturating"])
def test_the_example_network_equals_its_quantized_ann(example, clip):
    torch.manual_seed(1)
    sizes = [48, 96, 64, 32, 10]
    linears = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    x = torch.randn(16, sizes[0]) * 3
    scales = [s * clip for s in example["calibrate"](linears, x)]
    net = example["build_network"](linears, scales)
    counter = SynOpCounter()
    with torch.no_grad(), monitor.OutputMonitor(net, TCLIFNode) as spikes, DispatchCounterMode([counter]):
        out = net(input_current(x, example["STEPS"]))
    functional.reset_net(net)
    assert out.shape == (example["STEPS"], 16, 10)
    assert torch.equal(out[0], reference_network(linears, scales, x))
    assert torch.equal(out[1:], torch.zeros_like(out[1:]))
    layers = [m for m in net if isinstance(m, SpikeDrivenLinear)]
    trains = [spikes[name][0] for name in spikes.monitored_layers]
    assert counter.get_total() == sum(int(torch.count_nonzero(s)) * layer.out_features for s, layer in zip(trains, layers))


def test_the_example_runs(example, capsys):
    example["main"]()
    printed = capsys.readouterr().out
    assert "output (8, 10)" in printed and "synaptic ops (SpikingJelly's SynOpCounter)" in printed


def test_spike_driven_linear_refuses_what_it_cannot_read_exactly():
    node = TCLIFNode(16, scale=0.1, step_mode="m")
    layer = SpikeDrivenLinear(nn.Linear(4, 3), node)
    with pytest.raises(ValueError, match=r"T = 3 \(the input node's steps\) and in = 4, got shape \(4, 2, 4\)"):
        layer(torch.zeros(4, 2, 4))
    with pytest.raises(ValueError, match="one scale per tensor"):
        SpikeDrivenLinear(nn.Linear(4, 3), TCLIFNode(16, scale=torch.ones(4)))
    with pytest.raises(ValueError, match="step_mode can only be"):
        functional.set_step_mode(nn.Sequential(node, layer), "s")
    with pytest.raises(ValueError, match="weight_levels must be signed"):
        SpikeDrivenLinear(nn.Linear(4, 3), node, IntLevels(16, signed=False))

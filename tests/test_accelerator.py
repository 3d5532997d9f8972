"""Accelerator cost model: parameters, workloads recovered from op reports, cost formulas, the paper preset."""


import pytest

from spikemllm_sj.analysis import accelerator as acc
from spikemllm_sj.analysis.op_report import op_report
from spikemllm_sj.ann2snn.linear import SpikeLinear


@pytest.fixture(scope="module")
def measured(converted_qwen2_vl):
    model, batch = converted_qwen2_vl.model, converted_qwen2_vl.batch
    return model, op_report(model, **batch)


@pytest.fixture(scope="module")
def params():
    return acc.load_params()


def test_param_file_is_complete_and_validated(tmp_path, params):
    assert params.accelerator.pe_count > 0 and params.gpu.name.startswith("NVIDIA A800")
    text = acc.PARAMS_FILE.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("static_w = ", "static_watts = "))
    with pytest.raises(ValueError, match=r"\[accelerator\]: missing fields \['static_w'\], unknown fields \['static_watts'\]"):
        acc.load_params(bad)
    bad.write_text(text.replace("achieved_fraction = 0.30", "achieved_fraction = 1.5"))
    with pytest.raises(ValueError, match=r"achieved_fraction must be in \(0, 1\]"):
        acc.load_params(bad)
    bad.write_text(text.replace("pe_count = 3840", "pe_count = -1"))
    with pytest.raises(ValueError, match="pe_count must be a positive int"):
        acc.load_params(bad)


def test_workload_recovers_layer_shapes_from_the_report(measured):
    model, report = measured
    workload = acc.workload_from_report(report)
    rows = {layer.name: layer for layer in workload.layers}
    assert sum(layer.synops for layer in workload.layers) == report.synops
    for name, module in model.named_modules():
        if isinstance(module, SpikeLinear):
            row = rows[name]
            # Shapes come back exactly from synops / spikes / rate: weights = in x out.
            assert row.params == pytest.approx(module.in_features * module.out_features, rel=1e-9), name
            assert row.dense_macs == pytest.approx(row.tokens * row.params, rel=1e-9), name
    assert rows["non-spiking (norms, softmax, activations, float layers)"].nonspiking_ops == report.non_spiking_flops["total"]
    lm_tokens = sum(next(s for s in report.sites if "language_model" in s.name).tokens.values())
    assert workload.tokens == lm_tokens


def test_workload_of_one_block_and_of_a_sub_block(measured):
    _, report = measured
    block = acc.workload_from_report(report, scope="model.language_model.layers.0")
    names = [layer.name for layer in block.layers]
    assert all(n.startswith("model.language_model.layers.0.") for n in names[:-1])
    assert block.layers[-1].nonspiking_ops == report.non_spiking_flops["Qwen2VLForConditionalGeneration.model.language_model.layers.0"]
    mlp = acc.workload_from_report(report, scope="model.language_model.layers.0.mlp")
    assert [layer.name.rsplit(".", 1)[-1] for layer in mlp.layers] == ["gate_proj", "up_proj", "down_proj"]
    assert "non-spiking ops are counted per decoder or vision block" in mlp.name
    with pytest.raises(ValueError, match="no spike-driven site under 'model.nowhere'"):
        acc.workload_from_report(report, scope="model.nowhere")


def test_costs_follow_their_formulas(params):
    layer = acc.LayerWorkload(name="l", params=1e6, weight_reads=1, weight_bits=4, dense_macs=1e6, synops=3e5,
                              nonspiking_ops=1e4, neuron_steps=4e3, kv_elements=2e3, activation_elements=5e3, tokens=1, steps=4)
    workload = acc.Workload(name="w", layers=(layer,), tokens=1, kv_bits=8)
    a, g = params.accelerator, params.gpu
    cost = acc.accelerator_cost(layer, workload, a)
    hbm = 1e6 * 4 / 8 + 2e3
    compute_s, memory_s = (3e5 + 1e4) / a.pe_count / a.clock_hz, hbm / a.hbm_bandwidth_bytes_per_s
    assert cost.time_s == pytest.approx(max(compute_s, memory_s))
    sram = hbm + 3e5 * 4 / 8 + 2 * 4e3 * a.membrane_bytes
    dynamic = (3e5 * a.accumulate_pj + 1e4 * a.mac_pj + sram * a.sram_pj_per_byte) * 1e-12
    assert cost.energy_j == pytest.approx(dynamic + a.static_w * cost.time_s)
    assert cost.energy_hbm_j == pytest.approx(hbm * a.hbm_pj_per_byte * 1e-12)
    gpu = acc.gpu_cost(layer, g)
    gpu_bytes = 2 * (1e6 + 2e3 + 5e3)
    assert gpu.bound == "memory"
    assert gpu.time_s == pytest.approx(gpu_bytes / g.hbm_bandwidth_bytes_per_s / g.achieved_fraction)
    assert gpu.energy_j == pytest.approx(g.power_w * gpu.time_s)


def test_ratios_are_consistent(measured, params):
    _, report = measured
    totals = acc.compare(acc.workload_from_report(report), params).totals()
    r = totals["ratios"]
    assert r["energy_per_token_ratio_chip"] == pytest.approx(r["power_ratio_chip"] * r["throughput_ratio"])
    assert r["energy_per_token_ratio_with_hbm"] == pytest.approx(r["power_ratio_with_hbm"] * r["throughput_ratio"])
    assert totals["accelerator_with_hbm"]["power_w"] > totals["accelerator_chip"]["power_w"]


def test_paper_preset_lands_within_15_percent_at_measured_rates(measured, params):
    _, report = measured
    rates = acc.measured_rates(report)
    assert 0 < rates.linear < 1 and 0 < rates.qk < 1 and 0 < rates.pv < 1
    ratios = acc.compare(acc.paper_preset(rates), params).totals()["ratios"]
    assert ratios["throughput_ratio"] == pytest.approx(9.06, rel=0.15)
    assert ratios["power_ratio_chip"] == pytest.approx(25.8, rel=0.15)
    # The fitted values in the parameter file are the fit's, rounded.
    fit = acc.fit_to_paper(acc.paper_preset(rates), params)
    assert params.accelerator.pe_count == pytest.approx(fit["pe_count"], rel=0.02)
    assert params.accelerator.static_w == pytest.approx(fit["static_w"], abs=0.05)
    assert params.gpu.achieved_fraction == pytest.approx(fit["achieved_fraction"], abs=0.01)


def test_fewer_steps_for_more_image_tokens_raise_the_ratios(params):
    rates = acc.SpikeRates(linear=0.3, qk=0.4, pv=0.2)
    text_only, mixed = (acc.compare(acc.paper_preset(rates, image_share=f), params).totals()["ratios"] for f in (0.0, 0.7))
    assert mixed["throughput_ratio"] > text_only["throughput_ratio"]
    slow = acc.compare(acc.paper_preset(rates, steps={"image": 7, "text": 7}), params).totals()["ratios"]
    assert slow["throughput_ratio"] < text_only["throughput_ratio"]


def test_bad_workload_arguments():
    rates = acc.SpikeRates(linear=0.3, qk=0.4, pv=0.2)
    with pytest.raises(ValueError, match=r"image_share must be in \[0, 1\]"):
        acc.synthetic_workload(acc.QWEN2VL_7B, rates, {"image": 3, "text": 4}, image_share=1.5)
    with pytest.raises(ValueError, match="steps must give positive 'text' and 'image' steps"):
        acc.synthetic_workload(acc.QWEN2VL_7B, rates, {"image": 3})
    with pytest.raises(ValueError, match=r"SpikeRates.linear must be in \[0, 1\]"):
        acc.SpikeRates(linear=1.2, qk=0.1, pv=0.1)
    with pytest.raises(ValueError, match="heads must divide hidden"):
        acc.DecoderShape("x", layers=1, hidden=10, intermediate=4, heads=3, kv_heads=1, vocab=8)


def test_ratio_plot_is_written(tmp_path, params):
    path = acc.plot_ratios(tmp_path / "ratios.png", params, acc.SpikeRates(linear=0.3, qk=0.4, pv=0.2))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

import json

import pytest
import torch

from spikemllm_sj import convert
from spikemllm_sj.analysis.op_report import op_report
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch


@pytest.fixture(scope="module", params=["tiny-llava", "tiny-qwen2-vl"])
def report_and_model(request):
    model = convert(build_tiny_model(request.param))
    batch = tiny_batch(model, batch_size=2)
    return op_report(model, **batch), model, batch


def test_synaptic_operations_are_one_accumulation_per_spike_and_fan_out(report_and_model):
    report, model, _ = report_and_model
    modules = dict(model.named_modules())
    linear = [s for s in report.sites if s.kind == "linear"]
    assert linear and all(s.spikes > 0 for s in linear)
    for site in linear:
        assert site.synops == site.spikes * modules[site.name].out_features, site.name
    assert report.synops == sum(s.synops for s in report.sites)
    for site in report.sites:
        assert 0 < site.firing_rate < 1


def test_steps_per_token_follow_the_modalities(report_and_model):
    report, _, batch = report_and_model
    assert report.steps_per_token() == {"image": 3.0, "text": 4.0}
    lm_site = next(s for s in report.sites if s.kind == "linear" and "language_model" in s.name)
    mask = batch["attention_mask"].bool()
    # Every token the language model sees (padding included) is counted once per site.
    assert sum(lm_site.tokens.values()) == mask.numel()
    pv = next(s for s in report.sites if s.kind == "attention.pv")
    assert pv.steps_per_token == {"probabilities": 8.0}


def test_non_spiking_work_and_float_modules_are_listed(report_and_model):
    report, _, _ = report_and_model
    assert report.non_spiking_flops["total"] > 0
    assert report.non_spiking_by_op["_softmax.default"] > 0
    assert "lm_head" in report.float_modules
    assert not any("proj" in name and "patch" not in name for name in report.float_modules)
    data = json.loads(report.to_json())
    assert data["total"]["synops"] == report.synops
    table = report.format_table()
    assert "synaptic ops" in table and "kept in the model's precision" in table


def test_report_does_not_change_the_outputs(report_and_model):
    _, model, batch = report_and_model
    with torch.no_grad():
        first = model(**batch).logits
        op_report(model, **batch)
        assert torch.equal(model(**batch).logits, first)
    assert all(m.mode == "spike" for m in model.modules() if isinstance(m, SpikeLinear))

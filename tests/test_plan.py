"""Per-site MSTS plans: steps by layer range, layer type and section, applied at conversion or
afterwards, kept by save/load, and counted by the op report."""

import pytest
import torch

from spikemllm_sj import MSTSPlan, SpikeConfig, convert, load_spiking, op_report, save_spiking, set_mode, set_msts
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.med import ALL, VISION, model_sections, plan_config, steps_applied
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch
from spikemllm_sj.neurons import MSTSConfig

PLAN = MSTSPlan((
    ("vision", {"image": 2}),
    ("layer 1", {"text": 5}),
    ("layers 0-1/mlp.down_proj", {"text": 6, "image": 4}),
    ("attention.qk", {"text": 7}),
))


def steps_of(model) -> dict[str, dict[str, int]]:
    return {
        name: {m.name.lower(): code.steps for m, code in site.encoder.config.codes.items()}
        for name, site in model.named_modules()
        if isinstance(site, MSTSSite)
    }


def expected(path: str) -> dict[str, int]:
    """PLAN resolved by hand for tiny-qwen2-vl (text 4, image 3, video 3 by default)."""
    steps = {"text": 4, "image": 3, "video": 3}
    if path.startswith("model.visual."):
        steps["image"] = 2
    if path.startswith("model.language_model.layers.1."):
        steps["text"] = 5
    if path.endswith("mlp.down_proj"):
        steps.update(text=6, image=4)
    if path.endswith("spike_attention.qk"):
        steps["text"] = 7
    return steps


@pytest.fixture(scope="module")
def planned():
    model = build_tiny_model("tiny-qwen2-vl")
    batch = tiny_batch(model, batch_size=2)
    return convert(model, SpikeConfig(plan=PLAN)), batch


def test_every_site_gets_the_steps_its_selectors_give(planned):
    model, _ = planned
    steps = steps_of(model)
    assert len(steps) > 20 and all(steps[path] == expected(path) for path in steps)


def test_a_planned_model_equals_its_twin_and_set_msts_on_a_plain_conversion(planned):
    model, batch = planned
    with torch.no_grad():
        spike = model(**batch).logits
        set_mode(model, "fake_quant")
        twin = model(**batch).logits
        set_mode(model, "spike")
        plain = convert(build_tiny_model("tiny-qwen2-vl"))
        set_msts(plain, plan=PLAN)
        applied = plain(**batch).logits
    assert torch.equal(spike, twin) and torch.equal(spike, applied)
    assert spike_state(plain).config.plan == PLAN


def test_the_op_report_counts_each_sites_steps(planned):
    model, batch = planned
    report = op_report(model, **batch)
    for site in report.sites:
        if site.kind != "attention.pv":
            assert site.steps_per_token == {m: float(expected(site.name)[m]) for m in site.tokens}


def test_save_and_load_keep_the_plan(planned, tmp_path):
    model, batch = planned
    loaded = load_spiking(save_spiking(model, tmp_path / "snn"))
    assert spike_state(loaded).config.plan == PLAN and steps_of(loaded) == steps_of(model)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_a_med_section_plan_becomes_a_spike_config_plan():
    model = convert(build_tiny_model("tiny-qwen2-vl"))
    batch = tiny_batch(model, batch_size=2)
    sections = model_sections(model, groups=2)
    plan = {VISION: {"image": 2}, "layer 0": {"text": 3, "image": 3, "video": 3}, "layer 1": {"text": 5, "image": 2, "video": 2}}
    with torch.no_grad(), steps_applied(model, plan, sections):
        swept = model(**batch).logits
    config = plan_config(spike_state(model).config, plan)
    assert config.plan.overrides[0] == ("vision", {"image": 2})
    with torch.no_grad():
        converted = convert(build_tiny_model("tiny-qwen2-vl"), config)(**batch).logits
    assert torch.equal(swept, converted)
    whole = plan_config(SpikeConfig(), {ALL: {"text": 5, "image": 2}})
    assert whole.msts == MSTSConfig(steps={"text": 5, "image": 2, "video": 3}) and not whole.plan


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        ((("layers 3-1", {"text": 4}),), ValueError, "layer range 3-1 is empty"),
        ((("mlp down", {"text": 4}),), ValueError, "is none of 'vision'"),
        ((("vision", {}),), ValueError, "non-empty mapping"),
        ((("vision", {"image": 0}),), ValueError, "positive ints"),
        ((("vision", {"pixels": 3}),), ValueError, "unknown modality 'pixels'"),
        ((("vision",),), TypeError, r"\(selector, steps\) pair"),
        ("vision", TypeError, "sequence of"),
    ],
)
def test_bad_plans_are_refused_when_built(overrides, error, match):
    with pytest.raises(error, match=match):
        MSTSPlan(overrides)


def test_a_plan_must_select_a_site_and_fit_the_scheme():
    with pytest.raises(ValueError, match="'layers 5-6' selects none of the model's"):
        convert(build_tiny_model("tiny-llava"), SpikeConfig(plan=MSTSPlan((("layers 5-6", {"text": 3}),))))
    rate = SpikeConfig(msts=MSTSConfig(steps={"text": 15, "image": 7}, scheme="rate_bidirectional"),
                       plan=MSTSPlan((("mlp.down_proj", {"text": 4}),)))
    with pytest.raises(ValueError, match="steps=4 does not match"):
        convert(build_tiny_model("tiny-llava"), rate)
    assert SpikeConfig.from_dict(SpikeConfig(plan=PLAN).to_dict()).plan == PLAN

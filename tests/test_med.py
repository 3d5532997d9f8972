import itertools
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from properties import examples

from spikemllm_sj import SpikeConfig, calibrate, convert, op_report
from spikemllm_sj.ann2snn.recipe import set_msts, spike_state
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.commands.cli import main
from spikemllm_sj.integrations.serialization import load_spiking, save_spiking
from spikemllm_sj.med import (
    ALL,
    VISION,
    MEDConfig,
    SensitivityTable,
    analyze,
    compare,
    explain,
    model_sections,
    schedule,
    steps_applied,
)
from spikemllm_sj.med.measure import check_modalities
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch, tiny_video_batch
from spikemllm_sj.neurons import MSTSConfig

CANDIDATES = (2, 3, 4, 5, 6, 7)


pytestmark = pytest.mark.usefixtures("one_thread")  # the sweeps run many small forwards


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


# Changing steps without converting again.


@pytest.mark.parametrize("act_scales", ["dynamic", "static"])
def test_set_msts_equals_converting_with_those_steps(act_scales, tmp_path):
    batch = tiny_batch("tiny-qwen2-vl", batch_size=2, seed=3)
    steps = MSTSConfig(steps={"text": 2, "image": 5, "video": 3})
    models = [build_tiny_model("tiny-qwen2-vl") for _ in range(2)]
    calib = calibrate(models[0], [tiny_batch(models[0], 2, seed=0)], progress=False) if act_scales == "static" else None
    swapped = convert(models[0], SpikeConfig(act_scales=act_scales), calibration=calib)
    set_msts(swapped, steps)
    fresh = convert(models[1], SpikeConfig(msts=steps, act_scales=act_scales), calibration=calib)
    assert torch.equal(logits(swapped, batch), logits(fresh, batch))
    assert spike_state(swapped).config.msts.steps_of("image") == 5
    save_spiking(swapped, tmp_path)  # the new steps are saved with the model
    assert torch.equal(logits(load_spiking(tmp_path), batch), logits(fresh, batch))


def test_steps_applied_sets_each_sections_steps_and_restores_them():
    model = convert(build_tiny_model("tiny-qwen2-vl"))
    batch = tiny_batch(model, batch_size=2, seed=1)
    before = logits(model, batch)
    sections = model_sections(model, groups=2)
    assert list(sections.sites) == [VISION, "layer 0", "layer 1"]
    assert dict(sections.layers) == {VISION: 0, "layer 0": 1, "layer 1": 1}
    modules = dict(model.named_modules())
    assert {p for s in sections.sites.values() for p in s} == {n for n, m in modules.items() if isinstance(m, MSTSSite)}
    plan = {VISION: {"image": 5}, "layer 0": {"text": 2, "image": 6}, "layer 1": {"text": 7, "image": 2}}
    with steps_applied(model, plan, sections):
        for section, paths in sections.sites.items():
            for path in paths:
                config = modules[path].encoder.config
                assert all(config.steps_of(m) == t for m, t in plan[section].items())
        assert not torch.equal(logits(model, batch), before)
        assert spike_state(model).config.msts.steps_of("text") == 4  # a per-section plan leaves the config
    assert torch.equal(logits(model, batch), before)
    with steps_applied(model, {ALL: {"text": 2, "image": 2}}, model_sections(model)):
        assert spike_state(model).config.msts.steps_of("image") == 2
    assert spike_state(model).config.msts.steps_of("image") == 3
    with pytest.raises(ValueError, match="unknown sections"):
        with steps_applied(model, {"layers 9-9": {"text": 2}}, sections):
            pass
    with pytest.raises(ValueError, match="groups must be an int in \\[1, 2\\]"):
        model_sections(model, groups=3)


# The scheduler on constructed measurements.


def curve(scale):
    """An error ``scale`` at 2 steps, 4x smaller with each extra step, 0 at the reference (7)."""
    return {t: 0.0 if t == 7 else scale / 4 ** (t - 2) for t in CANDIDATES}


def table(text, image, tokens=None):
    return SensitivityTable(tokens or {"text": 40, "image": 60}, CANDIDATES, 0.0, {ALL: {"text": text, "image": image}})


def test_insensitive_image_tokens_get_fewer_steps():
    t = table(text=curve(0.05), image=curve(0.001))
    result = schedule(t, budget=3.3)
    # 60% image tokens at 2 steps leave text 5: 0.6 * 2 + 0.4 * 5 = 3.2 <= 3.3 (text 6 would be 3.6).
    assert result.steps == {"text": 5, "image": 2}
    assert result.chosen.average_steps == pytest.approx(3.2)
    report = explain(result, t)
    assert "least sensitive: image" in report and "image at 2 steps alone costs" in report


def test_sensitive_image_tokens_keep_their_steps():
    result = schedule(table(text=curve(0.001), image=curve(0.05)), budget=3.3)
    assert result.steps == {"text": 2, "image": 4}  # 0.4 * 2 + 0.6 * 4 = 3.2
    equal = schedule(table(text=curve(0.02), image=curve(0.02)), budget=3.3)
    assert abs(equal.steps["text"] - equal.steps["image"]) <= 1


def test_measured_fidelity_overrules_the_prediction():
    t = table(text=curve(0.05), image=curve(0.001))
    predicted = schedule(t, budget=3.3).plan

    def fidelity(plan):  # an interaction the additive model cannot see: image at 2 steps hurts text
        steps = plan[ALL]
        return 1 - t.predict(plan) - (0.1 if steps["image"] == 2 else 0.0)

    result = schedule(t, budget=3.3, fidelity=fidelity, verify=4)
    assert len(result.verified) == 4 and result.verified[0].plan == predicted
    assert result.plan != predicted and result.steps["image"] > 2
    assert result.chosen.measured == max(c.measured for c in result.verified)
    assert all(c.average_steps <= 3.3 for c in result.verified)


def test_target_fidelity_picks_the_cheapest_plan_that_reaches_it():
    t = table(text=curve(0.05), image=curve(0.001))
    result = schedule(t, target=0.99, fidelity=lambda plan: 1 - t.predict(plan))
    brute = min(
        (t.average_steps(p), p)
        for p in ({ALL: {"text": a, "image": b}} for a, b in itertools.product(CANDIDATES, repeat=2))
        if 1 - t.predict(p) >= 0.99
    )
    assert result.chosen.average_steps == pytest.approx(brute[0]) and result.chosen.measured >= 0.99
    with pytest.raises(ValueError, match="no plan reached fidelity 0.999"):
        schedule(t, target=0.999, fidelity=lambda plan: 0.5)


def test_layer_groups_share_the_budget():
    error = {
        VISION: {"image": curve(0.01)},
        "layer 0": {"text": curve(0.05), "image": curve(0.001)},
        "layer 1": {"text": curve(0.001), "image": curve(0.05)},
    }
    weights = {VISION: {"image": 0}, "layer 0": {"text": 40, "image": 60}, "layer 1": {"text": 40, "image": 60}}
    t = SensitivityTable({"text": 40, "image": 60}, CANDIDATES, 0.0, error, weights)
    with pytest.raises(ValueError, match="outside the budget"):
        schedule(t, budget=3.3)
    result = schedule(t, budget=3.3, fixed={VISION: {"image": 4}})
    assert result.plan[VISION] == {"image": 4}
    assert result.plan["layer 0"]["image"] < result.plan["layer 0"]["text"]
    assert result.plan["layer 1"]["image"] > result.plan["layer 1"]["text"]
    assert result.chosen.average_steps <= 3.3


@examples(60)
@given(
    st.lists(st.floats(0, 0.5), min_size=9, max_size=9),
    st.integers(1, 50),
    st.integers(1, 50),
    st.integers(0, 50),
    st.floats(2.0, 5.0),
    st.integers(1, 6),
)
def test_the_scheduler_measures_the_best_predicted_plans(raw, n_text, n_image, n_video, budget, verify):
    candidates = (2, 3, 5)
    mods = ("text", "image", "video") if n_video else ("text", "image")
    # Errors decreasing in steps per modality, 0 at the reference (5 steps).
    error = {m: {2: raw[3 * i] + raw[3 * i + 1], 3: raw[3 * i], 5: 0.0} for i, m in enumerate(mods)}
    tokens = {"text": n_text, "image": n_image, **({"video": n_video} if n_video else {})}
    t = SensitivityTable(tokens, candidates, 0.0, {ALL: error})
    plans = [{ALL: dict(zip(mods, steps))} for steps in itertools.product(candidates, repeat=len(mods))]
    fits = sorted(t.predict(p) for p in plans if t.average_steps(p) <= budget + 1e-9)
    assert t.predict(schedule(t, budget=budget).plan) == pytest.approx(fits[0], abs=1e-12)
    measured = schedule(t, budget=budget, fidelity=lambda p: 1 - t.predict(p), verify=verify).verified
    assert [t.predict(c.plan) for c in measured] == pytest.approx(fits[:verify], abs=1e-12)


def test_scheduler_bad_input():
    t = table(text=curve(0.05), image=curve(0.001))
    with pytest.raises(ValueError, match="budget 1.5 is below the smallest step count 2"):
        schedule(t, budget=1.5)
    with pytest.raises(ValueError, match="exactly one of budget"):
        schedule(t, budget=3.0, target=0.9)
    with pytest.raises(ValueError, match="exactly one of budget"):
        schedule(t)
    with pytest.raises(ValueError, match="target must be a fidelity in \\(0, 1\\]"):
        schedule(t, target=1.5)
    with pytest.raises(ValueError, match="fixed\\['all'\\] must give each of"):
        schedule(t, budget=3.0, fixed={ALL: {"text": 9, "image": 2}})
    with pytest.raises(ValueError, match="tokens must count text and image or video tokens"):
        SensitivityTable({"text": 10}, CANDIDATES, 0.0, {ALL: {"text": curve(0.1)}})
    with pytest.raises(ValueError, match="tokens must count text and image or video tokens"):
        SensitivityTable({"image": 10}, CANDIDATES, 0.0, {ALL: {"image": curve(0.1)}})
    with pytest.raises(ValueError, match="lacks step counts \\[7\\]"):
        table(text={t: 0.1 for t in CANDIDATES[:-1]}, image=curve(0.1))
    with pytest.raises(ValueError, match="strictly increasing"):
        SensitivityTable({"text": 1, "image": 1}, (3, 2), 0.0, {ALL: {"text": {2: 0.0, 3: 0.0}}})
    with pytest.raises(ValueError, match="plan gives no steps"):
        t.average_steps({ALL: {"text": 3}})
    with pytest.raises(ValueError, match="no text tokens"):
        check_modalities({"image": 4}, "the calibration batches")


# analyze() on a tiny model.


@pytest.fixture(scope="module")
def study():
    model = build_tiny_model("tiny-qwen2-vl")
    batches = [tiny_batch(model, batch_size=2, seed=0), tiny_video_batch(model, batch_size=1, seed=0)]
    holdout = [tiny_batch(model, batch_size=2, seed=1)]
    return analyze(model, batches, med=MEDConfig(candidates=(2, 3, 4), groups=1), holdout=holdout, progress=False)


def test_analyze_measures_evolution_and_sensitivity(study):
    assert study.tokens == {"text": 16 + 7, "image": 24, "video": 24}  # rows of 7 + 2i text tokens
    assert len(study.evolution) == 2
    for e in study.evolution:
        assert set(e.cosine_change) == {"text", "image", "video"}
        assert e.med() == {v: e.cosine_change["text"] - e.cosine_change[v] for v in ("image", "video")}
        assert all(0 < x < 2 for x in e.cosine_change.values()) and all(x > 0 for x in e.relative_update.values())
    # Whole model: 3 modalities x 3 steps; vision tower 1 x 3; decoder layers 3 x 3.
    assert len(study.entries) == 9 + 3 + 9
    at_ref = study.measure(study.uniform({"text": 4, "image": 4, "video": 4}))
    assert all(e.result == at_ref for e in study.entries if e.steps == 4)
    entry = next(e for e in study.entries if (e.section, e.modality, e.steps) == (ALL, "text", 2))
    assert entry.result == study.measure(study.uniform({"text": 2, "image": 4, "video": 4}))
    assert len(entry.result.layer_error) == 2 and set(entry.result.layer_error[0]) == {"text", "image", "video"}
    t = study.table()
    assert t.error[ALL]["image"][3] == pytest.approx(1 - study.measure(study.uniform({"text": 4, "image": 3, "video": 4})).cosine)
    groups = study.table(groups=True)
    assert set(groups.error) == {VISION, "layers 0-1"} and set(groups.error[VISION]) == {"image"}


def test_study_schedules_with_measured_fidelity(study):
    result = study.schedule(budget=3.0)
    assert result.chosen.measured == study.measure(result.plan).cosine
    assert result.chosen.average_steps <= 3.0
    grouped = study.schedule(budget=3.0, groups=True)
    assert grouped.plan[VISION] == {"image": result.steps["image"]}  # held at the whole-model image steps
    sites = study.schedule(budget=3.0, groups=True, over="sites")  # the vision tower counts: free to move
    assert study.average_steps(sites.plan, "sites") <= 3.0
    with pytest.raises(ValueError, match="below the smallest step count 2"):
        study.schedule(budget=1.9)
    with pytest.raises(ValueError, match="over must be one of"):
        study.table(over="layers")


def test_average_steps_of_plans(study):
    n = study.tokens
    split = study.uniform({"text": 4, "image": 3, "video": 3})
    assert study.average_steps(split) == (4 * n["text"] + 3 * (n["image"] + n["video"])) / sum(n.values())
    for t in (2, 3, 4):
        plan = study.uniform({"text": t, "image": t, "video": t})
        assert study.average_steps(plan) == t and study.average_steps(plan, "sites") == t


def test_site_tokens_and_firing_rates_agree_with_the_op_report(study):
    model = study.model
    tokens: dict = {}
    spikes = steps = 0
    modules = dict(model.named_modules())
    for batch in study.reference.batches:
        for site in op_report(model, **batch).sites:
            if site.kind != "attention.pv":
                for m, count in site.tokens.items():
                    tokens.setdefault(site.name, {}).setdefault(m, 0)
                    tokens[site.name][m] += count
            if site.name.startswith("model.visual.blocks.0.") and site.kind != "attention.pv":
                # What the op report read: the site's activity over this batch.
                spikes += modules[site.name].activity.spikes
                steps += modules[site.name].activity.neuron_steps
    rates = study.firing_rates(study.uniform({"text": 4, "image": 3, "video": 3}))  # the converted default
    assert study.site_tokens() == tokens
    # Vision blocks have no padding: their rate is the op report's spikes over neuron steps.
    assert rates["vision 0"]["image"] == spikes / steps
    assert set(rates["layer 0"]) == {"text", "image", "video"} and all(0 < r < 1 for r in rates["layer 1"].values())


def test_compare_rows(study):
    rows, schedules = compare(study, uniform=(2, 4), splits=((3, 4),), budgets=(3.0,), holdout=True)
    labels = [r["label"] for r in rows]
    assert labels == ["T=2", "T=4", "Tv/Tt=3/4", "MSTS 3", "MSTS/groups 3"]
    msts = rows[3]
    assert msts["plan"] == schedules["tokens", 3.0][0].plan and msts["average_steps"] <= 3.0
    assert msts["cosine"] == study.measure(msts["plan"], holdout=True).cosine
    assert rows[1]["cosine"] > rows[0]["cosine"]  # 4 steps everywhere beat 2


def test_analyze_bad_input():
    model = build_tiny_model("tiny-qwen2-vl")
    text_only = [{"input_ids": torch.randint(3, 500, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]
    with pytest.raises(ValueError, match="no image or video tokens"):
        analyze(model, text_only, progress=False)
    llava = build_tiny_model("tiny-llava")  # a row of image tokens only (no BOS): no text at all
    image_only = {"input_ids": torch.full((1, 16), 500), "pixel_values": torch.zeros(1, 3, 32, 32)}
    with pytest.raises(ValueError, match="the calibration batches have no text tokens"):
        analyze(llava, [image_only], progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        analyze(model, [], progress=False)
    with pytest.raises(ValueError, match="batches\\[0\\] has no input_ids"):
        analyze(model, [{"pixel_values": torch.zeros(1)}], progress=False)
    with pytest.raises(ValueError, match="groups must be at most the 2 decoder layers"):
        analyze(model, [tiny_batch(model, 1)], med=MEDConfig(groups=3), progress=False)
    with pytest.raises(ValueError, match="candidates must be a tuple of at least two"):
        MEDConfig(candidates=(3,))
    with pytest.raises(ValueError, match="MED needs a model that spikemllm_sj.convert supports"):
        analyze(torch.nn.Linear(2, 2), [tiny_batch(model, 1)], progress=False)
    rate = SpikeConfig(msts=MSTSConfig(bits={"text": 5, "image": 4, "video": 4}, scheme="rate_bidirectional"))
    with pytest.raises(ValueError, match="steps=2 does not match a power-of-two number of levels"):
        analyze(model, [tiny_batch(model, 1)], rate, progress=False)
    converted = convert(build_tiny_model("tiny-qwen2-vl"))
    with pytest.raises(ValueError, match="already converted"):
        analyze(converted, [tiny_batch(model, 1)], progress=False)


@pytest.mark.slow
def test_cli_writes_json_report_and_plots(tmp_path, capsys):
    args = ["med", "--model", "tiny-qwen2-vl", "--out", str(tmp_path), "--candidates", "2", "3", "--batches", "1", "--holdout", "1",
            "--budgets", "2.5"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "MSTS 2.5" in printed and "budget 2.5:" in printed
    result = json.loads((tmp_path / "med.json").read_text())
    assert result["model"] == "tiny-qwen2-vl" and set(result["tokens"]) == {"text", "image", "video"}
    assert [r["label"] for r in result["comparison"]][-2:] == ["MSTS 2.5", "MSTS/groups 2.5"]
    assert "Chosen:" in result["schedules"]["2.5"]["report"]
    report = (tmp_path / "report.md").read_text()
    assert "## MED per decoder layer" in report and "spikemllm med --model tiny-qwen2-vl" in report
    for name in ("med_per_layer.png", "fidelity_vs_steps.png", "firing_rate.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--budgets", "1.5"]) == 2
    assert "budget 1.5 is below the smallest step count 2" in capsys.readouterr().err

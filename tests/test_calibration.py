import copy

import pytest
import torch

from spikemllm_sj import Calibration, SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.integrations.serialization import load_spiking, save_spiking
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch

STATIC = SpikeConfig(act_scales="static")


def batches(model, n=3):
    return [tiny_batch(model, batch_size=2, seed=s) for s in range(n)]


def test_static_scales_from_calibration_and_exactness(tmp_path):
    model = build_tiny_model("tiny-qwen2-vl")
    calib = calibrate(model, batches(model), progress=False)
    assert calib.batches == 3
    lm_q = calib.absmax["model.language_model.layers.0.self_attn.q_proj"]
    assert all(len(v) == 64 for v in lm_q.values())  # one range per input channel
    assert set(lm_q) == {"text", "image"} and all(max(v) > 0 for v in lm_q.values())
    assert set(calib.absmax["model.visual.blocks.0.attn.qkv"]) == {"image"}

    batch = tiny_batch(model, batch_size=2, seed=7)
    snn = convert(model, STATIC, calibration=calib)
    sites = [m for m in snn.modules() if isinstance(m, SpikeLinear)]
    assert sites and all(m.static for m in sites)
    with torch.no_grad():
        spike = snn(**batch).logits
        set_mode(snn, "fake_quant")
        twin = snn(**batch).logits
        set_mode(snn, "spike")
    assert torch.equal(spike, twin)

    save_spiking(snn, tmp_path)
    loaded = load_spiking(tmp_path)
    assert spike_state(loaded).config.act_scales == "static"
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, spike)


def test_static_and_dynamic_scales_differ():
    outs = {}
    for scales in ("dynamic", "static"):
        model = build_tiny_model("tiny-llava")
        calib = calibrate(model, batches(model), progress=False) if scales == "static" else None
        snn = convert(model, SpikeConfig(act_scales=scales), calibration=calib)
        with torch.no_grad():
            outs[scales] = snn(**tiny_batch(model, batch_size=1)).logits
    assert not torch.equal(outs["dynamic"], outs["static"])


def test_calibration_resumes_and_round_trips_through_json(tmp_path):
    model = build_tiny_model("tiny-llava")
    data = batches(model, 4)
    full = calibrate(model, data, progress=False)
    part = calibrate(model, data[:2], progress=False)
    part.save(tmp_path / "calib.json")
    resumed = calibrate(model, data[2:], resume=Calibration.load(tmp_path / "calib.json"), progress=False)
    assert resumed.batches == 4
    assert resumed.absmax == full.absmax


def test_calibration_errors():
    model = build_tiny_model("tiny-llava")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(model, [], progress=False)
    bad = tiny_batch(model, batch_size=1)
    bad["pixel_values"] = torch.full_like(bad["pixel_values"], float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        calibrate(model, [bad], progress=False)
    with pytest.raises(ValueError, match="need a calibration"):
        convert(model, STATIC)
    with pytest.raises(ValueError, match="nothing would use it"):
        convert(model, SpikeConfig(), calibration=Calibration())
    with pytest.raises(ValueError, match="no statistics for"):
        convert(model, STATIC, calibration=Calibration())
    assert not any(isinstance(m, SpikeLinear) for m in model.modules())  # untouched after failures
    with pytest.raises(ValueError, match="act_scales must be"):
        SpikeConfig(act_scales="per-token")


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_image_placeholders_without_pixels_are_refused(name):
    model = build_tiny_model(name)
    blind = tiny_batch(model, batch_size=1)
    del blind["pixel_values"]
    with pytest.raises(ValueError, match="input_ids hold image tokens but no pixel_values were given"):
        calibrate(model, [blind], progress=False)


def test_video_placeholders_without_pixels_are_refused():
    from spikemllm_sj.models.tiny import tiny_video_batch

    model = build_tiny_model("tiny-qwen2-vl")
    blind = tiny_video_batch(model, 1)
    del blind["pixel_values_videos"]
    with pytest.raises(ValueError, match="input_ids hold video tokens but no pixel_values_videos were given"):
        calibrate(model, [blind], progress=False)


@pytest.mark.parametrize("weight_method", ["rtn", "gptq"])
def test_a_failed_resumed_calibration_leaves_it_unchanged(weight_method):
    config = SpikeConfig(act_scales="static", weight_method=weight_method)
    model = build_tiny_model("tiny-llava")
    data = batches(model, 3)
    resumed = calibrate(model, data[:1], config, progress=False)
    before = copy.deepcopy(resumed)
    bad = tiny_batch(model, batch_size=2, seed=9)
    bad["pixel_values"] = torch.full_like(bad["pixel_values"], float("nan"))
    # The good batches run and record first; the bad one fails.
    with pytest.raises(ValueError, match="NaN or infinite"):
        calibrate(model, [*data[1:], bad], config, resume=resumed, progress=False)
    assert resumed.batches == before.batches == 1
    assert resumed.absmax == before.absmax
    assert resumed.hessians.keys() == before.hessians.keys()
    assert all(torch.equal(resumed.hessians[k], before.hessians[k]) for k in before.hessians)
    # A successful resume adds the new batches: ranges as one calibration over all of them.
    again = calibrate(model, data[1:], config, resume=resumed, progress=False)
    assert again is resumed and again.batches == 3
    assert again.absmax == calibrate(model, data, config, progress=False).absmax

"""A failed conversion leaves the model exactly as it was: state_dict, forward, attention
implementation and training flags; a retry then converts as a fresh model would."""

import copy

import pytest
import torch

from spikemllm_sj import SpikeConfig, calibrate, convert
from spikemllm_sj.ann2snn import recipe
from spikemllm_sj.ann2snn.calibration import Calibration
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch
from spikemllm_sj.quantization import rotation
from spikemllm_sj.quantization.methods import RTN, Hadamard, QuaRot, SmoothQuant

CONFIGS = {
    "rtn": SpikeConfig(method=RTN()),
    "rtn-static": SpikeConfig(method=RTN(), act_scales="static"),
    "smoothquant": SpikeConfig(method=SmoothQuant(0.5)),
    "hadamard": SpikeConfig(method=Hadamard()),
    "quarot": SpikeConfig(method=QuaRot()),
    "gptq": SpikeConfig(weight_method="gptq"),
}


class Injected(Exception):
    pass


def snapshot(model):
    """Everything a failed conversion must give back, as copies."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": {k: p for k, p in model.named_parameters(remove_duplicate=False)},  # the Parameter objects
        "modules": dict(model.named_modules()),
        "attn": model.config._attn_implementation,
        "training": {n: m.training for n, m in model.named_modules()},
    }


def assert_unchanged(model, before, batch, logits):
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        got = after["state"][key]
        assert got.dtype == value.dtype and torch.equal(got, value), key
    assert {k: id(p) for k, p in after["params"].items()} == {k: id(p) for k, p in before["params"].items()}
    assert {k: id(m) for k, m in after["modules"].items()} == {k: id(m) for k, m in before["modules"].items()}
    assert after["attn"] == before["attn"] and after["training"] == before["training"]
    assert not hasattr(model, "spikemllm_state") and not model._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, logits)


def fail_at(monkeypatch, target, name, at):
    """Make ``target.name`` raise ``Injected`` on its ``at``-th call (1-based; ``-1``: the last)."""
    original = getattr(target, name)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise Injected(f"{name} call {at}")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)
    return calls


def count_calls(monkeypatch, target, name, model, config, calibration) -> int:
    calls = fail_at(monkeypatch, target, name, at=0)
    convert(copy.deepcopy(model), config, calibration)
    monkeypatch.undo()
    return calls["n"]


@pytest.fixture(scope="module")
def llava():
    model = build_tiny_model("tiny-llava")
    batch = tiny_batch(model, batch_size=2)
    with torch.no_grad():
        logits = model(**batch).logits
    return model, batch, logits


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("rollback", ["disk", "memory"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_failure_at_any_site_puts_the_model_back(llava, monkeypatch, name, where, rollback):
    model, batch, logits = llava
    model = copy.deepcopy(model)
    config = CONFIGS[name]
    calibration = calibrate(model, [batch], config, progress=False) if config.needs_calibration else None
    sites = count_calls(monkeypatch, recipe.SpikeMLLMRecipe, "_spike_linear", model, config, calibration)
    at = {"first": 1, "middle": sites // 2, "last": sites}[where]
    before = snapshot(model)
    fail_at(monkeypatch, recipe.SpikeMLLMRecipe, "_spike_linear", at)
    with pytest.raises(Injected):
        convert(model, config, calibration, rollback=rollback)
    assert_unchanged(model, before, batch, logits)
    monkeypatch.undo()
    # A retry converts as a fresh model does, and every new module is in eval mode.
    fresh = convert(copy.deepcopy(llava[0]), config, calibration)
    retried = convert(model, config, calibration)
    assert not any(m.training for m in retried.modules())
    with torch.no_grad():
        assert torch.equal(retried(**batch).logits, fresh(**batch).logits)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("family", ["tiny-llava", "tiny-qwen2-vl"])
def test_a_failure_inside_the_rotation_puts_the_model_back(monkeypatch, family, where):
    model = build_tiny_model(family)
    batch = tiny_batch(model, batch_size=2)
    with torch.no_grad():
        logits = model(**batch).logits
    config = SpikeConfig(method=QuaRot())
    writes = count_calls(monkeypatch, rotation, "_write", model, config, None)
    before = snapshot(model)
    fail_at(monkeypatch, rotation, "_write", {"first": 1, "middle": writes // 2, "last": writes}[where])
    with pytest.raises(Injected):
        convert(model, config)
    assert_unchanged(model, before, batch, logits)


def test_an_interrupt_during_the_swaps_puts_the_model_back(llava, monkeypatch):
    model, batch, logits = llava
    model = copy.deepcopy(model)
    before = snapshot(model)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe.SpikeMLLMRecipe, "_swap", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(model)
    assert_unchanged(model, before, batch, logits)


def test_a_calibration_entry_of_the_wrong_shape_is_refused_before_any_change(llava):
    model, batch, logits = llava
    model = copy.deepcopy(model)
    config = SpikeConfig(act_scales="static")
    calibration = calibrate(model, [batch], config, progress=False)
    last = list(calibration.absmax)[-1]
    short = Calibration({**calibration.absmax, last: {m: v[:-1] for m, v in calibration.absmax[last].items()}}, calibration.batches)
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"{last}.*shape \({len(calibration.absmax[last]['text']) - 1},\)"):
        convert(model, config, short)
    assert_unchanged(model, before, batch, logits)
    gptq = SpikeConfig(weight_method="gptq")
    calibration = calibrate(model, [batch], gptq, progress=False)
    calibration.hessians[last] = calibration.hessians[last][:-1, :-1]
    with pytest.raises(ValueError, match=rf"Hessian of {last} is"):
        convert(model, gptq, calibration)
    assert_unchanged(model, before, batch, logits)


def test_non_finite_weights_are_refused_before_any_change(llava):
    model, batch, logits = llava
    model = copy.deepcopy(model)
    layer = model.model.language_model.layers[1].mlp.down_proj
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(ValueError, match="layers.1.mlp.down_proj.weight contains NaN"):
        convert(model)
    after = snapshot(model)
    for key, value in before["state"].items():
        torch.testing.assert_close(after["state"][key], value, rtol=0, atol=0, equal_nan=True)
    assert not hasattr(model, "spikemllm_state")


def test_the_disk_journal_leaves_no_file(llava, monkeypatch, tmp_path):
    model, batch, _ = llava
    model = copy.deepcopy(model)
    fail_at(monkeypatch, recipe.SpikeMLLMRecipe, "_spike_linear", 5)
    with pytest.raises(Injected):
        convert(model, rollback_dir=tmp_path)
    monkeypatch.undo()
    convert(model, rollback_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="rollback must be one of"):
        convert(copy.deepcopy(llava[0]), rollback="none")

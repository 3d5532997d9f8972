import pytest
import torch

from spikemllm_sj import SpikeConfig, calibrate, convert, set_mode
from spikemllm_sj.ann2snn.calibration import Calibration
from spikemllm_sj.models.tiny import build_tiny_model, tiny_batch
from spikemllm_sj.neurons import IntLevels
from spikemllm_sj.quantization.methods import Hadamard, SmoothQuant
from spikemllm_sj.quantization.weights import gptq, quantize_weight


def correlated_inputs(n=512, d=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Strongly correlated channels, as in LLM activations: GPTQ has errors to compensate.
    mix = torch.randn(d // 4, d, generator=g)
    return (torch.randn(n, d // 4, generator=g) @ mix + 0.1 * torch.randn(n, d, generator=g)) * torch.linspace(0.2, 3.0, d)


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_reduces_the_layer_output_error_against_rounding(bits):
    x = correlated_inputs()
    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    levels = IntLevels.from_bits(bits)
    errors = {}
    for name, hessian in (("rtn", None), ("gptq", x.double().T @ x.double())):
        q, scale = quantize_weight(w, levels, hessian)
        assert q.abs().max() <= levels.qmax and torch.equal(q, q.round())
        errors[name] = float((x @ w.T - x @ (q * scale).T).norm())
    assert errors["gptq"] < 0.9 * errors["rtn"], errors


def test_gptq_levels_stay_in_range_and_dead_inputs_are_zeroed():
    x = correlated_inputs(d=16)
    x[:, 3] = 0.0  # an input that is never active
    w = torch.randn(8, 16)
    levels = IntLevels(16)
    scale = w.abs().amax(1, keepdim=True) / levels.qmax
    q = gptq(w, scale, levels, x.T @ x)
    assert (q[:, 3] == 0).all() and q.abs().max() <= 7
    with pytest.raises(ValueError, match=r"hessian must be \[16, 16\]"):
        gptq(w, scale, levels, torch.eye(8))


@pytest.mark.parametrize("method", [None, SmoothQuant(0.5), Hadamard()])
def test_gptq_converted_models_stay_exact(method):
    config = SpikeConfig(weight_method="gptq", weight_bits=4, **({} if method is None else {"method": method}))
    model = build_tiny_model("tiny-llava")
    batches = [tiny_batch(model, batch_size=2, seed=s) for s in range(2)]
    calib = calibrate(model, batches, config, progress=False)
    assert "model.language_model.layers.0.mlp.down_proj" in calib.hessians
    snn = convert(model, config, calibration=calib)
    with torch.no_grad():
        spike = snn(**batches[0]).logits
        set_mode(snn, "fake_quant")
        assert torch.equal(snn(**batches[0]).logits, spike)


def test_hessians_survive_save_and_load(tmp_path):
    config = SpikeConfig(weight_method="gptq")
    model = build_tiny_model("tiny-llava")
    calib = calibrate(model, [tiny_batch(model, batch_size=1)], config, progress=False)
    calib.save(tmp_path / "calib.json")
    again = Calibration.load(tmp_path / "calib.json")
    assert again.hessians.keys() == calib.hessians.keys()
    site = next(iter(calib.hessians))
    assert torch.equal(again.hessians[site], calib.hessians[site])


def test_gptq_needs_hessians():
    model = build_tiny_model("tiny-llava")
    rtn_calib = calibrate(model, [tiny_batch(model, batch_size=1)], progress=False)
    with pytest.raises(ValueError, match="no input Hessian"):
        convert(model, SpikeConfig(weight_method="gptq"), calibration=rtn_calib)
    with pytest.raises(ValueError, match="weight_method must be"):
        SpikeConfig(weight_method="awq")
    assert not any(type(m).__name__ == "SpikeLinear" for m in model.modules())


def column_by_column_gptq(w, scale, levels, hessian, damp=0.01):
    """GPTQ as the paper's Algorithm 1 states it before lazy batching: every column's error is
    spread at once over all the later columns (the reference for the blocked implementation)."""
    n = w.shape[1]
    h = hessian.double().clone()
    w = w.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(n, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    q = torch.empty_like(w)
    for i in range(n):
        q[:, i] = torch.clamp(torch.floor(w[:, i] / scale[:, 0].double() + 0.5), levels.qmin, levels.qmax)
        err = (w[:, i] - q[:, i] * scale[:, 0].double()) / u[i, i]
        w[:, i + 1 :] -= err[:, None] * u[i, i + 1 :][None, :]
    return q.float()


@pytest.mark.parametrize("block", [1, 5, 16, 128])
def test_blocked_gptq_equals_the_column_by_column_algorithm(block):
    x = correlated_inputs(d=48)
    x[:, 7] = 0.0
    w = torch.randn(24, 48, generator=torch.Generator().manual_seed(2))
    levels = IntLevels.from_bits(4)
    scale = w.abs().amax(1, keepdim=True) / levels.qmax
    hessian = x.double().T @ x.double()
    assert torch.equal(gptq(w, scale, levels, hessian, block=block), column_by_column_gptq(w, scale, levels, hessian))
    with pytest.raises(ValueError, match="block must be a positive int"):
        gptq(w, scale, levels, hessian, block=0)

"""Bad input to the Lava backend fails early and clearly; a failing or interrupted run is stopped."""

import multiprocessing

import numpy as np
import pytest
import torch

from spikemllm_sj.lava_backend import (
    TCLIF,
    LavaNetwork,
    LavaRunError,
    SpikeDense,
    SpikeLinearSpec,
    run_lava,
    to_lava,
)
from spikemllm_sj.neurons import IntLevels, SpikeCode, TCLIFNode

pytestmark = pytest.mark.lava

TC_LIF_16 = SpikeCode("tc_lif", IntLevels(16))


@pytest.mark.parametrize(
    ("weight", "kwargs", "message"),
    [
        (torch.tensor([[127, 128]]), {}, r"weight must lie in \[-128, 127\] \(signed 8-bit"),
        (torch.tensor([[-129, 0]]), {}, r"got values in \[-129, 0\]"),
        (torch.tensor([[8, 0]]), {"weight_bits": 4}, r"\[-8, 7\]"),
        (torch.tensor([[0.5, 1.0]]), {}, "weight must hold integer values"),
        (torch.tensor([[float("nan"), 1.0]]), {}, "weight must hold integer values"),
        (torch.zeros(2, 3, 4), {}, r"non-empty 2-D array \[out, in\]"),
        (torch.ones(1, 2), {"weight_bits": 40}, "weight_bits must be an int in"),
    ],
)
def test_weights_outside_the_fixed_point_range_are_rejected(weight, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpikeLinearSpec(weight, TC_LIF_16, 0.1, **kwargs)


def test_accumulator_that_could_overflow_int32_is_rejected():
    # 1024 inputs * 127 * (2**15 - 1) does not fit int32; with 16 levels it does.
    weight = torch.full((2, 1024), 127)
    with pytest.raises(ValueError, match="beyond the int32 accumulator"):
        SpikeLinearSpec(weight, SpikeCode("tc_lif", IntLevels(1 << 16)), 0.1)
    assert SpikeLinearSpec(weight, TC_LIF_16, 0.1).weight.dtype == torch.int32


def test_spec_normalizes_integer_valued_floats_and_checks_its_fields():
    spec = SpikeLinearSpec(torch.tensor([[3.0, -2.0]]), TC_LIF_16, torch.tensor(0.5))
    assert spec.weight.tolist() == [[3, -2]] and spec.scale == 0.5
    with pytest.raises(ValueError, match="scale must be one finite number > 0"):
        SpikeLinearSpec(spec.weight, TC_LIF_16, torch.ones(2))
    with pytest.raises(TypeError, match="code must be a SpikeCode"):
        SpikeLinearSpec(spec.weight, "tc_lif", 0.5)


def test_processes_check_their_arguments():
    with pytest.raises(TypeError, match="code must be a SpikeCode"):
        TCLIF(shape=(2,), code=None)
    with pytest.raises(ValueError, match="scale must be a finite float > 0"):
        TCLIF(shape=(2,), code=TC_LIF_16, scale=0.0)
    with pytest.raises(ValueError, match=r"weights must lie in \[-128, 127\]"):
        SpikeDense(weights=np.full((2, 2), 200), code=TC_LIF_16)


def test_to_lava_rejects_what_it_cannot_map():
    with pytest.raises(TypeError, match="to_lava cannot map a Linear"):
        to_lava(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="per-tensor scale only"):
        to_lava(TCLIFNode(levels=16, scale=torch.ones(4)), size=4)
    with pytest.raises(ValueError, match="precision must be one of"):
        to_lava(TCLIFNode(levels=16), size=4, precision="fixed")
    with pytest.raises(ValueError, match="without a layer must encode"):
        LavaNetwork("fixed_pt", TC_LIF_16, 1.0, 4, encode=False)
    spec = SpikeLinearSpec(torch.ones(3, 4), TC_LIF_16, 0.5)
    with pytest.raises(ValueError, match="size: network 5 vs layer 4"):
        LavaNetwork("fixed_pt", TC_LIF_16, 0.5, 5, layer=spec)


@pytest.mark.parametrize(
    ("encode", "precision", "inputs", "error", "message"),
    [
        (True, "fixed_pt", torch.zeros(3, 5), ValueError, r"inputs must have shape \[n_tokens, 4\].*got \(3, 5\)"),
        (True, "fixed_pt", torch.zeros(4), ValueError, r"inputs must have shape \[n_tokens, 4\]"),
        (True, "fixed_pt", torch.zeros(0, 4), ValueError, r"n_tokens >= 1"),
        (True, "fixed_pt", [[0.0] * 4], TypeError, "inputs must be a torch.Tensor"),
        (True, "fixed_pt", torch.full((1, 4), float("inf")), ValueError, "inputs contains NaN or infinite"),
        (True, "fixed_pt", torch.full((1, 4), 2**40), ValueError, "inputs .integer levels. must lie in the int32"),
        (True, "floating_pt", torch.zeros(1, 4, dtype=torch.int32), TypeError, "integer levels need a fixed_pt"),
        (False, "fixed_pt", torch.zeros(2, 1, 4), ValueError, r"inputs \(spike trains\) must have shape \[T=3, "),
        (False, "fixed_pt", torch.zeros(3, 1, 5), ValueError, r"got \(3, 1, 5\)"),
        (False, "fixed_pt", torch.full((3, 1, 4), 2.0), ValueError, r"must hold only \(-1, 0, 1\)"),
    ],
)
def test_run_lava_rejects_bad_inputs_before_running(encode, precision, inputs, error, message):
    spec = SpikeLinearSpec(torch.ones(2, 4), TC_LIF_16, 0.5)
    with pytest.raises(error, match=message):
        run_lava(to_lava(spec, precision=precision, encode=encode), inputs)


def _no_lava_children() -> bool:
    return multiprocessing.active_children() == []


@pytest.mark.timeout(60)
def test_model_exception_is_reported_with_its_traceback_and_the_runtime_stopped():
    net = to_lava(TCLIFNode(levels=256), size=2, precision="fixed_pt")
    # 2**30 doubles past int32 within the 7-step window: the fixed-point model raises.
    with pytest.raises(LavaRunError, match=r"(?s)OverflowError: TCLIF membrane .* exceeds the int32 range"):
        run_lava(net, torch.tensor([[2**30, 1]]))
    assert _no_lava_children()
    assert run_lava(net, torch.tensor([[100, 1]]))[:, 0, 0].tolist() == [1, 1, 0, 0, 1, 0, 0]


@pytest.mark.timeout(60)
def test_interrupted_run_stops_the_runtime(monkeypatch):
    from lava.magma.runtime.runtime import Runtime

    def interrupted(runtime):  # Ctrl-C while the run is under way
        raise KeyboardInterrupt

    monkeypatch.setattr(Runtime, "_get_resp_for_run", interrupted)
    net = to_lava(TCLIFNode(levels=16), size=2, precision="fixed_pt")
    with pytest.raises(KeyboardInterrupt):
        run_lava(net, torch.tensor([[5, -3]]))
    assert _no_lava_children()
    monkeypatch.undo()
    assert run_lava(net, torch.tensor([[5, -3]]))[:, 0].tolist() == [[1, 0], [0, -1], [1, -1]]  # 4+1, -2-1

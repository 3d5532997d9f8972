"""Bad input to the Lava backend fails early and clearly; a failing or interrupted run is stopped."""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from leftovers import leaked_segments, segments

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
    before = segments()
    # 2**30 doubles past int32 within the 7-step window: the fixed-point model raises.
    with pytest.raises(LavaRunError, match=r"(?s)OverflowError: TCLIF membrane .* exceeds the int32 range"):
        run_lava(net, torch.tensor([[2**30, 1]]))
    assert _no_lava_children() and not leaked_segments(before)
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("started", [1, 3])
def test_ctrl_c_to_the_group_while_lava_starts_is_delivered_once_all_is_accounted_for(monkeypatch, capfd, started):
    from lava.magma.runtime.message_infrastructure.multiprocessing import MultiProcessing

    build_actor = MultiProcessing.build_actor
    built = []
    interrupt_at = {"actor": None}  # None: count the actors of an uninterrupted start-up

    def build_then_interrupt(self, *args, **kwargs):
        actor = build_actor(self, *args, **kwargs)
        built.append(actor)
        if len(built) == interrupt_at["actor"]:  # Ctrl-C in a terminal: every process of the group
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return actor

    monkeypatch.setattr(MultiProcessing, "build_actor", build_then_interrupt)
    net = to_lava(TCLIFNode(levels=16), size=2, precision="fixed_pt")
    expected = [[1, 0], [0, -1], [1, -1]]  # 5 = 4 + 1, -3 = -2 - 1
    assert run_lava(net, torch.tensor([[5, -3]]))[:, 0].tolist() == expected
    actors = len(built)
    built.clear()
    interrupt_at["actor"] = started
    before = segments()
    with pytest.raises(KeyboardInterrupt):
        run_lava(net, torch.tensor([[5, -3]]))
    # The interrupt took effect once the start-up was done, not half-way through it.
    assert len(built) == actors > started
    assert _no_lava_children() and not leaked_segments(before)
    # Lava's processes ignored the SIGINT (their parent stopped them): none died with a traceback.
    assert "Traceback" not in capfd.readouterr().err
    monkeypatch.undo()
    assert run_lava(net, torch.tensor([[5, -3]]))[:, 0].tolist() == expected


@pytest.mark.timeout(60)
def test_an_unstopped_runtime_does_not_hang_the_exit(tmp_path):
    # A user's own Lava network, run without stop(): the exit used to wait for its processes forever.
    script = textwrap.dedent("""
        import numpy as np
        import spikemllm_sj.lava_backend  # the compatibility fixes
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.io.sink import RingBuffer as Sink
        from lava.proc.io.source import RingBuffer as Source

        source, sink = Source(data=np.ones((2, 5))), Sink(shape=(2,), buffer=5)
        source.s_out.connect(sink.a_in)
        sink.run(condition=RunSteps(num_steps=5), run_cfg=Loihi2SimCfg())
        print(sink.data.get()[0].tolist())
    """)
    before = segments()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert out.split() == ["[1.0,", "1.0,", "1.0,", "1.0,", "1.0]"]
    assert not leaked_segments(before) and not list(tmp_path.glob("pymp-*"))


@pytest.mark.timeout(120)
def test_a_failed_start_up_reports_its_own_error(tmp_path):
    # A TMPDIR this deep makes the socket path of Lava's shared-memory server too long to bind
    # (108 bytes at most): the server cannot start. The stop after it used to raise an
    # AttributeError ('SharedMemoryManager' object has no attribute 'shutdown') over that error.
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    script = textwrap.dedent("""
        import torch
        from spikemllm_sj.lava_backend import run_lava, to_lava
        from spikemllm_sj.neurons import TCLIFNode
        run_lava(to_lava(TCLIFNode(levels=16), size=2, precision="fixed_pt"), torch.tensor([[5, -3]]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100,
                          env={**os.environ, "TMPDIR": str(deep)})
    assert proc.returncode == 1
    assert "OSError: AF_UNIX path too long" in proc.stderr  # the server's own report
    assert proc.stderr.rstrip().splitlines()[-1] == "EOFError"  # what the start-up raised
    assert "AttributeError" not in proc.stderr

"""lava-nc 0.10.0 on Python 3.11 through spikemllm_sj.lava_backend's compatibility hook.

Only Lava's built-in processes are used: Lava executes every .py file in the folder of a
Process's module when it compiles, so no Process may be defined in this folder.
"""

import importlib.util
import json
import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import spikemllm_sj.lava_backend as lava_backend
from spikemllm_sj.lava_backend._compat import LavaCompatError, rewrite_source

pytestmark = pytest.mark.lava

requires_lava = pytest.mark.skipif(
    importlib.util.find_spec("lava") is None, reason="lava-nc (the [lava] extra) is not installed"
)

VAR_MODEL = "lava.magma.compiler.var_model"
LAVA_MP = "lava.magma.runtime.message_infrastructure.multiprocessing"
SHARED_MEMORY = "lava.magma.runtime.message_infrastructure.shared_memory_manager"

# RingBuffer -> Dense -> LIF for 10 steps. Input 0 spikes at every step, input 1 at step 1 only.
# Dense delivers at step t what it received at t - 1, so the LIF gets W @ s at steps 2..10; with
# du = 1, dv = 0 and no bias, u is the last input and v sums inputs, reset to 0 when v > 4.2:
#   neuron 0 (w = [1, 0]):   v = 1, 2, 3, 4, 5 (spike, 0) at steps 2..6, then 1, 2, 3, 4 -> v = 4
#   neuron 1 (w = [.5, 3]):  v = 3.5, 4, 4.5 (spike, 0) at steps 2..4, then 6 x 0.5     -> v = 3
STEPS = 10
WEIGHTS = [[1.0, 0.0], [0.5, 3.0]]
EXPECTED_U = [1.0, 0.5]
EXPECTED_V = [4.0, 3.0]


def run_tiny_network() -> dict:
    """Run the network above on Lava's CPU simulator and read back the LIF's u and v."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIF

    spikes = np.zeros((2, STEPS))
    spikes[0, :] = 1
    spikes[1, 0] = 1
    source = RingBuffer(data=spikes)
    dense = Dense(weights=np.array(WEIGHTS))
    lif = LIF(shape=(2,), du=1, dv=0, bias_mant=0, vth=4.2)
    source.s_out.connect(dense.s_in)
    dense.a_out.connect(lif.a_in)
    try:
        lif.run(condition=RunSteps(num_steps=STEPS), run_cfg=Loihi2SimCfg())
        return {"u": lif.u.get().tolist(), "v": lif.v.get().tolist()}
    finally:
        lif.stop()


@requires_lava
@pytest.mark.timeout(120)
def test_tiny_network_runs_after_package_import():
    from lava.magma.compiler import var_model

    assert run_tiny_network() == {"u": EXPECTED_U, "v": EXPECTED_V}
    # The rewritten dataclass defaults: a fresh ByteEncoder per instance, not one shared default.
    first, second = var_model.CoreEncoder(), var_model.CoreEncoder()
    assert first.x == var_model.ByteEncoder() and first.x is not second.x


# Run in a fresh interpreter: the start method is process-wide and can be set only once.
_START_METHOD_SCRIPT = """
import json, multiprocessing, sys
method = sys.argv[1] if len(sys.argv) > 1 else None
if method:
    multiprocessing.set_start_method(method)
import spikemllm_sj.lava_backend
from lava.proc.lif.process import LIF  # imports Lava's multiprocessing module
after_import = multiprocessing.get_start_method(allow_none=True)
from lava.magma.runtime.message_infrastructure.multiprocessing import SystemProcess
from lava.magma.runtime.message_infrastructure.shared_memory_manager import SharedMemoryManager
smm_method = SharedMemoryManager()._manager._ctx.get_start_method()  # not started: no process
sys.path.insert(0, {tests!r})
from test_lava_compat import run_tiny_network
print(json.dumps({{"after_import": after_import, "actor_method": SystemProcess._start_method,
                  "smm_method": smm_method, "result": run_tiny_network(),
                  "after_run": multiprocessing.get_start_method()}}))
"""


@requires_lava
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", [None, "fork", "spawn", "forkserver"])
def test_import_and_run_with_start_method_already_chosen(method):
    script = _START_METHOD_SCRIPT.format(tests=str(Path(__file__).parent))
    argv = [sys.executable, "-c", script] + ([method] if method else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    # Lava's own processes (runtime actors, shared-memory server) fork whatever the user chose;
    # the user's choice stays, and with none chosen, importing Lava no longer pins one (plain Lava
    # set 'fork' process-wide at import).
    assert report["actor_method"] == report["smm_method"] == "fork"
    assert report["after_import"] == method
    if method:
        assert report["after_run"] == method
    assert report["result"] == {"u": EXPECTED_U, "v": EXPECTED_V}


def test_ensure_lava_importable_is_idempotent():
    before = list(sys.meta_path)  # importing the package installed the hook already
    for _ in range(3):
        lava_backend.ensure_lava_importable()
    assert sys.meta_path == before
    hooks = [f for f in sys.meta_path if type(f).__module__ == "spikemllm_sj.lava_backend._compat"]
    assert len(hooks) == 1


_FAKE_VAR_MODEL = """
from dataclasses import dataclass, InitVar


@dataclass
class ByteEncoder:
    base: int = 0


@dataclass
class CoreEncoder:
    x: ByteEncoder = ByteEncoder()
    y: ByteEncoder = ByteEncoder()
"""

_FAKE_LAVA_MP = """
import multiprocessing as mp
import platform

if platform.system() != 'Windows':
    mp.set_start_method('fork')


class SystemProcess(mp.Process):
    def __init__(self, *args, **kwargs):
        mp.Process.__init__(self, *args, **kwargs)
"""


@pytest.mark.skipif(sys.version_info < (3, 11), reason="var_model is patched on Python 3.11+ only")
def test_rewrite_fixes_fake_var_model():
    with pytest.raises(ValueError, match="mutable default"):
        exec(compile(_FAKE_VAR_MODEL, "<fake>", "exec"), {"__name__": "fake"})
    patched = rewrite_source(VAR_MODEL, _FAKE_VAR_MODEL)
    assert patched.count("\n") == _FAKE_VAR_MODEL.count("\n")  # tracebacks keep their lines
    namespace = {"__name__": "fake"}
    exec(compile(patched, "<fake>", "exec"), namespace)
    first, second = namespace["CoreEncoder"](), namespace["CoreEncoder"]()
    assert first.x is not first.y and first.x is not second.x


def test_rewrite_gives_lava_a_fork_context_without_touching_the_global_method():
    if sys.platform == "win32":
        pytest.skip("Lava does not use fork on Windows")
    namespace = {}
    exec(compile(rewrite_source(LAVA_MP, _FAKE_LAVA_MP), "<fake>", "exec"), namespace)
    assert namespace["mp"].get_start_method() == "fork"
    assert namespace["mp"] is not multiprocessing
    # Lava's actors are daemon processes: the interpreter's exit terminates them, never waits.
    assert namespace["SystemProcess"](target=print).daemon


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (VAR_MODEL, _FAKE_VAR_MODEL.replace("ByteEncoder()", "None")),
        (VAR_MODEL, _FAKE_VAR_MODEL.replace("from dataclasses", "import dataclasses  #")),
        (LAVA_MP, _FAKE_LAVA_MP.replace("mp.set_start_method('fork')", "pass")),
        (LAVA_MP, _FAKE_LAVA_MP.replace("mp.Process.__init__(self, *args", "super().__init__(*args")),
        (SHARED_MEMORY, "import multiprocessing.managers as managers\n"),
    ],
    ids=["var_model-defaults", "var_model-import", "multiprocessing", "multiprocessing-actor", "shared_memory_manager"],
)
def test_rewrite_fails_loudly_when_lava_source_changed(module, source):
    if module == VAR_MODEL and sys.version_info < (3, 11):
        pytest.skip("var_model is patched on Python 3.11+ only")
    with pytest.raises(LavaCompatError, match="expected source pattern .* not found"):
        rewrite_source(module, source)
    # Not an ImportError, which pytest.importorskip or an ImportError fallback would swallow.
    assert not issubclass(LavaCompatError, ImportError)


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.version_info < (3, 11), reason="var_model is patched on Python 3.11+ only")
def test_import_of_unknown_lava_release_fails_loudly(tmp_path):
    # A Lava whose var_model no longer has the expected defaults; lava is a namespace package,
    # so this directory ahead on sys.path supplies the module.
    fake = tmp_path / "lava" / "magma" / "compiler" / "var_model.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("x = 1\n")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import spikemllm_sj.lava_backend
        import lava.magma.compiler.var_model
        """
    )
    argv = [sys.executable, "-c", script]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "LavaCompatError" in proc.stderr and "var_model" in proc.stderr, proc.stderr

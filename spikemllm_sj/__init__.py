"""spikemllm-sj: SpikeMLLM for SpikingJelly.

Spike-driven multimodal LLMs from Hugging Face models: exact TC-LIF spike coding of quantized
activations, modality-specific time steps (MSTS), and a Lava backend.

``from spikemllm_sj import SpikeConfig, convert`` loads the converter (and ``transformers``) on
first use, so that ``spikemllm_sj.neurons`` stays light. ``import spikemllm_sj`` also registers
the ``"spikemllm"`` quantizer with transformers (saved converted models load with
``from_pretrained``), without importing transformers: the registration runs when transformers
imports its quantizer registry, or at once if it already has.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

_LAZY = {
    "SpikeConfig": "spikemllm_sj.config",
    "RECOMMENDED": "spikemllm_sj.config",
    "convert": "spikemllm_sj.ann2snn.recipe",
    "set_mode": "spikemllm_sj.ann2snn.recipe",
    "set_activity_recording": "spikemllm_sj.ann2snn.recipe",
    "recording_activity": "spikemllm_sj.ann2snn.recipe",
    "set_msts": "spikemllm_sj.ann2snn.recipe",
    "MSTSPlan": "spikemllm_sj.ann2snn.plan",
    "SpikeMLLMRecipe": "spikemllm_sj.ann2snn.recipe",
    "supported_models": "spikemllm_sj.ann2snn.adapters",
    "calibrate": "spikemllm_sj.ann2snn.calibration",
    "Calibration": "spikemllm_sj.ann2snn.calibration",
    "op_report": "spikemllm_sj.analysis.op_report",
    "save_spiking": "spikemllm_sj.integrations.serialization",
    "load_spiking": "spikemllm_sj.integrations.serialization",
}
__all__ = ["__version__", *_LAZY]

_REGISTRY = "transformers.quantizers.auto"
_QUANTIZER = "spikemllm_sj.integrations.transformers_quantizer"


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spikemllm_sj' has no attribute {name!r}")


class _RegisteringLoader(importlib.abc.Loader):
    """Runs transformers' quantizer registry module, then registers the quantizer in it."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        importlib.import_module(_QUANTIZER)

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self.loader, name)


class _RegisterWhenImported(importlib.abc.MetaPathFinder):
    """Finds transformers' quantizer registry module with the path finder and wraps its loader."""

    def find_spec(self, name, path=None, target=None):
        if name != _REGISTRY:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


if _REGISTRY in sys.modules:
    importlib.import_module(_QUANTIZER)
else:
    sys.meta_path.insert(0, _RegisterWhenImported())

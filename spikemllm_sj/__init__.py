"""spikemllm-sj: SpikeMLLM for SpikingJelly.

Spike-driven multimodal LLMs from Hugging Face models: exact TC-LIF spike coding of quantized
activations, modality-specific time steps (MSTS), and a Lava backend.

``from spikemllm_sj import SpikeConfig, convert`` loads the converter (and ``transformers``) on
first use, so that ``spikemllm_sj.neurons`` stays light.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "SpikeConfig": "spikemllm_sj.config",
    "convert": "spikemllm_sj.ann2snn.recipe",
    "set_mode": "spikemllm_sj.ann2snn.recipe",
    "set_msts": "spikemllm_sj.ann2snn.recipe",
    "MSTSPlan": "spikemllm_sj.ann2snn.plan",
    "SpikeMLLMRecipe": "spikemllm_sj.ann2snn.recipe",
    "supported_models": "spikemllm_sj.ann2snn.adapters",
    "calibrate": "spikemllm_sj.ann2snn.calibration",
    "Calibration": "spikemllm_sj.ann2snn.calibration",
    "op_report": "spikemllm_sj.analysis.op_report",
    "save_spiking": "spikemllm_sj.ann2snn.serialization",
    "load_spiking": "spikemllm_sj.ann2snn.serialization",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spikemllm_sj' has no attribute {name!r}")

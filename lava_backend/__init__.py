"""Lava backend of spikemllm-sj (installed as ``spikemllm_sj.lava_backend``): spike-coding layers
simulated on Intel's Lava (lava-nc 0.10.0, ``Loihi2SimCfg``, floating or int32 fixed point).

* :class:`TCLIF`: Lava Process of the exact spike coders (TC-LIF, and the rate codes), one value
  per window of ``T`` steps; bit-exact with :class:`spikemllm_sj.neurons.TCLIFNode`.
* :class:`SpikeDense`: integer weights driven by graded spikes, integrating each window by
  Horner's rule into exactly ``W @ q``.
* :class:`DecodedOp`: the non-spiking work between two spike-driven layers (dequantize, activation,
  the next layer's levels), once per token.
* :class:`SpikeLinearSpec`: a spike-driven linear layer as a converter describes it.
* :func:`to_lava` maps a ``SpikeCodingNode`` or a ``SpikeLinearSpec`` to a :class:`LavaNetwork`;
  :func:`run_lava` runs it on a token stream and reads the outputs back; :func:`simulate` runs
  any graph of these processes and collects what its sinks receive. Every run leaves no process
  or shared memory behind, also after an error or a Ctrl-C at any point (``._lifecycle``).
* :func:`run_model_on_lava`: the whole converted model (language model, vision tower, projector)
  for a prefill and greedy decode steps, as one network of :class:`SiteNeurons` (MSTS coders),
  :class:`SpikeSynapse` (weights and KV caches as state) and :class:`DecodedForward` (the model's
  own code between the sites), equal to PyTorch spike mode bit for bit, with the accelerator
  emulated in the processes (:mod:`spikemllm_sj.analysis.emulation`); :func:`model_mapping`
  checks a model before anything runs.
* ``.blocks``: converted layers of a real model on Lava, equal to PyTorch bit for bit:
  :func:`spec_from_spike_linear`, :func:`run_spike_linear`, :func:`run_mlp`,
  :func:`run_attention_projections`, and :func:`check_layer` (capture a layer's input, compare;
  :func:`check_lava_layer` checks a path first, on a float model too).

lava-nc 0.10.0 does not import on Python 3.11 as released, so this package first makes it
importable (:func:`ensure_lava_importable`): import it before anything from ``lava``. The names
above load on first use, so importing the package needs neither Lava nor its start-up time.
"""

import importlib

from ._compat import ensure_lava_importable

ensure_lava_importable()

# Public name -> submodule that defines it, loaded on first use (all but .spec import Lava).
_LAZY = {
    "TCLIF": ".tclif.process",
    "SpikeDense": ".spike_dense.process",
    "DecodedOp": ".decoded_op.process",
    "SpikeLinearSpec": ".spec",
    "LavaNetwork": ".network",
    "Precision": ".network",
    "PRECISIONS": ".network",
    "to_lava": ".network",
    "run_lava": ".runner",
    "LavaRunError": ".runner",
    "simulate": ".runner",
    "spec_from_spike_linear": ".blocks",
    "run_spike_linear": ".blocks",
    "run_spike_linears": ".blocks",
    "run_mlp": ".blocks",
    "run_attention_projections": ".blocks",
    "check_layer": ".blocks",
    "check_lava_layer": ".blocks",
    "capture_input": ".blocks",
    "lava_layers": ".blocks",
    "LavaBlockResult": ".blocks",
    "LayerCheck": ".blocks",
    "run_model_on_lava": ".whole_model",
    "model_mapping": ".whole_model",
    "WholeModelRun": ".whole_model",
    "SiteNeurons": ".site_neurons.process",
    "SpikeSynapse": ".spike_synapse.process",
    "DecodedForward": ".decoded_forward.process",
}

__all__ = ["ensure_lava_importable", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

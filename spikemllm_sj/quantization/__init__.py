"""Quantization inside the spikes: the ANN methods (:mod:`.methods`, a registry of
:class:`QuantMethod` classes), their input transforms, Hadamard matrices, the residual-stream
rotation, and weight quantization (round-to-nearest, GPTQ)."""

from spikemllm_sj.quantization.methods import METHODS, RTN, Hadamard, QuantMethod, QuaRot, SmoothQuant, method_from_dict
from spikemllm_sj.quantization.weights import gptq, quantize_weight

__all__ = ["QuantMethod", "RTN", "SmoothQuant", "Hadamard", "QuaRot", "METHODS", "method_from_dict", "quantize_weight", "gptq"]

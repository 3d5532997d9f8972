"""Spiking neurons and encoders of SpikeMLLM, as SpikingJelly classes.

Installed as ``spikemllm_sj.neurons``. The data path: a quantizer's integer levels
(:mod:`spikemllm_sj.quant`) -> a spike code (:class:`SpikeCode`) -> a neuron that emits it
(:class:`TCLIFNode` and the rate-coding baselines) or the per-modality encoder
(:class:`MSTSEncoder`) -> decoding (:func:`decode`, :class:`SpikeDecoder`).
"""

from .coding import SCHEMES, Scheme, SpikeCode
from .msts import Modality, MSTSConfig, MSTSEncoder, MSTSSpikes
from .nodes import (
    BidirectionalRateNode,
    BinaryRateNode,
    SpikeCodingNode,
    SpikeDecoder,
    TCLIFNode,
    decode,
    integrate,
)
from .stats import SpikeStats, binary_planes, spike_statistics

__all__ = [
    "SCHEMES",
    "Scheme",
    "SpikeCode",
    "Modality",
    "MSTSConfig",
    "MSTSEncoder",
    "MSTSSpikes",
    "SpikeCodingNode",
    "TCLIFNode",
    "BinaryRateNode",
    "BidirectionalRateNode",
    "SpikeDecoder",
    "decode",
    "integrate",
    "SpikeStats",
    "spike_statistics",
    "binary_planes",
]

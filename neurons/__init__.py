"""Spiking neurons and encoders of SpikeMLLM, as SpikingJelly classes.

Installed as ``spikemllm_sj.neurons``; it imports nothing from the rest of ``spikemllm_sj``, only
torch and SpikingJelly. The data path: a quantizer's integer levels (:mod:`.levels`, the contract
every code reproduces) -> a spike code (:class:`SpikeCode`) -> a neuron that emits it
(:class:`TCLIFNode`, the rate-coding baselines and the neighbouring systems' codes:
:class:`ClippedBidirectionalRateNode`, :class:`MeanThresholdBitwiseNode`) or the per-modality encoder
(:class:`MSTSEncoder`) -> the spike-driven product (:func:`spike_matmul`; a layer for networks
built by hand: :class:`SpikeDrivenLinear`) -> decoding (:func:`decode`, :class:`SpikeDecoder`).
"""

from .coding import DATA_DEPENDENT_SCHEMES, FIXED_STEP_SCHEMES, MEAN_THRESHOLD_DIVISOR, SCHEMES, Scheme, SpikeCode, bitwise_steps
from .levels import (
    Granularity,
    IntLevels,
    absmax_scale,
    check_finite,
    check_scale,
    divide_by_scale,
    fake_quantize,
    level_dtype,
    mean_threshold_scale,
    quantize,
    round_half_up,
    scale_from_absmax,
)
from .linear import SpikeDrivenLinear
from .msts import Modality, MSTSConfig, MSTSEncoder, MSTSSpikes, token_mask
from .nodes import (
    BidirectionalRateNode,
    BinaryRateNode,
    ClippedBidirectionalRateNode,
    MeanThresholdBitwiseNode,
    SpikeCodingNode,
    SpikeDecoder,
    TCLIFNode,
    decode,
    input_current,
    integrate,
)
from .spike_ops import exact_dtype, int_mm_is_exact, integer_dtype, integer_matmul, spike_matmul
from .stats import SpikeStats, binary_planes, spike_statistics

__all__ = [
    "IntLevels",
    "Granularity",
    "level_dtype",
    "round_half_up",
    "divide_by_scale",
    "check_finite",
    "check_scale",
    "quantize",
    "fake_quantize",
    "absmax_scale",
    "scale_from_absmax",
    "mean_threshold_scale",
    "SCHEMES",
    "DATA_DEPENDENT_SCHEMES",
    "FIXED_STEP_SCHEMES",
    "Scheme",
    "SpikeCode",
    "MEAN_THRESHOLD_DIVISOR",
    "bitwise_steps",
    "Modality",
    "MSTSConfig",
    "MSTSEncoder",
    "MSTSSpikes",
    "token_mask",
    "SpikeCodingNode",
    "TCLIFNode",
    "BinaryRateNode",
    "BidirectionalRateNode",
    "ClippedBidirectionalRateNode",
    "MeanThresholdBitwiseNode",
    "SpikeDecoder",
    "decode",
    "integrate",
    "input_current",
    "exact_dtype",
    "int_mm_is_exact",
    "integer_dtype",
    "integer_matmul",
    "spike_matmul",
    "SpikeDrivenLinear",
    "SpikeStats",
    "spike_statistics",
    "binary_planes",
]

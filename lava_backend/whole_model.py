"""A whole converted model on Lava: every spike-driven site as processes, the model's own code in
between, for a prefill and greedy decode steps, checked against PyTorch bit for bit.

The network of one generation (:func:`run_model_on_lava`)::

                              payload_out (levels, token ids, new K/V rows)
         DecodedForward  ------------------------------+---------------------------+-- ...
      (the model's code:       |                      |                           |
       embeddings, norms,      v                      v                           v
       rotary, softmax,    SiteNeurons  --spikes-->  SpikeSynapse            (every site:
       residuals, float    (MSTS coders)             (weights, or the         q/k/v/o, MLP,
       layers, scales)                               KV cache as state)       Q K^T, P V,
            ^   |                                          |                  vision tower,
            |   +-- result_out --> Extractor (host)        |                  projector)
            +------------------ acc_in (products, accounting) -------------+-- ...

Each site of the converted model (:class:`~spikemllm_sj.ann2snn.linear.SpikeLinear`, the two
matmuls of :class:`~spikemllm_sj.ann2snn.attention.SpikeAttention`, in the language model, the
vision tower and the projector) becomes a :class:`SiteNeurons` and a :class:`SpikeSynapse`
process; :class:`DecodedForward` runs ``model.generate`` with each site's product taken from
them (:attr:`SpikeSite.product_backend <spikemllm_sj.ann2snn.sites.SpikeSite.product_backend>`).
Attention keys and values live in their synapses as a KV cache that grows over the decode
steps. The time line is planned from a PyTorch run of the same generation
(:func:`~spikemllm_sj.lava_backend.model_plan.record_generation`), which is also the reference.

What does not map to spike-driven processes: the embedding lookup, the output head and patch
embeddings when they stay in float, and all non-spiking work; they run in ``DecodedForward``,
and the report gives their share of the work.
"""

from __future__ import annotations

import time
import typing as ty
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from lava.proc.io.extractor import Extractor

from spikemllm_sj.analysis.accelerator import AcceleratorParams, load_params
from spikemllm_sj.analysis.op_report import layer_scopes
from spikemllm_sj.ann2snn.attention import SpikeContext, SpikeScores
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.sites import SpikeSite
from spikemllm_sj.lava_backend._fixed_point import words_float
from spikemllm_sj.lava_backend._site_calls import check_accumulator, words_count
from spikemllm_sj.lava_backend.decoded_forward.process import DecodedForward
from spikemllm_sj.lava_backend.model_plan import (
    NEURON_FIELDS,
    SYNAPSE_FIELDS,
    Generation,
    ModelPlan,
    SiteCall,
    SiteSpec,
    record_generation,
)
from spikemllm_sj.lava_backend.network import PRECISIONS, Precision
from spikemllm_sj.lava_backend.runner import simulate
from spikemllm_sj.lava_backend.site_neurons.process import SiteNeurons
from spikemllm_sj.lava_backend.spike_synapse.process import SpikeSynapse
from spikemllm_sj.neurons import Modality

__all__ = ["ForwardSession", "ModelMapping", "model_mapping", "CallTrace", "WholeModelRun", "run_model_on_lava"]

# Bytes of readout messages buffered between two reads of the sink.
RESULT_BUFFER_BYTES = 64 << 20
# Messages each channel buffers. The processes move through the steps together (Lava's
# LoihiProtocol), so one message in flight per channel is all there is; Lava's default of 64 made
# the payload channels of a 135M-parameter model (600 processes) take over 20 GB of shared memory.
CHANNEL_SIZE = 2

GROUPINGS = ("layer", "site")
_SITE_TYPES = (SpikeLinear, SpikeScores, SpikeContext)
_FLOAT_LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ForwardSession:
    """What :class:`DecodedForward`'s thread runs: ``model.generate(**batch)`` for a prefill and
    ``decode_steps`` greedy decode steps."""

    model: nn.Module
    batch: dict
    decode_steps: int


@dataclass(frozen=True)
class ModelMapping:
    """How a converted model maps to Lava: its spike-driven sites, what their processes get of
    each (``specs``: codes, operand width, a linear site's integer weights), and the layers that
    stay in float and run in ``DecodedForward``."""

    sites: dict[str, SpikeSite]
    specs: dict[str, SiteSpec]
    float_layers: tuple[str, ...]


def _root_scope(model: nn.Module, name: str) -> str:
    return f"{type(model).__name__}.{name}"


def _site_spec(name: str, site: SpikeSite) -> SiteSpec:
    if isinstance(site, SpikeLinear):
        codes = {int(m): code for m, code in site.encoder.config.codes.items()}
        return SiteSpec(name, site.kind, codes, site.weight_levels.bits, site.qweight.to(torch.int32).numpy())
    if isinstance(site, SpikeScores):
        return SiteSpec(name, site.kind, {int(m): code for m, code in site.encoder.config.codes.items()}, site.kv_levels.bits)
    return SiteSpec(name, site.kind, {int(Modality.TEXT): site.prob.code}, site.kv_levels.bits)  # probabilities: one code


def model_mapping(model: nn.Module) -> ModelMapping:
    """Check that every spike-driven site of ``model`` can be mapped, before anything runs (the
    attention sites' accumulators, which depend on the positions a generation reaches, are
    checked once it is planned, before any Lava process starts).

    :raises ValueError: the model is not converted, lives on an accelerator (Lava forks its
        processes on the CPU), holds float64 parameters, or a linear site's integer products could
        leave the int32 accumulator; ``TypeError`` for a site of a type the backend does not know. Each names the layer.
    """
    sites = {name: m for name, m in model.named_modules() if isinstance(m, SpikeSite)}
    if not sites:
        raise ValueError(f"{type(model).__name__} has no spike-driven site: convert it first (spikemllm_sj.convert)")
    devices = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
    if devices != {"cpu"}:
        raise ValueError(f"run_model_on_lava needs the model on the CPU (Lava forks its processes), got devices {sorted(devices)}")
    if any(p.dtype == torch.float64 for p in model.parameters()):
        raise ValueError("run_model_on_lava takes float32, bfloat16 or float16 models (their logits travel as float32 "
                         "words), got float64 parameters")
    specs = {}
    for name, site in sites.items():
        if not isinstance(site, _SITE_TYPES):
            raise TypeError(
                f"{name} is a {type(site).__name__}, a spike-driven site the Lava backend cannot map "
                f"(it maps {', '.join(t.__name__ for t in _SITE_TYPES)})"
            )
        specs[name] = _site_spec(name, site)
        if isinstance(site, SpikeLinear):
            check_accumulator(specs[name])
    floats = tuple(n for n, m in model.named_modules() if isinstance(m, _FLOAT_LAYERS) and not isinstance(m, SpikeSite))
    return ModelMapping(sites=sites, specs=specs, float_layers=floats)


@dataclass(frozen=True)
class CallTrace:
    """One site call as the processes accounted for it (see ``SYNAPSE_FIELDS``/``NEURON_FIELDS``),
    with the non-spiking work the model's code did before it."""

    call: SiteCall
    counts: dict[str, int]
    nonspiking_before: int


@dataclass
class WholeModelRun:
    """A generation on Lava and the PyTorch reference it is checked against.

    :param plan: the time line; ``reference``: PyTorch spike mode's generation.
    :param last_logits: per forward, the logits at the last position ``[B, V]`` that Lava gave.
    :param tokens: the tokens the generation on Lava produced ``[B, forwards]``.
    :param traces: every call's accounting; ``scope_ops``: per forward, non-spiking work per module
        scope; ``tail_ops``: per forward, the work after its last call (final norm, output head).
    :param processes: Lava processes in the network; ``timings``: wall seconds of the phases
        (``reference``: the PyTorch generation; ``build``: creating the processes; then those of
        :func:`~spikemllm_sj.lava_backend.simulate`).
    """

    plan: ModelPlan
    mapping: ModelMapping
    precision: str
    reference: Generation
    last_logits: list[torch.Tensor]
    tokens: torch.Tensor
    traces: list[CallTrace]
    scope_ops: list[dict[str, int]]
    tail_ops: list[int]
    processes: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def forwards(self) -> int:
        return len(self.plan.readouts)

    @property
    def logits_exact(self) -> bool:
        """Every forward's logits (the last position's: ``generate`` computes no others) equal
        PyTorch's bit for bit."""
        return all(torch.equal(mine, ref[:, -1].float()) for mine, ref in zip(self.last_logits, self.reference.logits))

    @property
    def reference_tokens(self) -> torch.Tensor:
        return self.reference.sequences[:, -self.forwards :]

    @property
    def tokens_equal(self) -> bool:
        return torch.equal(self.tokens, self.reference_tokens)

    @property
    def exact(self) -> bool:
        return self.logits_exact and self.tokens_equal


def _stage_of(model: nn.Module, name: str) -> str:
    """The stage a site belongs to: the repeated block it is in (the child of the outermost
    ``ModuleList`` on its path: a decoder layer, a vision block), else its parent module (a projector)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), nn.ModuleList):
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1])


def _build(plan: ModelPlan, mapping: ModelMapping, session: ForwardSession, params: AcceleratorParams,
           grouping: str) -> tuple[Extractor, int, int]:
    """The network's processes, connected: a SiteNeurons and a SpikeSynapse per stage
    (``grouping="layer"``) or per site (``"site"``). Returns the sink of the readouts (with a
    buffer of ``steps_per_run`` messages), the process count and ``steps_per_run``."""
    host = DecodedForward(session=session, plan=plan)
    stages: dict[str, list[str]] = {}
    for name in mapping.sites:
        if plan.site_calls(name):  # sites the generation never called get no process
            stages.setdefault(name if grouping == "site" else _stage_of(session.model, name), []).append(name)
    for stage, names in stages.items():
        sites = [mapping.specs[n] for n in names]
        calls = [c for c in plan.calls if c.site in names]
        neurons = SiteNeurons(calls=calls, sites=sites, payload_width=plan.payload_width,
                              membrane_bytes=params.membrane_bytes, name=f"{stage}.neurons")
        synapse = SpikeSynapse(calls=calls, sites=sites, payload_width=plan.payload_width, acc_width=plan.acc_width,
                               pe_count=params.pe_count, name=f"{stage}.synapse")
        host.payload_out.connect(neurons.payload_in)
        host.payload_out.connect(synapse.payload_in)
        neurons.s_out.connect(synapse.s_in)
        synapse.a_out.connect(host.acc_in)
    steps_per_run = max(1, min(plan.num_steps, RESULT_BUFFER_BYTES // (8 * plan.result_width)))
    sink = Extractor(shape=(plan.result_width,), buffer_size=steps_per_run)
    host.result_out.connect(sink.in_port)
    return sink, 2 * len(stages) + 2, steps_per_run


def _read(plan: ModelPlan, messages: np.ndarray):
    """Split the readout messages (one per forward, then the final one) into logits, accounting and tokens."""
    B, V = plan.batch_rows, plan.vocab
    *messages, final = messages
    tokens = torch.from_numpy(final[: B * len(plan.readouts)].astype(np.int64).reshape(B, -1))
    last, traces, scope_ops, tail_ops = [], [], [], []
    per_call = plan.trace_width + 2
    names = (*SYNAPSE_FIELDS, *NEURON_FIELDS)
    for forward, message in enumerate(messages):
        message = message.astype(np.int64)
        at = 0
        last.append(words_float(message[at : at + B * V]).reshape(B, V))
        at += B * V
        counts = words_count(message[at : at + 2 * len(plan.scopes)])
        scope_ops.append(dict(zip(plan.scopes, counts)))
        at += 2 * len(plan.scopes)
        for call in (c for c in plan.calls if c.forward == forward):
            before, *fields = words_count(message[at : at + per_call])
            traces.append(CallTrace(call=call, counts=dict(zip(names, fields)), nonspiking_before=before))
            at += per_call
        tail_ops.append(words_count(message[at : at + 2])[0])
    return last, tokens, traces, scope_ops, tail_ops


def run_model_on_lava(
    model: nn.Module,
    batch: dict,
    *,
    decode_steps: int = 4,
    precision: Precision = "fixed_pt",
    grouping: str = "layer",
    params: ty.Optional[AcceleratorParams] = None,
) -> WholeModelRun:
    """Run a converted model's greedy generation (a prefill of ``batch`` and ``decode_steps`` decode
    steps) on Lava, and the same generation in PyTorch spike mode to check it against.

    :param model: a converted model (:func:`spikemllm_sj.convert`), on the CPU.
    :param batch: its forward / ``generate`` keyword arguments (``input_ids``, ``attention_mask``,
        pixels...).
    :param precision: ``"fixed_pt"`` (int32 processes) or ``"floating_pt"`` (float64).
    :param grouping: ``"layer"``: one ``SiteNeurons`` and one ``SpikeSynapse`` per stage (a decoder
        layer or vision block with all its sites: its weights and its KV cache; a projector),
        which a model of hundreds of sites needs (Lava runs each process as an OS process:
        about 20-35 MB each); ``"site"``: a pair per site.
    :param params: the accelerator the processes account for (default: the packaged parameters).
    :returns: the Lava run with its reference; ``.exact`` says whether every forward's logits and
        the generated tokens equal PyTorch's bit for bit.
    :raises ValueError, TypeError: the model cannot be mapped (before any Lava process starts,
        naming the layer); :class:`~spikemllm_sj.lava_backend.LavaRunError` if a process raised (an
        overflow, a level out of range), after the runtime was stopped.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    if isinstance(decode_steps, bool) or not isinstance(decode_steps, int) or decode_steps < 0:
        raise ValueError(f"decode_steps must be an int >= 0, got {decode_steps!r}")
    mapping = model_mapping(model)
    params = params or load_params().accelerator
    modes = {name: site.mode for name, site in mapping.sites.items()}
    try:
        for site in mapping.sites.values():
            site.set_mode("spike")
        scopes = tuple(layer_scopes(model)) + tuple(_root_scope(model, n) for n in mapping.float_layers)
        clock = time.perf_counter()
        # One torch thread, as DecodedForward's: the float work there (norms, softmax, the output
        # head) must sum in the same order for the bits to match on any machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            reference, plan = record_generation(model, batch, decode_steps, scopes)
        finally:
            torch.set_num_threads(threads)
        reference_s = time.perf_counter() - clock
        clock = time.perf_counter()
        sink, processes, steps_per_run = _build(plan, mapping, ForwardSession(model, batch, decode_steps), params, grouping)
        build = time.perf_counter() - clock
        readouts = {step - 1 for step in (*plan.readouts, plan.final_step)}  # simulate counts steps from 0
        timings: dict[str, float] = {}
        (messages,) = simulate([sink], precision=precision, num_steps=plan.num_steps,
                               steps_per_run=steps_per_run,
                               keep=readouts.__contains__, timings=timings,
                               compile_config={"pypy_channel_size": CHANNEL_SIZE})
    finally:
        for name, site in mapping.sites.items():
            site.set_mode(modes[name])
    last, tokens, traces, scope_ops, tail_ops = _read(plan, messages)
    return WholeModelRun(plan=plan, mapping=mapping, precision=precision, reference=reference, last_logits=last, tokens=tokens,
                         traces=traces, scope_ops=scope_ops, tail_ops=tail_ops,
                         processes=processes, timings={"reference": reference_s, "build": build, **timings})

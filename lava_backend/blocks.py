"""Converted layers of a spike-driven model on Lava, checked against PyTorch bit for bit.

A :class:`~spikemllm_sj.ann2snn.linear.SpikeLinear` computes ``y = (W @ q) * scale * weight_scale + bias``
for integer weights ``W`` and the integer levels ``q`` of its (per-token scaled, MSTS-coded)
input. On Lava the work splits as follows:

* **host** (PyTorch, the module's own code path, :meth:`SpikeLinear.input_levels`): the layer's
  input transform (if any), the per-token scales (dynamic absmax, or the static calibration) and
  the levels, identical to the module's; after Lava, the rescaling
  ``acc * scale * weight_scale + bias`` (:meth:`SpikeLinear.dequantize`) in the module's exact
  accumulation dtype.
* **Lava** (:func:`~spikemllm_sj.lava_backend.run_lava`): ``TCLIF`` neurons turn each token's levels
  into the modality's spikes and ``SpikeDense`` integrates ``W @ q`` from them, exactly.

The Lava ``TCLIF`` takes one spike code (and one per-tensor scale) per network, so tokens run in
one network per modality present, each with that modality's code. Per-token scales stay on the
host: the network is fed integer levels (``fixed_pt``; or the same integers as floats with scale
1 for ``floating_pt``), which is exact because the levels *are* what the spikes encode and the
scale only multiplies the integer result afterwards.

Layers that share one input (an MLP's gate and up projections; an attention module's q/k/v) and
quantize it identically run as one ``SpikeDense`` with the weights stacked along the outputs:
the same spikes drive every projection. A gated MLP is one Lava network per modality
(:func:`run_mlp`): its non-spiking work between the spike-driven layers (dequantize,
``act_fn(gate) * up``, the down projection's levels) runs in a ``DecodedOp`` process with the
modules' own torch code. Every linear being exact and the decoded ops being the same torch ops,
blocks are equal to the converted PyTorch modules bit for bit.
"""

from __future__ import annotations

import difflib
import time
import typing as ty
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from lava.proc.io.extractor import Extractor
from lava.proc.io.source import RingBuffer

from spikemllm_sj.ann2snn.adapters import adapter_for
from spikemllm_sj.ann2snn.linear import LinearInput, SpikeLinear
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.lava_backend._fixed_point import float_words, words_float
from spikemllm_sj.lava_backend.decoded_op.process import DecodedOp
from spikemllm_sj.lava_backend.network import PRECISIONS, Precision, to_lava
from spikemllm_sj.lava_backend.runner import run_lava, simulate
from spikemllm_sj.lava_backend.spec import SpikeLinearSpec
from spikemllm_sj.neurons import Modality

__all__ = [
    "LavaBlockResult",
    "LayerCheck",
    "spec_from_spike_linear",
    "run_spike_linear",
    "run_spike_linears",
    "run_mlp",
    "run_attention_projections",
    "capture_input",
    "check_layer",
    "lava_layers",
]

ModalityArg = ty.Union[Modality, int, str, torch.Tensor, None]


@dataclass
class LavaBlockResult:
    """Outputs of a block run on Lava and what the run took.

    :param outputs: output tensors by name (``"output"`` for one layer or a block; ``"q_proj"``,
        ``"k_proj"``, ``"v_proj"`` for a projection group).
    :param tokens: tokens of the input, per modality name.
    :param steps: time steps per token of each modality's code.
    :param lava_steps: Lava time steps run in all (tokens times steps, over all stages).
    :param lava_runs: Lava networks run (one per modality and stage).
    :param lava_seconds: wall time of the Lava runs (compile, start, run, read back, stop).
    """

    outputs: dict[str, torch.Tensor]
    tokens: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    lava_steps: int = 0
    lava_runs: int = 0
    lava_seconds: float = 0.0

    @property
    def output(self) -> torch.Tensor:
        return self.outputs["output"]

    def _merge(self, other: "LavaBlockResult") -> None:
        for name, count in other.tokens.items():  # the same tokens pass every stage
            self.tokens[name] = max(self.tokens.get(name, 0), count)
        self.steps.update(other.steps)
        self.lava_steps += other.lava_steps
        self.lava_runs += other.lava_runs
        self.lava_seconds += other.lava_seconds


def _check_module(module) -> SpikeLinear:
    if not isinstance(module, SpikeLinear):
        raise TypeError(f"expected a converted SpikeLinear, got {type(module).__name__}")
    return module


def spec_from_spike_linear(module: SpikeLinear, modality: ty.Union[Modality, int, str]) -> SpikeLinearSpec:
    """The Lava layer of ``module`` for tokens of ``modality``: its integer weights ``qweight``
    ``[out, in]`` and the spike code of that modality (``module.encoder.config.code_of``).

    The spec's scale is 1: the network is fed integer levels, already divided by each token's own
    scale on the host (see the module docstring), and the host multiplies ``W @ q`` by the token
    scales and ``weight_scale`` afterwards.
    """
    module = _check_module(module)
    code = module.encoder.config.code_of(Modality.parse(modality))
    return SpikeLinearSpec(weight=module.qweight, code=code, scale=1.0, weight_bits=module.weight_levels.bits)


def _token_ids(modality: ModalityArg, shape: tuple[int, int]) -> ty.Optional[torch.Tensor]:
    """Modality ids ``[B, L]`` of tokens of ``shape`` (None: ask the layer's own source)."""
    if modality is None:
        return None
    if torch.is_tensor(modality):
        if modality.numel() != shape[0] * shape[1] or modality.is_floating_point():
            raise ValueError(
                f"modality ids must be an integer tensor with one id per token ({shape[0] * shape[1]}), "
                f"got dtype {modality.dtype} and shape {tuple(modality.shape)}"
            )
        return modality.reshape(shape).long()
    return torch.full(shape, int(Modality.parse(modality)), dtype=torch.long)


def _host_levels(module: SpikeLinear, x: torch.Tensor, modality: ModalityArg) -> LinearInput:
    """The layer's own encoding of ``x`` (transform, token scales, levels), as its forward does."""
    shape = (x.numel() // (x.shape[-2] * x.shape[-1]), x.shape[-2]) if x.dim() >= 3 else (1, x.numel() // x.shape[-1])
    return module.input_levels(x, _token_ids(modality, shape))


def _shared_input_groups(modules: ty.Sequence[SpikeLinear], hosts: list[LinearInput]) -> list[list[int]]:
    """Indices of the layers grouped by identical Lava input: same codes, weight width, token
    modalities and levels (they can share one ``TCLIF`` and one stacked ``SpikeDense``)."""
    groups: list[list[int]] = []
    for i, (mod, host) in enumerate(zip(modules, hosts)):
        for group in groups:
            first, first_host = modules[group[0]], hosts[group[0]]
            if (
                mod.encoder.config == first.encoder.config
                and mod.weight_levels.bits == first.weight_levels.bits
                and torch.equal(host.ids, first_host.ids)
                and torch.equal(host.levels, first_host.levels)
            ):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def run_spike_linears(
    modules: ty.Sequence[SpikeLinear],
    x: torch.Tensor,
    modality: ModalityArg = None,
    *,
    precision: Precision = "fixed_pt",
    names: ty.Optional[ty.Sequence[str]] = None,
) -> LavaBlockResult:
    """Run converted layers that take the same input ``x`` ``[..., in]`` on Lava.

    :param modality: the modality of every token, or their ids (one per token of ``x``); ``None``
        asks the layers' own modality source (the converted model's tokens of its last forward).
    :param names: output names (default ``"output"`` for one layer, else ``"0"``, ``"1"``, ...).
    :returns: each layer's output, equal to ``module(x)`` in ``"spike"`` mode bit for bit.

    Layers whose levels and scales of ``x`` come out identical (same transform, scales and codes:
    always so for plain dynamic or static RTN layers) share one ``SpikeDense`` with stacked weights;
    the others run on their own.
    """
    modules = [_check_module(m) for m in modules]
    if not modules:
        raise ValueError("no layers to run")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    names = list(names) if names is not None else (["output"] if len(modules) == 1 else [str(i) for i in range(len(modules))])
    if len(names) != len(modules):
        raise ValueError(f"{len(names)} names for {len(modules)} layers")
    x = x.detach()
    hosts = [_host_levels(m, x, modality) for m in modules]
    groups = _shared_input_groups(modules, hosts)
    result = LavaBlockResult(outputs={})
    for group in groups:
        first = hosts[group[0]]
        x3, ids, levels = first.tokens, first.ids, first.levels
        weight = torch.cat([modules[i].qweight for i in group], dim=0)
        sizes = [modules[i].out_features for i in group]
        acc = torch.zeros(*x3.shape[:2], sum(sizes), dtype=torch.int64)
        for m in sorted(torch.unique(ids).tolist()):
            modality_m = Modality(m)
            mask = ids == m
            spec = spec_from_spike_linear(modules[group[0]], modality_m)
            spec = SpikeLinearSpec(weight=weight, code=spec.code, scale=1.0, weight_bits=spec.weight_bits)
            q = levels[mask].cpu()
            inputs = q.to(torch.int64) if precision == "fixed_pt" else q.double()
            start = time.perf_counter()
            acc[mask.cpu()] = run_lava(to_lava(spec, precision=precision), inputs)
            result.lava_seconds += time.perf_counter() - start
            name = modality_m.name.lower()
            result.tokens[name] = result.tokens.get(name, 0) + q.shape[0]
            result.steps[name] = spec.code.steps
            result.lava_steps += q.shape[0] * spec.code.steps
            result.lava_runs += 1
        for i, part in zip(group, acc.split(sizes, dim=-1)):
            module, host = modules[i], hosts[i]
            # SpikeLinear.forward's rescaling, on the exact integer accumulation from Lava.
            y = module.dequantize(part.to(device=host.x.device, dtype=host.acc_dtype), host.scale, host.x.dtype)
            result.outputs[names[i]] = y.reshape(*host.x.shape[:-1], module.out_features)
    result.outputs = {name: result.outputs[name] for name in names}
    return result


def run_spike_linear(
    module: SpikeLinear, x: torch.Tensor, modality: ModalityArg = None, *, precision: Precision = "fixed_pt"
) -> LavaBlockResult:
    """Run one converted :class:`SpikeLinear` on Lava (see :func:`run_spike_linears`);
    ``.output`` equals ``module(x)`` in ``"spike"`` mode bit for bit."""
    return run_spike_linears([module], x, modality, precision=precision)


def _mlp_layers(mlp: nn.Module) -> tuple[SpikeLinear, SpikeLinear, SpikeLinear, ty.Callable]:
    parts = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(p, SpikeLinear) for p in parts) or not callable(getattr(mlp, "act_fn", None)):
        raise TypeError(
            f"{type(mlp).__name__} is not a converted gated MLP (gate_proj, up_proj, down_proj as SpikeLinear, and act_fn)"
        )
    return (*parts, mlp.act_fn)


@dataclass(frozen=True)
class _MLP:
    """A converted gated MLP as its Lava network sees it: the first stage (gate and up, stacked
    as the rows of one ``DecodedOp`` input), the down projection and the activation."""

    first: tuple[SpikeLinear, SpikeLinear]
    down: SpikeLinear
    act_fn: ty.Callable
    hosts: list[LinearInput]  # gate's and up's encoding of the input
    groups: list[list[int]]  # which of gate/up share one input network

    @property
    def inter(self) -> int:
        return self.first[0].out_features

    @property
    def rows(self) -> list[slice]:
        """gate's and up's rows of the ``DecodedOp`` input."""
        return [slice(0, self.inter), slice(self.inter, 2 * self.inter)]

    def decoded(self, m: int, dtype: torch.dtype) -> ty.Callable:
        """The ``DecodedOp`` function of tokens of modality ``m``: dequantize gate and up,
        ``act_fn(gate) * up``, then the down projection's transform, token scale and levels."""
        first, down, rows = self.first, self.down, self.rows
        dtypes = [h.acc_dtype for h in self.hosts]

        def decoded(acc: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            torch.set_num_threads(1)  # torch in a forked process: no thread pool inherited from the parent
            acc = torch.from_numpy(np.asarray(acc, dtype=np.int64))
            gate_y, up_y = (
                layer.dequantize(acc[rows[j]].to(dtypes[j]), words_float(scales)[j], dtype) for j, layer in enumerate(first)
            )
            h = self.act_fn(gate_y) * up_y
            if down.transform is not None:
                h = down.transform(h)
            levels, scale = down.quantize_tokens(h.reshape(1, 1, -1), torch.full((1, 1), m, dtype=torch.long))
            return levels.reshape(-1).numpy(), float_words(scale.reshape(1))

        return decoded

    def sources(self, mask: torch.Tensor, windows: int, steps: int, precision: Precision) -> tuple[list[np.ndarray], np.ndarray]:
        """Each input group's levels at the first step of a window, and every first-stage layer's
        token scale at the last step (with its accumulator)."""
        n_tokens, size = int(mask.sum()), self.hosts[0].tokens.shape[-1]
        sources = []
        for group in self.groups:
            data = np.zeros((size, windows, steps), dtype=np.int32 if precision == "fixed_pt" else np.float64)
            data[:, :n_tokens, 0] = self.hosts[group[0]].levels[mask].cpu().numpy().T
            sources.append(data.reshape(size, -1))
        scale_data = np.zeros((len(self.first), windows, steps), dtype=np.int64)
        for j, host in enumerate(self.hosts):
            scale_data[j, :n_tokens, steps - 1] = float_words(host.scale[mask].reshape(-1))
        return sources, scale_data.reshape(len(self.first), -1)

    def network(self, op: DecodedOp, sources: list[np.ndarray], code, precision: Precision) -> ty.Any:
        """Connect the first stage's input networks into ``op`` and ``op`` into the down
        projection; returns the down projection's output port."""
        size = self.hosts[0].tokens.shape[-1]
        for group, data in zip(self.groups, sources):
            weight = torch.zeros(2 * self.inter, size, dtype=torch.int32)
            for i in group:
                weight[self.rows[i]] = self.first[i].qweight.to(torch.int32)
            spec = SpikeLinearSpec(weight=weight, code=code, scale=1.0, weight_bits=self.first[0].weight_levels.bits)
            entry, exit_ = to_lava(spec, precision=precision).build()
            RingBuffer(data=data).s_out.connect(entry)
            exit_.connect(op.a_in)
        down_spec = SpikeLinearSpec(weight=self.down.qweight, code=code, scale=1.0, weight_bits=self.down.weight_levels.bits)
        entry, exit_ = to_lava(down_spec, precision=precision).build()
        op.a_out.connect(entry)
        return exit_


def _run_mlp_modality(mlp: _MLP, m: int, precision: Precision, result: LavaBlockResult) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLP on Lava for the tokens of modality ``m``: the down projection's exact integer
    accumulation ``[n, out]`` and its input's token scales ``[n, 1]``."""
    modality_m = Modality(m)
    mask = mlp.hosts[0].ids == m
    code = mlp.down.encoder.config.code_of(modality_m)
    if any(layer.encoder.config.code_of(modality_m) != code for layer in mlp.first):
        raise ValueError(f"gate, up and down must code {modality_m.name.lower()} tokens alike to share the network's windows")
    n_tokens, steps = int(mask.sum()), code.steps
    windows = n_tokens + 1  # one window more than tokens to drain the pipeline
    sources, scale_data = mlp.sources(mask, windows, steps, precision)
    start = time.perf_counter()
    op = DecodedOp(fn=mlp.decoded(m, mlp.hosts[0].x.dtype), in_size=2 * mlp.inter, out_size=mlp.inter,
                   aux_in_size=len(mlp.first), aux_out_size=1, window=steps)
    RingBuffer(data=scale_data).s_out.connect(op.aux_in)
    exit_ = mlp.network(op, sources, code, precision)
    acc_sink = Extractor(shape=(mlp.down.out_features,), buffer_size=windows * steps)
    scale_sink = Extractor(shape=(1,), buffer_size=windows * steps)
    exit_.connect(acc_sink.in_port)
    op.aux_out.connect(scale_sink.in_port)
    # Token k's down accumulator and scale arrive at the last step of window k + 1.
    acc, scale = simulate(
        [acc_sink, scale_sink], precision=precision, num_steps=windows * steps, steps_per_run=windows * steps,
        keep=lambda step: step >= steps and step % steps == steps - 1,
    )
    result.lava_seconds += time.perf_counter() - start
    name = modality_m.name.lower()
    result.tokens[name] = n_tokens
    result.steps[name] = steps
    result.lava_steps += windows * steps
    result.lava_runs += 1
    return torch.from_numpy(acc.astype(np.int64)), words_float(scale).reshape(-1, 1)


def run_mlp(mlp: nn.Module, x: torch.Tensor, modality: ModalityArg = None, *, precision: Precision = "fixed_pt") -> LavaBlockResult:
    r"""A converted Llama/Qwen2-style MLP ``down(act_fn(gate(x)) * up(x))`` as one Lava network per modality::

        levels of x -> TCLIF -> SpikeDense(gate | up) -> DecodedOp -> TCLIF -> SpikeDense(down) -> W_down @ q
        token scales of x ------------------------------^          \-> token scales of the down input

    The ``DecodedOp`` process does the MLP's non-spiking work per token, with the modules' own
    torch code: dequantize gate and up, ``act_fn(gate) * up``, then the down projection's input
    transform, per-token scale and levels (which feed the second ``TCLIF``). gate and up share one
    ``TCLIF`` and a stacked ``SpikeDense`` when they quantize ``x`` identically; otherwise each has
    its own, both delivering into the ``DecodedOp`` (Lava sums the messages of ports that meet, so
    each writes its own rows). The host quantizes ``x`` and dequantizes the down projection's
    integer output. ``.output`` equals ``mlp(x)`` of the converted model (``"spike"`` mode) bit for
    bit (tested; elementwise torch kernels give the same bits for one token as for a batch).
    """
    gate, up, down, act_fn = _mlp_layers(mlp)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    x = x.detach()
    hosts = [_host_levels(m, x, modality) for m in (gate, up)]
    parts = _MLP((gate, up), down, act_fn, hosts, _shared_input_groups([gate, up], hosts))
    xt, x3, ids = hosts[0].x, hosts[0].tokens, hosts[0].ids
    down_dtype = down.accumulation_dtype(parts.inter, down.weight_levels.qmax, x3.dtype)
    result = LavaBlockResult(outputs={})
    output = torch.empty(*x3.shape[:2], down.out_features, dtype=x3.dtype)
    for m in sorted(torch.unique(ids).tolist()):
        acc, scale = _run_mlp_modality(parts, m, precision, result)
        output[(ids == m).cpu()] = down.dequantize(acc.to(down_dtype), scale, x3.dtype)
    result.outputs = {"output": output.to(xt.device).reshape(*xt.shape[:-1], down.out_features)}
    return result


PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def run_attention_projections(
    attention: nn.Module, x: torch.Tensor, modality: ModalityArg = None, *, precision: Precision = "fixed_pt"
) -> LavaBlockResult:
    """The q/k/v projections of a converted attention module on one input ``x`` (its hidden
    states), in Lava as one ``SpikeDense`` driven by the same spikes; outputs ``"q_proj"``,
    ``"k_proj"``, ``"v_proj"``, each equal to the PyTorch projection bit for bit."""
    layers = [getattr(attention, name, None) for name in PROJECTIONS]
    if not all(isinstance(p, SpikeLinear) for p in layers):
        raise TypeError(f"{type(attention).__name__} has no converted q_proj, k_proj and v_proj (SpikeLinear)")
    return run_spike_linears(layers, x, modality, precision=precision, names=PROJECTIONS)


def _kind(module: nn.Module, spike_driven: ty.Callable[[object], bool]) -> ty.Optional[str]:
    if spike_driven(module):
        return "linear"
    if all(spike_driven(getattr(module, n, None)) for n in ("gate_proj", "up_proj", "down_proj")) and callable(
        getattr(module, "act_fn", None)
    ):
        return "mlp"
    if all(spike_driven(getattr(module, n, None)) for n in PROJECTIONS):
        return "qkv"
    return None


def _spike_driven(model: nn.Module, config: ty.Optional[SpikeConfig]) -> ty.Callable[[object], bool]:
    """Whether a module is (``config`` None) or will be once ``convert(model, config)`` has run a
    spike-driven linear layer."""
    if config is None:
        return lambda module: isinstance(module, SpikeLinear)
    planned = {id(linear) for _, linear, _ in adapter_for(model).converted_linears(model, config.convert_lm_head)}
    return lambda module: module is not None and id(module) in planned


def lava_layers(model: nn.Module, config: ty.Optional[SpikeConfig] = None) -> list[str]:
    """Paths of the modules that :func:`check_layer` can run: SpikeLinears, gated MLPs, q/k/v groups
    of a converted ``model``; given ``config``, of a float ``model`` once ``convert(model, config)``
    has made it spike-driven (to check a path before converting)."""
    spike_driven = _spike_driven(model, config)
    return [name for name, module in model.named_modules() if name and _kind(module, spike_driven) is not None]


def check_lava_layer(model: nn.Module, layer: str, config: ty.Optional[SpikeConfig] = None) -> str:
    """The kind (``"linear"``, ``"mlp"``, ``"qkv"``) of the module ``layer`` that :func:`check_layer`
    would run on a converted ``model``; given ``config``, on a float ``model`` once
    ``convert(model, config)`` has run (see :func:`lava_layers`).

    :raises ValueError: for an unknown path, with close valid ones; ``TypeError`` for a module
        that cannot run on Lava.
    """
    names = dict(model.named_modules())
    spike_driven = _spike_driven(model, config)
    if layer not in names or not layer:
        valid = lava_layers(model, config)
        close = difflib.get_close_matches(layer, valid, n=3, cutoff=0.6)
        examples = close or [p for p in valid if ".layers.0." in p][:6] or valid[:6]
        raise ValueError(f"unknown layer {layer!r}; valid layers include: {', '.join(examples)}")
    kind = _kind(names[layer], spike_driven)
    if kind is None:
        raise TypeError(
            f"{layer} is a {type(names[layer]).__name__}, which cannot run on Lava: give a linear layer that convert "
            "makes spike-driven, a gated MLP (gate_proj/up_proj/down_proj) or an attention module with "
            "q_proj/k_proj/v_proj"
        )
    return kind


def capture_input(model: nn.Module, layer: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, ids)``: the input of module ``layer`` during ``model(**batch)`` (a forward pre-hook)
    and the modality id of each of its tokens ``[B, L]``, as its first ``SpikeLinear`` sees them.

    :raises ValueError: the module was not called on ``batch``.
    """
    module = model.get_submodule(layer)
    source = next(m for m in module.modules() if isinstance(m, SpikeLinear))
    captured = {}

    def hook(mod, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        x3 = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x.reshape(1, -1, x.shape[-1])
        captured["x"] = x.detach().clone()
        captured["ids"] = source.modality(*x3.shape[:2]).clone()

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    if "x" not in captured:
        raise ValueError(f"{layer} was not called on this batch")
    return captured["x"], captured["ids"]


@dataclass
class LayerCheck:
    """Equivalence of one converted layer on Lava and in PyTorch (:func:`check_layer`)."""

    layer: str
    kind: str  # "linear", "mlp" (gate/up + down) or "qkv" (q/k/v projections)
    precision: str
    max_abs_diff: float
    exact: bool
    tokens: dict[str, int]
    steps: dict[str, int]
    lava_steps: int
    lava_runs: int
    lava_seconds: float
    torch_seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def check_layer(model: nn.Module, layer: str, batch: dict, *, precision: Precision = "fixed_pt") -> LayerCheck:
    """Capture ``layer``'s real input on ``batch`` (a forward hook on the converted ``model``), run
    the layer on Lava and in PyTorch (``"spike"`` mode), and compare the outputs.

    :param layer: a path from :func:`lava_layers`: a SpikeLinear, a gated MLP or an attention
        module (its q/k/v projections).
    :raises ValueError: for an unknown path; ``TypeError`` for a module that cannot run on Lava.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = check_lava_layer(model, layer)
    module = model.get_submodule(layer)
    x, ids = capture_input(model, layer, batch)
    sites = [m for m in module.modules() if isinstance(m, SpikeLinear)]
    old_modes = [m.mode for m in sites]
    try:
        for m in sites:
            m.set_mode("spike")
        with torch.no_grad():
            start = time.perf_counter()
            if kind in ("linear", "mlp"):
                reference = {"output": module(x)}
            else:
                reference = {name: getattr(module, name)(x) for name in PROJECTIONS}
            torch_seconds = time.perf_counter() - start
            run = {"linear": run_spike_linear, "mlp": run_mlp, "qkv": run_attention_projections}[kind]
            result = run(module, x, ids, precision=precision)
    finally:
        for m, mode in zip(sites, old_modes):
            m.set_mode(mode)
    diff = max(float((result.outputs[k].double() - v.double()).abs().max()) for k, v in reference.items())
    exact = all(torch.equal(result.outputs[k], v) for k, v in reference.items())
    return LayerCheck(
        layer=layer,
        kind=kind,
        precision=precision,
        max_abs_diff=diff,
        exact=exact,
        tokens=result.tokens,
        steps=result.steps,
        lava_steps=result.lava_steps,
        lava_runs=result.lava_runs,
        lava_seconds=result.lava_seconds,
        torch_seconds=torch_seconds,
    )

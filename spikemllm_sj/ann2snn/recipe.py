"""``convert(model, SpikeConfig(...))``: a supported MLLM made spike-driven, in place.

The conversion is a SpikingJelly ``ModuleConversionRecipe`` run by ``ann2snn.ModuleConverter``
(which owns device placement, ``no_grad`` and training-mode bookkeeping); the recipe owns the
model knowledge, through the family's :class:`~spikemllm_sj.ann2snn.adapters.ModelAdapter`:

* every ``nn.Linear`` of the vision tower, the projector and the language model becomes a
  :class:`~spikemllm_sj.ann2snn.linear.SpikeLinear` (vision tower and projector: image steps Tv;
  the language model: each token's own modality, MSTS);
* every attention module gets a :class:`~spikemllm_sj.ann2snn.attention.SpikeAttention` and the
  model the ``"spikemllm"`` attention implementation;
* a forward pre-hook tells the language model each token's modality, from ``input_ids`` (the
  family's image/video placeholder ids) or ``mm_token_type_ids``.

Everything that can be checked is checked before the first change; the layers are then swapped one
at a time, each float weight released as its integer copy takes its place (never two copies of the
model's weights in memory), every change recorded in a rollback journal
(:mod:`~spikemllm_sj.ann2snn.journal`) that puts the model back as it was if anything fails.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based.ann2snn import ModuleConverter
from spikingjelly.activation_based.ann2snn.recipes import ModuleConversionRecipe
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm
from transformers import PretrainedConfig

from spikemllm_sj.ann2snn.adapters import ModelAdapter, adapter_for
from spikemllm_sj.ann2snn.attention import QUERY_SITE, SpikeAttention, SpikeScores
from spikemllm_sj.ann2snn.attention_interface import ATTN_IMPLEMENTATION, register_attention
from spikemllm_sj.ann2snn.calibration import Calibration
from spikemllm_sj.ann2snn.finalizers import finalizers
from spikemllm_sj.ann2snn.journal import ROLLBACKS, Journal, Rollback
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.modalities import (
    FixedModality,
    LastTokens,
    ModalitySource,
    TokenModalities,
    modality_ids,
    require_visual_inputs,
)
from spikemllm_sj.ann2snn.plan import MSTSPlan, SiteRef
from spikemllm_sj.ann2snn.preconditions import require_eval_mode
from spikemllm_sj.ann2snn.sites import MODES, Mode, MSTSSite, SpikeSite
from spikemllm_sj.config import CLIP_RATIOS, SpikeConfig
from spikemllm_sj.neurons import Modality, MSTSConfig, MSTSEncoder, check_finite
from spikemllm_sj.quantization.rotation import InputMap

__all__ = ["SpikeState", "SpikeMLLMRecipe", "convert", "recording_activity", "set_activity_recording", "set_mode", "set_msts", "spike_state"]

_STATE_ATTR = "spikemllm_state"


@dataclass
class SpikeState:
    """What ``convert`` attached to a model (``model.spikemllm_state``)."""

    config: SpikeConfig
    adapter: ModelAdapter
    token_modalities: TokenModalities
    hook: RemovableHandle


def spike_state(model: nn.Module) -> SpikeState:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ValueError(f"{type(model).__name__} has not been converted by spikemllm_sj.convert")
    return state


def _is_attention(module: nn.Module) -> bool:
    # transformers' attention modules carry `is_causal` and a softmax scale, and own projections.
    return (
        hasattr(module, "is_causal")
        and (hasattr(module, "scaling") or hasattr(module, "scale"))
        and any(isinstance(child, nn.Linear) for child in module.children())
    )


def _set_token_modalities(visual_ids: dict[Modality, int], modalities: TokenModalities, module, args, kwargs):
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    ids = modality_ids(visual_ids, input_ids, kwargs.get("mm_token_type_ids"))
    require_visual_inputs(ids, kwargs)
    modalities.ids = ids


@dataclass(frozen=True)
class _Site:
    """A module to convert: a linear layer, or an attention module (its two matmuls), with the
    steps its spike-coded input gets (the configuration's, or the plan's for this site)."""

    path: str
    module: nn.Module
    parent: nn.Module
    attr: str
    source: ModalitySource
    ref: SiteRef


class SpikeMLLMRecipe(ModuleConversionRecipe):
    """SpikingJelly conversion recipe for the supported MLLMs (see the module docstring).

    :param rollback: where the float weights wait until the conversion commits
        (:class:`~spikemllm_sj.ann2snn.journal.Journal`): ``"disk"`` or ``"memory"``.
    :param rollback_dir: parent folder of the disk journal (default: the system's temporary folder).
    """

    def __init__(
        self,
        config: SpikeConfig,
        calibration: Optional[Calibration] = None,
        progress: bool = False,
        rollback: Rollback = "disk",
        rollback_dir: Optional[str | Path] = None,
    ):
        if not isinstance(config, SpikeConfig):
            raise TypeError(f"config must be a SpikeConfig, got {type(config).__name__}")
        if calibration is not None and not isinstance(calibration, Calibration):
            raise TypeError(f"calibration must be a Calibration (from calibrate), got {type(calibration).__name__}")
        needs_calibration = config.needs_calibration
        if needs_calibration and calibration is None:
            raise ValueError(
                "act_scales='static', SmoothQuant and GPTQ need a calibration: "
                "convert(model, config, calibration=calibrate(model, batches, config))"
            )
        if not needs_calibration and calibration is not None:
            raise ValueError(
                "a calibration was given but nothing would use it: use act_scales='static', SmoothQuant or GPTQ"
            )
        if rollback not in ROLLBACKS:
            raise ValueError(f"rollback must be one of {ROLLBACKS}, got {rollback!r}")
        self.config = config
        self.calibration = calibration
        self.progress = progress
        self.rollback = rollback
        self.rollback_dir = rollback_dir

    def convert_module(self, converter: ModuleConverter, model: nn.Module) -> nn.Module:
        adapter = adapter_for(model)
        if getattr(model, _STATE_ATTR, None) is not None:
            raise ValueError("the model is already converted")
        require_eval_mode(model, "converting")
        visual_ids = adapter.visual_token_ids(model)
        modalities = TokenModalities()
        sites = self._plan(model, adapter, modalities)
        self._check(model, adapter, sites)
        journal = Journal(self.rollback, self.rollback_dir)
        try:
            self._swap(model, adapter, sites, journal)
            hook = model.register_forward_pre_hook(
                functools.partial(_set_token_modalities, visual_ids, modalities), with_kwargs=True
            )
            journal.on_rollback(hook.remove)
            journal.setattr(model, _STATE_ATTR, SpikeState(self.config, adapter, modalities, hook))
            for finalize in finalizers():
                finalize(model, self.config, journal)
        except BaseException:
            # Whatever failed (a layer, the rotation, an interrupt): the model is put back as it was.
            journal.rollback()
            raise
        journal.commit()
        return model

    def _plan(self, model: nn.Module, adapter: ModelAdapter, modalities: TokenModalities) -> list[_Site]:
        """Every linear layer and attention module to convert, in model order."""
        sites = []
        for path, fixed in adapter.converted_sections(self.config.convert_lm_head):
            if fixed is not None:
                source = FixedModality(fixed)
            else:
                source = LastTokens(modalities) if path == adapter.lm_head else modalities
            for name, module in model.get_submodule(path).named_modules():
                if isinstance(module, nn.Linear) or _is_attention(module):
                    full = f"{path}.{name}" if name else path
                    parent_name, _, attr = full.rpartition(".")
                    ref = SiteRef.of(full, "linear", adapter) if isinstance(module, nn.Linear) else \
                        SiteRef.of(f"{full}.{QUERY_SITE}", SpikeScores.kind, adapter)
                    sites.append(_Site(full, module, model.get_submodule(parent_name), attr, source, ref))
        return sites

    def _msts(self, site: _Site) -> MSTSConfig:
        return self.config.plan.msts_for(site.ref, self.config.msts)

    def _check(self, model: nn.Module, adapter: ModelAdapter, sites: list[_Site]) -> None:
        """Everything that can fail, checked before the first change to the model."""
        linears = [s for s in sites if isinstance(s.module, nn.Linear)]
        offloaded = [s.path for s in linears if any(p.is_meta for p in s.module.parameters(recurse=False))]
        if offloaded:
            raise ValueError(
                f"{len(offloaded)} layers have weights on the meta device (offloaded by accelerate, e.g. "
                f"{offloaded[0]}); converting offloaded weights is not supported: load the model with a "
                "device_map that keeps every layer on a device (CPU or GPU)"
            )
        for site in linears:
            for name, param in site.module.named_parameters(recurse=False):
                check_finite(param.detach(), f"{site.path}.{name}")
            if self.calibration is not None:
                self._check_calibration(site)
        self.config.plan.check([s.ref for s in sites], self.config.msts)
        self.config.method.check_model(model, adapter)

    def _check_calibration(self, site: _Site) -> None:
        cfg, linear = self.config, site.module
        for modality, ranges in self.calibration.channel_absmax_of(site.path).items():
            name = f"the calibration's {modality.name.lower()} input ranges of {site.path}"
            if tuple(ranges.shape) != (linear.in_features,):
                raise ValueError(f"{name} have shape {tuple(ranges.shape)}, the layer has {linear.in_features} inputs")
            check_finite(ranges, name)
            if (ranges < 0).any() or (cfg.act_scales == "static" and not (ranges > 0).any()):
                raise ValueError(f"{name} must be >= 0 with a positive maximum for static scales, got max {float(ranges.max())}")
        if cfg.weight_method == "gptq":
            hessian = self.calibration.hessians.get(site.path)
            if hessian is None:
                raise ValueError(f"the calibration has no input Hessian for {site.path}: calibrate with SpikeConfig(weight_method='gptq')")
            n = linear.in_features
            if tuple(hessian.shape) != (n, n):
                raise ValueError(f"the calibration's Hessian of {site.path} is {list(hessian.shape)}, the layer needs [{n}, {n}]")
            check_finite(hessian, f"the calibration's Hessian of {site.path}")
        if cfg.act_clip == "search":
            for modality, x in self.calibration.samples_of(site.path).items():
                name = f"the calibration's sampled {modality.name.lower()} inputs of {site.path}"
                if x.dim() != 2 or x.shape[1] != linear.in_features:
                    raise ValueError(f"{name} have shape {list(x.shape)}, the layer has {linear.in_features} inputs")
                check_finite(x, name)

    def _swap(self, model: nn.Module, adapter: ModelAdapter, sites: list[_Site], journal: Journal) -> None:
        """Rewrite the model (the method's model-level part) and swap in every spike-driven site,
        each change through ``journal``."""
        cfg = self.config
        # Weights that another module shares (tied embeddings) must outlive their linear layer.
        uses = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        input_maps = cfg.method.rewrite_model(model, adapter, journal)
        register_attention()
        for site in tqdm(sites, desc="convert", unit="layer", disable=not self.progress):
            if isinstance(site.module, nn.Linear):
                method = cfg.method.layer_method(site.path, adapter)
                spike = self._spike_linear(site, method, input_maps.get(site.path))
                journal.setattr(site.parent, site.attr, spike.train(False))
                if uses[id(site.module.weight)] == 1:
                    journal.release(site.module.weight)  # the converter still references the old module
            else:
                rotation = cfg.method.query_key_rotation(site.path, site.module, adapter)
                attention = SpikeAttention(self._msts(site), cfg.kv_levels, cfg.prob_code.levels, site.source, rotation, cfg.kv_clip)
                journal.setattr(site.module, "spike_attention", attention.train(False))
        implementations = [(c, c._attn_implementation_internal) for c in _configs(model)]
        journal.on_rollback(lambda: [setattr(c, "_attn_implementation_internal", v) for c, v in implementations])
        model.set_attn_implementation(ATTN_IMPLEMENTATION)

    def _spike_linear(self, site: _Site, method, input_map: Optional[InputMap]) -> SpikeLinear:
        """The spike-driven replacement of ``site``'s linear layer; ``input_map``: what the
        method's model rewrite did to the layer's input (the calibration saw the float model's)."""
        cfg, linear = self.config, site.module
        ranges = None if self.calibration is None else {
            m: r.to(linear.weight.device) for m, r in self.calibration.channel_absmax_of(site.path).items()
        }
        all_ranges = None if ranges is None else torch.stack(list(ranges.values())).amax(0)
        hessian = None
        if cfg.weight_method == "gptq":
            hessian = self.calibration.hessians[site.path].to(device=linear.weight.device, dtype=torch.float64)
            if input_map is not None:
                # The rewritten layer sees x' = x A: its inputs' Hessian is A^T H A.
                a = input_map(torch.eye(linear.in_features, dtype=torch.float64, device=hessian.device))
                hessian = a.T @ hessian @ a
        weight_clip = CLIP_RATIOS if cfg.weight_clip == "mse" else ()
        spike = SpikeLinear(linear, self._msts(site), cfg.weight_levels, site.source, method, all_ranges, hessian, weight_clip)
        if cfg.act_scales == "static":
            spike.set_static_ranges(ranges)
        if cfg.act_clip == "search":
            samples = {m: x.to(linear.weight.device) for m, x in self.calibration.samples_of(site.path).items()}
            if input_map is not None:
                samples = {m: input_map(x.double()).float() for m, x in samples.items()}
            spike.search_clip(samples, CLIP_RATIOS)
        else:
            spike.set_clip({m: cfg.act_clip for m in spike.encoder.config.codes})
        return spike


def _configs(model: nn.Module) -> list[PretrainedConfig]:
    """Every ``transformers`` config of ``model`` and its submodels, sub-configs included."""
    found, queue = {}, [m.config for m in model.modules() if isinstance(getattr(m, "config", None), PretrainedConfig)]
    while queue:
        config = queue.pop()
        if id(config) not in found:
            found[id(config)] = config
            queue += [getattr(config, key) for key in config.sub_configs if getattr(config, key, None) is not None]
    return list(found.values())


def convert(
    model: nn.Module,
    config: Optional[SpikeConfig] = None,
    calibration: Optional[Calibration] = None,
    progress: bool = False,
    rollback: Rollback = "disk",
    rollback_dir: Optional[str | Path] = None,
) -> nn.Module:
    """Make ``model`` spike-driven in place and return it (see the module docstring).

    Atomic: everything that can be checked is checked before the first change, and if anything
    fails during the swaps (or the conversion is interrupted) the model is put back as it was,
    ``state_dict()`` and forward bit-identical. The float weights released along the way wait in
    a journal until the end: on disk by default (the model's size in a temporary folder, no
    memory), or in host memory with ``rollback="memory"``.

    :param calibration: from :func:`~spikemllm_sj.ann2snn.calibration.calibrate`, required by (and only
        by) configurations that need one (``SpikeConfig.needs_calibration``).
    :param progress: a progress bar over the layers swapped.
    :param rollback: ``"disk"`` or ``"memory"`` (see above).
    :param rollback_dir: parent folder of the disk journal (default: the system's temporary folder).
    """
    recipe = SpikeMLLMRecipe(config or SpikeConfig(), calibration, progress, rollback, rollback_dir)
    return ModuleConverter(recipe).convert(model)


def set_msts(model: nn.Module, msts: Optional[MSTSConfig] = None, plan: Optional[MSTSPlan] = None) -> None:
    """Give converted ``model`` the time steps of ``msts`` and ``plan`` (either may be left out: it
    keeps the model's), as ``convert`` with them would: integer weights, static scales and input
    transforms do not depend on the steps, so a new encoder per site is the same as converting
    again, bit for bit, except that clip ratios searched by ``act_clip="search"`` stay those
    searched at the conversion's steps. The model's ``SpikeConfig`` is updated, so a saved model
    keeps them."""
    state = spike_state(model)
    config = dataclasses.replace(
        state.config,
        msts=state.config.msts if msts is None else msts,
        plan=state.config.plan if plan is None else plan,
    )  # validates msts and plan
    sites = {name: m for name, m in model.named_modules() if isinstance(m, MSTSSite)}
    refs = {name: SiteRef.of(name, m.kind, state.adapter) for name, m in sites.items()}
    config.plan.check(list(refs.values()), config.msts)
    for name, site in sites.items():
        site.encoder = MSTSEncoder(config.plan.msts_for(refs[name], config.msts))
    state.config = config


def set_activity_recording(model: nn.Module, enabled: bool) -> None:
    """Whether the spike-driven sites of converted ``model`` count the spikes and tokens they
    encode (:class:`~spikemllm_sj.ann2snn.sites.SiteActivity`; on after ``convert``). Recording
    never synchronises with the device; off, each site also skips counting its spikes (an
    evaluation or generation loop that reads no activity). :func:`recording_activity` turns it on
    for a block: ``op_report`` and MED's firing rates use it, whatever is set here."""
    spike_state(model)
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    for module in model.modules():
        if isinstance(module, SpikeSite):
            module.activity.recording = enabled


@contextlib.contextmanager
def recording_activity(model: nn.Module):
    """Inside the block, every spike-driven site of converted ``model`` records its activity;
    after it, each site records as it did before."""
    spike_state(model)
    sites = [m for m in model.modules() if isinstance(m, SpikeSite)]
    before = [site.activity.recording for site in sites]
    for site in sites:
        site.activity.recording = True
    try:
        yield
    finally:
        for site, recording in zip(sites, before):
            site.activity.recording = recording


def set_mode(model: nn.Module, mode: Mode) -> None:
    """Run a converted model spike-driven (``"spike"``) or as its quantized ANN twin (``"fake_quant"``)."""
    spike_state(model)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for module in model.modules():
        if isinstance(module, SpikeSite):
            module.set_mode(mode)

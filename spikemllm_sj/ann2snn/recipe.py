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
model's weights).
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based.ann2snn import ModuleConverter
from spikingjelly.activation_based.ann2snn.recipes import ModuleConversionRecipe
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from spikemllm_sj.ann2snn.adapters import ModelAdapter, adapter_for
from spikemllm_sj.ann2snn.attention import SpikeAttention
from spikemllm_sj.ann2snn.attention_interface import ATTN_IMPLEMENTATION, register_attention
from spikemllm_sj.ann2snn.calibration import Calibration
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.modalities import FixedModality, LastTokens, TokenModalities, modality_ids
from spikemllm_sj.ann2snn.preconditions import require_eval_mode
from spikemllm_sj.ann2snn.sites import MODES, Mode, SpikeSite
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.neurons import Modality

__all__ = ["SpikeState", "SpikeMLLMRecipe", "convert", "set_mode", "spike_state"]

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
    for modality, pixels in ((Modality.IMAGE, "pixel_values"), (Modality.VIDEO, "pixel_values_videos")):
        # generate() may pass the vision encoder's outputs instead of the pixels.
        given = (pixels, "mm_encoder_outputs", "inputs_embeds")
        if (ids == modality).any() and all(kwargs.get(key) is None for key in given):
            # The model would embed the placeholders as plain text tokens and answer blind.
            raise ValueError(f"input_ids hold {modality.name.lower()} tokens but no {pixels} were given")
    modalities.ids = ids


class SpikeMLLMRecipe(ModuleConversionRecipe):
    """SpikingJelly conversion recipe for the supported MLLMs (see the module docstring)."""

    def __init__(self, config: SpikeConfig, calibration: Optional[Calibration] = None, progress: bool = False):
        if not isinstance(config, SpikeConfig):
            raise TypeError(f"config must be a SpikeConfig, got {type(config).__name__}")
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
        self.config = config
        self.calibration = calibration
        self.progress = progress

    def convert_module(self, converter: ModuleConverter, model: nn.Module) -> nn.Module:
        adapter = adapter_for(model)
        if getattr(model, _STATE_ATTR, None) is not None:
            raise ValueError("the model is already converted")
        require_eval_mode(model, "converting")
        visual_ids = adapter.visual_token_ids(model)
        cfg = self.config
        modalities = TokenModalities()
        sites = self._plan(model, adapter, modalities)
        # Everything that can fail is checked before the first swap, so a failure leaves the
        # model as it was; the swaps then go one layer at a time, each float weight released as
        # its integer copy takes its place (never two copies of the model's weights).
        offloaded = [path for path, module, *_ in sites if any(p.is_meta for p in module.parameters(recurse=False))]
        if offloaded:
            raise ValueError(
                f"{len(offloaded)} layers have weights on the meta device (offloaded by accelerate, e.g. "
                f"{offloaded[0]}); converting offloaded weights is not supported: load the model with a "
                "device_map that keeps every layer on a device (CPU or GPU)"
            )
        if self.calibration is not None:
            for path, module, *_ in sites:
                if isinstance(module, nn.Linear):
                    self.calibration.channel_absmax_of(path)  # raises for a layer it never saw
                    if cfg.weight_method == "gptq" and path not in self.calibration.hessians:
                        raise ValueError(
                            f"the calibration has no input Hessian for {path}: calibrate with "
                            "SpikeConfig(weight_method='gptq')"
                        )
        # Weights that another module shares (tied embeddings) must outlive their linear layer.
        uses = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        cfg.method.rewrite_model(model, adapter)
        register_attention()
        for path, module, parent, attr, source in tqdm(sites, desc="convert", unit="layer", disable=not self.progress):
            if isinstance(module, nn.Linear):
                setattr(parent, attr, self._spike_linear(path, module, source, cfg.method.layer_method(path, adapter)))
                if uses[id(module.weight)] == 1:
                    # Release the float weight now: the converter still references the old module.
                    module.weight.data = module.weight.data.new_empty(0)
            else:
                module.spike_attention = SpikeAttention(cfg.msts, cfg.kv_levels, cfg.prob_code.levels, source)
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        hook = model.register_forward_pre_hook(
            functools.partial(_set_token_modalities, visual_ids, modalities), with_kwargs=True
        )
        setattr(model, _STATE_ATTR, SpikeState(cfg, adapter, modalities, hook))
        return model

    def _plan(self, model: nn.Module, adapter: ModelAdapter, modalities: TokenModalities) -> list[tuple]:
        """``(path, module, parent, attribute, modality source)`` of every linear layer and
        attention module to convert."""
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
                    sites.append((full, module, model.get_submodule(parent_name), attr, source))
        return sites

    def _spike_linear(self, path: str, linear: nn.Linear, source, method) -> SpikeLinear:
        cfg = self.config
        ranges = None if self.calibration is None else {
            m: r.to(linear.weight.device) for m, r in self.calibration.channel_absmax_of(path).items()
        }
        all_ranges = None if ranges is None else torch.stack(list(ranges.values())).amax(0)
        hessian = self.calibration.hessians[path].to(linear.weight.device) if cfg.weight_method == "gptq" else None
        site = SpikeLinear(linear, cfg.msts, cfg.weight_levels, source, method, all_ranges, hessian)
        if cfg.act_scales == "static":
            site.set_static_ranges(ranges)
        return site


def convert(
    model: nn.Module,
    config: Optional[SpikeConfig] = None,
    calibration: Optional[Calibration] = None,
    progress: bool = False,
) -> nn.Module:
    """Make ``model`` spike-driven in place and return it (see the module docstring).

    :param calibration: from :func:`~spikemllm_sj.ann2snn.calibration.calibrate`, required by (and only
        by) configurations that need one (``SpikeConfig.needs_calibration``).
    :param progress: a progress bar over the layers swapped.
    """
    return ModuleConverter(SpikeMLLMRecipe(config or SpikeConfig(), calibration, progress)).convert(model)


def set_mode(model: nn.Module, mode: Mode) -> None:
    """Run a converted model spike-driven (``"spike"``) or as its quantized ANN twin (``"fake_quant"``)."""
    spike_state(model)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for module in model.modules():
        if isinstance(module, SpikeSite):
            module.set_mode(mode)

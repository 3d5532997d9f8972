"""Converted models through ``save_pretrained`` / ``from_pretrained``: a transformers quantizer.

``import spikemllm_sj`` registers :class:`SpikeMLLMConfig` and :class:`SpikeMLLMQuantizer` under
``quant_method="spikemllm"`` as soon as transformers' quantizer registry is imported (see the
package ``__init__``). A converted model with the quantizer attached (:func:`attach_quantizer`)
then saves with ``model.save_pretrained(folder)``, and ``from_pretrained(folder)`` (the model's
class or an ``AutoModelFor...``) gives back the converted model, bit for bit. The folder holds:

* ``config.json``: the model's config, ``attn_implementation: "spikemllm"`` and the
  ``quantization_config`` (:class:`SpikeMLLMConfig`: format version, the ``SpikeConfig``, dtype,
  model class, the SHA-256 of the weights' manifests and of every other file saved with the model);
* ``generation_config.json``, and the processor's files when one was saved;
* ``model.safetensors`` (or shards): the converted state (integer weights, scales, everything left
  in float). Its header carries the format version, the contents of the two JSON files and the
  manifests: dtype, shape and SHA-256 of every tensor and non-persistent buffer
  (:mod:`spikemllm_sj.ann2snn.checkpoint`).

``config.json`` and the weights are bound both ways: the config records the manifests' digest,
the weights the config's contents. Without ``import spikemllm_sj``, transformers does not know
the ``"spikemllm"`` attention implementation and refuses to build the model, so the folder never
loads as a float model with random linear weights.

This module is imported while transformers imports its quantizer registry (the package
``__init__`` registers it then), before transformers' modelling code has loaded: it imports only
the folder format (:mod:`~spikemllm_sj.ann2snn.checkpoint_format`) at module level, and the
converter, which imports transformers' modelling code, inside the hooks that need it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils import cached_file

from spikemllm_sj.ann2snn.checkpoint_format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    GENERATION_CONFIG_FILE,
    HEADER_KEY,
    QUANT_METHOD,
    CheckpointError,
    SpikeMLLMConfig,
    config_field,
    dtype_name,
    read_header,
    read_json_file,
    state_sha256,
)
from spikemllm_sj.ann2snn.finalizers import register_finalizer
from spikemllm_sj.ann2snn.journal import Journal
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.digests import file_sha256

__all__ = ["SpikeMLLMQuantizer", "attach_quantizer"]

register_quantization_config(QUANT_METHOD)(SpikeMLLMConfig)

def _json_differences(saved: Any, found: Any, prefix: str = "") -> list[str]:
    """The dotted names of the fields where two JSON values differ."""
    if isinstance(saved, dict) and isinstance(found, dict):
        return [
            name
            for key in sorted(saved.keys() | found.keys())
            for name in _json_differences(saved.get(key), found.get(key), f"{prefix}{key}.")
        ]
    return [] if saved == found else [prefix.rstrip(".") or "(the whole file)"]


def _check_json_file(folder: Path, name: str, saved: Optional[dict], weights: str) -> None:
    path = folder / name
    if saved is None:
        if path.is_file():
            raise CheckpointError(f"{path}: the model was saved without {name}")
        return
    changed = _json_differences(saved, read_json_file(path))
    if changed:
        raise CheckpointError(f"{path}: fields {changed} differ from the {name} saved with the weights in {weights}")


def _other_file(name_or_path: str, folder: Path, name: str) -> Path:
    """A file saved beside the weights (the processor's): in ``folder``, or fetched like the weights
    were (from_pretrained downloads only the model's files from the hub)."""
    path = folder / name
    if not path.is_file():
        found = cached_file(name_or_path, name, _raise_exceptions_for_missing_entries=False)
        if found is None:
            raise CheckpointError(f"{path} is missing; {config_field('files')} records it")
        path = Path(found)
    return path


def _single_device(device_map) -> torch.device:
    """The one device of ``device_map`` (as ``from_pretrained`` normalises it)."""
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, dict) and set(device_map) == {""}:
        return torch.device(device_map[""])
    raise ValueError(
        f"device_map={device_map!r}: a spiking model loads onto one device (device_map='cpu', 'cuda:0', ...); "
        "splitting or offloading it is not supported"
    )


@register_quantizer(QUANT_METHOD)
class SpikeMLLMQuantizer(HfQuantizer):
    """Saves and loads converted models (see the module docstring). Only saved converted models
    load (``requires_calibration``): a float checkpoint is converted with ``spikemllm_sj.convert``."""

    requires_calibration = True

    def __init__(self, quantization_config: SpikeMLLMConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.device = torch.device("cpu")
        self.pending = None  # (header, skeleton layout, weights file name) between the two loading hooks

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    def validate_environment(self, device_map=None, **kwargs) -> None:
        self.device = _single_device(device_map)

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        saved = self.quantization_config.torch_dtype
        if dtype != saved:
            raise ValueError(
                f"dtype={dtype} was asked for, but this spiking model was converted in {saved} "
                f"({config_field('dtype')}): its weight scales are exact in that dtype only; load it with dtype='auto'"
            )
        return saved

    def update_attn_implementation(self, config):
        from spikemllm_sj.ann2snn.attention_interface import ATTN_IMPLEMENTATION, register_attention

        register_attention()
        requested = config._attn_implementation
        if requested not in (None, ATTN_IMPLEMENTATION):
            raise ValueError(
                f"attn_implementation={requested!r} was asked for, but a spiking model runs its attention "
                f"spike-driven: attn_implementation={ATTN_IMPLEMENTATION!r} only"
            )
        config._attn_implementation = ATTN_IMPLEMENTATION
        return config

    def get_new_dtype(self, converter, param, dtype):
        # Every saved tensor keeps its dtype (integer weights, float32 calibrated scales in a
        # bfloat16 model); the loaded model is checked against the configuration afterwards.
        return None

    def _process_model_before_weight_loading(self, model: nn.Module, checkpoint_files=None, **kwargs):
        from spikemllm_sj.ann2snn.checkpoint import build_skeleton
        from spikemllm_sj.ann2snn.linear import SpikeLinear
        from spikemllm_sj.ann2snn.sites import SpikeSite

        config = self.quantization_config
        if not checkpoint_files or not str(checkpoint_files[0]).endswith(".safetensors"):
            raise CheckpointError(f"a spiking model loads from safetensors weights, got {checkpoint_files}")
        weights = Path(checkpoint_files[0])
        folder = weights.parent
        if type(model).__name__ != config.model_class:
            raise ValueError(
                f"{folder}: the model was converted from {config.model_class} ({config_field('model_class')}), "
                f"not {type(model).__name__}: load it with {config.model_class}.from_pretrained"
            )
        header = read_header(weights)
        if not config.state_sha256:
            raise CheckpointError(f"{config_field('state_sha256')} is missing: the folder was not written by save_pretrained")
        if state_sha256(header["tensors"], header["buffers"]) != config.state_sha256:
            raise CheckpointError(
                f"{weights.name} was not saved with this {CONFIG_FILE}: its manifest's SHA-256 is not {config_field('state_sha256')}"
            )
        _check_json_file(folder, CONFIG_FILE, header[CONFIG_FILE], weights.name)
        _check_json_file(folder, GENERATION_CONFIG_FILE, header[GENERATION_CONFIG_FILE], weights.name)
        for name, digest in config.files.items():
            path = _other_file(model.config.name_or_path, folder, name)
            found = file_sha256(path)
            if found != digest:
                raise CheckpointError(f"{path}: SHA-256 {found}, {config_field('files')} records {digest}")
        layout = build_skeleton(model, SpikeConfig.from_dict(config.spike_config), self.device)
        # Every loaded tensor comes from the file: transformers' weight initialisation must not run
        # on the converted layers or the modules around them (it would look for float weights);
        # the other modules (rotary embeddings) still recompute their non-persistent buffers.
        for module in model.modules():
            if any(isinstance(m, (SpikeSite, SpikeLinear)) for m in module.modules()):
                module._is_hf_initialized = True
        self.pending = (header, layout, weights.name)

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs):
        from spikemllm_sj.ann2snn.checkpoint import check_loaded, restore_buffers
        from spikemllm_sj.ann2snn.recipe import spike_state

        header, layout, source = self.pending
        self.pending = None
        config = SpikeConfig.from_dict(self.quantization_config.spike_config)
        check_loaded(model, layout, header["tensors"], config, source)
        restore_buffers(model, header["buffers"], source)
        # Static scales came back with the tensors; the state says so.
        spike_state(model).config = config
        # The processor's files belong to the folder, not to the model: a later save records its own.
        self.quantization_config = dataclasses.replace(self.quantization_config, files={})
        model.config.quantization_config = self.quantization_config
        return model

    def get_state_dict_and_metadata(self, model: nn.Module):
        """The header of the weights ``save_pretrained`` is about to write (the state itself is
        the model's ``state_dict``); ``config.json`` gets the manifest's digest first."""
        from spikemllm_sj.ann2snn.attention_interface import ATTN_IMPLEMENTATION
        from spikemllm_sj.ann2snn.checkpoint import buffer_manifest, state_manifest
        from spikemllm_sj.ann2snn.recipe import spike_state

        tensors, buffers = state_manifest(model), buffer_manifest(model)
        self.quantization_config = dataclasses.replace(
            self.quantization_config,
            spike_config=spike_state(model).config.to_dict(),
            dtype=dtype_name(model.dtype),
            model_class=type(model).__name__,
            state_sha256=state_sha256(tensors, buffers),
        )
        config = model.config
        config.quantization_config = self.quantization_config
        # Serialised, so that transformers cannot build this model without spikemllm_sj.
        config.attn_implementation = ATTN_IMPLEMENTATION
        # As save_pretrained sets them before writing config.json: the header holds that file's contents.
        config.dtype = self.quantization_config.dtype
        config.architectures = [type(model).__name__]
        generation = getattr(model, "generation_config", None) if model.can_generate() else None
        header = {
            "format_version": FORMAT_VERSION,
            CONFIG_FILE: json.loads(config.to_json_string(use_diff=True)),
            GENERATION_CONFIG_FILE: None if generation is None else json.loads(generation.to_json_string(use_diff=True)),
            "tensors": tensors,
            "buffers": buffers,
        }
        return None, {HEADER_KEY: json.dumps(header)}


def attach_quantizer(
    model: nn.Module, spike_config: SpikeConfig, files: Optional[dict[str, str]] = None, journal: Optional[Journal] = None
) -> SpikeMLLMQuantizer:
    """Give ``model``, converted with ``spike_config``, the quantizer, so that
    ``model.save_pretrained`` writes a folder that ``from_pretrained`` reloads (see the module
    docstring). ``convert`` attaches one to every model it converts.

    :param files: SHA-256 of the other files saved in the folder (the processor's), by name.
    :param journal: record the two attributes set, to undo them with a failed conversion.
    """
    config = SpikeMLLMConfig(
        spike_config=spike_config.to_dict(),
        dtype=dtype_name(model.dtype),
        model_class=type(model).__name__,
        files=dict(files or {}),
    )
    quantizer = SpikeMLLMQuantizer(config)
    for obj, name, value in ((model, "hf_quantizer", quantizer), (model.config, "quantization_config", config)):
        if journal is None:
            setattr(obj, name, value)
        else:
            journal.setattr(obj, name, value)
    return quantizer


@register_finalizer
def _attach_to_converted(model: nn.Module, spike_config: SpikeConfig, journal: Journal) -> None:
    attach_quantizer(model, spike_config, journal=journal)

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

Only the transformers quantizer API is imported here: this module is imported while
transformers imports its quantizer registry, so the converter loads when a hook first runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors import safe_open
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils import cached_file
from transformers.utils.quantization_config import QuantizationConfigMixin

from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.digests import file_sha256, json_sha256

__all__ = [
    "QUANT_METHOD",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "CONFIG_FILE",
    "GENERATION_CONFIG_FILE",
    "CheckpointError",
    "dtype_name",
    "SpikeMLLMConfig",
    "SpikeMLLMQuantizer",
    "attach_quantizer",
    "read_header",
    "read_json_file",
]

QUANT_METHOD = "spikemllm"
FORMAT_VERSION = 1
HEADER_KEY = "spikemllm"
"""The safetensors header entry holding the format version, the JSON files' contents and the manifest."""
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
_SHA256_HEX = frozenset("0123456789abcdef")


class CheckpointError(ValueError):
    """A saved spiking model whose files do not verify; the message names the file and the field or tensor."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: how configs and manifests write a dtype."""
    return str(dtype).removeprefix("torch.")


def _field(name: str) -> str:
    return f"{CONFIG_FILE}: quantization_config.{name}"


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256_HEX


@register_quantization_config(QUANT_METHOD)
@dataclass(kw_only=True)
class SpikeMLLMConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a saved converted model (a section of its ``config.json``),
    validated on construction. Not frozen, as transformers' ``QuantizationConfigMixin`` is a plain
    dataclass; this package changes one only through ``dataclasses.replace``.

    :param spike_config: :meth:`SpikeConfig.to_dict` of the conversion, exactly.
    :param dtype: the model's floating-point dtype (``"float32"``, ``"bfloat16"``, ...); the model
        loads in this dtype only, as its integer weights and scales were made for it.
    :param model_class: the transformers class the model was converted from.
    :param state_sha256: SHA-256 of the manifests in the weights' header ("" until saved).
    :param files: SHA-256 of each other file saved with the model (the processor's), by name.
    :param format_version: the folder format; this version reads :data:`FORMAT_VERSION` only.
    """

    spike_config: dict
    dtype: str
    model_class: str
    state_sha256: str = ""
    files: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    quant_method: str = QUANT_METHOD

    def __post_init__(self):
        if self.quant_method != QUANT_METHOD:
            raise CheckpointError(f"{_field('quant_method')} must be {QUANT_METHOD!r}, got {self.quant_method!r}")
        if isinstance(self.format_version, bool) or self.format_version != FORMAT_VERSION:
            raise CheckpointError(
                f"{_field('format_version')} is {self.format_version!r}; this spikemllm_sj reads format {FORMAT_VERSION}"
            )
        if not isinstance(self.spike_config, dict):
            raise CheckpointError(f"{_field('spike_config')} must be a JSON object, got {type(self.spike_config).__name__}")
        try:
            canonical = SpikeConfig.from_dict(self.spike_config).to_dict()
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{_field('spike_config')}: {error}") from None
        if canonical != self.spike_config:
            fields = sorted(k for k in canonical.keys() | self.spike_config.keys() if canonical.get(k) != self.spike_config.get(k))
            raise CheckpointError(
                f"{_field('spike_config')} is not a saved SpikeConfig: fields {fields} are missing or not in their saved form"
            )
        if not isinstance(self.dtype, str) or not isinstance(getattr(torch, self.dtype, None), torch.dtype) or not getattr(
            torch, self.dtype
        ).is_floating_point:
            raise CheckpointError(f"{_field('dtype')} must name a floating-point torch dtype (e.g. 'bfloat16'), got {self.dtype!r}")
        if not isinstance(self.model_class, str) or not self.model_class.isidentifier():
            raise CheckpointError(f"{_field('model_class')} must be a transformers class name, got {self.model_class!r}")
        if self.state_sha256 != "" and not _is_sha256(self.state_sha256):
            raise CheckpointError(f"{_field('state_sha256')} must be a hex SHA-256, got {self.state_sha256!r}")
        if not isinstance(self.files, dict) or not all(isinstance(k, str) and _is_sha256(v) for k, v in self.files.items()):
            raise CheckpointError(f"{_field('files')} must map file names to hex SHA-256 digests, got {self.files!r}")

    @classmethod
    def from_dict(cls, config_dict, return_unused_kwargs: bool = False, **kwargs):
        """The config of ``config_dict`` (``config.json``'s ``quantization_config``); fields are named
        in every error. ``kwargs`` (transformers' loading overrides) cannot change a saved model."""
        if not isinstance(config_dict, dict):
            raise CheckpointError(f"{CONFIG_FILE}: quantization_config must be a JSON object, got {type(config_dict).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown, missing = sorted(config_dict.keys() - names), sorted(required - config_dict.keys())
        if unknown or missing:
            raise CheckpointError(f"{CONFIG_FILE}: quantization_config has unknown fields {unknown} and lacks {missing}")
        overrides = sorted(kwargs.keys() & names)
        if overrides:
            raise CheckpointError(f"quantization_config fields {overrides} of a saved spiking model cannot be overridden")
        config = cls(**config_dict)
        return (config, kwargs) if return_unused_kwargs else config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def read_header(weights: str | Path) -> dict:
    """The ``spikemllm`` entry of the safetensors header of ``weights`` (format version checked).

    :raises CheckpointError: no such entry, not JSON, or another format version.
    """
    weights = Path(weights)
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata() or {}
    if HEADER_KEY not in metadata:
        raise CheckpointError(f"{weights.name}: its header has no {HEADER_KEY!r} entry: it was not saved from a converted model")
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{weights.name}: header entry {HEADER_KEY!r} is not JSON ({error})") from None
    fields = ("format_version", CONFIG_FILE, GENERATION_CONFIG_FILE, "tensors", "buffers")
    if not isinstance(header, dict) or any(name not in header for name in fields):
        raise CheckpointError(f"{weights.name}: header entry {HEADER_KEY!r} must be an object with the fields {list(fields)}")
    if header["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{weights.name}: header format_version is {header['format_version']!r}; this spikemllm_sj reads {FORMAT_VERSION}"
        )
    return header


def read_json_file(path: Path) -> Any:
    """The JSON value in the file at ``path``.

    :raises CheckpointError: the file is missing or not JSON.
    """
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not JSON ({error})") from None


def _state_sha256(tensors: dict, buffers: dict) -> str:
    """What ``config.json`` records of the weights: the SHA-256 of their two manifests."""
    return json_sha256({"tensors": tensors, "buffers": buffers})


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
            raise CheckpointError(f"{path} is missing; {_field('files')} records it")
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
                f"({_field('dtype')}): its weight scales are exact in that dtype only; load it with dtype='auto'"
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
                f"{folder}: the model was converted from {config.model_class} ({_field('model_class')}), "
                f"not {type(model).__name__}: load it with {config.model_class}.from_pretrained"
            )
        header = read_header(weights)
        if not config.state_sha256:
            raise CheckpointError(f"{_field('state_sha256')} is missing: the folder was not written by save_pretrained")
        if _state_sha256(header["tensors"], header["buffers"]) != config.state_sha256:
            raise CheckpointError(
                f"{weights.name} was not saved with this {CONFIG_FILE}: its manifest's SHA-256 is not {_field('state_sha256')}"
            )
        _check_json_file(folder, CONFIG_FILE, header[CONFIG_FILE], weights.name)
        _check_json_file(folder, GENERATION_CONFIG_FILE, header[GENERATION_CONFIG_FILE], weights.name)
        for name, digest in config.files.items():
            path = _other_file(model.config.name_or_path, folder, name)
            found = file_sha256(path)
            if found != digest:
                raise CheckpointError(f"{path}: SHA-256 {found}, {_field('files')} records {digest}")
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
            state_sha256=_state_sha256(tensors, buffers),
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


def attach_quantizer(model: nn.Module, files: Optional[dict[str, str]] = None) -> SpikeMLLMQuantizer:
    """Give converted ``model`` the quantizer, so that ``model.save_pretrained`` writes a folder
    that ``from_pretrained`` reloads (see the module docstring).

    :param files: SHA-256 of the other files saved in the folder (the processor's), by name.
    """
    from spikemllm_sj.ann2snn.recipe import spike_state

    state = spike_state(model)
    config = SpikeMLLMConfig(
        spike_config=state.config.to_dict(),
        dtype=dtype_name(model.dtype),
        model_class=type(model).__name__,
        files=dict(files or {}),
    )
    model.hf_quantizer = SpikeMLLMQuantizer(config)
    model.config.quantization_config = config
    return model.hf_quantizer

"""The folder format of a saved converted model: its version, the ``quantization_config`` section
of ``config.json`` (:class:`SpikeMLLMConfig`), the safetensors header entry, and the error every
failed check raises. Light on purpose: the transformers quantizer registers these classes while
transformers imports its quantizer registry (:mod:`spikemllm_sj.integrations.transformers_quantizer`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers.utils.quantization_config import QuantizationConfigMixin

from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.digests import json_sha256

__all__ = [
    "QUANT_METHOD",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "CONFIG_FILE",
    "GENERATION_CONFIG_FILE",
    "CheckpointError",
    "dtype_name",
    "config_field",
    "SpikeMLLMConfig",
    "read_header",
    "read_json_file",
    "state_sha256",
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


def config_field(name: str) -> str:
    """How messages name a field of the ``quantization_config`` section."""
    return f"{CONFIG_FILE}: quantization_config.{name}"


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256_HEX


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
            raise CheckpointError(f"{config_field('quant_method')} must be {QUANT_METHOD!r}, got {self.quant_method!r}")
        if isinstance(self.format_version, bool) or self.format_version != FORMAT_VERSION:
            raise CheckpointError(
                f"{config_field('format_version')} is {self.format_version!r}; this spikemllm_sj reads format {FORMAT_VERSION}"
            )
        if not isinstance(self.spike_config, dict):
            raise CheckpointError(f"{config_field('spike_config')} must be a JSON object, got {type(self.spike_config).__name__}")
        try:
            canonical = SpikeConfig.from_dict(self.spike_config).to_dict()
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{config_field('spike_config')}: {error}") from None
        if canonical != self.spike_config:
            fields = sorted(k for k in canonical.keys() | self.spike_config.keys() if canonical.get(k) != self.spike_config.get(k))
            raise CheckpointError(
                f"{config_field('spike_config')} is not a saved SpikeConfig: fields {fields} are missing or not in their saved form"
            )
        if not isinstance(self.dtype, str) or not isinstance(getattr(torch, self.dtype, None), torch.dtype) or not getattr(
            torch, self.dtype
        ).is_floating_point:
            raise CheckpointError(f"{config_field('dtype')} must name a floating-point torch dtype (e.g. 'bfloat16'), got {self.dtype!r}")
        if not isinstance(self.model_class, str) or not self.model_class.isidentifier():
            raise CheckpointError(f"{config_field('model_class')} must be a transformers class name, got {self.model_class!r}")
        if self.state_sha256 != "" and not _is_sha256(self.state_sha256):
            raise CheckpointError(f"{config_field('state_sha256')} must be a hex SHA-256, got {self.state_sha256!r}")
        if not isinstance(self.files, dict) or not all(isinstance(k, str) and _is_sha256(v) for k, v in self.files.items()):
            raise CheckpointError(f"{config_field('files')} must map file names to hex SHA-256 digests, got {self.files!r}")

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


def state_sha256(tensors: dict, buffers: dict) -> str:
    """What ``config.json`` records of the weights: the SHA-256 of their two manifests."""
    return json_sha256({"tensors": tensors, "buffers": buffers})

"""``save_spiking`` / ``load_spiking``: a converted model (and its processor) to a folder and back,
through ``save_pretrained`` / ``from_pretrained`` and the ``"spikemllm"`` transformers quantizer
(:mod:`spikemllm_sj.integrations.transformers_quantizer` says what the folder holds and how
loading verifies it)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
import transformers

from spikemllm_sj.ann2snn.checkpoint_format import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    CheckpointError,
    SpikeMLLMConfig,
    read_json_file,
)
from spikemllm_sj.ann2snn.recipe import spike_state
from spikemllm_sj.digests import file_sha256
from spikemllm_sj.integrations.transformers_quantizer import attach_quantizer

__all__ = ["save_spiking", "load_spiking"]


def _is_model_file(name: str) -> bool:
    return name in (CONFIG_FILE, GENERATION_CONFIG_FILE) or name.startswith("model.safetensors") or (
        name.startswith("model-") and name.endswith(".safetensors")
    )


def save_spiking(model: nn.Module, folder: str | Path, processor=None) -> Path:
    """Write converted ``model`` (and ``processor``, when given) to ``folder`` (created if needed):
    ``processor.save_pretrained`` first, then ``model.save_pretrained`` with the quantizer
    attached, which records the SHA-256 of every file already in the folder besides the model's.

    :return: the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if processor is not None:
        processor.save_pretrained(folder)
    files = {
        path.relative_to(folder).as_posix(): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not _is_model_file(path.relative_to(folder).as_posix())
    }
    attach_quantizer(model, spike_state(model).config, files)
    model.save_pretrained(folder)
    return folder


def load_spiking(folder: str | Path, device_map=None) -> nn.Module:
    """The converted model saved in ``folder`` by :func:`save_spiking` (or ``save_pretrained``), in
    eval mode: ``from_pretrained`` of the class its ``config.json`` names.

    :param device_map: one device (``"cpu"``, ``"cuda:0"``); default: the CPU.
    :raises CheckpointError: a file is missing, malformed or does not verify (the message names it).
    """
    path = Path(folder) / CONFIG_FILE
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    if "quantization_config" not in config:
        earlier = " (its spike_config.json is the unversioned format of earlier releases, not read any more: convert the float model again)"
        raise CheckpointError(
            f"{path} has no quantization_config: {folder} holds no converted model of this format"
            f"{earlier if (Path(folder) / 'spike_config.json').is_file() else ''}; save one with save_spiking"
        )
    quantization = SpikeMLLMConfig.from_dict(config["quantization_config"])
    model_class = getattr(transformers, quantization.model_class, None)
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise CheckpointError(
            f"{path}: quantization_config.model_class is {quantization.model_class!r}, not a transformers model class"
        )
    return model_class.from_pretrained(folder, device_map=device_map)

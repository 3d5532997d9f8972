"""Save and load converted models: safetensors weights plus JSON configs.

A saved folder holds ``config.json`` (the ``transformers`` model config), ``spike_config.json``
(the :class:`~spikemllm_sj.config.SpikeConfig`) and ``model.safetensors`` (the converted state:
integer weights and their scales, everything that stayed in float).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch.nn as nn
import transformers
from safetensors.torch import load_model, save_model

from spikemllm_sj.ann2snn.recipe import convert, spike_state
from spikemllm_sj.config import SpikeConfig

__all__ = ["save_spiking", "load_spiking"]

SPIKE_CONFIG = "spike_config.json"
WEIGHTS = "model.safetensors"


def save_spiking(model: nn.Module, folder: str | Path) -> Path:
    """Write converted ``model`` to ``folder`` (created if needed)."""
    state = spike_state(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    (folder / SPIKE_CONFIG).write_text(
        json.dumps({"model_class": type(model).__name__, "spike_config": state.config.to_dict()}, indent=2)
    )
    save_model(model, str(folder / WEIGHTS))
    return folder


def load_spiking(folder: str | Path) -> nn.Module:
    """Rebuild a converted model from ``folder`` (written by :func:`save_spiking`), in eval mode."""
    folder = Path(folder)
    missing = [name for name in ("config.json", SPIKE_CONFIG, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a saved spiking model: missing {', '.join(missing)}")
    meta = json.loads((folder / SPIKE_CONFIG).read_text())
    model_class = getattr(transformers, meta["model_class"], None)
    if model_class is None:
        raise ValueError(f"transformers has no class {meta['model_class']!r}")
    config = model_class.config_class.from_json_file(folder / "config.json")
    spike_config = SpikeConfig.from_dict(meta["spike_config"])
    # Static scales come back with the weights (each site's calibrated absmax is a buffer).
    model = convert(model_class(config).eval(), dataclasses.replace(spike_config, act_scales="dynamic"))
    load_model(model, str(folder / WEIGHTS))
    spike_state(model).config = spike_config
    return model

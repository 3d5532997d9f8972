"""Static activation scales: ``calibrate(model, batches)`` before ``convert``.

For every linear layer that ``convert`` makes spike-driven, the calibration records the largest
input magnitude per input channel and token modality over the calibration batches, and, for GPTQ
weights, the input's second moment ``X^T X`` (the layer's Hessian up to a factor). Static scales
are per tensor and modality (the maximum over channels, after the quantization method's input
transform); SmoothQuant uses the per-channel ranges. The statistics are running maxima, so a
calibration can be resumed with more batches and saved as JSON in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from spikemllm_sj.adapters import adapter_for
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.neurons import Modality
from spikemllm_sj.quant import check_finite

__all__ = ["Calibration", "calibrate"]


@dataclass
class Calibration:
    """Input absmax per linear layer (module path), modality name and input channel, and the
    number of batches seen."""

    absmax: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    batches: int = 0
    hessians: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, site: str, modality: Modality, channel_absmax: torch.Tensor) -> None:
        per_site = self.absmax.setdefault(site, {})
        name = modality.name.lower()
        channel_absmax = channel_absmax.detach().cpu()  # kept as lists: device-independent
        if name in per_site:
            channel_absmax = torch.maximum(torch.tensor(per_site[name]), channel_absmax)
        per_site[name] = channel_absmax.tolist()

    def channel_absmax_of(self, site: str) -> dict[Modality, torch.Tensor]:
        """Per modality, the input range of each channel ``[in]``."""
        if site not in self.absmax:
            raise ValueError(f"the calibration has no statistics for {site}: was it made on this model?")
        return {Modality.parse(name): torch.tensor(values) for name, values in self.absmax[site].items()}

    def add_hessian(self, site: str, x2: torch.Tensor) -> None:
        """Accumulate ``x2^T x2`` of inputs ``[N, in]`` (float64)."""
        x2 = x2.double()
        h = x2.T @ x2
        self.hessians[site] = h if site not in self.hessians else self.hessians[site] + h

    def save(self, path: str | Path) -> None:
        """JSON at ``path``; Hessians, if any, in ``<path>.hessians.safetensors`` beside it."""
        Path(path).write_text(json.dumps({"batches": self.batches, "absmax": self.absmax}, indent=1))
        if self.hessians:
            save_file(self.hessians, f"{path}.hessians.safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        data = json.loads(Path(path).read_text())
        hessians = Path(f"{path}.hessians.safetensors")
        return cls(
            absmax=data["absmax"],
            batches=int(data["batches"]),
            hessians=load_file(hessians) if hessians.is_file() else {},
        )


def calibrate(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    config: Optional[SpikeConfig] = None,
    resume: Optional[Calibration] = None,
    progress: bool = True,
) -> Calibration:
    """Run the (unconverted) ``model`` on ``batches`` (forward kwargs) and record input absmax.

    :param config: the configuration the model will be converted with (its ``convert_lm_head``
        decides whether the output head is calibrated too).
    :param resume: a calibration to continue; it is updated and returned.
    """
    config = config or SpikeConfig()
    adapter = adapter_for(model)
    if any(m.training for m in model.modules()):
        raise ValueError("the model is in training mode: call model.eval() before calibrating")
    visual_ids = adapter.visual_token_ids(model)
    calibration = resume if resume is not None else Calibration()
    token_ids: dict[str, torch.Tensor] = {}

    def record(site: str, fixed: Optional[Modality]):
        def hook(module, args):
            x = args[0].detach()
            check_finite(x, f"input of {site}")
            x3 = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x.reshape(1, -1, x.shape[-1])
            if config.weight_method == "gptq":
                calibration.add_hessian(site, x3.reshape(-1, x3.shape[-1]))
            if fixed is not None:
                calibration.update(site, fixed, x3.abs().reshape(-1, x3.shape[-1]).amax(0).float())
                return
            ids = token_ids["ids"][:, -x3.shape[1] :]
            for m in ids.unique().tolist():
                calibration.update(site, Modality(int(m)), x3[ids == m].abs().amax(0).float())

        return hook

    sections = [(adapter.vision, Modality.IMAGE), (adapter.projector, Modality.IMAGE), (adapter.language_model, None)]
    handles = []
    try:
        for path, fixed in sections:
            if path is None:
                continue
            for name, module in model.get_submodule(path).named_modules():
                if isinstance(module, nn.Linear):
                    handles.append(module.register_forward_pre_hook(record(f"{path}.{name}", fixed)))
        if config.convert_lm_head:
            handles.append(model.get_submodule(adapter.lm_head).register_forward_pre_hook(record(adapter.lm_head, None)))
        seen = 0
        with torch.no_grad():
            for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
                input_ids = batch.get("input_ids")
                if input_ids is None:
                    raise ValueError("calibration batches need input_ids (to tell image tokens from text)")
                ids = torch.zeros_like(input_ids)
                for modality, token_id in visual_ids.items():
                    ids[input_ids == token_id] = int(modality)
                token_ids["ids"] = ids
                model(**batch)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ValueError("calibrate needs at least one batch")
    calibration.batches += seen
    return calibration

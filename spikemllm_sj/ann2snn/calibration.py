"""Static activation scales: ``calibrate(model, batches)`` before ``convert``.

For every linear layer that ``convert`` makes spike-driven, the calibration records the largest
input magnitude per input channel and token modality over the calibration batches, for GPTQ
weights the input's second moment ``X^T X`` (the layer's Hessian up to a factor), and for the
clip search a sample of the inputs themselves (per layer and modality, up to
:data:`SAMPLE_TOKENS_PER_BATCH` of each batch's tokens, spread evenly over them, until
:data:`SAMPLE_TOKENS`). Static scales
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

from spikemllm_sj.ann2snn.adapters import adapter_for
from spikemllm_sj.ann2snn.modalities import modality_ids, require_visual_inputs
from spikemllm_sj.ann2snn.preconditions import require_eval_mode
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.neurons import Modality, check_finite

__all__ = ["SAMPLE_TOKENS", "SAMPLE_TOKENS_PER_BATCH", "Calibration", "calibrate"]

SAMPLE_TOKENS = 512
"""Input tokens sampled per layer and modality for the clip search, in all."""
SAMPLE_TOKENS_PER_BATCH = 128
"""... and at most this many from one batch."""


@dataclass
class Calibration:
    """Input absmax per linear layer (module path), modality name and input channel, and the
    number of batches seen."""

    absmax: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    batches: int = 0
    hessians: dict[str, torch.Tensor] = field(default_factory=dict)
    samples: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def add_samples(self, site: str, modality: Modality, tokens: torch.Tensor) -> None:
        """Keep up to :data:`SAMPLE_TOKENS_PER_BATCH` of the inputs ``[N, in]`` of ``site`` (float32,
        CPU, spread evenly over them), up to :data:`SAMPLE_TOKENS` in all."""
        per_site = self.samples.setdefault(site, {})
        name = modality.name.lower()
        kept = per_site.get(name)
        room = SAMPLE_TOKENS - (0 if kept is None else kept.shape[0])
        if room <= 0:
            return
        tokens = tokens.detach().float().cpu()
        count = min(room, tokens.shape[0], SAMPLE_TOKENS_PER_BATCH)
        tokens = tokens[torch.linspace(0, tokens.shape[0] - 1, count).long()]
        per_site[name] = tokens if kept is None else torch.cat([kept, tokens])

    def samples_of(self, site: str) -> dict[Modality, torch.Tensor]:
        """Per modality, the sampled inputs ``[N, in]`` of ``site``."""
        if site not in self.samples:
            raise ValueError(f"the calibration has no sampled inputs of {site}: calibrate with SpikeConfig(act_clip='search')")
        return {Modality.parse(name): x for name, x in self.samples[site].items()}

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

    def merge(self, other: "Calibration") -> None:
        """Add ``other``'s statistics (made on the same model) to this calibration's."""
        for site, per_modality in other.absmax.items():
            for name, values in per_modality.items():
                self.update(site, Modality.parse(name), torch.tensor(values))
        for site, h in other.hessians.items():
            self.hessians[site] = h if site not in self.hessians else self.hessians[site] + h
        for site, per_modality in other.samples.items():
            mine = self.samples.setdefault(site, {})
            for name, tokens in per_modality.items():
                mine[name] = (tokens if name not in mine else torch.cat([mine[name], tokens]))[:SAMPLE_TOKENS]
        self.batches += other.batches

    def add_hessian(self, site: str, x2: torch.Tensor) -> None:
        """Accumulate ``x2^T x2`` of inputs ``[N, in]`` (float64)."""
        x2 = x2.double()
        h = x2.T @ x2
        self.hessians[site] = h if site not in self.hessians else self.hessians[site] + h

    def save(self, path: str | Path) -> None:
        """JSON at ``path``; Hessians and sampled inputs, if any, in ``<path>.hessians.safetensors``
        and ``<path>.samples.safetensors`` beside it."""
        Path(path).write_text(json.dumps({"batches": self.batches, "absmax": self.absmax}, indent=1))
        if self.hessians:
            save_file(self.hessians, f"{path}.hessians.safetensors")
        if self.samples:
            flat = {f"{site}|{name}": x.contiguous() for site, per in self.samples.items() for name, x in per.items()}
            save_file(flat, f"{path}.samples.safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        data = json.loads(Path(path).read_text())
        hessians = Path(f"{path}.hessians.safetensors")
        samples_file = Path(f"{path}.samples.safetensors")
        samples: dict[str, dict[str, torch.Tensor]] = {}
        for key, x in (load_file(samples_file) if samples_file.is_file() else {}).items():
            site, _, name = key.rpartition("|")
            samples.setdefault(site, {})[name] = x
        return cls(
            absmax=data["absmax"],
            batches=int(data["batches"]),
            hessians=load_file(hessians) if hessians.is_file() else {},
            samples=samples,
        )


class _InputRecorder:
    """Forward pre-hooks that record the input of each calibrated linear layer into a calibration."""

    def __init__(self, calibration: Calibration, hessians: bool, samples: bool):
        self.calibration = calibration
        self.hessians = hessians
        self.samples = samples
        self.ids: Optional[torch.Tensor] = None  # modality ids [B, L] of the current batch

    def hook(self, site: str, fixed: Optional[Modality]):
        def record(module, args):
            x = args[0].detach()
            check_finite(x, f"input of {site}")
            x3 = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x.reshape(1, -1, x.shape[-1])
            if self.hessians:
                self.calibration.add_hessian(site, x3.reshape(-1, x3.shape[-1]))
            if fixed is not None:
                tokens = {fixed: x3.reshape(-1, x3.shape[-1])}
            else:
                ids = self.ids[:, -x3.shape[1] :]  # the output head may see only the last tokens
                tokens = {Modality(int(m)): x3[ids == m] for m in ids.unique().tolist()}
            for modality, x in tokens.items():
                self.calibration.update(site, modality, x.abs().amax(0).float())
                if self.samples:
                    self.calibration.add_samples(site, modality, x)

        return record


def calibrate(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    config: Optional[SpikeConfig] = None,
    resume: Optional[Calibration] = None,
    progress: bool = True,
) -> Calibration:
    """Run the (unconverted) ``model`` on ``batches`` (forward kwargs) and record input absmax.

    :param config: the configuration the model will be converted with (its ``convert_lm_head``
        decides whether the output head is calibrated too, its ``weight_method`` whether Hessians
        are recorded).
    :param resume: a calibration to continue; it is updated and returned. The new batches'
        statistics are recorded apart and merged into it only once every batch has run, so a
        failed or interrupted call leaves it as it was (GPTQ: the new Hessians are held apart
        until then, one more set of them in memory).
    :raises ValueError: a batch without ``input_ids``, or with image or video placeholders but
        none of that modality's pixels (the vision tower would not run: nothing calibrates it, and
        the placeholders' embeddings would be recorded as image statistics).
    """
    config = config or SpikeConfig()
    adapter = adapter_for(model)
    require_eval_mode(model, "calibrating")
    visual_ids = adapter.visual_token_ids(model)
    calibration = Calibration()
    recorder = _InputRecorder(calibration, hessians=config.weight_method == "gptq", samples=config.act_clip == "search")
    handles = [
        module.register_forward_pre_hook(recorder.hook(path, fixed))
        for path, module, fixed in adapter.converted_linears(model, config.convert_lm_head)
    ]
    seen = 0
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
                input_ids = batch.get("input_ids")
                if input_ids is None:
                    raise ValueError("calibration batches need input_ids (to tell image tokens from text)")
                recorder.ids = modality_ids(visual_ids, input_ids)
                require_visual_inputs(recorder.ids, batch)
                model(**batch)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ValueError("calibrate needs at least one batch")
    calibration.batches = seen
    if resume is None:
        return calibration
    resume.merge(calibration)
    return resume

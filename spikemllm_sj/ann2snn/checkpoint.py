"""The saved state of a converted model and the checks a reloaded one must pass.

Saving records every tensor of the model's ``state_dict`` in a *manifest* (dtype, shape,
SHA-256: :func:`state_manifest`), and its non-persistent buffers, which are not saved, in another
(:func:`buffer_manifest`). Loading rebuilds the converted structure from the configs
(:func:`build_skeleton`), lets the saved tensors replace its placeholders, then checks the result
three ways (:func:`check_loaded`): against the skeleton (the same tensors, dtypes and shapes as
its configuration gives), against the manifest (bit for bit), and against the
:class:`~spikemllm_sj.config.SpikeConfig` (integer weights within the configured levels, scales
finite and positive, static scales exactly where the configuration has them); the buffers the
loader recomputed get their saved dtypes and are checked too (:func:`restore_buffers`). The
transformers quantizer (:mod:`spikemllm_sj.integrations.transformers_quantizer`) drives both ends.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn as nn
from transformers.modeling_utils import local_torch_dtype

from spikemllm_sj.ann2snn.calibration import Calibration
from spikemllm_sj.ann2snn.checkpoint_format import CheckpointError, dtype_name
from spikemllm_sj.ann2snn.linear import SpikeLinear
from spikemllm_sj.ann2snn.recipe import convert
from spikemllm_sj.ann2snn.sites import MSTSSite
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.digests import tensor_sha256
from spikemllm_sj.neurons import Modality

__all__ = ["Layout", "state_manifest", "buffer_manifest", "build_skeleton", "check_loaded", "restore_buffers"]

Manifest = dict[str, list]
"""Tensor name (a ``state_dict`` key) -> ``[dtype name, shape, SHA-256]``."""


def _entry(tensor: torch.Tensor) -> list:
    return [dtype_name(tensor.dtype), list(tensor.shape), tensor_sha256(tensor)]


def state_manifest(model: nn.Module) -> Manifest:
    """The manifest of ``model``'s ``state_dict`` (tied tensors under each of their names)."""
    return {key: _entry(t) for key, t in model.state_dict().items()}


def _unsaved_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    saved = model.state_dict().keys()
    return {key: b for key, b in model.named_buffers() if key not in saved}


def buffer_manifest(model: nn.Module) -> Manifest:
    """The manifest of ``model``'s non-persistent buffers (rotary frequencies, position ids): not
    saved, recomputed by the loader, and checked against this record."""
    return {key: _entry(b) for key, b in _unsaved_buffers(model).items()}


Layout = dict[str, tuple[str, tuple[int, ...]]]
"""Tensor name -> ``(dtype name, shape)``: what a converted skeleton expects of the tensors loaded into it."""


def build_skeleton(model: nn.Module, config: SpikeConfig, device: torch.device) -> Layout:
    """Give ``model``, a ``from_pretrained`` skeleton on the meta device, the structure ``convert``
    gives it with ``config``, on ``device``, with placeholder values for the saved tensors to replace;
    return its layout.

    The structure depends neither on the calibration nor on the weight method or the clipping, so
    the skeleton is converted from zero weights with dynamic scales, round-to-nearest weights and
    no clipping (the loaded ``clip`` buffers hold the ratios), and with unit
    channel ranges when the method itself needs a calibration (SmoothQuant's transform).
    """
    # from_pretrained builds the skeleton under a meta default device and the model's dtype as the
    # default dtype; the buffers convert creates follow torch's float32 default, as in a normal run.
    with torch.device(device), local_torch_dtype(torch.float32):
        model.to_empty(device=device)
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                tensor.zero_()
        structure = dataclasses.replace(config, act_scales="dynamic", weight_method="rtn", act_clip=1.0, weight_clip="none")
        convert(model.eval(), structure, calibration=_unit_calibration(model) if structure.needs_calibration else None)
    return {key: (dtype_name(t.dtype), tuple(t.shape)) for key, t in model.state_dict().items()}


def _unit_calibration(model: nn.Module) -> Calibration:
    """Unit input ranges for every linear layer and modality: placeholders that shape the method's
    transforms; the loaded tensors replace every value they lead to."""
    return Calibration(
        absmax={
            path: {m.name.lower(): [1.0] * module.in_features for m in Modality}
            for path, module in model.named_modules()
            if isinstance(module, nn.Linear)
        }
    )


def check_loaded(model: nn.Module, layout: Layout, manifest: Manifest, config: SpikeConfig, source: str) -> None:
    """Check the tensors loaded into a skeleton (see the module docstring).

    :param source: the weights file, for the messages.
    :raises CheckpointError: the first tensor that fails, by name.
    """
    state = model.state_dict()
    _check_names(set(state), set(layout), "the configuration's converted model", source)
    _check_names(set(state), set(manifest), "the manifest in its header", source)
    for key, tensor in state.items():
        got = (dtype_name(tensor.dtype), tuple(tensor.shape))
        if got != layout[key]:
            raise CheckpointError(
                f"{source}: {key} is {got[0]} {list(got[1])}, the configuration gives {layout[key][0]} {list(layout[key][1])}"
            )
        dtype, shape, digest = manifest[key]
        if [got[0], list(got[1]), tensor_sha256(tensor)] != [dtype, shape, digest]:
            raise CheckpointError(
                f"{source}: {key} differs from its manifest entry ({dtype} {shape}, SHA-256 {digest}): the data are corrupted"
            )
    for path, module in model.named_modules():
        if isinstance(module, SpikeLinear):
            _check_linear(path, module, config, source)
        elif isinstance(module, MSTSSite):
            # Attention queries always take dynamic, unclipped scales.
            if module.static:
                raise CheckpointError(f"{source}: {path}.static_absmax is set, but attention sites take dynamic scales only")
            if not bool((module.clip == 1).all()):
                raise CheckpointError(f"{source}: {path}.clip is {module.clip.tolist()}, but attention queries are not clipped (all 1)")


def _check_names(loaded: set[str], expected: set[str], what: str, source: str) -> None:
    missing, extra = sorted(expected - loaded), sorted(loaded - expected)
    if missing or extra:
        raise CheckpointError(
            f"{source}: the loaded tensors do not match {what}: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(extra)})"
        )


def _check_linear(path: str, module: SpikeLinear, config: SpikeConfig, source: str) -> None:
    qmax = config.weight_levels.qmax
    low, high = int(module.qweight.min()), int(module.qweight.max())
    if low < -qmax or high > qmax:
        raise CheckpointError(
            f"{source}: {path}.qweight holds levels in [{low}, {high}], outside [-{qmax}, {qmax}], the symmetric "
            f"levels of quantization_config.spike_config.weight_bits={config.weight_bits}"
        )
    scale = module.weight_scale
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise CheckpointError(f"{source}: {path}.weight_scale must be finite and > 0 everywhere")
    absmax = module.static_absmax
    calibrated = absmax[~torch.isnan(absmax)]
    if not (torch.isfinite(calibrated).all() and (calibrated > 0).all()):
        raise CheckpointError(f"{source}: {path}.static_absmax must be NaN (not calibrated) or finite and > 0, got {absmax.tolist()}")
    clip = module.clip
    if not bool(((clip > 0) & (clip <= 1)).all()):
        raise CheckpointError(f"{source}: {path}.clip must hold ratios in (0, 1], got {clip.tolist()}")
    if config.act_clip != "search":
        fixed = torch.tensor(float(config.act_clip))
        codes = [int(m) for m in module.encoder.config.codes]
        if not bool((clip[codes] == fixed).all()):
            raise CheckpointError(
                f"{source}: {path}.clip is {clip.tolist()}, but quantization_config.spike_config.act_clip is {config.act_clip!r}"
            )
    if module.static != (config.act_scales == "static"):
        state = "holds calibrated scales" if module.static else "holds no calibrated scale"
        raise CheckpointError(
            f"{source}: {path}.static_absmax {state}, but quantization_config.spike_config.act_scales is {config.act_scales!r}"
        )


def restore_buffers(model: nn.Module, manifest: Manifest, source: str) -> None:
    """Give the non-persistent buffers the loader recomputed the dtypes of the saved model (a model
    cast with ``.to(dtype)`` had them cast too), and check their values against ``manifest``.

    :raises CheckpointError: a buffer is missing or extra, or its recomputed value differs.
    """
    buffers = _unsaved_buffers(model)
    _check_names(set(buffers), set(manifest), "the non-persistent buffers in its header", source)
    for key, (dtype, shape, digest) in manifest.items():
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise CheckpointError(f"{source}: buffer {key} has the dtype {dtype!r} in its header, not a torch dtype")
        value = buffers[key].to(getattr(torch, dtype))
        if _entry(value) != [dtype, shape, digest]:
            raise CheckpointError(
                f"{source}: buffer {key}, recomputed on loading (it is not saved), differs from the saved model's "
                f"({dtype} {shape}, SHA-256 {digest})"
            )
        path, _, name = key.rpartition(".")
        setattr(model.get_submodule(path), name, value)

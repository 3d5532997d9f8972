"""Load a model by name, and turn images and questions into its inputs and its outputs into text.

``load_model(name)`` takes one of the built-in tiny configs (:data:`~spikemllm_sj.tiny.TINY_MODELS`,
built offline with random weights), a local folder holding a ``transformers`` checkpoint, or a
Hugging Face hub id (downloaded by ``transformers`` when a network is there, else read from the
local cache). It returns ``(model, processor)``; tiny models have no processor (``None``).

Inputs (:func:`encode`): real checkpoints use their ``AutoProcessor`` and chat template; tiny
models take the image through :func:`~spikemllm_sj.tiny.tiny_image_batch` (resized to the family's
tiny size) and the question through ByT5's byte-level tokenizer (token id = UTF-8 byte + 3, all
inside the tiny vocabulary of 512).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from spikemllm_sj.tiny import TINY_MODELS, build_tiny_model, tiny_image_batch

__all__ = ["ModelLoadError", "load_model", "read_image", "encode", "tokenize", "decode", "generate_tokens", "model_label"]

# ByT5 maps byte b to id b + 3 (ids 0-2 are its pad / eos / unk).
_BYTE_OFFSET = 3


class ModelLoadError(OSError):
    """A model that cannot be loaded; the message says why and what to do."""


def _valid_names() -> str:
    return f"built-in offline models: {', '.join(TINY_MODELS)}; or a local folder; or a hub id (owner/name)"


def load_model(
    name_or_path: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device_map=None,
    local_files_only: bool | None = None,
):
    """``(model, processor)`` for a tiny name, a local folder or a hub id; the model in eval mode.

    :param seed: the random weights of a tiny model.
    :param dtype: the weights' dtype.
    :param device_map: passed to ``from_pretrained`` (e.g. ``"auto"``); ignored for tiny models.
    :param local_files_only: never reach the hub; default: ``HF_HUB_OFFLINE``.
    :raises ValueError: an unknown name (the message lists the valid ones).
    :raises ModelLoadError: a folder or hub id that cannot be loaded (not available locally,
        not a checkpoint, not an image-text-to-text model).
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"model must be a non-empty string; {_valid_names()}")
    if name_or_path in TINY_MODELS:
        return build_tiny_model(name_or_path, seed=seed, dtype=dtype), None
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a transformers checkpoint folder (no config.json in it)")
        return _from_pretrained(str(path), dtype, device_map, local_files_only=True)
    if "/" not in name_or_path:
        raise ValueError(f"unknown model {name_or_path!r}: not a built-in name nor an existing folder; {_valid_names()}")
    if local_files_only is None:
        from huggingface_hub import constants

        local_files_only = bool(constants.HF_HUB_OFFLINE)
    return _from_pretrained(name_or_path, dtype, device_map, local_files_only)


def _from_pretrained(name: str, dtype: torch.dtype, device_map, local_files_only: bool):
    from huggingface_hub import constants
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from spikemllm_sj.adapters import adapter_for

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


@functools.lru_cache(maxsize=1)
def _byte_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(extra_ids=0)


def encode(model, processor, images: list, questions: list[str]) -> dict:
    """Forward / ``generate`` kwargs for one (PIL image, question) per row, left-padded, on the
    model's device (float inputs in the model's dtype).

    Real checkpoints: ``processor.apply_chat_template`` on a user turn holding the image and the
    question, with the generation prompt. Tiny models: ``[image] question-bytes``.
    """
    if len(images) != len(questions) or not images:
        raise ValueError(f"need one question per image and at least one, got {len(images)} images, {len(questions)} questions")
    if processor is None:
        return tiny_image_batch(model, images, [tokenize(None, q) for q in questions])
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions
    ]
    prompts = processor.apply_chat_template(conversations, add_generation_prompt=True)
    inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding=True)
    return dict(inputs.to(model.device, dtype=model.dtype))


def read_image(path: str | Path):
    """The image file at ``path`` as a PIL RGB image, fully decoded.

    :raises ValueError: the file is missing or not a readable image (the message names it).
    """
    from PIL import Image

    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")  # decodes the whole file: truncated images fail here
    except (OSError, ValueError) as error:
        raise ValueError(f"image {path} cannot be read ({type(error).__name__}: {error})") from None


def tokenize(processor, text: str) -> list[int]:
    """Token ids of plain ``text`` (no special tokens): the processor's tokenizer, or bytes for tiny models."""
    tokenizer = _byte_tokenizer() if processor is None else processor.tokenizer
    return tokenizer(text, add_special_tokens=False).input_ids


def decode(processor, tokens: torch.Tensor) -> list[str]:
    """Text of generated token ids ``[B, N]``.

    Tiny models: runs of printable-ASCII byte ids decode through ByT5; any other id (control or
    non-ASCII bytes, specials, ids above the byte range) shows as ``<id>``: random weights emit all.
    """
    if processor is not None:
        return [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]
    tokenizer = _byte_tokenizer()
    texts = []
    for row in tokens.tolist():
        parts, run = [], []
        for token in row + [None]:
            if token is not None and _BYTE_OFFSET + 32 <= token < _BYTE_OFFSET + 127:  # bytes 0x20-0x7e
                run.append(token)
                continue
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            if token is not None:
                parts.append(f"<{token}>")
        texts.append("".join(parts))
    return texts


def generate_tokens(model, batch: dict, max_new_tokens: int) -> torch.Tensor:
    """Greedy new tokens ``[B, N]`` (N <= ``max_new_tokens``; rows that stop early are padded)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return out[:, batch["input_ids"].shape[1] :]


def model_label(model) -> str:
    """``FP32`` / ``BF16`` / ``FP16``: the float model's precision, as tables name it."""
    return {torch.float32: "FP32", torch.bfloat16: "BF16", torch.float16: "FP16"}.get(model.dtype, str(model.dtype))

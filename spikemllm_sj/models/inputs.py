"""A model's inputs from images and questions, and its generated tokens as text.

Every model with a processor goes through its chat template and ``processor(...)``: real
checkpoints (their ``AutoProcessor``) and the tiny models (their family's processor, built offline
by :func:`~spikemllm_sj.models.tiny.build_tiny_processor`). A tiny model whose processor this
installation cannot build (``processor=None``: the Qwen / InternVL / OneVision processor classes need
torchvision's video processors) takes the image through
:func:`~spikemllm_sj.models.tiny.tiny_image_batch` (resized to the family's tiny size) and the
question through ByT5's byte-level tokenizer (token id = UTF-8 byte + 3, as the tiny tokenizers'
bytes, all inside the tiny vocabulary of 512).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image
from transformers import ByT5Tokenizer

from spikemllm_sj.models.tiny import tiny_image_batch

__all__ = ["read_image", "encode", "tokenize", "decode", "generate_tokens", "model_label"]

# ByT5 maps byte b to id b + 3 (ids 0-2 are its pad / eos / unk).
_BYTE_OFFSET = 3


@functools.lru_cache(maxsize=1)
def _byte_tokenizer():
    return ByT5Tokenizer(extra_ids=0)


def encode(model, processor, images: list, questions: list[str]) -> dict:
    """Forward / ``generate`` kwargs for one (PIL image, question) per row, left-padded, on the
    model's device (float inputs in the model's dtype).

    With a processor: ``processor.apply_chat_template`` on a user turn holding the image and the
    question, with the generation prompt, then ``processor(...)``. Without (a tiny model whose
    processor cannot be built here): ``[image] question-bytes``.
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
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")  # decodes the whole file: truncated images fail here
    except (OSError, ValueError) as error:
        raise ValueError(f"image {path} cannot be read ({type(error).__name__}: {error})") from None


def tokenize(processor, text: str) -> list[int]:
    """Token ids of plain ``text`` (no special tokens): the processor's tokenizer, or bytes without one."""
    tokenizer = _byte_tokenizer() if processor is None else processor.tokenizer
    return tokenizer(text, add_special_tokens=False).input_ids


def decode(processor, tokens: torch.Tensor) -> list[str]:
    """Text of generated token ids ``[B, N]``.

    Without a processor: runs of printable-ASCII byte ids decode through ByT5; any other id (control or
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

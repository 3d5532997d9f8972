"""SHA-256 digests of files and tensors: what saved artefacts record and loaders check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

__all__ = ["file_sha256", "tensor_sha256", "json_sha256"]


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    """Hex SHA-256 of the file at ``path``, read in ``chunk``-byte blocks (large files stay out of memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hex SHA-256 of ``tensor``'s elements as stored in its dtype, row-major (its bytes in a
    safetensors file): equal digests mean bit-identical values of that dtype and element count.
    A NaN digests as its bit pattern, so NaN entries compare equal."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(data.numpy()).hexdigest()


def json_sha256(value) -> str:
    """Hex SHA-256 of ``value``'s canonical JSON (sorted keys, no spaces): the same for equal JSON values."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

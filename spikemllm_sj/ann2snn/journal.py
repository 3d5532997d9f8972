"""A rollback journal for in-place model surgery: every change ``convert`` makes to a model goes
through it, so that a failure at any point (an error, an interrupt) puts the model back exactly as
it was, ``state_dict()`` and forward bit-identical.

Conversion releases each float weight as its integer copy takes its place (never two copies of
the model's weights in memory); the journal keeps what it releases or overwrites in a *store*
until the conversion commits: a folder on disk (``"disk"``, the default: no memory cost, disk
space of the model's size) or host memory (``"memory"``: tensors on an accelerator move to the
CPU, so the accelerator's memory is still freed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
import torch.nn as nn

__all__ = ["Rollback", "ROLLBACKS", "Journal"]

Rollback = Literal["disk", "memory"]
ROLLBACKS: tuple[str, ...] = ("disk", "memory")

_MISSING = object()


class _DiskStore:
    """Tensors appended as raw bytes to one file in a private temporary folder."""

    def __init__(self, folder: Optional[str | Path]):
        self._dir = tempfile.TemporaryDirectory(prefix="spikemllm-convert-", dir=folder)
        self._file = open(Path(self._dir.name) / "released.bin", "w+b")

    def put(self, tensor: torch.Tensor) -> Any:
        t = tensor.detach().contiguous()
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(t.cpu().view(-1).view(torch.uint8).numpy().data)  # a view: no copy in memory
        return offset, t.numel() * t.element_size(), t.dtype, tuple(t.shape), t.device

    def get(self, handle) -> torch.Tensor:
        offset, size, dtype, shape, device = handle
        self._file.seek(offset)
        raw = np.frombuffer(self._file.read(size), dtype=np.uint8).copy()
        return torch.from_numpy(raw).view(dtype).reshape(shape).to(device)

    def close(self) -> None:
        self._file.close()
        self._dir.cleanup()


class _MemoryStore:
    """Tensors kept in host memory (moved off an accelerator)."""

    def put(self, tensor: torch.Tensor) -> Any:
        # A CPU tensor is kept as it is: the model's parameter gets new storage, never edits this one.
        return tensor.detach().to("cpu"), tensor.device

    def get(self, handle) -> torch.Tensor:
        tensor, device = handle
        return tensor.to(device)

    def close(self) -> None:
        pass


class Journal:
    """Records changes to a model and undoes them all on :meth:`rollback`.

    :param rollback: where released and overwritten tensors wait for the commit (see the module
        docstring).
    :param folder: parent folder of the disk store (default: the system's temporary folder).
    """

    def __init__(self, rollback: Rollback = "disk", folder: Optional[str | Path] = None):
        if rollback not in ROLLBACKS:
            raise ValueError(f"rollback must be one of {ROLLBACKS}, got {rollback!r}")
        self._store = _DiskStore(folder) if rollback == "disk" else _MemoryStore()
        self._saved: dict[int, tuple[nn.Parameter | torch.Tensor, Any]] = {}  # id -> (tensor, handle)
        self._undo: list[Callable[[], None]] = []

    def _keep(self, tensor: torch.Tensor) -> None:
        # Only the first value seen is kept: that is the one the model had before the conversion.
        if id(tensor) not in self._saved:
            self._saved[id(tensor)] = (tensor, self._store.put(tensor.data))

    def assign(self, tensor: torch.Tensor, value: torch.Tensor) -> None:
        """``tensor.data = value`` (cast to its dtype and device), the original kept."""
        self._keep(tensor)
        tensor.data = value.to(dtype=tensor.dtype, device=tensor.device)

    def release(self, tensor: torch.Tensor) -> None:
        """Free ``tensor``'s storage (``tensor.data`` becomes empty), the original kept."""
        self._keep(tensor)
        tensor.data = tensor.data.new_empty(0)

    def setattr(self, obj: object, name: str, value: object) -> None:
        """``setattr(obj, name, value)``; the previous value (or its absence) is restored on rollback."""
        old = obj.__dict__.get(name, _MISSING) if not isinstance(obj, nn.Module) else _module_attr(obj, name)

        def undo():
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)

        setattr(obj, name, value)
        self._undo.append(undo)

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` on rollback (in reverse order of registration)."""
        self._undo.append(undo)

    def rollback(self) -> None:
        """Undo every change, newest first, then restore every kept tensor; close the store."""
        try:
            for undo in reversed(self._undo):
                undo()
            for tensor, handle in self._saved.values():
                tensor.data = self._store.get(handle)
        finally:
            self._close()

    def commit(self) -> None:
        """Keep the changes; drop what was kept for a rollback."""
        self._close()

    def _close(self) -> None:
        self._saved.clear()
        self._undo.clear()
        self._store.close()


def _module_attr(module: nn.Module, name: str) -> object:
    """``module``'s attribute ``name`` as ``getattr`` sees it (parameter, buffer, child or plain),
    or ``_MISSING``."""
    for table in ("_parameters", "_buffers", "_modules"):
        if name in module.__dict__[table]:
            return module.__dict__[table][name]
    return module.__dict__.get(name, _MISSING)

"""Run folders: a command's outputs land in a folder that holds one complete run or none.

A run writes into a fresh hidden folder beside its target (``.NAME.partial-XXXXXXXX``); once
everything is written, that folder takes the target's place (the previous run, if any, is moved
aside and then removed). A run that fails or is interrupted (Ctrl-C) removes its partial folder
and leaves the target as it was; a process killed outright (SIGKILL) leaves the target intact
too, and its partial folder behind.

A target that exists must be a folder that is empty or holds a previous run (its ``marker``
file): a run never replaces a folder of other files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

__all__ = ["check_folder", "check_run_folder", "run_folder", "write_file"]


def _said(path, name: str) -> str:
    return f"{name} {path}" if name else str(path)


def check_folder(path: str | Path, name: str = "") -> Path:
    """``path`` as a folder that files can be written into: it is a folder or does not exist yet,
    and its nearest existing ancestor is a writable folder.

    :param name: the argument's name, to start the messages with (argparse adds its own).
    :raises ValueError: a file, or an unwritable place.
    """
    out, said = Path(path), _said(path, name)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{said} is a file, not a folder")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{said}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{said}: {existing} is not writable")
    return out


def check_run_folder(path: str | Path, marker: str, name: str = "") -> Path:
    """``path`` as the target of a run (:func:`check_folder`, and it is new, empty or a previous
    run: it holds ``marker``)."""
    out = check_folder(path, name)
    if out.is_dir() and not (out / marker).is_file() and any(out.iterdir()):
        raise ValueError(
            f"{_said(path, name)} holds files but no {marker}, so it is not a previous run: "
            "give a new folder, an empty one, or a previous run's"
        )
    return out


@contextlib.contextmanager
def run_folder(path: str | Path, marker: str, name: str = "") -> Iterator[Path]:
    """Inside the block, the partial folder to write the run into; on leaving it normally, the
    partial folder replaces ``path`` (see the module docstring). ``path`` is checked first
    (:func:`check_run_folder`)."""
    out = check_run_folder(path, marker, name).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    partial.mkdir()  # with the umask's permissions, as the folder it becomes
    try:
        yield partial
        _swap_in(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # nothing left after a successful swap


def _swap_in(partial: Path, out: Path) -> None:
    if not out.exists():
        os.replace(partial, out)
        return
    previous = out.parent / f".{out.name}.previous-{secrets.token_hex(4)}"
    os.replace(out, previous)
    try:
        os.replace(partial, out)
    except BaseException:
        os.replace(previous, out)  # the target is never left empty-handed
        raise
    shutil.rmtree(previous)


def write_file(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all: into a partial file beside it, then renamed
    over it."""
    path = Path(path)
    partial = path.parent / f".{path.name}.partial-{secrets.token_hex(4)}"
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path

"""What a run left behind on this machine (Linux): processes of a process group, shared-memory
segments that no process maps any more, entries of a temporary folder.

Other people's Lava runs may share the machine, so a segment counts as left behind only if it is
new since a snapshot and no live process maps it: a segment still in use is always mapped by the
process that created it.
"""

from __future__ import annotations

import os
from pathlib import Path

SHM = Path("/dev/shm")
SEGMENT_PREFIX = "psm_"  # multiprocessing.shared_memory's names (Lava's channels)


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    members = []
    # Not Path.glob: it stats each match, and a process that exits in between raises ESRCH.
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = Path("/proc") / pid / "stat"
        try:
            text = stat.read_text()
        except OSError:  # the process exited while we looked
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after it.
        state, _ppid, pgrp = text.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def command_line(pid: int) -> str:
    """The command line of process ``pid`` (empty once it has exited)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def segments() -> set[str]:
    """Names of the shared-memory segments that exist now."""
    return {path.name for path in SHM.glob(SEGMENT_PREFIX + "*")}


def mapped_segments() -> set[str]:
    """Names of the segments that some live process maps."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            path = line.rpartition(" ")[2]
            if path.startswith(f"{SHM}/{SEGMENT_PREFIX}"):
                mapped.add(path.rpartition("/")[2])
    return mapped


def leaked_segments(before: set[str]) -> set[str]:
    """Segments created since ``before`` (a :func:`segments` snapshot) that nobody maps."""
    new = segments() - before
    return new - mapped_segments() if new else set()

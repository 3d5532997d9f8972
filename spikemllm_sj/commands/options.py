"""Command-line options that several commands share, the ``SpikeConfig`` they describe, the
argument checks and the exit statuses.

One place builds them, so ``convert``, ``eval``, ``med`` and ``lava`` accept the same spelling and
the same defaults. Every argument is checked before any work: a value argparse can check alone
through its ``type`` (:func:`positive_int`, :func:`existing_file`, :func:`folder`,
:func:`run_folder`), and a bad value ends the command with one line and :data:`EXIT_USAGE`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Callable, NoReturn

from spikemllm_sj.commands import run_folder as folders
from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.models.tiny import TINY_MODELS
from spikemllm_sj.neurons import MSTSConfig
from spikemllm_sj.quantization.methods import METHODS, method_from_dict

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
    "steps_given",
]

DEFAULTS = SpikeConfig()  # every option's default is the SpikeConfig field's
DEFAULT_STEPS = {m: DEFAULTS.msts.steps_of(m) for m in ("text", "image")}  # Tt / Tv
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


def _method_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--method-option``, the value read as JSON (``0.5``, ``true``, ``7``) or
    else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"must be KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _clip(text: str) -> float | str:
    if text == "search":
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a ratio in (0, 1] or 'search', got {text!r}") from None


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a ratio in (0, 1], got {text!r}") from None


method_option = _argument_type(_method_option, "KEY=VALUE")
clip_ratio = _argument_type(_clip, "clip ratio")
ratio = _argument_type(_ratio, "ratio")


def add_config(parser: argparse.ArgumentParser, act_scales: str, steps: bool = True, dtype: bool = True) -> None:
    """The conversion options: every :class:`SpikeConfig` field (steps per modality, the
    quantization method and its parameters, weight method, bits and clipping, activation scales
    and clipping, key/value and probability bits, the output head) and the weight dtype.

    :param steps: offer the step options (not for commands that choose the steps themselves).
    :param dtype: offer ``--dtype`` (commands that load real checkpoints).
    """
    group = parser.add_argument_group("conversion (SpikeConfig)")
    if steps:
        _add_steps(group)
    _add_quantization(group, act_scales)
    if dtype:
        group.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights of real checkpoints")


def _add_steps(group) -> None:
    group.add_argument("--steps-text", type=positive_int, default=None, metavar="TT",
                       help=f"TC-LIF time steps of text tokens, Tt (default {DEFAULT_STEPS['text']})")
    group.add_argument("--steps-image", type=positive_int, default=None, metavar="TV",
                       help=f"time steps of image and video tokens, Tv (default {DEFAULT_STEPS['image']})")


def _add_quantization(group, act_scales: str) -> None:
    group.add_argument("--method", default=DEFAULTS.method.name, choices=sorted(METHODS),
                       help="the ANN quantization method the spikes carry (spikemllm_sj.quantization.methods; "
                            f"default {DEFAULTS.method.name})")
    group.add_argument("--method-option", type=method_option, action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter of the method, e.g. alpha=0.5 for SmoothQuant, seed=1 or fallback=true "
                            "for Hadamard (repeatable; values read as JSON)")
    group.add_argument("--weight-method", default=DEFAULTS.weight_method, choices=("rtn", "gptq"),
                       help="weights per output channel by round-to-nearest or GPTQ (calibrated Hessians) "
                            f"(default {DEFAULTS.weight_method})")
    group.add_argument("--weight-bits", type=positive_int, default=DEFAULTS.weight_bits,
                       help=f"weight bits, per output channel (default {DEFAULTS.weight_bits})")
    group.add_argument("--weight-clip", default=DEFAULTS.weight_clip, choices=("none", "mse"),
                       help=f"weight scales at each output channel's absmax, or searched by MSE (default {DEFAULTS.weight_clip})")
    group.add_argument(
        "--act-scales", default=act_scales, choices=("static", "dynamic"),
        help=f"linear-input scales: static (calibrated, per tensor and modality) or dynamic (per token) (default {act_scales})",
    )
    group.add_argument("--act-clip", type=clip_ratio, default=DEFAULTS.act_clip, metavar="RATIO|search",
                       help="linear-input clip ratio in (0, 1], or 'search' per layer and modality on the calibration "
                            f"(default {DEFAULTS.act_clip}; 1.0: no clipping)")
    group.add_argument("--kv-bits", type=positive_int, default=DEFAULTS.kv_bits,
                       help=f"key and value bits, per token (default {DEFAULTS.kv_bits})")
    group.add_argument("--kv-clip", type=ratio, default=DEFAULTS.kv_clip, metavar="RATIO",
                       help=f"key and value clip ratio (default {DEFAULTS.kv_clip})")
    group.add_argument("--prob-bits", type=positive_int, default=DEFAULTS.prob_bits,
                       help=f"attention probability bits, per row (default {DEFAULTS.prob_bits})")
    group.add_argument("--convert-lm-head", action="store_true", help="make the output head spike-driven too")


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random weights of tiny models")


def spike_config(args: argparse.Namespace) -> SpikeConfig:
    """The :class:`SpikeConfig` of the options of :func:`add_config` (steps not given: the defaults).

    :raises ValueError: a field's value is not accepted (the message names the option's field).
    """
    steps = {m: getattr(args, f"steps_{m}", None) or DEFAULT_STEPS[m] for m in DEFAULT_STEPS}
    msts = MSTSConfig(steps={**steps, "video": steps["image"]})
    options = dict(args.method_option)
    try:
        method = method_from_dict({"name": args.method, **options})
    except TypeError:
        fields = [f.name for f in dataclasses.fields(METHODS[args.method])]
        raise ValueError(
            f"--method-option {sorted(options)}: {args.method} takes {', '.join(fields) if fields else 'no options'}"
        ) from None
    return SpikeConfig(
        msts=msts, method=method, weight_method=args.weight_method, weight_bits=args.weight_bits,
        weight_clip=args.weight_clip, act_scales=args.act_scales, act_clip=args.act_clip, kv_bits=args.kv_bits,
        kv_clip=args.kv_clip, prob_bits=args.prob_bits, convert_lm_head=args.convert_lm_head,
    )


def steps_given(args: argparse.Namespace) -> bool:
    """Whether ``--steps-text`` or ``--steps-image`` was given."""
    return getattr(args, "steps_text", None) is not None or getattr(args, "steps_image", None) is not None

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

from spikemllm_sj.ann2snn.plan import MSTSPlan
from spikemllm_sj.commands import run_folder as folders
from spikemllm_sj.commands.common import check_prompt
from spikemllm_sj.config import RECOMMENDED, SpikeConfig
from spikemllm_sj.models.loading import BUILTIN_MODELS, EASYVQA_LLAVA
from spikemllm_sj.neurons import DATA_DEPENDENT_SCHEMES, SCHEMES, MSTSConfig
from spikemllm_sj.quantization.methods import METHODS, method_from_dict

__all__ = [
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_INEXACT",
    "EXIT_LOW_FIDELITY",
    "DEFAULT_MIN_COSINE",
    "GUARD_FAILED",
    "guard_failure",
    "MODEL_HELP",
    "Parser",
    "epilog",
    "fail",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "existing_file",
    "folder",
    "run_folder",
    "add_model",
    "add_config",
    "add_seed",
    "spike_config",
    "config_from_mapping",
    "config_flags",
    "steps_given",
]

# Every option's default is RECOMMENDED's field: the best configuration measured on real weights.
DEFAULTS = RECOMMENDED
DEFAULT_STEPS = {m: DEFAULTS.msts.steps_of(m) for m in ("text", "image")}  # Tt / Tv
# The fidelity guard: a spiking model whose logit cosine to the float model is below it is a failed conversion.
DEFAULT_MIN_COSINE = 0.9
EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error: Python's status for an uncaught exception (with its traceback)
EXIT_USAGE = 2  # a bad argument or input, said in one line before any work (argparse's status)
EXIT_INEXACT = 3  # the run finished, and the spiking model differs from its fake-quant twin or Lava from PyTorch
EXIT_LOW_FIDELITY = 4  # the run finished, and the spiking model's logit cosine to the float model is below --min-cosine
GUARD_FAILED = "FIDELITY GUARD FAILED"


def guard_failure(cosine: float, min_cosine: float, reference: str = "the float model") -> str:
    """Why a spiking model failed the fidelity guard, after :data:`GUARD_FAILED`, for the terminal,
    the report and the examples alike."""
    return (f"the spiking model's logit cosine to {reference} is {cosine:.4f}, below the guard's {min_cosine:g}: its "
            "answers are not the model's; try a rotation with clipping (the defaults), more steps or more weight bits "
            "(docs/fidelity.md)")


def epilog(inexact: str | None = None, low_fidelity: bool = False) -> str:
    """The ``--help`` epilog on exit statuses; ``inexact``: what status 3 reports for this command;
    ``low_fidelity``: the command has the fidelity guard (status 4)."""
    statuses = [f"{EXIT_OK} done", f"{EXIT_USAGE} a bad argument or input (one line, before any work)"]
    if inexact:
        statuses.append(f"{EXIT_INEXACT} {inexact}")
    if low_fidelity:
        statuses.append(f"{EXIT_LOW_FIDELITY} the spiking model's logit cosine to the float model is below --min-cosine "
                        "(the run is written, and says so)")
    statuses.append(f"{EXIT_ERROR} any other error (with a traceback); 130 interrupted (Ctrl-C)")
    return "exit status: " + "; ".join(statuses) + "."


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``prog: error: message``, with
    status :data:`EXIT_USAGE` (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _RaisingParser(argparse.ArgumentParser):
    """A parser of options that do not come from a command line: a bad value raises ``ValueError``."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


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


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"must be an integer >= 0, got {text!r}")
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
non_negative_int = _argument_type(_non_negative_int, "non-negative int")
positive_float = _argument_type(_positive_float, "positive number")
existing_file = _argument_type(_existing_file, "existing file")
folder = _argument_type(folders.check_folder, "folder")


def run_folder(marker: str) -> Callable:
    """An argparse ``type`` for the folder a command writes its run into
    (:func:`~spikemllm_sj.commands.run_folder.check_run_folder`: new, empty, or a previous run,
    which holds ``marker``)."""
    return _argument_type(lambda text: folders.check_run_folder(text, marker), "run folder")

MODEL_HELP = (
    f"a built-in offline model ({EASYVQA_LLAVA}: the trained easy-VQA LLaVA on real SmolLM2-135M weights; "
    f"{', '.join(BUILTIN_MODELS[1:])}: random weights, for tests and the five families), a local checkpoint folder, "
    "or a hub id such as Qwen/Qwen2-VL-7B-Instruct (needs a network or the local cache)"
)


def add_model(parser: argparse.ArgumentParser, default: str = EASYVQA_LLAVA, choices=None) -> None:
    """``--model`` (default ``default``); ``choices``: these built-in names alone."""
    if choices is not None:
        parser.add_argument("--model", default=default, choices=choices, help=f"built-in offline model (default {default})")
    else:
        parser.add_argument("--model", default=default, help=f"{MODEL_HELP} (default: {default})")


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


def _plan(text: str) -> MSTSPlan:
    path = _existing_file(text)
    try:
        return MSTSPlan.from_list(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON ({error.msg}, line {error.lineno})") from None


method_option = _argument_type(_method_option, "KEY=VALUE")
prompt_template = _argument_type(check_prompt, "prompt template")
plan_file = _argument_type(_plan, "plan file")
clip_ratio = _argument_type(_clip, "clip ratio")
ratio = _argument_type(_ratio, "ratio")


def add_config(parser: argparse.ArgumentParser, steps: bool = True, dtype: bool = True) -> None:
    """The conversion options: every :class:`SpikeConfig` field (steps per modality, the
    quantization method and its parameters, weight method, bits and clipping, activation scales
    and clipping, key/value and probability bits, the output head) and the weight dtype, with
    :data:`~spikemllm_sj.config.RECOMMENDED`'s values as defaults.

    :param steps: offer the step options (not for commands that choose the steps themselves).
    :param dtype: offer ``--dtype`` (commands that load real checkpoints).
    """
    group = parser.add_argument_group(
        "conversion (SpikeConfig)",
        "defaults: the best configuration measured on real weights (spikemllm_sj.config.RECOMMENDED: Hadamard "
        "rotation, searched activation clips, MSE weight scales; 82.8% against 85.2% FP32 on the trained easy-VQA "
        "LLaVA at Tv/Tt = 3/4, where --method RTN --act-clip 1 --weight-clip none gives 1.6%; docs/fidelity.md)",
    )
    if steps:
        _add_steps(group)
    _add_quantization(group)
    if dtype:
        group.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights of real checkpoints")


def _add_steps(group) -> None:
    group.add_argument("--steps-text", type=positive_int, default=None, metavar="TT",
                       help=f"time steps of text tokens, Tt (default {DEFAULT_STEPS['text']}; convert: chosen "
                            "by MED unless given)")
    group.add_argument("--steps-image", type=positive_int, default=None, metavar="TV",
                       help=f"time steps of image and video tokens, Tv (default {DEFAULT_STEPS['image']}; convert: chosen "
                            "by MED unless given)")


def _add_quantization(group) -> None:
    default_options = ", ".join(f"{k}={json.dumps(v)}" for k, v in _method_options(DEFAULTS.method).items())
    group.add_argument("--scheme", default=DEFAULTS.msts.scheme, choices=SCHEMES,
                       help="the spike code of the activations (spikemllm_sj.neurons.coding): TC-LIF, the rate-coding "
                            "baselines, our reading of SDLLM's clipped bidirectional code, or SpikingBrain's mean-threshold "
                            "bitwise code (its steps follow the values: no --steps-*, no MED, and --act-clip 1) "
                            f"(default {DEFAULTS.msts.scheme}; the steps must suit the code, e.g. 7/3 for rate_bidirectional)")
    group.add_argument("--method", default=DEFAULTS.method.name, choices=sorted(METHODS),
                       help="the ANN quantization method the spikes carry (spikemllm_sj.quantization.methods; "
                            f"default {DEFAULTS.method.name})")
    group.add_argument("--method-option", type=method_option, action="append", default=[], metavar="KEY=VALUE",
                       help="a parameter of the method, e.g. alpha=0.5 for SmoothQuant, seed=1 or fallback=false "
                            f"for Hadamard (repeatable; values read as JSON; the default method's: {default_options})")
    group.add_argument("--weight-method", default=DEFAULTS.weight_method, choices=("rtn", "gptq"),
                       help="weights per output channel by round-to-nearest or GPTQ (calibrated Hessians) "
                            f"(default {DEFAULTS.weight_method})")
    group.add_argument("--weight-bits", type=positive_int, default=DEFAULTS.weight_bits,
                       help=f"weight bits, per output channel (default {DEFAULTS.weight_bits})")
    group.add_argument("--weight-clip", default=DEFAULTS.weight_clip, choices=("none", "mse"),
                       help=f"weight scales at each output channel's absmax, or searched by MSE (default {DEFAULTS.weight_clip})")
    group.add_argument(
        "--act-scales", default=DEFAULTS.act_scales, choices=("static", "dynamic"),
        help="linear-input scales: static (calibrated, per tensor and modality) or dynamic (per token) "
             f"(default {DEFAULTS.act_scales})",
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
    group.add_argument("--plan", type=plan_file, default=MSTSPlan(), metavar="FILE",
                       help="per-site MSTS steps on top of the steps per modality: a JSON list of [selector, {modality: "
                            "steps}] (spikemllm_sj.ann2snn.plan.MSTSPlan; the 'plan' of a run.json's config)")


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random weights of tiny models")


def spike_config(args: argparse.Namespace) -> SpikeConfig:
    """The :class:`SpikeConfig` of the options of :func:`add_config` (steps not given: the defaults).

    :raises ValueError: a field's value is not accepted (the message names the option's field).
    """
    scheme = args.scheme
    if scheme in DATA_DEPENDENT_SCHEMES:
        if steps_given(args):
            raise ValueError(f"--steps-text/--steps-image: the {scheme} code's steps follow the values; give no steps")
        msts = MSTSConfig(scheme=scheme)
    else:
        steps = {m: getattr(args, f"steps_{m}", None) or DEFAULT_STEPS[m] for m in DEFAULT_STEPS}
        try:
            msts = MSTSConfig(steps={**steps, "video": steps["image"]}, scheme=scheme)
        except ValueError as error:
            raise ValueError(f"--scheme {scheme} with --steps-text {steps['text']} / --steps-image {steps['image']}"
                             f"{' (the defaults)' if not steps_given(args) else ''}: {error}") from None
    # The default method keeps its default parameters (e.g. Hadamard's fallback) unless overridden.
    defaults = _method_options(DEFAULTS.method) if args.method == DEFAULTS.method.name else {}
    options = dict(args.method_option)
    try:
        method = method_from_dict({"name": args.method, **defaults, **options})
    except TypeError:
        fields = [f.name for f in dataclasses.fields(METHODS[args.method])]
        raise ValueError(
            f"--method-option {sorted(options)}: {args.method} takes {', '.join(fields) if fields else 'no options'}"
        ) from None
    return SpikeConfig(
        msts=msts, method=method, weight_method=args.weight_method, weight_bits=args.weight_bits,
        weight_clip=args.weight_clip, act_scales=args.act_scales, act_clip=args.act_clip, kv_bits=args.kv_bits,
        kv_clip=args.kv_clip, prob_bits=args.prob_bits, convert_lm_head=args.convert_lm_head, plan=args.plan,
    )


def config_flags(config: SpikeConfig) -> list[str]:
    """The conversion options (:func:`add_config`, steps left out) that give ``config`` where it
    differs from the defaults: ``spike_config(parse(flags))`` is ``config`` (steps and plan aside).
    """
    flags = []
    if config.msts.scheme != DEFAULTS.msts.scheme:
        flags += ["--scheme", config.msts.scheme]
    if config.method.name != DEFAULTS.method.name or config.method != DEFAULTS.method:
        flags += ["--method", config.method.name]
        baseline = DEFAULTS.method if config.method.name == DEFAULTS.method.name else type(config.method)()
        defaults = _method_options(baseline)  # what spike_config starts from for this method
        for k, v in _method_options(config.method).items():
            if defaults.get(k, object()) != v:
                flags += ["--method-option", f"{k}={json.dumps(v)}"]
    for field in ("weight_method", "weight_bits", "weight_clip", "act_scales", "act_clip", "kv_bits", "kv_clip", "prob_bits"):
        value = getattr(config, field)
        if value != getattr(DEFAULTS, field):
            flags += [f"--{field.replace('_', '-')}", str(value)]
    if config.convert_lm_head:
        flags.append("--convert-lm-head")
    return flags


def _method_options(method) -> dict:
    """The parameters of ``method`` (its dict form without the name)."""
    return {k: v for k, v in method.to_dict().items() if k != "name"}


def config_from_mapping(mapping: dict) -> SpikeConfig:
    """The :class:`SpikeConfig` of options given as a mapping, as lmms-eval's ``model_args`` give
    them: each key is an option of :func:`add_config` without its dashes, hyphens as underscores
    (``scheme``, ``method``, ``method_option``, ``weight_method``, ``weight_bits``, ``weight_clip``,
    ``act_scales``, ``act_clip``, ``kv_bits``, ``kv_clip``, ``prob_bits``, ``convert_lm_head``,
    ``steps_text``, ``steps_image``), each value its command-line text (``method_option``: one or
    more ``KEY=VALUE`` separated by ``;``; ``convert_lm_head``: ``true`` / ``false``). Parsed by the
    command line's own parser, with the same defaults and checks.

    :raises ValueError: an unknown key (the message lists the accepted ones) or a bad value.
    """
    parser = _RaisingParser(prog="config", add_help=False)
    add_config(parser, dtype=False)
    accepted = {a.dest: a for a in parser._actions}
    argv = []
    for key, value in mapping.items():
        if key not in accepted:
            raise ValueError(f"unknown configuration option {key!r}; accepted: {', '.join(sorted(accepted))}")
        flag = accepted[key].option_strings[0]
        text = str(value)
        if key == "convert_lm_head":
            if text.lower() not in ("true", "false"):
                raise ValueError(f"convert_lm_head must be true or false, got {value!r}")
            argv += [flag] if text.lower() == "true" else []
        elif key == "method_option":
            for item in filter(None, text.split(";")):
                argv += [flag, item]
        else:
            argv += [flag, text]
    return spike_config(parser.parse_args(argv))


def steps_given(args: argparse.Namespace) -> bool:
    """Whether ``--steps-text`` or ``--steps-image`` was given."""
    return getattr(args, "steps_text", None) is not None or getattr(args, "steps_image", None) is not None

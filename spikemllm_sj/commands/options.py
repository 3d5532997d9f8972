"""Command-line options that several commands share, and the ``SpikeConfig`` they describe.

One place builds them, so ``convert``, ``eval``, ``med`` and ``lava`` accept the same spelling and
the same defaults.
"""

from __future__ import annotations

import argparse

from spikemllm_sj.config import SpikeConfig
from spikemllm_sj.models.tiny import TINY_MODELS
from spikemllm_sj.neurons import MSTSConfig

__all__ = ["MODEL_HELP", "add_model", "add_config", "add_seed", "spike_config"]

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
    parser.add_argument("--steps-text", type=int, default=4, help="TC-LIF time steps of text tokens, Tt (default 4)")
    parser.add_argument("--steps-image", type=int, default=3, help="time steps of image and video tokens, Tv (default 3)")
    parser.add_argument("--weight-bits", type=int, default=8, help="weight bits, per output channel (default 8)")
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

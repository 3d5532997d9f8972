"""``spikemllm`` command line: one subcommand per module of :mod:`spikemllm_sj.commands`, each
adding its own parser (``add_parser``) and running it (``run``)."""

from __future__ import annotations

import argparse
import sys

from spikemllm_sj.commands import convert, demo, evaluate, lava, med, options, report

__all__ = ["build_parser", "main"]

COMMANDS = (convert, evaluate, med, lava, report, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(prog="spikemllm", description="SpikeMLLM for SpikingJelly: spike-driven multimodal LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

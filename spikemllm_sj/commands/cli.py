"""``spikemllm`` command line: one subcommand per module of :mod:`spikemllm_sj.commands`, each
adding its own parser (``add_parser``) and running it (``run``).

Ctrl-C ends any command with status 130 and one line on stderr (no traceback); the commands
release what they hold on the way out (Lava's processes and shared memory: see
:mod:`spikemllm_sj.lava_backend`).
"""

from __future__ import annotations

import argparse
import sys

from spikemllm_sj.interrupts import interrupts_kept

__all__ = ["build_parser", "main"]

INTERRUPTED_STATUS = 130  # 128 + SIGINT, as shells report a command ended by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    # The command modules import torch and transformers (seconds): imported here, within main,
    # a Ctrl-C while they load ends the command like one later on. (Not held back until they have
    # loaded: that takes seconds. torch's C++ start-up, interrupted, may abort the interpreter.)
    import spikemllm_sj
    from spikemllm_sj.commands import convert, demo, evaluate, lava, med, options, report

    parser = options.Parser(prog="spikemllm", description="SpikeMLLM for SpikingJelly: spike-driven multimodal LLMs")
    parser.add_argument("--version", action="version", version=f"spikemllm-sj {spikemllm_sj.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (convert, evaluate, med, lava, report, demo):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    with interrupts_kept():
        try:
            args = build_parser().parse_args(argv)
            return args.func(args)
        except KeyboardInterrupt:
            print("spikemllm: interrupted", file=sys.stderr)
            return INTERRUPTED_STATUS


if __name__ == "__main__":
    sys.exit(main())

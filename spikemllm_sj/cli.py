"""``spikemllm`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from spikemllm_sj.demo import format_table, run_demo, write_outputs

    rows, info = run_demo(seed=args.seed)
    path = write_outputs(rows, info, Path(args.out))
    if args.json:
        print(json.dumps({"info": info, "rows": [r.as_dict() for r in rows]}, indent=2))
    else:
        tokens = info["tokens"]
        print(
            f"MSTS spike coding of a [1, {sum(tokens.values())}, {info['dim']}] activation "
            f"({tokens['text']} text, {tokens['image']} image tokens; {info['bits']['text']}-bit text, "
            f"{info['bits']['image']}-bit image), per-token absmax scales, seed {info['seed']}.\n"
            f"exact: decoded spikes == quantizer output, bit for bit. W·s exact: spike-driven "
            f"int8 linear {info['dim']}->{info['out_features']} == integer matmul. synops: SpikingJelly SynOpCounter.\n"
        )
        print(format_table(rows))
        print(f"\nwritten: {path}")
    return 0 if all(r.exact and r.linear_exact for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikemllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="spike-code a tiny mixed text/image sequence and check exactness")
    demo.add_argument("--out", default="out/demo", help="folder for the JSON results (default: out/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print JSON instead of the table")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

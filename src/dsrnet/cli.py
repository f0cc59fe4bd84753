"""``dsrnet`` command line: one subcommand per job, each defined next to the code it drives.

Every module that owns a subcommand exposes ``add_parser(subparsers)``; the parser it adds sets ``func``.
"""

from __future__ import annotations

import argparse
import sys

from dsrnet.errors import DsrnetError


def build_parser() -> argparse.ArgumentParser:
    from dsrnet import bench, engine, reproduce

    parser = argparse.ArgumentParser(
        prog="dsrnet",
        description="DSRNet: train, evaluate, benchmark and reproduce the paper's tables.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine.add_parser(sub)  # train, eval, predict
    bench.add_parser(sub)  # bench
    reproduce.add_parser(sub)  # reproduce, ablate
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DsrnetError as err:
        print(f"dsrnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsrnet: interrupted", file=sys.stderr)
        return 130

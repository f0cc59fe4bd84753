"""``dsrnet`` command line: one subcommand per job, each defined next to the code it drives.

Every module that owns a subcommand exposes ``add_parser(subparsers)``; the parser it adds sets ``func``.
"""

from __future__ import annotations

import argparse
import sys

from dsrnet.errors import DsrnetError


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes (an unknown flag, a missing value) as one line, like every other dsrnet error.

    ``add_subparsers`` builds subcommand parsers with the root parser's class, so every subcommand inherits this.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; fix: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    import torch

    from dsrnet import __version__, bench, cli_export, engine, reproduce

    parser = OneLineErrorParser(
        prog="dsrnet",
        description="DSRNet: train, evaluate, benchmark and reproduce the paper's tables.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"dsrnet {__version__} (torch {torch.__version__})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine.add_parser(sub)  # train, eval, predict
    bench.add_parser(sub)  # bench
    reproduce.add_parser(sub)  # reproduce, ablate
    cli_export.add_parser(sub)  # export
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

"""``dsrnet``: the root parser. Each command lives in a thin module of :mod:`dsrnet.cli` exposing
``configure(name, parser)`` (adds its flags and sets ``func``); only the module of the command being run is
imported, so ``dsrnet --help`` does not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dsrnet.cli.common import HelpFormatter, OneLineErrorParser, setup_logging
from dsrnet.errors import DsrnetError

#: command -> (module that configures it, one-line help)
COMMANDS = {
    "train": ("dsrnet.cli.train", "train a model (paper or fast recipe; DDP under torchrun)"),
    "eval": ("dsrnet.cli.train", "evaluate a checkpoint: top-1/3/5 error, per-class accuracy, confusion matrix"),
    "predict": ("dsrnet.cli.train", "top-k classes of image files with a trained checkpoint"),
    "export-weights": ("dsrnet.cli.weights", "a run's trained model as a safetensors weights file with metadata"),
    "export": ("dsrnet.cli.export", "export to ONNX / TorchScript / ExportedProgram (BN folded, optional int8)"),
    "bench": ("dsrnet.cli.bench", "parameters, MACs, latency per batch, throughput and peak memory"),
    "reproduce": ("dsrnet.cli.reproduce", "train, time and tabulate the paper's comparison (Tables 2-4, Fig. 2)"),
    "ablate": ("dsrnet.cli.reproduce", "DSRNet variants that test the paper's design claims"),
    "plot": ("dsrnet.cli.plot", "figures and a summary table of run folders (curves, lr, final-epoch errors)"),
}


class _Version(argparse.Action):
    """``--version``: imports torch only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import torch

        from dsrnet import __version__

        print(f"dsrnet {__version__} (torch {torch.__version__})")
        parser.exit(0)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The root parser; the flags of ``command`` (or of every command when ``None``) are added."""
    parser = OneLineErrorParser(
        prog="dsrnet",
        description="DSRNet: train, evaluate, benchmark and reproduce the paper's tables.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the dsrnet and torch versions and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, formatter_class=HelpFormatter)
        if command is None or name == command:
            importlib.import_module(module).configure(name, p)
            # Flags whose off state is spelled --no-x: command_line() must write it out to reproduce the run.
            negatable = tuple(a.dest for a in p._actions if isinstance(a, argparse.BooleanOptionalAction))
            p.set_defaults(_negatable=negatable)
    return parser


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        command = _command(argv)
        parser = build_parser(command or "")
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported by the root parser, but the flags the user wants are the command's
            where = f"dsrnet {command}" if command else "dsrnet"
            parser.error(f"unrecognized arguments: {' '.join(unknown)}; fix: see `{where} --help`")
        return int(args.func(args) or 0)
    except DsrnetError as err:
        print(f"dsrnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsrnet: interrupted", file=sys.stderr)
        return 130

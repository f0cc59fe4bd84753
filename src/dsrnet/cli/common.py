"""What every command's flags share: the one-line-error parser, the help formatter, ``--model-kwargs`` parsing,
the resolved command line written next to results, and logging to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from typing import Any

from dsrnet.errors import DsrnetError


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes (an unknown flag, a missing or bad value) as one ``dsrnet: error: ...`` line and exit 2, like
    every other dsrnet error. ``add_subparsers`` builds subcommand parsers with this class too."""

    def error(self, message: str):
        fix = "" if "fix:" in message else f"; fix: see `{self.prog} --help`"
        self.exit(2, f"dsrnet: error: {message}{fix}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none (``None``/suppressed) or the help already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if (
            action.default in (None, False, argparse.SUPPRESS)
            or "(default" in (action.help or "")
            or "%(default)" in (action.help or "")
        ):
            return action.help or ""
        return super()._get_help_string(action)


def typed(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` from a converter that raises :class:`DsrnetError`: its one-line message (with its
    fix) becomes the usage error."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except DsrnetError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


#: Flags whose value is a name (an unknown one reads "unknown dataset 'x'", not "bad value").
NAMED = ("model", "dataset", "recipe")


def one_of(name: str, choices: Any) -> Callable[[str], str]:
    """``type=`` for a flag with fixed choices, failing as ``bad value for NAME: 'x'; fix: use one of ...``
    (``unknown NAME 'x'; fix: choose one of ...`` for the names of :data:`NAMED`)."""

    def convert(text: str) -> str:
        if text not in choices:
            if name in NAMED:
                raise DsrnetError(f"unknown {name} {text!r}; fix: choose one of {', '.join(choices)}")
            raise DsrnetError(f"bad value for {name}: {text!r}; fix: use one of {', '.join(choices)}")
        return text

    return typed(convert)


def parse_model_kwargs(text: str | None) -> dict:
    """``--model-kwargs '{"widths": [8, 16, 32, 64]}'`` -> dict (a JSON object)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DsrnetError(
            f"bad value for model_kwargs: --model-kwargs is not valid JSON ({err.msg}); fix: pass an object like "
            f"'{{\"widths\": [8, 16, 32, 64]}}'"
        ) from None
    if not isinstance(value, dict):
        raise DsrnetError(
            f"bad value for model_kwargs: --model-kwargs must be a JSON object, got {type(value).__name__}; fix: "
            f"pass an object like '{{\"separable\": false}}'"
        )
    return value


def command_line(args: argparse.Namespace) -> str:
    """The fully resolved command that reproduces ``args`` (every option spelled out, defaults included; a switch
    that is off appears as ``--no-x`` where the flag has that form, and is left out where off is its default)."""
    parts = ["dsrnet", args.command]
    negatable = set(getattr(args, "_negatable", ()))
    for key, value in vars(args).items():
        if key in ("func", "command") or key.startswith("_") or value is None:
            continue
        if value is False:
            if key in negatable:
                parts.append("--no-" + key.replace("_", "-"))
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list | tuple):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads (``None``: torch's choice)."""
    if threads is None:
        return
    import torch

    from dsrnet.errors import check_int

    torch.set_num_threads(check_int("--threads", threads))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest and callers may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always answers
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Progress and info of every ``dsrnet.*`` logger to stderr, once; results go to stdout."""
    root = logging.getLogger("dsrnet")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)

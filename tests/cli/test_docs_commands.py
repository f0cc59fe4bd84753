"""Every ``dsrnet ...`` command the docs show (README, BENCHMARKS, the model card) parses with today's CLI and spells
each flag in full, so a renamed flag breaks this test instead of a reader's copy-paste. Schematic lines (``...``,
``[optional]``) are skipped."""

from __future__ import annotations

import shlex

import pytest

from dsrnet.cli.main import build_parser
from tests.conftest import REPO

DOCS = ["README.md", "BENCHMARKS.md", "src/dsrnet/weights/README.md"]


def doc_commands(text: str) -> list[str]:
    """The ``dsrnet`` command lines of the fenced code blocks of ``text``, continuations joined, comments cut."""
    found, in_block, buf = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_block, buf = not in_block, ""
            continue
        if not in_block:
            continue
        line = line.split("  #")[0].split(" # ")[0].strip()
        if not buf and not line.startswith("dsrnet "):
            continue
        buf = f"{buf} {line}".strip()
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        found.append(buf)
        buf = ""
    return found


def _subparser(parser, command: str):
    return parser._subparsers._group_actions[0].choices[command]


def test_doc_commands_are_found():
    assert "dsrnet ablate --dataset cifar10" in doc_commands((REPO / "README.md").read_text())
    assert doc_commands("```bash\ndsrnet bench --device cpu \\\n  --sizes 32   # why\n```\n") == [
        "dsrnet bench --device cpu --sizes 32"
    ]


@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_parse(doc):
    parser = build_parser()
    # A path placeholder ("runs/...") stands for a real path and is filled in; a command with flags elided
    # ("dsrnet train ... --dwconv triton") or optional parts ("[--x]") is schematic and skipped.
    texts = [c.replace("runs/...", "runs/some-run") for c in doc_commands((REPO / doc).read_text())]
    commands = [c for c in texts if "..." not in c and "[" not in c]
    bad = []
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            if exit_.code != 0:  # 0: --help / --version
                bad.append(f"{command}: does not parse")
            continue
        known = _subparser(parser, argv[0])._option_string_actions
        bad += [f"{command}: {a} is not a full flag" for a in argv if a.startswith("--") and a not in known]
    assert not bad, "\n".join(bad)

"""What README.md and BENCHMARKS.md give. Their GPU commands: a GPU session runs them as written, in a few minutes
of device time lent now and then, so a step, arm or kind renamed since, or a flag a script no longer takes, must
fail here on a CPU, not there (``--only`` that matches no step ends the call with nothing measured). Their links
into each other's sections."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture
def load(monkeypatch):
    """A benchmark script as a module, in this process (``sys.path`` and ``sys.modules`` restored afterwards)."""

    def load(name: str):
        monkeypatch.setattr(sys, "path", list(sys.path))  # kernel_shapes puts benchmarks/ first
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


def documented_commands(script: str) -> list[list[str]]:
    """Every command line in the docs' code blocks that runs ``benchmarks/<script>``, continuation lines joined,
    split at ``;`` / ``&&`` between commands, as argv after the script's path."""
    found = []
    for doc in ("README.md", "BENCHMARKS.md"):
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", (REPO / doc).read_text(), flags=re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                if f"benchmarks/{script}.py" not in line:
                    continue
                lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")  # quotes kept whole, # comments
                lexer.whitespace_split = True
                command: list[str] = []
                for word in [*lexer, ";"]:
                    if word.strip(";&|"):
                        command.append(word)
                        continue
                    names = [i for i, w in enumerate(command) if w.endswith(f"benchmarks/{script}.py")]
                    if names:
                        found.append(command[names[0] + 1 :])
                    command = []
    return found


def _flags(argv: list[str]) -> dict[str, str | None]:
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            takes = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            out[argv[i]] = argv[i + 1] if takes else None
            i += 2 if takes else 1
        else:
            i += 1
    return out


def test_every_documented_fused_gpu_command_selects_real_steps_with_known_flags(load):
    fused_gpu = load("fused_gpu")
    commands = documented_commands("fused_gpu")
    assert len(commands) >= 5  # the plan's calls and the past runs' commands
    plan = fused_gpu.full_plan()
    for argv in commands:
        flags = _flags(argv)
        assert set(flags) <= {"--out", "--budget-s", "--only", "--dry-run", "--cifar10-test", "--data-dir",
                              "--rerender", "--compile-backend"}, argv  # fmt: skip
        if flags.get("--only"):
            steps = fused_gpu.select_steps(plan, flags["--only"])  # ValueError: a part matches no step
            assert len(steps) > 2, argv  # more than the environment and ceilings


def test_select_steps_refuses_a_part_that_matches_nothing_and_keeps_the_environment(load):
    fused_gpu = load("fused_gpu")
    plan = fused_gpu.full_plan()
    with pytest.raises(ValueError, match="matches no step; fix:"):
        fused_gpu.select_steps(plan, "dependent launch;no such step")
    names = [p[0] for p in fused_gpu.select_steps(plan, " dependent launch ; ")]
    assert names[:2] == ["environment", "ceilings"] and len(names) == 3 and "dependent launch" in names[2]


def test_every_documented_train_speed_command_names_real_arms(load):
    train_speed = load("train_speed")
    arms = {name for name, _ in train_speed.ARMS}
    commands = documented_commands("train_speed")
    assert commands
    for argv in commands:
        flags = _flags(argv)
        assert set(flags) <= {"--out", "--budget-s", "--arms", "--epochs", "--work", "--dry-run"}, argv
        if flags.get("--arms"):
            assert set(flags["--arms"].split(",")) <= arms, argv


def test_every_documented_kernel_shapes_command_names_real_kinds(load):
    kernel_shapes = load("kernel_shapes")
    commands = documented_commands("kernel_shapes")
    assert commands
    for argv in commands:
        flags = _flags(argv)
        if flags.get("--kinds"):
            assert set(flags["--kinds"].split(",")) <= set(kernel_shapes.STEPS), argv


def test_every_link_into_a_document_lands_on_one_of_its_headings():
    """README.md and BENCHMARKS.md link into BENCHMARKS.md's sections by GitHub's heading anchors: renaming a
    heading silently breaks them."""

    def anchor(heading: str) -> str:  # GitHub's rule: lower case, punctuation dropped, spaces to hyphens
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    checked = 0
    for target in ("BENCHMARKS.md", "README.md"):
        headings = {anchor(h) for h in re.findall(r"^#+ (.*)$", (REPO / target).read_text(), flags=re.M)}
        for doc in ("README.md", "BENCHMARKS.md"):
            prefix = f"(?:{re.escape(target)})?" if doc == target else re.escape(target)  # "#x" within a file
            links = set(re.findall(rf"\]\({prefix}#([\w\-]+)\)", (REPO / doc).read_text()))
            assert links <= headings, (doc, target, links - headings)
            checked += len(links)
    assert checked >= 5

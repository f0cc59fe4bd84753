"""Runs the interpreter-based kernel tests in a fresh process when this one imported Triton too early."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.kernels import interp

pytest.importorskip("triton")

INTERPRETER_TESTS = ("tests/kernels/test_ops.py", "tests/models/test_fused.py",
                     "tests/train/test_loop_triton.py")


@pytest.mark.skipif(interp.READY, reason="the kernel tests ran in this process")
def test_kernel_tests_pass_in_a_fresh_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *INTERPRETER_TESTS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # The kernels really ran in the interpreter there: none skipped for the reason this process skipped them
    # (a Triton that the interpreter check no longer recognises would skip them all and still exit 0).
    assert interp.SKIP_REASON not in proc.stdout, proc.stdout[-4000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 40, proc.stdout[-2000:]

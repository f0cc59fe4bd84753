"""Runs the interpreter-based kernel tests in a fresh process when this one imported Triton too early.

That process takes minutes of one core (Triton's interpreter runs each kernel program in Python), so
``tests/conftest.py`` starts it in the background as soon as the suite is collected (:func:`start_in_background`)
and moves this test last: the rest of the suite runs meanwhile on the other core, and this test only waits for
what is left and checks the outcome."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from tests.conftest import REPO
from tests.kernels import interp

pytest.importorskip("triton")

INTERPRETER_TESTS = ("tests/kernels/test_ops.py", "tests/models/test_fused.py",
                     "tests/train/test_loop_triton.py")
TIMEOUT_S = 900
#: The background run: its process, output file, start time, and this process's torch threads before it started.
_RUN: dict = {}


def start_in_background() -> None:
    """Start the fresh interpreter process now. This process drops to one intra-op thread until the run is
    collected, so the two do not contend for a core (a descheduled OpenMP thread stalls every parallel region)."""
    # a file, not a pipe: nobody reads the output until the end (_collect closes it)
    out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *INTERPRETER_TESTS],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _RUN.update(proc=proc, out=out, started=time.monotonic(), threads=torch.get_num_threads())
    torch.set_num_threads(1)


def stop() -> None:
    """End a background run that no test collected (the session stopped early)."""
    if _RUN and _RUN["proc"].poll() is None:
        _RUN["proc"].kill()
        _RUN["proc"].wait()


def _collect() -> tuple[int, str]:
    """Wait for the run (started here if the hook did not) and return its exit code and output."""
    if not _RUN:
        start_in_background()
    proc, out = _RUN["proc"], _RUN["out"]
    try:
        proc.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - _RUN["started"])))
    except subprocess.TimeoutExpired:
        stop()
    finally:
        torch.set_num_threads(_RUN["threads"])
    with out:
        out.seek(0)
        return proc.returncode, out.read()


@pytest.mark.skipif(interp.READY, reason="the kernel tests ran in this process")
def test_kernel_tests_pass_in_a_fresh_interpreter_process():
    returncode, stdout = _collect()
    assert returncode == 0, stdout[-6000:]
    # The kernels really ran in the interpreter there: none skipped for the reason this process skipped them
    # (a Triton that the interpreter check no longer recognises would skip them all and still exit 0).
    assert interp.SKIP_REASON not in stdout, stdout[-4000:]
    passed = re.search(r"(\d+) passed", stdout)
    assert passed and int(passed.group(1)) >= 40, stdout[-2000:]

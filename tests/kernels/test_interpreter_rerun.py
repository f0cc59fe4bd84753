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
#: The child's pytest, asking Linux to kill it when this process dies (a SIGKILLed or SIGTERMed pytest runs no
#: cleanup hook), and stopping at once if this process is already gone.
_CHILD = (
    "import ctypes, os, signal, sys\n"
    "parent = int(sys.argv[1])\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n"
    "    pass  # not Linux: the session's end stops it\n"
    "if os.getppid() != parent:\n"
    "    sys.exit(3)\n"
    "sys.path.insert(0, os.getcwd())  # as python -m pytest has it (-c puts '' there)\n"
    "import pytest\n"
    "sys.exit(pytest.main(sys.argv[2:]))\n"
)
#: The background run: its process, output file, start time, and this process's torch threads before it started.
_RUN: dict = {}


def start_in_background() -> None:
    """Start the fresh interpreter process now. It keeps one core busy, so this process gives up one intra-op
    thread until the run is collected (on a 2-core machine a descheduled OpenMP thread stalls every parallel
    region)."""
    # a file, not a pipe: nobody reads the output until the end (_collect or stop closes it)
    out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    # one intra-op thread there too (the interpreter's tests set it; the others would take both cores)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(os.getpid()), "-q", "-rs", "-p", "no:cacheprovider", *INTERPRETER_TESTS],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    threads = torch.get_num_threads()
    _RUN.update(proc=proc, out=out, started=time.monotonic(), threads=threads)
    torch.set_num_threads(max(1, threads - 1))


def stop() -> None:
    """End a background run that no test collected (the session stopped early)."""
    run = _RUN.copy()
    _RUN.clear()
    if run:
        if run["proc"].poll() is None:
            run["proc"].kill()
            run["proc"].wait()
        run["out"].close()
        torch.set_num_threads(run["threads"])


def _collect() -> tuple[int | None, str]:
    """Wait for the run (started here if the hook did not) and return its exit code (None: timed out) and output."""
    if not _RUN:
        start_in_background()
    proc, out = _RUN["proc"], _RUN["out"]
    try:
        proc.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - _RUN["started"])))
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        returncode = None
    out.seek(0)
    output = out.read()
    stop()
    return returncode, output


@pytest.mark.skipif(interp.READY, reason="the kernel tests ran in this process")
def test_kernel_tests_pass_in_a_fresh_interpreter_process():
    returncode, stdout = _collect()
    assert returncode is not None, f"the kernel tests did not finish in {TIMEOUT_S} s:\n" + stdout[-4000:]
    assert returncode == 0, stdout[-6000:]
    # The kernels really ran in the interpreter there: none skipped for the reason this process skipped them
    # (a Triton that the interpreter check no longer recognises would skip them all and still exit 0).
    assert interp.SKIP_REASON not in stdout, stdout[-4000:]
    passed = re.search(r"(\d+) passed", stdout)
    # and nearly all of them ran (231 when this was written; 197 of them need the interpreter)
    assert passed and int(passed.group(1)) >= 200, stdout[-2000:]

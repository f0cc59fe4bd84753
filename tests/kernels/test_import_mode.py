"""The kernels' shared helpers are jitted in the mode Triton itself was imported in, whatever ``TRITON_INTERPRET``
says when ``dsrnet.kernels`` is imported (another test may have unset it by then): an interpreted kernel that
called a compiled helper failed with "Cannot call @triton.jit'd outside of the scope of a kernel"."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

CODE = """
import json, os
os.environ["TRITON_INTERPRET"] = "1"
import triton.language  # Triton's own helpers are made for the interpreter now
del os.environ["TRITON_INTERPRET"]
import torch, torch.nn.functional as F
from dsrnet.kernels import _triton, ops  # imported with the variable unset
os.environ["TRITON_INTERPRET"] = "1"  # a kernel test switches it back on and launches
x = torch.randn(1, 8, 5, 6).contiguous(memory_format=torch.channels_last)
w = torch.randn(8, 1, 3, 3)
out = ops.dwconv2d(x, w, None, 1, 2, False)
print(json.dumps({"helper": type(_triton._dw_taps).__name__, "interpreted": _triton.interpreting(),
                  "err": float((out - F.conv2d(x, w, None, 1, 2, 2, 8)).abs().max())}))
"""


def _run(code: str) -> dict:
    """``code`` in a fresh process (Triton's import mode is per process); its last stdout line as JSON."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DSRNET_DISABLE_TRITON")}
    env.update(PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_helpers_follow_the_mode_triton_was_imported_in():
    out = _run(CODE)
    assert out["helper"] == "InterpretedFunction" and out["interpreted"] and out["err"] < 1e-5


LATE = """
import json, os
os.environ.pop("TRITON_INTERPRET", None)
import triton.language  # Triton's own helpers are compiled-mode now
import torch, torch.nn.functional as F
from dsrnet.kernels import ops
os.environ["TRITON_INTERPRET"] = "1"  # switched on too late for this process
x = torch.randn(1, 8, 5, 6).contiguous(memory_format=torch.channels_last)
w = torch.randn(8, 1, 3, 3)
out = ops.dwconv2d(x, w, None, 1, 2, False)
print(json.dumps({"usable": ops.triton_usable(x), "err": float((out - F.conv2d(x, w, None, 1, 2, 2, 8)).abs().max())}))
"""


def test_an_interpreter_switched_on_after_triton_was_imported_means_the_fallback():
    """triton_usable said yes on a CPU once TRITON_INTERPRET=1 was set, even after Triton had built its helpers
    compiled: the launch then failed with "Cannot call @triton.jit'd outside of the scope of a kernel"."""
    out = _run(LATE)
    assert out["usable"] is False and out["err"] < 1e-5

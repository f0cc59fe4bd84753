"""Switch Triton to its CPU interpreter for the kernel tests, or say why this process cannot.

Triton (3.6-3.8) reads ``TRITON_INTERPRET`` when ``@triton.jit`` is applied, and ``triton.language`` itself is made
of jitted helpers (``tl.zeros``, ``tl.sum``, ...) decorated when it is first imported. So the variable has to be set
before anything imports Triton (torchvision does). Importing this module first thing in a test module does that
when it still can; when another module got there first, :data:`READY` is False, the kernel tests skip themselves
and ``test_interpreter_rerun.py`` runs them in a fresh process instead.
"""

from __future__ import annotations

import os
import sys

import pytest

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"


def _ready() -> bool:
    try:
        import triton.language.standard as standard
    except ImportError:
        return False
    return type(standard.zeros).__name__ == "InterpretedFunction"


#: Whether Triton kernels launched from this process run in the interpreter.
READY = _ready()
SKIP_REASON = "Triton was imported before TRITON_INTERPRET=1 was set; tests/kernels/test_interpreter_rerun.py runs this"


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """Autouse in each test module that binds it (``interpreter = interp.interpreter``): kernels go through the
    interpreter (``DSRNET_DISABLE_TRITON`` unset), on one intra-op thread (the interpreter runs on the CPU, and
    a second thread only contends)."""
    import torch  # not at the top: nothing here may import Triton before TRITON_INTERPRET is set

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("DSRNET_DISABLE_TRITON", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

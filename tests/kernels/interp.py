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

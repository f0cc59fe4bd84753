"""Runs timm's own model tests (``tests/test_models.py`` of the timm sdist pinned in ``[dev]``) on DSRNet.

``.ci/run`` downloads that sdist, copies its ``test_models.py`` next to this file (git-ignored: the repository holds
none of timm's files) and runs ``pytest tests_timm -k dsrnet``. Importing dsrnet here, before pytest imports the test
module, registers the dsrnet models with timm, so timm's parametrised model lists include them.
"""

import timm  # noqa: F401  (imported first: dsrnet registers with the timm it finds)
import torch

import dsrnet  # noqa: F401

# One intra-op thread: on a shared 2-core machine a second OpenMP thread made this run 12x slower (502 s against
# 40 s for the same 45 tests); no result depends on the thread count.
torch.set_num_threads(1)


def pytest_configure(config):
    # The markers timm's own pyproject declares (its CI splits the suite by them); timeout needs pytest-timeout.
    for marker in (
        "base",
        "cfg",
        "cfg_nonstd",
        "forward",
        "backward",
        "torchscript",
        "features",
        "fxforward",
        "fxbackward",
        "timeout(seconds)",
    ):
        config.addinivalue_line("markers", f"{marker}: timm test group")

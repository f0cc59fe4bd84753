"""Shared fixtures. The real CIFAR-10 comes from ``../shared/data/cifar10`` (decoded once per session) or from
``$DSRNET_TEST_DATA`` (a folder holding ``cifar10/{train,test}.npz``). Under CI (``CI`` set) a missing dataset is a
failure, never a skip: the tests that use it are part of what CI promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """A data dir with the full real CIFAR-10 array cache: ``<dir>/cifar10/{train,test}.npz``."""
    env = os.environ.get("DSRNET_TEST_DATA")
    if env and (Path(env) / "cifar10" / "train.npz").is_file():
        return Path(env)
    decoder = SHARED_CIFAR10 / "decode.py"
    if not decoder.is_file():
        msg = f"real CIFAR-10 not found: set DSRNET_TEST_DATA or provide {decoder}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, str(decoder), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules that train tiny networks: on a 2-core machine a second OpenMP thread
    contending with other processes makes these small kernels up to 100x slower, and no result depends on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

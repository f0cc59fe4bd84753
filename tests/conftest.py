"""Shared fixtures. The real CIFAR-10 comes from ``../shared/data/cifar10`` (decoded once per session) or from
``$DSRNET_TEST_DATA`` (a folder holding ``cifar10/{train,test}.npz``). Under CI (``CI`` set) a missing dataset is a
failure, never a skip: the tests that use it are part of what CI promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"


def shared_decoder(missing: str) -> Path:
    """The CIFAR-10 WebP copy's ``decode.py``; missing, the test fails under CI and is skipped elsewhere
    (``missing`` + the path is the message)."""
    decoder = SHARED_CIFAR10 / "decode.py"
    if not decoder.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{missing} {decoder}")
        pytest.skip(f"{missing} {decoder}")
    return decoder


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """A data dir with the full real CIFAR-10 array cache: ``<dir>/cifar10/{train,test}.npz``."""
    env = os.environ.get("DSRNET_TEST_DATA")
    if env and (Path(env) / "cifar10" / "train.npz").is_file():
        return Path(env)
    decoder = shared_decoder("real CIFAR-10 not found: set DSRNET_TEST_DATA or provide")
    out = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, str(decoder), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(autouse=True)
def _triton_interpreter_off(monkeypatch):
    """Every test starts with Triton's interpreter off. Importing ``tests/kernels/interp.py`` (at collection) sets
    ``TRITON_INTERPRET=1`` for the whole process, so the custom ops of any later test would run their kernels in
    the interpreter (minutes for a whole DSRNet) instead of PyTorch's fallback. The kernel-test modules switch it
    back on for their own tests (``interp.interpreter``: an autouse fixture of the module, set up after this one)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules that train tiny networks: on a 2-core machine a second OpenMP thread
    contending with other processes makes these small kernels up to 100x slower, and no result depends on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def checkpoint_payload(net: torch.nn.Module, net_kwargs: dict, /, **over) -> dict:
    """The fields ``dsrnet train`` saves in ``checkpoint.pt``, for ``net`` (a ``dsrnet50_cifar`` built with
    ``net_kwargs``) on CIFAR-10; ``over`` replaces any of them (``model``, ``model_kwargs`` included)."""
    payload = {
        "epoch": 1,
        "model": "dsrnet50_cifar",
        "model_kwargs": dict(net_kwargs),
        "dataset": "cifar10",
        "num_classes": 10,
        "classes": [f"c{i}" for i in range(10)],
        "image_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "config": {"seed": 0},
        "model_state": net.state_dict(),
    }
    return {**payload, **over}


# ------------------------------------------------------------------------------------ tiny real training runs

TINY_MODEL = {"widths": [8, 16, 32, 64], "zero_init_residual": True}


def tiny(tmp_path, data_dir, name="run", **over):
    """A CPU run of a narrow DSRNet-50 on a per-class subset of real CIFAR-10."""
    kw = {
        "model": "dsrnet50",
        "model_kwargs": TINY_MODEL,
        "dataset": "cifar10",
        "data_dir": str(data_dir),
        "device": "cpu",
        "recipe": "fast",
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.1,
        "warmup_epochs": 1,
        "subset_per_class": 10,
        "test_subset_per_class": 5,
        "progress": False,
        "tensorboard": False,
        "out_dir": str(tmp_path / name),
    }
    kw.update(over)
    from dsrnet.train import TrainConfig

    return TrainConfig.from_recipe(**kw)


def read_metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


DETERMINISTIC_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top3",
    "test_top5",
)


@pytest.fixture(scope="session")
def learned_run(cifar10_dir, tmp_path_factory):
    """8 epochs on 500 real training images (50 per class), tested on 300; the train, infer and CLI tests reuse it."""
    from dsrnet.train import train

    tmp = tmp_path_factory.mktemp("learn")
    cfg = tiny(tmp, cifar10_dir, epochs=8, subset_per_class=50, test_subset_per_class=30, tensorboard=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = train(cfg)
    finally:
        torch.set_num_threads(before)
    return cfg, final




class RunsCode:
    """A pickle that, when loaded unsafely, creates the file ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


_INTERPRETER_RERUN = "tests/kernels/test_interpreter_rerun.py::test_kernel_tests_pass_in_a_fresh_interpreter_process"


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter lists the items (--co)
def pytest_collection_finish(session):
    """Move the test that checks the kernel tests' fresh interpreter process (minutes of one core) last and start
    that process in the background now, when the test will run: selected, this process imported Triton before the
    interpreter could be switched on, no skip mark on it, and the tests are to run (not only collected or set up).
    Here, not in ``pytest_collection_modifyitems``: after every reordering (-k, -m, --ff, --nf, ...)."""
    config, items = session.config, session.items
    rerun = [item for item in items if item.nodeid == _INTERPRETER_RERUN]
    if not rerun:
        return
    items.remove(rerun[0])
    items.append(rerun[0])
    only_listing = any(getattr(config.option, flag, False)
                       for flag in ("collectonly", "setuponly", "setupplan", "showfixtures", "show_fixtures_per_test"))  # fmt: skip
    skipped = rerun[0].get_closest_marker("skip") is not None or any(
        (mark.args[0] if mark.args else mark.kwargs.get("condition")) is True
        for mark in rerun[0].iter_markers("skipif"))  # fmt: skip
    collection_failed = session.testsfailed and not config.option.continue_on_collection_errors  # nothing will run
    if not (only_listing or skipped or collection_failed):
        rerun[0].module.start_in_background()


def pytest_sessionfinish(session):
    module = sys.modules.get("tests.kernels.test_interpreter_rerun")
    if module is not None:
        module.stop()

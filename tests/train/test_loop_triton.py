"""``TrainConfig(dwconv="triton")`` with the real Triton kernels, run by Triton's CPU interpreter: a tiny
training run gives the losses and weights of the PyTorch run. A module of its own because the interpreter must
be switched on before anything imports Triton (``tests/kernels/interp.py``); ``test_interpreter_rerun.py``
reruns it in a fresh process when the test session imported Triton too early."""

from __future__ import annotations  # noqa: I001 (interp must be imported before anything imports Triton)

from tests.kernels import interp

import pytest
import torch

from dsrnet.kernels import triton_usable
from dsrnet.run.checkpoint import load_checkpoint
from dsrnet.train import train
from tests.conftest import read_metrics, tiny

pytest.importorskip("triton")

interpreter = interp.interpreter  # autouse: Triton interpreter, one thread

# One block per stage (4 depthwise convs: a stride-1 one and three stride-2 ones), 10 training images in 2
# steps, NHWC as on the GPU. The paper's stem (7x7 stride 2 + max-pool) leaves 8x8 maps for the blocks: the
# interpreter takes ~9 s for both runs, against ~100 s at the 32x32 maps of the cifar stem.
TINY_NET = {"layers": [1, 1, 1, 1], "widths": [4, 8, 8, 8], "zero_init_residual": True}
RUN = {"model": "dsrnet50", "model_kwargs": TINY_NET, "epochs": 1, "batch_size": 5, "subset_per_class": 1,
       "test_subset_per_class": 1, "channels_last": True}  # fmt: skip


@pytest.fixture(scope="module")
def torch_run(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch-run")
    return out, train(tiny(out, cifar10_dir, "torch", **RUN))


@pytest.mark.skipif(not interp.READY, reason=interp.SKIP_REASON)
@pytest.mark.parametrize("dwconv", ["triton", "triton_bn_relu"])
def test_training_with_the_triton_kernels_matches_the_torch_run(torch_run, cifar10_dir, tmp_path, caplog, dwconv):
    # triton_bn_relu: each block's first BatchNorm + ReLU inside the depthwise kernel, the same run again.
    assert triton_usable(torch.empty(1))  # the kernels, not the fallback, run below
    torch_dir, plain = torch_run
    with caplog.at_level("INFO", logger="dsrnet.train"):
        fast = train(tiny(tmp_path, cifar10_dir, "triton", dwconv=dwconv, **RUN))
    assert f"dwconv {dwconv}: 4 depthwise convs run the Triton kernels" in caplog.text
    (a,), (b,) = read_metrics(torch_dir / "torch"), read_metrics(tmp_path / "triton")
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
    assert fast["top1"] == plain["top1"]
    want = load_checkpoint(torch_dir / "torch")["model_state"]
    got = load_checkpoint(tmp_path / "triton")["model_state"]
    assert list(got) == list(want)
    for name, value in want.items():  # two SGD steps from the same start: the kernels' gradients are right
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)

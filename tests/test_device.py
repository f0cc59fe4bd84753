"""``dsrnet.device``: TF32 as the user set it, through either of PyTorch's APIs; inference compilation with frozen
weights."""

from __future__ import annotations

import torch

from dsrnet.device import compile_frozen, tf32_conv, tf32_matmul


def test_tf32_read_from_either_api_without_mixing_errors():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision, torch.get_float32_matmul_precision())
    try:
        matmul.fp32_precision = "ieee"  # after this, reading the legacy matmul.allow_tf32 raises
        assert tf32_matmul() is False
        matmul.fp32_precision = "tf32"
        assert tf32_matmul() is True
        conv.fp32_precision = "ieee"
        assert tf32_conv() is False
        conv.fp32_precision = "tf32"
        assert tf32_conv() is True
        conv.fp32_precision = "none"  # reading the legacy flag now raises: torch's default (on) is reported
        assert tf32_conv() is True
    finally:
        matmul.fp32_precision, conv.fp32_precision = before[0], before[1]
        torch.set_float32_matmul_precision(before[2])


def test_compile_frozen_freezes_the_weights_into_the_compiled_graph():
    # Frozen weights are constants of the compiled code: changing a parameter afterwards changes nothing, where
    # torch.compile(options={"freezing": True}) alone kept them as inputs (and ran at eager speed on a CPU).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    run = compile_frozen(model)
    with torch.inference_mode():
        want = model(x)
        first = run(x)
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    with torch.inference_mode():
        assert torch.equal(run(x), first)
        assert not torch.allclose(model(x), first)

"""``dsrnet.device``: TF32 as the user set it, through either of PyTorch's APIs."""

from __future__ import annotations

import torch

from dsrnet.device import tf32_conv, tf32_matmul


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

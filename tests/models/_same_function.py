"""A check shared by the tests of the conv forms (shifted depthwise, matmul 1x1): same function, same gradients."""

from __future__ import annotations

import torch
from torch import nn


def assert_same_function_as_conv(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, conv: nn.Conv2d) -> None:
    """``got`` (a form's output) equals ``want`` (``conv(x)``), and so do their gradients with respect to ``x`` and
    ``conv``'s weight and bias, to float64 rounding."""
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(want)
    params = (x, conv.weight) + ((conv.bias,) if conv.bias is not None else ())
    for g, w in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(want, params, grad), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)

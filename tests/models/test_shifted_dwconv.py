"""``dsrnet.models.shifted_dwconv``: the depthwise 3x3 as nine shifted multiply-adds computes nn.Conv2d's function
and gradients at every stride, dilation and odd size DSRNet uses, in eager and under ``torch.compile``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dsrnet
from dsrnet.errors import DsrnetError
from dsrnet.models.dsrnet import DSRBlock
from dsrnet.models.shifted_dwconv import ShiftedDepthwiseConv2d, depthwise_by_shifts, use_shifted_dwconv
from tests.models._same_function import assert_same_function_as_conv


@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_the_grouped_conv(stride, dilation, bias):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 10, dtype=torch.float64, requires_grad=True)  # odd sizes, maps smaller than 3 x rate
    conv = nn.Conv2d(5, 5, 3, stride, dilation, dilation, groups=5, bias=bias, dtype=torch.float64)
    want = conv(x)
    assert_same_function_as_conv(depthwise_by_shifts(x, conv.weight, conv.bias, stride, dilation), want, x, conv)


def test_channels_last_bf16_input_keeps_its_dtype():
    x = torch.randn(1, 8, 6, 6).to(torch.bfloat16, memory_format=torch.channels_last)
    conv = nn.Conv2d(8, 8, 3, 1, 2, 2, groups=8)  # fp32 weights under a bf16 input, as autocast would leave them
    got = depthwise_by_shifts(x, conv.weight, conv.bias, 1, 2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), conv(x.float()), rtol=2e-2, atol=2e-2)


def test_autocast_computes_in_the_autocast_dtype_as_the_conv_does():
    conv = nn.Conv2d(8, 8, 3, 2, 1, 1, groups=8)
    x = torch.randn(2, 8, 7, 7)  # fp32, as a BatchNorm's output is under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = conv(x), depthwise_by_shifts(x, conv.weight, conv.bias, 2, 1)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    conv64, x64 = conv.double(), x.double()  # autocast leaves fp64 alone, and so must the shifts (were cast to bf16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = conv64(x64), depthwise_by_shifts(x64, conv64.weight, conv64.bias, 2, 1)
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want)


def test_swap_keeps_parameters_and_state_dict_and_skips_other_convs():
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10)
    keys, params = list(model.state_dict()), list(model.parameters())
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        want = model(x)
    assert use_shifted_dwconv(model) == sum(isinstance(m, DSRBlock) for m in model.modules()) == 16
    assert list(model.state_dict()) == keys and all(a is b for a, b in zip(model.parameters(), params, strict=True))
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    assert dsrnet.use_shifted_dwconv(model) == 16  # the package-level name; swapping again changes nothing
    assert use_shifted_dwconv(dsrnet.create_model("resnet50_cifar", num_classes=10)) == 0
    with pytest.raises(DsrnetError, match="not a depthwise 3x3 conv"):
        ShiftedDepthwiseConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1))


def test_compiled_block_trains_like_the_eager_conv_block():
    # What the form is for: torch.compile (Inductor) fusing it forward and backward; one downsampling DSR block.
    torch.manual_seed(0)
    block = DSRBlock(16, 8, stride=2, dilation=2)
    shifted = DSRBlock(16, 8, stride=2, dilation=2)
    shifted.load_state_dict(block.state_dict())
    assert use_shifted_dwconv(shifted) == 1
    x = torch.randn(4, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(4, 32, 5, 5)
    want = block(x)
    got = torch.compile(shifted, dynamic=False)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    want.backward(grad)
    got.backward(grad)
    for (name, a), b in zip(block.named_parameters(), shifted.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4, msg=name)

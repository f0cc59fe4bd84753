"""``dsrnet.models.matmul_pointwise``: 1x1 convs as matmuls over pixels compute nn.Conv2d's function and gradients
(every stride, either memory layout, bias or not), keep the parameters and state dict, and touch nothing else."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune

import dsrnet
from dsrnet.errors import DsrnetError
from dsrnet.models.matmul_pointwise import MatmulPointwiseConv2d, use_matmul_pointwise
from tests.models._same_function import assert_same_function_as_conv


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_forward_and_gradients_match_the_conv(stride, bias, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)  # odd sizes: the strided pixels are not a multiple of 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    conv = nn.Conv2d(6, 5, 1, stride, bias=bias, dtype=torch.float64)
    got = MatmulPointwiseConv2d.from_conv(conv)(x)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_same_function_as_conv(got, conv(x), x, conv)


def test_an_unbatched_input_and_vmap_work_as_with_the_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1, stride=2)
    form = MatmulPointwiseConv2d.from_conv(conv)
    x = torch.randn(3, 6, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(form(x[0]), conv(x[0]))  # (C, H, W), as nn.Conv2d takes it
        torch.testing.assert_close(torch.vmap(form)(x.unsqueeze(1)), torch.vmap(conv)(x.unsqueeze(1)))


def test_convs_with_hooks_or_a_derived_weight_keep_their_forward_and_eval_mode_is_kept():
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)).eval()
    seen = []
    model[0].register_forward_hook(lambda *args: seen.append(1))
    prune.l1_unstructured(model[1], "weight", amount=0.5)  # weight recomputed by a pre-hook
    weight = model[2].weight.detach().clone()
    del model[2].weight
    model[2].weight = weight  # a plain tensor, no hook: not a parameter the swap could share
    assert use_matmul_pointwise(model) == 1
    assert [type(m).__name__ for m in model] == ["Conv2d", "Conv2d", "Conv2d", "MatmulPointwiseConv2d"]
    assert not model[3].training  # swapped in eval mode: stays there
    model(torch.randn(1, 4, 3, 3))
    assert seen == [1]


def test_autocast_computes_in_the_autocast_dtype_as_the_conv_does():
    conv = nn.Conv2d(8, 4, 1)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = conv(x), MatmulPointwiseConv2d.from_conv(conv)(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_a_dsrnet_swaps_its_1x1_convs_only_and_keeps_its_function_parameters_and_state_dict():
    torch.manual_seed(0)
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    keys, params = list(model.state_dict()), list(model.parameters())
    plain_1x1 = sum(type(m) is nn.Conv2d and m.kernel_size == (1, 1) for m in model.modules())
    depthwise = sum(type(m) is nn.Conv2d and m.groups > 1 for m in model.modules())
    assert use_matmul_pointwise(model) == plain_1x1 == 36  # 16 blocks x 2, and the 4 stages' downsample convs
    assert list(model.state_dict()) == keys and list(model.parameters()) == params  # an optimizer still trains them
    assert sum(type(m) is nn.Conv2d and m.groups > 1 for m in model.modules()) == depthwise  # the rest untouched
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    assert use_matmul_pointwise(model) == 36  # a second call changes nothing


def test_resnet50_gets_the_same_treatment_for_a_like_for_like_baseline():
    model = torchvision.models.resnet50(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        assert use_matmul_pointwise(model) == 16 * 2 + 4  # conv1 and conv3 of each bottleneck, 4 downsamples
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    assert type(model.conv1) is nn.Conv2d and type(model.layer1[0].conv2) is nn.Conv2d  # 7x7 and 3x3 stay


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1, groups=2),
                                  nn.Conv2d(4, 4, 1, padding=1), nn.Conv2d(4, 4, 1, stride=(1, 2))])  # fmt: skip
def test_a_conv_that_is_not_a_plain_1x1_is_refused_by_name(conv):
    with pytest.raises(DsrnetError, match="not a plain 1x1 conv"):
        MatmulPointwiseConv2d.from_conv(conv)
    holder = nn.Sequential(conv)
    assert use_matmul_pointwise(holder) == 0 and holder[0] is conv


def test_compiled_the_forward_and_backward_hold_matmuls_and_no_convolution():
    """What the form is for: Inductor sees the training step's 1x1 GEMMs, backward included, as matmuls (as
    ``nn.Conv2d`` the backward is a ``convolution_backward`` call it cannot fuse with)."""
    import re

    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1, bias=False),
                          nn.BatchNorm2d(16)).to(memory_format=torch.channels_last)  # fmt: skip
    assert use_matmul_pointwise(model) == 2
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    step = torch.compile(model, dynamic=False)
    try:
        _, code = run_and_get_code(lambda: step(x).sum().backward())
    finally:
        torch._dynamo.reset()
    code = "\n".join(code)
    assert "convolution" not in code  # neither the forward's nor the backward's
    assert len(re.findall(r"extern_kernels\.mm\(", code)) == 5  # 2 forward; 3 backward (2 weight, 1 input gradient)

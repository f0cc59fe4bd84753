"""A depthwise 3x3 conv written as nine shifted multiply-adds, for ``torch.compile`` (``dwconv="shifts"``).

``y[n, c, i, j] = b[c] + sum over taps (kh, kw) of w[c, kh, kw] * x_pad[n, c, i * s + kh * d, j * s + kw * d]``
(``x_pad``: ``x`` zero-padded by the dilation ``d``; ``s`` the stride): the same function as ``nn.Conv2d`` with
``groups == channels`` and ``padding == dilation``, built from a pad, nine strided slices, per-channel products and
a sum. Eager PyTorch runs those as separate kernels (slower than its own depthwise conv); to Inductor they are
elementwise work it can fuse with what surrounds the conv (the BatchNorm and ReLU after it, the ReLU before it)
instead of calling cuDNN / oneDNN for the conv alone, and autograd's backward of the same ops is again elementwise
work (input gradient) and per-channel reductions (weight gradient). Checked on a CPU (``TORCH_LOGS=output_code``,
an eval-mode DSR block): the block compiles to its two 1x1 convs and two generated loops, one of them BatchNorm +
ReLU + pad + the nine taps + BatchNorm + ReLU, the other BatchNorm + residual add + ReLU. A depthwise conv does ~9 multiply-adds per
element it reads (Section 3's separable conv), so it is bound by memory traffic: fusion removes passes over
memory, not arithmetic. No custom kernel: it runs wherever ``torch.compile`` does, CPU included. Whether it is
faster depends on the device: on a 2-vCPU AMD EPYC the compiled training step was not (BENCHMARKS.md);
``benchmarks/fused_gpu.py`` times it on a GPU. Under autocast it computes in the autocast dtype, as the conv does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsrnet.errors import DsrnetError


def depthwise_by_shifts(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, dilation: int
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, dilation, dilation, groups=C)`` for ``weight`` ``[C, 1, 3, 3]``, as nine
    shifted multiply-adds (module docstring)."""
    # conv2d is an autocast op (products and sums are not), which casts the float types autocast handles only
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    n, c, h, w = x.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    padded = F.pad(x, (dilation, dilation, dilation, dilation))
    taps = weight.to(x.dtype).reshape(c, 9)
    out = None
    for kh in range(3):
        for kw in range(3):
            top, left = kh * dilation, kw * dilation
            window = padded[:, :, top : top + (ho - 1) * stride + 1 : stride, left : left + (wo - 1) * stride + 1 : stride]
            term = window * taps[:, kh * 3 + kw].view(1, c, 1, 1)
            out = term if out is None else out + term
    return out if bias is None else out + bias.to(x.dtype).view(1, c, 1, 1)


class DepthwiseConvForm(nn.Conv2d):
    """Base of the forms that compute a depthwise 3x3 ``nn.Conv2d`` (padding = dilation, square stride) another way
    (:class:`ShiftedDepthwiseConv2d`, ``dsrnet.models.fused.TritonDepthwiseConv2d``): :meth:`from_conv` takes the
    conv's own parameter objects, so ``state_dict`` keys stay and an optimizer built before the swap still trains
    them."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d):
        if not is_depthwise_3x3(conv):
            raise DsrnetError(f"not a depthwise 3x3 conv with padding = dilation: {conv}")
        new = cls(
            conv.in_channels, conv.out_channels, 3, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, device="meta",
        )  # fmt: skip
        new.weight = conv.weight
        new.bias = conv.bias
        return new


class ShiftedDepthwiseConv2d(DepthwiseConvForm):
    """A depthwise 3x3 conv computed by :func:`depthwise_by_shifts`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_by_shifts(x, self.weight, self.bias, self.stride[0], self.dilation[0])


def is_depthwise_3x3(conv: nn.Module) -> bool:
    """Whether ``conv`` is a square-strided depthwise 3x3 conv with padding = dilation and zero padding (what the
    shifted form and the Triton kernels compute)."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.groups == conv.in_channels == conv.out_channels
        and conv.stride[0] == conv.stride[1]
        and conv.dilation[0] == conv.dilation[1]
        and conv.padding == conv.dilation
        and conv.padding_mode == "zeros"
    )


def use_shifted_dwconv(model: nn.Module) -> int:
    """Swap every depthwise 3x3 conv of ``model`` for a :class:`ShiftedDepthwiseConv2d`, in place (the parameter
    objects are kept, so an optimizer built before still trains them); returns how many now run shifted."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_depthwise_3x3(child) and type(child) is nn.Conv2d:
                setattr(parent, name, ShiftedDepthwiseConv2d.from_conv(child))
    return sum(isinstance(m, ShiftedDepthwiseConv2d) for m in model.modules())

"""1x1 convs written as matmuls over pixels, so that ``torch.compile`` sees GEMMs in training, backward included.

A 1x1 conv with stride ``s`` is ``y[n, :, i, j] = W @ x[n, :, i * s, j * s] + b``: one GEMM of the (strided) pixels
by the weight, ``[pixels, Cin] @ [Cin, Cout]``. As an ``nn.Conv2d`` Inductor lowers it to a matmul only in the
forward, only at stride 1 and only under ``max-autotune`` (then its Triton GEMM templates may take the BatchNorm
apply and ReLU around it as prologue / epilogue); autograd's ``convolution_backward`` stays a cuDNN call (torch
2.11-2.14). Written as ``F.linear`` on the channels-last pixels, the forward and both backward passes are matmuls
that Inductor can template and fuse with the pointwise work around them. That is what a DSRNet training step is
mostly made of besides its depthwise convs: the same 1x1 convs and BatchNorms as ResNet-50's, memory-bound in
between (BENCHMARKS.md, "Measuring them"). Same parameters, same ``state_dict``, same function (to rounding);
whether it is faster is the GPU's to say (``benchmarks/fused_gpu.py``'s ``..._linear_...`` training forms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsrnet.errors import DsrnetError


def is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 1x1 ``nn.Conv2d`` (no groups, padding or dilation; a square stride)."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and conv.groups == 1
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.stride[0] == conv.stride[1]
    )


class MatmulPointwiseConv2d(nn.Conv2d):
    """A 1x1 conv computed as ``F.linear`` over the pixels (module docstring); the output is channels-last."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> MatmulPointwiseConv2d:
        """The same conv, holding ``conv``'s own parameter objects (``state_dict`` keys stay, and an optimizer built
        before the swap still trains them)."""
        if not is_pointwise(conv):
            raise DsrnetError(f"not a plain 1x1 conv (groups 1, no padding or dilation, square stride): {conv}")
        new = cls(conv.in_channels, conv.out_channels, 1, stride=conv.stride, bias=conv.bias is not None,
                  device="meta")  # fmt: skip
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.stride[0]
        if stride > 1:
            x = x[:, :, ::stride, ::stride]
        # channels-last input: the permuted view is already [pixels, Cin] rows, so the matmul reads it in place
        return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


def use_matmul_pointwise(model: nn.Module) -> int:
    """Swap every plain 1x1 ``nn.Conv2d`` of ``model`` (DSRNet's, or any CNN's: ResNet-50's for a like-for-like
    baseline) for a :class:`MatmulPointwiseConv2d`, in place; returns how many now run as matmuls."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and is_pointwise(child):
                setattr(parent, name, MatmulPointwiseConv2d.from_conv(child))
    return sum(isinstance(m, MatmulPointwiseConv2d) for m in model.modules())

"""1x1 convs written as matmuls over pixels, so that ``torch.compile`` sees GEMMs in training, backward included.

A 1x1 conv with stride ``s`` is ``y[n, :, i, j] = W @ x[n, :, i * s, j * s] + b``: one GEMM of the (strided) pixels
by the weight, ``[pixels, Cin] @ [Cin, Cout]``. As an ``nn.Conv2d`` Inductor lowers it to a matmul only in the
forward, only at stride 1 and only under ``max-autotune`` (channels-last) or its ``conv_1x1_as_mm`` option (then
its Triton GEMM templates may take the BatchNorm apply and ReLU around it as prologue / epilogue); autograd's
``convolution_backward`` stays a cuDNN call (torch 2.11-2.14). Written as ``F.linear`` on the channels-last pixels, the forward and both backward passes are matmuls
that Inductor can template and fuse with the pointwise work around them. That is what a DSRNet training step is
mostly made of besides its depthwise convs: the same 1x1 convs and BatchNorms as ResNet-50's, memory-bound in
between (BENCHMARKS.md, "Measuring them"). Same parameters, same ``state_dict``, same function (to rounding);
whether it is faster is the GPU's to say (``benchmarks/fused_gpu.py``'s ``..._linear_...`` training forms).
A training form: checkpoints hold the plain model (its parameters are the conv's), which is what inference, export
and FX passes that match ``nn.Conv2d`` by type (BatchNorm folding) should be given.
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
    """A 1x1 conv computed as ``F.linear`` over the pixels (module docstring), its output in the conv's layout."""

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
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.stride[0]
        if stride > 1:
            x = x[..., ::stride, ::stride]
        # (N, C, H, W) or (C, H, W), as nn.Conv2d takes. Channels-last input: the moved view is already
        # [pixels, Cin] rows, so the matmul reads it in place, and the output is channels-last as the conv's would
        # be; any other input gets a contiguous output, as from the conv (a copy: train channels-last).
        channels_inner = x.dim() == 4 and x.stride(1) == 1 and x.size(1) > 1  # (a stride query works under vmap)
        out = F.linear(x.movedim(-3, -1), self.weight.flatten(1), self.bias).movedim(-1, -3)
        return out if channels_inner else out.contiguous()


def _swappable(conv: nn.Module) -> bool:
    """A plain 1x1 ``nn.Conv2d`` whose weight is its own parameter and that has no hooks: a pruned or
    weight-normalised conv (its weight recomputed by a pre-hook) or one whose calls something observes keeps its
    own forward."""
    hooked = conv._forward_hooks or conv._forward_pre_hooks or conv._backward_hooks or conv._backward_pre_hooks
    return (type(conv) is nn.Conv2d and is_pointwise(conv) and isinstance(conv.weight, nn.Parameter)
            and not hooked)  # fmt: skip


def use_matmul_pointwise(model: nn.Module) -> int:
    """Swap every plain 1x1 ``nn.Conv2d`` of ``model`` (DSRNet's, or any CNN's: ResNet-50's for a like-for-like
    baseline) for a :class:`MatmulPointwiseConv2d`, in place, except convs with hooks or a weight that is not
    their own parameter (pruning, weight norm: left as they are); returns how many now run as matmuls."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _swappable(child):
                setattr(parent, name, MatmulPointwiseConv2d.from_conv(child))
    return sum(isinstance(m, MatmulPointwiseConv2d) for m in model.modules())
